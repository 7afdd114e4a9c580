"""Options declared once: the flag, its environment variables, its config-file key, its parser,
its default and its help come from one :class:`Option`, and the argument parser, the
environment, the config file, ``meetstream-live config`` and ``docs/config.md`` are all made
from the same declarations, so they cannot drift.

Precedence, highest first: the flag, the environment (``MEETSTREAM_LIVE_<NAME>``, then the
aliases the protocol document's sample receivers use: ``WS_HOST``, ``WS_PORT``,
``OUTPUT_DIR``), the config file (``--config FILE``, TOML), the default. Every value, whatever
its source, goes through the option's parser; a bad one is a one-line :class:`UsageError`
that names the flag, the variable and where the value came from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ENV_PREFIX",
    "Option",
    "OptionSet",
    "Settings",
    "UsageError",
    "boolean",
    "choice",
    "command_line",
    "disk_size",
    "duration",
    "http_url",
    "never_or_duration",
    "port",
    "positive_int",
    "size",
    "text",
    "url_path",
]

ENV_PREFIX = "MEETSTREAM_LIVE_"


class UsageError(Exception):
    """Bad input on the command line, in the environment or the config file: the message is
    printed after ``meetstream-live: error:``, and the exit status is 2."""


# ---------------------------------------------------------------------------- parsers
# Each takes the text of a value and returns it parsed, or raises ValueError with a message
# that says what is wrong with it (the caller adds which option and where it came from).

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min|m|h)?\s*$", re.IGNORECASE)
NEVER = ("0", "none", "off", "never")


def duration(value: str) -> float:
    """``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` or plain seconds (``"30"``) -> seconds."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (examples: 30, 90s, 10m, 1h, 500ms)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def never_or_duration(value: str) -> float | None:
    """A duration, or ``0`` / ``none`` / ``off`` / ``never``: ``None``."""
    if value.strip().lower() in NEVER:
        return None
    return duration(value)


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"not a port number: {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{number} is not a port number (0-65535; 0 picks a free one)")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"not an integer: {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be positive: {number}")
    return number


_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024 * 1024, "mib": 1024 * 1024}


def size(value: str) -> int:
    """``65536``, ``64k``, ``1m`` -> bytes (positive)."""
    match = _SIZE.match(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS or int(match.group(1)) <= 0:
        raise ValueError(f"not a size: {value!r} (examples: 65536, 64k, 1m)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_DISK = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DISK_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def disk_size(value: str) -> int:
    """``500m``, ``2g``, ``1.5GiB``, ``10737418240``, ``0`` -> bytes."""
    match = _DISK.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (examples: 500m, 2g, 1t)")
    return int(float(match.group(1)) * _DISK_UNITS[match.group(2).lower()])


def text(value: str) -> str:
    return value


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {value!r} (true, false, 1, 0, yes, no)")


def choice(*choices: str, case: bool = False) -> Callable[[str], str]:
    """One of ``choices`` (case-insensitive unless ``case``)."""

    def parse(value: str) -> str:
        wanted = value if case else value.lower()
        if wanted not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return wanted

    parse.__doc__ = f"one of {', '.join(choices)}"
    return parse


def url_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} does not start with '/' (example: /video)")
    return value


def http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"not a URL: {value!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def command_line(value: str) -> str:
    """A command line, split like a shell would; its program must exist."""
    import shlex
    import shutil

    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r}: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    if shutil.which(argv[0]) is None:
        raise ValueError(f"no such program: {argv[0]!r} (not found on PATH, or not executable)")
    return value


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One setting of a command: ``--<name>`` (dashes for underscores),
    ``MEETSTREAM_LIVE_<NAME>``, ``<name>`` in the config file, ``settings.<name>``."""

    name: str
    parse: Callable[[str], Any]
    default: Any = None
    help: str = ""
    metavar: str | None = None
    #: The flag may be given several times (and the variable or the file key hold a list,
    #: comma-separated in the environment); the setting is a list.
    multiple: bool = False
    #: A flag without a value (``--index``): true when given.
    flag: bool = False
    #: Never shown in ``meetstream-live config`` or logs.
    secret: bool = False
    #: Environment variables read after ``MEETSTREAM_LIVE_<NAME>`` (``WS_PORT``...).
    aliases: tuple[str, ...] = ()
    #: More flag spellings (``--output-dir``).
    flags: tuple[str, ...] = ()
    #: The section of ``--help`` and ``docs/config.md``.
    group: str = "options"
    #: How the default reads in the docs (when ``repr`` of it would not say it well).
    shown_default: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> tuple[str, ...]:
        return (ENV_PREFIX + self.name.upper(), *self.aliases)

    def label(self) -> str:
        """How an error names the option: the flag and its variable."""
        return f"{self.option} (${self.env[0]})"


@dataclass
class Settings:
    """The resolved value of each option (``settings.port``), and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def masked(self) -> dict[str, Any]:
        """The values, secrets replaced by ``"***"`` (``None`` stays ``None``)."""
        return {
            name: ("***" if name in self.secrets and value not in (None, [], "") else value)
            for name, value in self.values.items()
        }


def _load_file(path: str) -> dict[str, Any]:
    """A config file: TOML (``.toml``), or JSON (``.json``)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        if file.suffix.lower() == ".json":
            document = json.loads(data)
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            document = tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config: {path} is not valid: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"--config: {path} must hold a table of settings")
    # A [serve] table (or [simulate]...) may hold the settings of that command.
    return document


class OptionSet:
    """The options of one command: adds them to a parser, resolves them."""

    def __init__(self, options: Iterable[Option]) -> None:
        self.options: list[Option] = []
        self.by_name: dict[str, Option] = {}
        for option in options:
            self.add(option)

    def add(self, option: Option) -> None:
        if option.name in self.by_name:
            raise ValueError(f"option {option.name!r} declared twice")
        self.options.append(option)
        self.by_name[option.name] = option

    def groups(self) -> dict[str, list[Option]]:
        groups: dict[str, list[Option]] = {}
        for option in self.options:
            groups.setdefault(option.group, []).append(option)
        return groups

    # ------------------------------------------------------------------ argparse

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Each option as a flag, raw (parsed later, with the others' sources)."""
        for group, options in self.groups().items():
            target = parser.add_argument_group(group)
            for option in options:
                names = [option.option, *option.flags]
                help_text = self.help_line(option)
                if option.flag:
                    target.add_argument(
                        *names, dest=option.name, action="store_const", const="true",
                        default=None, help=help_text,
                    )
                else:
                    target.add_argument(
                        *names, dest=option.name, default=None, metavar=option.metavar,
                        action="append" if option.multiple else "store", help=help_text,
                    )

    @staticmethod
    def help_line(option: Option) -> str:
        extra = [", ".join(f"${variable}" for variable in option.env)]
        shown = default_text(option)
        if shown is not None:
            extra.insert(0, f"default {shown}")
        choices = getattr(option.parse, "__doc__", None) or ""
        if choices.startswith("one of "):
            extra.insert(0, choices)
        return f"{option.help} ({'; '.join(extra)})".replace("%", "%%")

    # ------------------------------------------------------------------ resolving

    def resolve(
        self,
        flags: Mapping[str, Any],
        environ: Mapping[str, str],
        file: Mapping[str, Any] | None = None,
        file_name: str = "the config file",
    ) -> Settings:
        """Every option's value: flags > environment > file > default; parsed and checked."""
        settings = Settings(secrets=frozenset(o.name for o in self.options if o.secret))
        file = dict(file or {})
        for option in self.options:
            in_file = file.pop(option.name, None)
            raw: Any = flags.get(option.name)
            source = "flag"
            if raw is None:
                for variable in option.env:
                    if environ.get(variable) not in (None, ""):
                        raw, source = environ[variable], f"${variable}"
                        break
            if raw is None and in_file is not None:
                raw, source = in_file, file_name
            if raw is None:
                settings.values[option.name] = option.default
                settings.sources[option.name] = "default"
                continue
            settings.values[option.name] = self._parse(option, raw, source)
            settings.sources[option.name] = source
        unknown = sorted(key for key in file if not isinstance(file[key], dict))
        if unknown:
            raise UsageError(f"{file_name}: unknown setting(s): {', '.join(unknown)}")
        return settings

    @staticmethod
    def _parse(option: Option, raw: Any, source: str) -> Any:
        def one(value: Any) -> Any:
            if isinstance(value, bool):
                value = "true" if value else "false"
            try:
                return option.parse(str(value))
            except ValueError as exc:
                where = "" if source == "flag" else f" (from {source})"
                raise UsageError(f"{option.label()}: {exc}{where}") from None

        if option.multiple:
            if isinstance(raw, str) and source.startswith("$"):
                values: list[Any] = [v for v in (p.strip() for p in raw.split(",")) if v]
            elif isinstance(raw, (list, tuple)):
                values = list(raw)
            else:
                values = [raw]
            return [one(value) for value in values]
        if isinstance(raw, (list, tuple)):
            raise UsageError(f"{option.label()}: one value, not a list (from {source})")
        return one(raw)

    # ------------------------------------------------------------------ documentation

    def markdown(self, command: str) -> str:
        """The options as a reference table (``docs/config.md`` is made of these)."""
        lines: list[str] = []
        for group, options in self.groups().items():
            lines += [f"### `{command}`: {group}", "",
                      "| flag | environment | file key | default | meaning |",
                      "|---|---|---|---|---|"]
            for option in options:
                flags = ", ".join(f"`{f}`" for f in (option.option, *option.flags))
                if option.multiple:
                    flags += " (repeatable)"
                env = ", ".join(f"`{v}`" for v in option.env)
                default = default_text(option)
                lines.append(
                    f"| {flags} | {env} | `{option.name}` | "
                    f"{'' if default is None else f'`{default}`'} | "
                    f"{option.help.replace('|', '/')} |"
                )
            lines.append("")
        return "\n".join(lines)


def default_text(option: Option) -> str | None:
    """How an option's default reads (``None``: there is none worth showing)."""
    if option.shown_default is not None:
        return option.shown_default
    default = option.default
    if default is None or default is False or default == []:
        return None
    if isinstance(default, float) and default.is_integer():
        return f"{int(default)}s" if option.parse in (duration, never_or_duration) else str(default)
    return str(default)


def command_settings(
    options: OptionSet,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    section: str,
) -> Settings:
    """Resolve ``options`` for a command whose flags are in ``args``: with the config file of
    ``--config`` (or ``$MEETSTREAM_LIVE_CONFIG``), whose ``[section]`` table (or its top
    level) holds the settings."""
    path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG") or None
    document: dict[str, Any] = _load_file(path) if path else {}
    table = document.get(section)
    file: dict[str, Any] = {k: v for k, v in document.items() if not isinstance(v, dict)}
    if isinstance(table, dict):
        file.update(table)
    flags = {option.name: getattr(args, option.name, None) for option in options.options}
    return options.resolve(flags, environ, file, file_name=os.path.basename(path) if path else "")


def parse_raw(values: Sequence[str], option: Option) -> Any:
    """Parse values given outside the option set (tests, other commands)."""
    return OptionSet._parse(option, list(values) if option.multiple else values[0], "flag")
