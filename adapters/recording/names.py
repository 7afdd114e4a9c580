"""Names for files made from what a bot sends: untrusted strings become one harmless path
component, and every directory is checked to stay inside the output directory."""

from __future__ import annotations

import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["MAX_NAME_BYTES", "MAX_NAME_CHARS", "inside", "iso", "safe_name", "utc_stamp"]

#: Longest path component made from a bot's strings, in characters and in UTF-8 bytes.
MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200

_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
_FORBIDDEN = frozenset('/\\<>:"|?*')


def safe_name(value: object, *, default: str = "unknown") -> str:
    """One path component made from an untrusted string (a ``bot_id``, a speaker name).

    NFC-normalized; control, format and surrogate characters dropped; path separators and
    characters Windows forbids replaced by ``_``; leading dots and spaces stripped (no ``..``,
    no hidden files); at most :data:`MAX_NAME_CHARS` characters and :data:`MAX_NAME_BYTES`
    UTF-8 bytes. Empty results, and anything that is not a string, give ``default``.
    """
    if not isinstance(value, str):
        return default
    text = unicodedata.normalize("NFC", value)
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            continue
        kept.append("_" if char in _FORBIDDEN else (" " if category == "Zs" else char))
    name = "".join(kept).strip(" .")
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS]
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    name = name.rstrip(" .")
    if not name:
        return default
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = "_" + name
    return name


def utc_stamp(ms: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms / 1000))


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms(text: object) -> int | None:
    """Unix ms of one of our ISO 8601 stamps (:func:`iso`); ``None`` if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # round, not int: a stamp of whole ms can come back as ...999.9999 from the float
    return None if moment.tzinfo is None else round(moment.timestamp() * 1000)


def inside(root: Path, directory: Path) -> Path:
    """``directory`` resolved, after checking it is ``root`` or below it."""
    resolved = directory.resolve()
    if resolved != root and root not in resolved.parents:
        raise RuntimeError(f"refusing to write outside the output directory: {resolved}")
    return resolved

