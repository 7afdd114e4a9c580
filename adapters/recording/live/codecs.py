"""The RFC 6381 ``codecs`` string of an init segment (``avc1.64001f,mp4a.40.2``), for a Media
Source Extensions ``SourceBuffer``: from the ``avcC`` (H.264), ``hvcC`` (H.265), ``esds``
(AAC) and ``dOps`` (Opus) boxes of each track's sample entry."""

from __future__ import annotations

import struct

__all__ = ["codecs_of"]

_HEAD = struct.Struct(">I4s")
#: Boxes that hold only boxes, on the way to the sample entries.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
#: Bytes of a sample entry before its child boxes (ISO/IEC 14496-12: visual 78, audio 28).
_VISUAL = {b"avc1": 78, b"avc3": 78, b"hvc1": 78, b"hev1": 78}
_AUDIO = {b"mp4a": 28, b"Opus": 28}


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The boxes in ``data[start:end]``: (type, payload start, box end)."""
    found = []
    at = start
    while at + 8 <= end:
        size, kind = _HEAD.unpack_from(data, at)
        head = 8
        if size == 1 and at + 16 <= end:
            size = int.from_bytes(data[at + 8:at + 16], "big")
            head = 16
        elif size == 0:
            size = end - at
        if size < head or at + size > end:
            break
        found.append((kind, at + head, at + size))
        at += size
    return found


def _entries(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The sample entries of every ``stsd`` under ``data[start:end]``."""
    out: list[tuple[bytes, int, int]] = []
    for kind, payload, box_end in _boxes(data, start, end):
        if kind in _CONTAINERS:
            out += _entries(data, payload, box_end)
        elif kind == b"stsd":
            out += _boxes(data, payload + 8, box_end)  # version/flags, entry count
    return out


def _avc(kind: bytes, data: bytes, children: list[tuple[bytes, int, int]]) -> str | None:
    for child, payload, end in children:
        if child == b"avcC" and end - payload >= 4:
            profile, compat, level = data[payload + 1], data[payload + 2], data[payload + 3]
            return f"{kind.decode()}.{profile:02x}{compat:02x}{level:02x}"
    return None


def _hevc(kind: bytes, data: bytes, children: list[tuple[bytes, int, int]]) -> str | None:
    for child, payload, end in children:
        if child == b"hvcC" and end - payload >= 13:
            b = data[payload + 1]
            space = "" if b >> 6 == 0 else "ABC"[(b >> 6) - 1]
            tier = "H" if b & 0x20 else "L"
            profile = b & 0x1F
            flags = int.from_bytes(data[payload + 2:payload + 6], "big")
            compat = int(f"{flags:032b}"[::-1], 2)  # bit-reversed (RFC 6381 / ISO 14496-15)
            level = data[payload + 12]
            constraints = data[payload + 6:payload + 12].rstrip(b"\0")
            tail = "".join(f".{c:x}" for c in constraints)
            return f"{kind.decode()}.{space}{profile}.{compat:x}.{tier}{level}{tail}"
    return None


def _descriptor(data: bytes, at: int, end: int) -> tuple[int, int, int] | None:
    """(tag, payload start, payload end) of the MPEG-4 descriptor at ``at``."""
    if at >= end:
        return None
    tag = data[at]
    size = 0
    at += 1
    for _ in range(4):
        if at >= end:
            return None
        byte = data[at]
        at += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, at, min(at + size, end)


def _aac(data: bytes, children: list[tuple[bytes, int, int]]) -> str | None:
    for child, payload, end in children:
        if child != b"esds":
            continue
        es = _descriptor(data, payload + 4, end)  # after version/flags
        if es is None or es[0] != 0x03:
            return None
        _, at, es_end = es
        flags = data[at + 2] if at + 2 < es_end else 0
        at += 3 + (2 if flags & 0x80 else 0)
        if flags & 0x40 and at < es_end:
            at += 1 + data[at]
        at += 2 if flags & 0x20 else 0
        config = _descriptor(data, at, es_end)
        if config is None or config[0] != 0x04:
            return None
        _, at, config_end = config
        object_type = data[at]
        specific = _descriptor(data, at + 13, config_end)
        if object_type == 0x40 and specific is not None and specific[0] == 0x05:
            audio_type = data[specific[1]] >> 3
            if audio_type == 31 and specific[1] + 1 < specific[2]:
                audio_type = 32 + (((data[specific[1]] & 7) << 3) | (data[specific[1] + 1] >> 5))
            return f"mp4a.40.{audio_type}"
        return f"mp4a.{object_type:02x}"
    return None


def codecs_of(init: bytes) -> list[str]:
    """The codecs of the init segment's tracks, in track order (unknown ones left out)."""
    out: list[str] = []
    for kind, payload, end in _entries(init, 0, len(init)):
        if kind in _VISUAL:
            children = _boxes(init, payload + _VISUAL[kind], end)
            found = (_avc(kind, init, children) if kind in (b"avc1", b"avc3")
                     else _hevc(kind, init, children))
        elif kind in _AUDIO:
            children = _boxes(init, payload + _AUDIO[kind], end)
            found = _aac(init, children) if kind == b"mp4a" else "opus"
        else:
            found = None
        if found is not None:
            out.append(found)
    return out
