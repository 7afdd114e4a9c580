"""What the fMP4 scanner tests share: feeding and splitting helpers, the invariant checks, a
reference box walk, and builders of synthetic boxes (``ftyp``, ``moov``, ``moof``, ``trun``...)."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import TypeVar

from meetstream_live.fmp4 import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    Malformed,
)

# ------------------------------------------------------------------------------------ helpers

E = TypeVar("E", bound=Fmp4Event)


def feed_chunks(chunks: Sequence[bytes], scanner: Fmp4Scanner | None = None) -> list[Fmp4Event]:
    scanner = scanner if scanner is not None else Fmp4Scanner()
    events: list[Fmp4Event] = []
    for chunk in chunks:
        events += scanner.feed(chunk)
    events += scanner.eof()
    return events


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given positions (clamped, sorted, duplicates give empty chunks)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def scan(data: bytes, **limits: int) -> tuple[list[Fmp4Event], Fmp4Scanner]:
    """Scan ``data`` whole, check the invariants, check that byte-by-byte gives the same events
    (for small inputs), and return the events and the scanner."""
    scanner = Fmp4Scanner(**limits)
    events = feed_chunks([data], scanner)
    check_invariants(data, events, scanner)
    if len(data) <= 4096:
        assert feed_chunks([data[i : i + 1] for i in range(len(data))], Fmp4Scanner(**limits)) == (
            events
        )
    return events, scanner


def check_invariants(data: bytes, events: list[Fmp4Event], scanner: Fmp4Scanner) -> None:
    """What must hold after ``eof()``, whatever the input."""
    assert scanner.closed
    assert scanner.offset == len(data)
    fatal = [e for e in events if isinstance(e, Malformed) and e.fatal]
    assert len(fatal) <= 1
    assert scanner.broken == bool(fatal)
    if fatal:
        assert events[-1] is fatal[0]
    # Top-level boxes tile the stream from 0.
    boxes = [e for e in events if isinstance(e, BoxSeen)]
    position = 0
    for i, b in enumerate(boxes):
        assert b.offset == position
        assert b.header_size in (8, 16, 24, 32)
        if b.size is None:
            assert i == len(boxes) - 1
            break
        assert b.size >= b.header_size
        position += b.size
    else:
        if not scanner.broken:
            assert position == len(data)
    # Init segments are copies of the stream.
    for e in events:
        if isinstance(e, InitSegment):
            assert e.size == len(e.data)
            assert data[e.offset : e.offset + e.size] == e.data
    fragments = [e for e in events if isinstance(e, FragmentComplete)]
    assert [f.index for f in fragments] == list(range(len(fragments)))
    assert scanner.fragment_count == len(fragments)
    for f in fragments:
        assert 0 <= f.offset < f.offset + f.size <= len(data)
        assert data[f.offset + 4 : f.offset + 8] == b"moof"
    assert 0 <= scanner.last_complete_fragment_end <= len(data)
    ends = [e.offset + e.size for e in events if isinstance(e, (InitSegment, FragmentComplete))]
    assert scanner.last_complete_fragment_end == (ends[-1] if ends else 0)


def reference_boxes(data: bytes) -> list[BoxSeen]:
    """A plain, non-incremental walk of the top-level boxes of a well-formed file."""
    boxes = []
    pos = 0
    while pos < len(data):
        size, typ = struct.unpack_from(">I4s", data, pos)
        hlen = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            hlen = 16
        if typ == b"uuid":
            hlen += 16
        boxes.append(BoxSeen(typ.decode("ascii"), pos, size or None, hlen))
        if size == 0:
            break
        pos += size
    return boxes


def of_type(events: list[Fmp4Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


def malformed(events: list[Fmp4Event]) -> list[Malformed]:
    return [e for e in events if isinstance(e, Malformed)]


def fragments(events: list[Fmp4Event]) -> list[FragmentComplete]:
    return [e for e in events if isinstance(e, FragmentComplete)]


def inits(events: list[Fmp4Event]) -> list[InitSegment]:
    return [e for e in events if isinstance(e, InitSegment)]


# ------------------------------------------------------------------------- synthetic builders


def box(typ: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), typ) + payload


def large_box(typ: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4sQ", 1, typ, 16 + len(payload)) + payload


def full_box(typ: bytes, version: int, flags: int, payload: bytes = b"") -> bytes:
    return box(typ, struct.pack(">I", version << 24 | flags) + payload)


def ftyp() -> bytes:
    return box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso6mp41")


def tkhd(track_id: int, version: int = 0) -> bytes:
    times = struct.pack(">QQ", 1, 2) if version else struct.pack(">II", 1, 2)
    return full_box(b"tkhd", version, 3, times + struct.pack(">II", track_id, 0) + bytes(60))


def mdhd(timescale: int, version: int = 0) -> bytes:
    times = struct.pack(">QQ", 1, 2) if version else struct.pack(">II", 1, 2)
    duration = struct.pack(">Q", 0) if version else struct.pack(">I", 0)
    return full_box(b"mdhd", version, 0, times + struct.pack(">I", timescale) + duration + bytes(4))


def hdlr(handler: bytes) -> bytes:
    return full_box(b"hdlr", 0, 0, bytes(4) + handler + bytes(12) + b"Handler\x00")


def trak(track_id: int, handler: bytes, timescale: int, version: int = 0) -> bytes:
    minf = box(b"minf", box(b"stbl"))
    return box(
        b"trak",
        tkhd(track_id, version)
        + box(b"edts", full_box(b"elst", 0, 0, bytes(4)))
        + box(b"mdia", mdhd(timescale, version) + hdlr(handler) + minf),
    )


def trex(track_id: int, default_duration: int) -> bytes:
    return full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, default_duration, 0, 0))


def moov(*children: bytes) -> bytes:
    return box(b"moov", full_box(b"mvhd", 0, 0, bytes(96)) + b"".join(children))


def standard_moov(video_trex: int = 0, audio_trex: int = 0) -> bytes:
    return moov(
        trak(1, b"vide", 12800),
        trak(2, b"soun", 44100),
        box(b"mvex", trex(1, video_trex) + trex(2, audio_trex)),
    )


def init_segment(**kw: int) -> bytes:
    return ftyp() + standard_moov(**kw)


def mfhd(seq: int) -> bytes:
    return full_box(b"mfhd", 0, 0, struct.pack(">I", seq))


def tfhd(
    track_id: int,
    default_duration: int | None = None,
    *,
    base_data_offset: bool = False,
    description_index: bool = False,
    default_size: bool = False,
    default_flags: bool = False,
) -> bytes:
    flags = 0x020000  # default-base-is-moof
    payload = struct.pack(">I", track_id)
    if base_data_offset:
        flags |= 0x01
        payload += struct.pack(">Q", 1234)
    if description_index:
        flags |= 0x02
        payload += struct.pack(">I", 1)
    if default_duration is not None:
        flags |= 0x08
        payload += struct.pack(">I", default_duration)
    if default_size:
        flags |= 0x10
        payload += struct.pack(">I", 100)
    if default_flags:
        flags |= 0x20
        payload += struct.pack(">I", 0x01010000)
    return full_box(b"tfhd", 0, flags, payload)


def tfdt(base: int, version: int = 1) -> bytes:
    return full_box(b"tfdt", version, 0, struct.pack(">Q" if version else ">I", base))


def trun(
    count: int,
    durations: Sequence[int] | None = None,
    *,
    sizes: bool = True,
    sample_flags: bool = False,
    cts: bool = False,
    data_offset: bool = True,
    first_flags: bool = False,
) -> bytes:
    flags = 0
    head = struct.pack(">I", count)
    if data_offset:
        flags |= 0x01
        head += struct.pack(">i", 0)
    if first_flags:
        flags |= 0x04
        head += struct.pack(">I", 0x02000000)
    if durations is not None:
        flags |= 0x100
    if sizes:
        flags |= 0x200
    if sample_flags:
        flags |= 0x400
    if cts:
        flags |= 0x800
    samples = b""
    for i in range(count):
        if durations is not None:
            samples += struct.pack(">I", durations[i])
        if sizes:
            samples += struct.pack(">I", 10 + i)
        if sample_flags:
            samples += struct.pack(">I", 0x01010000)
        if cts:
            samples += struct.pack(">I", 0)
    return full_box(b"trun", 0, flags, head + samples)


def traf(*children: bytes) -> bytes:
    return box(b"traf", b"".join(children))


def moof(seq: int, *trafs: bytes) -> bytes:
    return box(b"moof", mfhd(seq) + b"".join(trafs))


def simple_moof(seq: int, base: int = 0) -> bytes:
    return moof(seq, traf(tfhd(1, 512), tfdt(base), trun(3)))


def mdat(size: int = 16) -> bytes:
    return box(b"mdat", bytes(range(size % 256)) * (size // 256) + bytes(size % 256))


def stream(n_fragments: int = 2) -> bytes:
    return init_segment() + b"".join(
        simple_moof(i + 1, 1536 * i) + mdat(40) for i in range(n_fragments)
    )
