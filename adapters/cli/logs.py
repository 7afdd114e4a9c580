"""Logging for the command line: text, or one JSON object per line (``--log-format json``),
or your own ``logging.config.dictConfig`` (``--log-config FILE``, YAML or JSON, as uvicorn).

The code base logs its data as fields (``log.info("...", extra={"bot_id": ..., "file": ...})``,
never Python reprs inside the message): :data:`FIELDS` are the ones it uses. The JSON format
puts each field of a record in the object (``{"time", "level", "logger", "message",
"event", "bot_id", "speaker", "file", "bytes", "peer", "close_code", ...}``); the text
format adds them after the message as ``key=value`` only where the message does not say it.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meetstream_live.adapters.recording.sidecar import peer_text

__all__ = ["FIELDS", "JsonFormatter", "TextFormatter", "load_log_config", "setup_logging"]

#: The fields the code base's log calls pass in ``extra`` (documented in docs/cli.md).
FIELDS = (
    "event", "bot_id", "speaker", "file", "bytes", "peer", "close_code", "reason",
    "part", "hook", "sink", "errno", "site", "worker", "attempt", "proxy",
)

#: What every LogRecord has: the rest are the caller's ``extra`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}

LEVELS = ("debug", "info", "warning", "error", "critical")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, in :data:`FIELDS` order, then any others (a
    ``peer`` as the transports give it, ``('10.0.0.5', 53211)``, becomes ``10.0.0.5:53211``)."""
    found = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: found.pop(k) for k in FIELDS if k in found}
    ordered.update(found)
    for key in ("peer", "proxy"):
        if isinstance(ordered.get(key), str):
            ordered[key] = peer_text(ordered[key])
    return ordered


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields (and the
    exception, if any). Usable in a ``--log-config`` as
    ``{"()": "meetstream_live.adapters.cli.logs.JsonFormatter"}``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields(record).items():
            document.setdefault(key, _plain(value))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` and the fields the message does not show, as
    ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        message = record.getMessage()
        extra = [f"{k}={v}" for k, v in fields(record).items()
                 if k != "event" and v is not None and str(v) not in message]
        if not extra:
            return line
        head, newline, tail = line.partition("\n")  # before a traceback
        return head + " [" + " ".join(extra) + "]" + newline + tail


def load_log_config(path: str) -> dict[str, Any]:
    """A ``dictConfig`` dictionary from a JSON or YAML file (YAML needs PyYAML); raises
    ``ValueError`` with what is wrong."""
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ValueError(f"{path} is YAML: pip install pyyaml (or write it as JSON)") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "version" not in document:
        raise ValueError(f"{path} is not a logging dictConfig (it needs 'version: 1')")
    return document


def log_level(value: str) -> str:
    """The ``--log-level`` parser: a level name, any case (``warn`` is ``warning``)."""
    lowered = value.strip().lower()
    lowered = {"warn": "warning", "fatal": "critical"}.get(lowered, lowered)
    if lowered not in LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LEVELS)}")
    return lowered


log_level.__doc__ = f"one of {', '.join(LEVELS)}"


def setup_logging(fmt: str, level: str, config: str | None = None, *,
                  level_given: bool = True) -> None:
    """Log to stderr as ``fmt`` (``text``, ``json``) at ``level``; with ``config`` (a
    ``--log-config`` file) that file's ``dictConfig`` instead, and ``level`` on top of it
    only when it was given (``level_given``)."""
    if config is not None:
        logging.config.dictConfig(load_log_config(config))
        if level_given:
            logging.getLogger().setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
