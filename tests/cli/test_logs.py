"""Logs a machine can read: ``--log-format json`` puts the data in fields, ``--log-level`` in
any case, ``--log-config`` a dictConfig file (JSON or YAML) as uvicorn does."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meetstream_live.adapters.cli.logs import (
    JsonFormatter,
    TextFormatter,
    load_log_config,
    log_level,
    setup_logging,
)
from meetstream_live.adapters.cli.options import OptionSet, UsageError
from meetstream_live.adapters.cli.serve import SERVE_OPTIONS


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("meetstream_live.recorder", logging.INFO, __file__, 1, message,
                             args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_the_data_as_fields() -> None:
    line = JsonFormatter().format(record(
        "recording end: bot %s", "b-1", event="recording_finished", bot_id="b-1",
        speaker="alice", file="/rec/b-1/x.mp4", bytes=1234, peer="('10.0.0.5', 53211)",
        close_code=1000))
    document = json.loads(line)
    assert document["message"] == "recording end: bot b-1"
    assert {k: document[k] for k in ("event", "bot_id", "speaker", "file", "bytes", "peer",
                                     "close_code")} == {
        "event": "recording_finished", "bot_id": "b-1", "speaker": "alice",
        "file": "/rec/b-1/x.mp4", "bytes": 1234, "peer": "10.0.0.5:53211", "close_code": 1000,
    }
    assert document["level"] == "info" and document["time"].endswith("Z")


def test_text_lines_add_only_what_the_message_does_not_say() -> None:
    line = TextFormatter().format(record("recording to %s", "/rec/x.mp4", event="file_opened",
                                         file="/rec/x.mp4", bot_id="b-1", part=2))
    assert line.endswith("recording to /rec/x.mp4 [bot_id=b-1 part=2]")


@pytest.mark.parametrize("given", ["INFO", "Warning", "warn", "DEBUG", "error", "Critical"])
def test_the_log_level_is_any_case(given: str) -> None:
    assert log_level(given) in ("debug", "info", "warning", "error", "critical")
    settings = OptionSet(SERVE_OPTIONS).resolve({"log_level": given}, {})
    assert settings.log_level == log_level(given)


def test_a_wrong_log_level_names_the_flag_and_the_variable() -> None:
    with pytest.raises(UsageError, match=r"--log-level \(\$MEETSTREAM_LIVE_LOG_LEVEL\): 'loud'"):
        OptionSet(SERVE_OPTIONS).resolve({"log_level": "loud"}, {})


CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "meetstream_live.adapters.cli.logs.JsonFormatter"}},
    "handlers": {"file": {"class": "logging.FileHandler", "formatter": "json",
                          "filename": "PLACEHOLDER"}},
    "root": {"handlers": ["file"], "level": "WARNING"},
}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_log_config_file_replaces_the_format(
    tmp_path: Path, suffix: str, restore_logging: None
) -> None:
    yaml = pytest.importorskip("yaml") if suffix == ".yaml" else None
    out = tmp_path / "log.jsonl"
    config = json.loads(json.dumps(CONFIG).replace("PLACEHOLDER", str(out)))
    path = tmp_path / f"logging{suffix}"
    path.write_text(yaml.safe_dump(config) if yaml is not None else json.dumps(config))
    setup_logging("text", "info", str(path), level_given=False)
    logging.getLogger("meetstream_live.x").info("not shown: the file says WARNING")
    logging.getLogger("meetstream_live.x").warning("shown %s", "here", extra={"bot_id": "b"})
    setup_logging("text", "info", str(path), level_given=True)  # a given level wins
    logging.getLogger("meetstream_live.x").info("shown too")
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["message"], line.get("bot_id")) for line in lines] == [
        ("shown here", "b"), ("shown too", None)]


def test_a_bad_log_config_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"handlers": {}}')
    with pytest.raises(ValueError, match="needs 'version: 1'"):
        load_log_config(str(bad))
    done = subprocess.run(
        [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--log-config",
         str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "rec")],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "--log-config ($MEETSTREAM_LIVE_LOG_CONFIG): no such file" in done.stderr


def test_serve_logs_json_with_the_fields(tmp_path: Path) -> None:
    from .test_serve import serving, stream

    with serving(tmp_path, "--port", "0", "--output", str(tmp_path / "rec"),
                 "--log-format", "json", "--log-level", "INFO") as (port, log):
        stream(port, "json-bot")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    events = {line.get("event"): line for line in lines}
    started, finished = events["recording_started"], events["recording_finished"]
    assert started["bot_id"] == finished["bot_id"] == "json-bot"
    assert started["peer"].startswith("127.0.0.1:")
    assert finished["file"].endswith(".mp4") and Path(finished["file"]).is_file()
    assert finished["bytes"] > 0 and "close_code" in finished  # None: ended by its end message
    assert events["listening"]["port"] == port
    assert not any("'json-bot'" in line["message"] for line in lines)  # no reprs
