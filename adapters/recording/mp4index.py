"""Make a finished fragmented MP4 tell its real length and seek well: the duration written into
its header boxes (in place) and an ``mfra`` random-access index appended.

A live fMP4 starts with an "empty" ``moov``: its durations are 0 because nobody knew them when
it was written. Players that trust the header then show a length of 0 (or none) and cannot
seek until they have read every fragment. On finalize the recorder knows everything, so
:func:`finish_index`:

* overwrites, in place and only where the field exists and the value fits, the duration of
  ``mvhd`` (movie timescale), of each ``tkhd`` (movie timescale) and ``mdhd`` (track timescale),
  and the ``mehd`` fragment duration when there is one. Nothing moves: only those numbers
  change, so every offset in the file stays true;
* appends ``mfra`` (ISO/IEC 14496-12 8.8.9-8.8.11): one ``tfra`` per track with the decode time
  and the 64-bit file offset of every fragment (so files over 4 GiB are fine), then ``mfro``,
  whose last 4 bytes give the ``mfra`` size, so a reader finds it from the end of the file.

The file must end on a box boundary (never after a torn fragment).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["FragmentEntry", "build_mfra", "finish_index", "patch_durations"]

_HDR = struct.Struct(">I4s")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
#: The init segment is read from the start of the file, at most this much.
MAX_INIT_READ = 4 * 1024 * 1024


@dataclass(frozen=True)
class FragmentEntry:
    """One fragment: where its ``moof`` is in the file and, per ``traf`` (1-based number),
    the track and its ``tfdt`` decode time."""

    offset: int
    runs: tuple[tuple[int, int, int], ...]  # (track_id, traf_number, decode_time)


def _boxes(buf: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """``(type, box_start, payload_start, box_end)`` of the boxes in ``buf[start:end]``;
    stops at the first one that does not fit."""
    pos = start
    while end - pos >= 8:
        size, typ = _HDR.unpack_from(buf, pos)
        hlen = 8
        if size == 1:
            if end - pos < 16:
                return
            size = _U64.unpack_from(buf, pos + 8)[0]
            hlen = 16
        elif size == 0:
            size = end - pos
        if size < hlen or size > end - pos:
            return
        yield typ, pos, pos + hlen, pos + size
        pos += size


def _put(buf: bytearray, at: int, version: int, value: int) -> bool:
    """Write ``value`` as a version-0 (32-bit) or version-1 (64-bit) field if it fits."""
    if version == 1:
        if at + 8 > len(buf):
            return False
        _U64.pack_into(buf, at, value)
        return True
    if value >= 0xFFFFFFFF or at + 4 > len(buf):
        return False
    _U32.pack_into(buf, at, value)
    return True


def patch_durations(init: bytearray, track_ends: dict[int, tuple[int, int]]) -> int:
    """Write durations into the init segment ``init`` (``ftyp`` + ``moov``), in place.

    ``track_ends`` maps a track id to ``(end decode time, track timescale)``. Returns how many
    fields were written. Tracks not in ``track_ends`` keep their values.
    """
    written = 0
    for typ, _, p, e in _boxes(init, 0, len(init)):
        if typ != b"moov":
            continue
        movie_scale = 0
        mvhd_at: tuple[int, int] | None = None
        for t2, _, p2, e2 in _boxes(init, p, e):
            if t2 == b"mvhd" and e2 - p2 >= 4:
                version = init[p2]
                offset = p2 + 4 + (16 if version == 1 else 8)  # after the two times
                if offset + 4 <= e2:
                    movie_scale = _U32.unpack_from(init, offset)[0]
                    mvhd_at = (offset + 4, version)
        if not movie_scale:
            return 0
        longest = 0
        for t2, _, p2, e2 in _boxes(init, p, e):
            if t2 == b"trak":
                track_id: int | None = None
                tkhd_at: tuple[int, int] | None = None
                for t3, _, p3, e3 in _boxes(init, p2, e2):
                    if t3 == b"tkhd" and e3 - p3 >= 4:
                        version = init[p3]
                        at = p3 + 4 + (16 if version == 1 else 8)
                        if at + 4 <= e3:
                            track_id = _U32.unpack_from(init, at)[0]
                            tkhd_at = (at + 8, version)  # after track_ID and reserved
                if track_id is None or track_id not in track_ends or tkhd_at is None:
                    continue
                end, scale = track_ends[track_id]
                if not scale:
                    continue
                in_movie = end * movie_scale // scale
                longest = max(longest, in_movie)
                written += _put(init, tkhd_at[0], tkhd_at[1], in_movie)
                for t3, _, p3, e3 in _boxes(init, p2, e2):
                    if t3 != b"mdia":
                        continue
                    for t4, _, p4, e4 in _boxes(init, p3, e3):
                        if t4 == b"mdhd" and e4 - p4 >= 4:
                            version = init[p4]
                            at = p4 + 4 + (16 if version == 1 else 8) + 4  # after timescale
                            written += _put(init, at, version, end)
            elif t2 == b"mvex":
                for t3, _, p3, e3 in _boxes(init, p2, e2):
                    if t3 == b"mehd" and e3 - p3 >= 8:
                        mehd = (p3 + 4, init[p3])
                        written += _put(init, mehd[0], mehd[1], _longest(track_ends, movie_scale))
        if mvhd_at is not None:
            written += _put(init, mvhd_at[0], mvhd_at[1], longest)
        return written
    return 0


def _longest(track_ends: dict[int, tuple[int, int]], movie_scale: int) -> int:
    return max((end * movie_scale // scale for end, scale in track_ends.values() if scale),
               default=0)


def _box(typ: bytes, payload: bytes) -> bytes:
    return _U32.pack(8 + len(payload)) + typ + payload


def build_mfra(entries: Sequence[FragmentEntry]) -> bytes:
    """An ``mfra`` box: a version-1 ``tfra`` per track (64-bit times and offsets; traf, trun
    and sample numbers in one byte each), then ``mfro``."""
    tracks: dict[int, list[tuple[int, int, int]]] = {}
    for entry in entries:
        for track_id, traf_number, decode_time in entry.runs:
            if 1 <= traf_number <= 255:
                tracks.setdefault(track_id, []).append((decode_time, entry.offset, traf_number))
    tfras = b""
    for track_id, rows in tracks.items():
        payload = bytearray(struct.pack(">BBBBIII", 1, 0, 0, 0, track_id, 0, len(rows)))
        for decode_time, offset, traf_number in rows:
            payload += struct.pack(">QQBBB", decode_time, offset, traf_number, 1, 1)
        tfras += _box(b"tfra", bytes(payload))
    size = 8 + len(tfras) + 16
    return _box(b"mfra", tfras + _box(b"mfro", struct.pack(">II", 0, size)))


def finish_index(
    fd: int,
    size: int,
    entries: Sequence[FragmentEntry],
    track_ends: dict[int, tuple[int, int]],
) -> int:
    """Patch the durations of the file open (read-write) on ``fd``, whose ``size`` bytes end
    on a box boundary, and append its ``mfra``. Returns the new size.

    On an error while appending, the file is cut back to ``size`` (only our index is removed)
    and the error raised.
    """
    head = bytearray(os.pread(fd, min(size, MAX_INIT_READ), 0))
    original = bytes(head)
    if patch_durations(head, track_ends):
        for start in range(len(head)):
            if head[start] != original[start]:
                break
        stop = len(head)
        while stop > start and head[stop - 1] == original[stop - 1]:
            stop -= 1
        os.pwrite(fd, bytes(head[start:stop]), start)
    mfra = build_mfra(entries)
    try:
        view = memoryview(mfra)
        at = size
        while view:
            n = os.pwrite(fd, view, at)
            view = view[n:]
            at += n
    except OSError:
        os.ftruncate(fd, size)
        raise
    return size + len(mfra)
