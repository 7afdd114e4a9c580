"""Where a recording goes in a bucket: the target URL (``s3://BUCKET/PREFIX``) and the object
key template (default ``{prefix}/{bot_id}/{speaker}/{start}.mp4``).

The template's fields are the names the recorder gave the recording: ``bot_id`` and
``speaker`` made safe by :func:`~meetstream_live.adapters.recording.names.safe_name` as the
default layout names its directories (``speaker`` is empty for a stream without one, and an
empty path segment is dropped), ``start`` (also ``stem``) the file name without ``.mp4``
(``20250102T030405Z``, ``..._part002`` with rotation), ``part`` the part number, ``path`` the
recording's path below the output directory without ``.mp4`` (``{prefix}/{path}.mp4`` mirrors
any ``--path-template``). The sidecar goes beside the media (``.json`` for ``.mp4``), the
session manifest beside them under its own name.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from meetstream_live.adapters.recording.names import safe_name

__all__ = [
    "DEFAULT_KEY_TEMPLATE",
    "KeyTemplate",
    "ObjectName",
    "Target",
    "beside",
    "name_from_path",
    "name_from_sidecar",
    "name_of",
    "parse_target",
    "sidecar_key",
]

DEFAULT_KEY_TEMPLATE = "{prefix}/{bot_id}/{speaker}/{start}.mp4"
_FIELDS = frozenset({"prefix", "bot_id", "speaker", "start", "stem", "part", "path"})
#: S3 bucket names: 3-63 characters, lowercase letters, digits, dots and hyphens (the rules
#: of AWS; other servers are laxer, none is stricter in what matters here).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,62}$")
_PART = re.compile(r"_part(\d+)$")


@dataclass(frozen=True, repr=False)
class Target:
    """One bucket and key prefix to upload to (``s3://BUCKET/PREFIX``)."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:  # as ``meetstream-live config`` lists them
        return self.url


def parse_target(value: str) -> Target:
    """``s3://BUCKET[/PREFIX]`` -> :class:`Target`; ``ValueError`` says what is wrong."""
    text = value.strip()
    if not text.startswith("s3://"):
        raise ValueError(f"{value!r} is not an s3://BUCKET/PREFIX URL")
    bucket, _, prefix = text[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, "
                         f"dots, hyphens)")
    prefix = prefix.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return Target(bucket, prefix)


@dataclass(frozen=True)
class ObjectName:
    """What a key is made of, for one recording."""

    bot_id: str
    speaker: str
    stem: str
    #: Below the output directory, without ``.mp4`` (default: ``bot_id/speaker/stem``).
    path: str = ""

    @property
    def part(self) -> int:
        match = _PART.search(self.stem)
        return int(match.group(1)) if match else 1

    @property
    def relative(self) -> str:
        return self.path or "/".join(p for p in (self.bot_id, self.speaker, self.stem) if p)


def _relative(root: Path, media: Path) -> PurePosixPath:
    try:
        relative = media.relative_to(root)  # the file sink's paths are resolved already
    except ValueError:
        relative = media.resolve().relative_to(root.resolve())
    return PurePosixPath(relative.as_posix())


def name_of(bot_id: object, speaker: object, root: Path, media: Path) -> ObjectName:
    """The fields of a recording of ``bot_id`` and ``speaker`` (as the bot sent them) at
    ``media`` below the output directory ``root``."""
    relative = _relative(root, media)
    stem = _stem(media)
    return ObjectName(safe_name(bot_id), safe_name(speaker) if speaker else "", stem,
                      str(relative.parent / stem))


def name_from_path(root: Path, media: Path) -> ObjectName:
    """The fields of a recording below ``root``: the bot and speaker from its sidecar (or,
    without one, from its directories as the default layout makes them)."""
    sidecar = media.with_name(_stem(media) + ".json")
    try:
        doc = json.loads(sidecar.read_bytes())
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and "bot_id" in doc:
        return name_of(doc.get("bot_id"), doc.get("speaker_id") or doc.get("speaker_name"),
                       root, media)
    relative = _relative(root, media)
    directories = relative.parent.parts
    stem = _stem(media)
    return ObjectName(directories[0] if directories else "unknown",
                      "/".join(directories[1:]), stem, str(relative.parent / stem))


def name_from_sidecar(media: Path, sidecar: dict[str, Any]) -> ObjectName:
    """The fields of a recording found outside an output directory: from its sidecar, made
    safe the way the recorder names directories."""
    speaker = sidecar.get("speaker_id") or sidecar.get("speaker_name")
    return ObjectName(safe_name(sidecar.get("bot_id")),
                      safe_name(speaker) if isinstance(speaker, str) and speaker else "",
                      _stem(media))


def _stem(media: Path) -> str:
    name = media.name
    for suffix in (".mp4.part", ".mp4"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return media.stem


class KeyTemplate:
    """An object key template (``str.format`` fields: see the module)."""

    def __init__(self, template: str = DEFAULT_KEY_TEMPLATE) -> None:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = fields - _FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))} in {template!r} "
                             f"(known: {', '.join(sorted(_FIELDS))})")
        if not fields & {"start", "stem", "path"}:
            raise ValueError(f"{template!r} has no {{start}} (or {{path}}): every recording "
                             f"would get the same key")
        self.template = template

    def key(self, target: Target, name: ObjectName) -> str:
        """The media object's key: empty segments dropped, no leading ``/``."""
        text = self.template.format(prefix=target.prefix, bot_id=name.bot_id,
                                    speaker=name.speaker, start=name.stem, stem=name.stem,
                                    part=name.part, path=name.relative)
        return "/".join(segment for segment in text.split("/") if segment)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"

    def __str__(self) -> str:
        return self.template


def sidecar_key(media_key: str) -> str:
    """The sidecar's key: the media key with ``.json`` for ``.mp4``."""
    return (media_key[:-4] if media_key.endswith(".mp4") else media_key) + ".json"


def beside(media_key: str, file_name: str) -> str:
    """The key of another file in the media object's "directory" (the session manifest)."""
    parent = str(PurePosixPath(media_key).parent)
    return file_name if parent in (".", "") else f"{parent}/{file_name}"
