"""Tests of the incremental fMP4 box scanner (``meetstream_live.fmp4``).

* real files made by ffmpeg (``fmp4_small``, ``fmp4_medium`` from ``conftest.py``), checked
  against a plain non-incremental box walk and against PyAV;
* split independence: any chunking of a stream gives the same events;
* synthetic boxes for every edge case of the format and every ``Malformed`` reason;
* fuzzing: arbitrary, corrupted and truncated input never raises and always ends in a defined
  state.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Sequence
from typing import TypeVar

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st
from media import Media, decodable_frames

from meetstream_live._errors import LocalProtocolError
from meetstream_live.fmp4 import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    Malformed,
    TrackInfo,
    TrackRun,
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


# ----------------------------------------------------------------------------- the real files

REAL = ["fmp4_small", "fmp4_medium"]


@pytest.fixture(params=REAL)
def real(request: pytest.FixtureRequest) -> Media:
    media: Media = request.getfixturevalue(request.param)
    return media


@pytest.fixture(scope="module")
def small_events(fmp4_small: Media) -> list[Fmp4Event]:
    return feed_chunks([fmp4_small.data])


def test_real_boxes_match_reference_walk(real: Media) -> None:
    scanner = Fmp4Scanner()
    events = feed_chunks([real.data], scanner)
    check_invariants(real.data, events, scanner)
    assert of_type(events, BoxSeen) == reference_boxes(real.data)
    assert [b.type for b in reference_boxes(real.data)][:4] == ["ftyp", "moov", "moof", "mdat"]
    assert not malformed(events)
    assert not scanner.broken
    assert scanner.offset == len(real.data)


def test_real_init_segment(real: Media) -> None:
    scanner = Fmp4Scanner()
    events = feed_chunks([real.data], scanner)
    boxes = reference_boxes(real.data)
    moov_box = next(b for b in boxes if b.type == "moov")
    assert moov_box.size is not None
    moov_end = moov_box.offset + moov_box.size
    (init,) = inits(events)
    assert init.offset == 0
    assert init.size == moov_end
    assert init.data == real.data[:moov_end]
    assert scanner.init_segment == init
    assert scanner.tracks == init.tracks
    # Compare with what PyAV/ffmpeg reads from the moov.
    with av.open(str(real.path)) as container:
        expected = {
            s.id: ("vide" if s.type == "video" else "soun", s.time_base) for s in container.streams
        }
    got = {t.track_id: (t.handler, t.timescale) for t in init.tracks}
    assert got.keys() == expected.keys()
    for track_id, (handler, time_base) in expected.items():
        assert time_base is not None
        assert got[track_id] == (handler, time_base.denominator)
    # ffmpeg writes a trex for each track (with default duration 0).
    assert all(t.default_sample_duration is not None for t in init.tracks)


def test_real_fragments(real: Media) -> None:
    scanner = Fmp4Scanner()
    events = feed_chunks([real.data], scanner)
    frags = fragments(events)
    n = len(frags)
    assert n >= round(real.duration_s / 0.5) - 1
    assert [f.sequence_number for f in frags] == list(range(1, n + 1))
    # Contiguous: the first starts where the init segment ends, each where the previous ended.
    (init,) = inits(events)
    assert frags[0].offset == init.size
    for a, b in itertools.pairwise(frags):
        assert a.offset + a.size == b.offset
    assert scanner.last_complete_fragment_end == frags[-1].offset + frags[-1].size
    # Every moof has one traf per track, and the tfdt times are continuous.
    by_track: dict[int, list[TrackRun]] = {}
    for f in frags:
        assert sorted(t.track_id for t in f.tracks) == sorted(t.track_id for t in init.tracks)
        for run in f.tracks:
            by_track.setdefault(run.track_id, []).append(run)
    for runs in by_track.values():
        assert runs[0].base_decode_time == 0
        for run, following in itertools.pairwise(runs):
            assert run.base_decode_time is not None
            assert run.duration is not None
            assert following.base_decode_time == run.base_decode_time + run.duration


def test_real_durations_match_pyav(real: Media) -> None:
    events = feed_chunks([real.data])
    (init,) = inits(events)
    video = next(t for t in init.tracks if t.handler == "vide")
    audio = next(t for t in init.tracks if t.handler == "soun")
    runs = [r for f in fragments(events) for r in f.tracks]
    video_runs = [r for r in runs if r.track_id == video.track_id]
    total = 0
    for r in video_runs:
        assert r.duration is not None
        total += r.duration
    assert abs(total / video.timescale - real.duration_s) <= 1 / real.fps
    assert sum(r.sample_count for r in video_runs) == real.video_frames
    audio_samples = sum(r.sample_count for r in runs if r.track_id == audio.track_id)
    assert audio_samples == real.audio_frames


def test_real_each_fragment_decodes_with_the_init_segment(fmp4_small: Media) -> None:
    events = feed_chunks([fmp4_small.data])
    (init,) = inits(events)
    video_id = next(t.track_id for t in init.tracks if t.handler == "vide")
    decoded = 0
    for f in fragments(events):
        fragment = fmp4_small.data[f.offset : f.offset + f.size]
        frames = decodable_frames(init.data + fragment)
        assert frames == next(r.sample_count for r in f.tracks if r.track_id == video_id)
        decoded += frames
    assert decoded == fmp4_small.video_frames


def test_real_byte_by_byte(fmp4_small: Media, small_events: list[Fmp4Event]) -> None:
    data = fmp4_small.data
    assert feed_chunks([data[i : i + 1] for i in range(len(data))]) == small_events


def test_real_mixed_chunk_types(fmp4_small: Media, small_events: list[Fmp4Event]) -> None:
    data = fmp4_small.data
    scanner = Fmp4Scanner()
    events = scanner.feed(bytearray(data[:1000]))
    events += scanner.feed(memoryview(data)[1000:5000])
    events += scanner.feed(data[5000:])
    events += scanner.eof()
    assert events == small_events


@given(cuts=st.lists(st.integers(min_value=0, max_value=250_000), max_size=60))
def test_real_split_anywhere(
    fmp4_small: Media, small_events: list[Fmp4Event], cuts: list[int]
) -> None:
    assert feed_chunks(split_at(fmp4_small.data, cuts)) == small_events


@given(
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40),
    small=st.lists(st.integers(min_value=0, max_value=250_000), max_size=10),
)
def test_real_split_around_headers(
    fmp4_small: Media, small_events: list[Fmp4Event], cuts: list[int], small: list[int]
) -> None:
    """Dense cuts near the start (ftyp, moov, first moof) where headers are small."""
    assert feed_chunks(split_at(fmp4_small.data, cuts + small)) == small_events


@given(data=st.data())
def test_real_truncated_anywhere(fmp4_small: Media, data: st.DataObject) -> None:
    """A crashed upload: the stream stops anywhere. Cutting it back to
    ``last_complete_fragment_end`` leaves a clean, playable file."""
    full = fmp4_small.data
    cut = data.draw(st.integers(min_value=0, max_value=len(full)))
    truncated = full[:cut]
    scanner = Fmp4Scanner()
    events = feed_chunks(split_at(truncated, data.draw(st.lists(st.integers(0, cut)))), scanner)
    check_invariants(truncated, events, scanner)
    boundaries = {b.offset for b in reference_boxes(full)} | {len(full)}
    if cut in boundaries:
        assert not any(m.fatal for m in malformed(events))
    else:
        (bad,) = malformed(events)[-1:]
        assert bad.fatal
        assert bad.reason.startswith("truncated:")
    end = scanner.last_complete_fragment_end
    assert end <= cut
    recovered = Fmp4Scanner()
    recovered_events = feed_chunks([full[:end]], recovered)
    assert not recovered.broken
    assert not malformed(recovered_events)
    assert recovered.fragment_count == scanner.fragment_count


# ------------------------------------------------------------------------------ top-level boxes


def test_empty_stream() -> None:
    events, scanner = scan(b"")
    assert events == []
    assert scanner.last_complete_fragment_end == 0
    assert scanner.tracks == ()
    assert scanner.init_segment is None


def test_synthetic_stream() -> None:
    data = stream(3)
    events, scanner = scan(data)
    assert not malformed(events)
    (init,) = inits(events)
    assert init.tracks == (
        TrackInfo(1, "vide", 12800, 0),
        TrackInfo(2, "soun", 44100, 0),
    )
    frags = fragments(events)
    assert [f.sequence_number for f in frags] == [1, 2, 3]
    assert [f.tracks for f in frags] == [
        (TrackRun(1, 0, 1536, 3, True),),
        (TrackRun(1, 1536, 1536, 3, True),),
        (TrackRun(1, 3072, 1536, 3, True),),
    ]
    assert scanner.last_complete_fragment_end == len(data)


def test_largesize_box() -> None:
    data = large_box(b"free", b"hello") + init_segment()
    events, _ = scan(data)
    assert events[0] == BoxSeen("free", 0, 21, 16)
    (init,) = inits(events)
    assert init.offset == 0
    assert init.data == data


def test_largesize_mdat_fragment() -> None:
    data = init_segment() + simple_moof(1) + large_box(b"mdat", bytes(100))
    events, _ = scan(data)
    (frag,) = fragments(events)
    assert frag.offset + frag.size == len(data)
    assert BoxSeen("mdat", len(data) - 116, 116, 16) in events
    assert not malformed(events)


def test_uuid_boxes() -> None:
    usertype = bytes(range(16))
    plain = struct.pack(">I4s", 24 + 3, b"uuid") + usertype + b"abc"
    large = struct.pack(">I4sQ", 1, b"uuid", 32 + 2) + usertype + b"de"
    data = plain + large + init_segment()
    events, _ = scan(data)
    assert events[:2] == [BoxSeen("uuid", 0, 27, 24), BoxSeen("uuid", 27, 34, 32)]
    assert inits(events)[0].data == data


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param(struct.pack(">I4s", 20, b"uuid") + bytes(16), "bad size:", id="uuid<24"),
        pytest.param(struct.pack(">I4sQ", 1, b"uuid", 24) + bytes(16), "bad size:", id="uuidL<32"),
        pytest.param(struct.pack(">I4sQ", 1, b"free", 15), "bad size:", id="largesize<16"),
        pytest.param(struct.pack(">I4sQ", 1, b"free", 0), "bad size:", id="largesize=0"),
        pytest.param(struct.pack(">I4s", 8, b"mo\x00f"), "bad type:", id="nul"),
        pytest.param(struct.pack(">I4s", 8, b"\xa9too"), "bad type:", id="latin1"),
        pytest.param(struct.pack(">I4s", 8, b"moo\x7f"), "bad type:", id="del"),
        pytest.param(struct.pack(">I4s", 3, b"\x00\x00\x00\x00"), "bad size:", id="both"),
    ],
)
def test_bad_header_is_fatal(header: bytes, reason: str) -> None:
    prefix = init_segment()
    data = prefix + header + bytes(64)
    events, scanner = scan(data)
    bad = events[-1]
    assert isinstance(bad, Malformed)
    assert bad.fatal
    assert bad.offset == len(prefix)
    assert bad.reason.startswith(reason)
    assert of_type(events, BoxSeen)[-1].offset < len(prefix)  # no BoxSeen for the bad box
    assert scanner.broken
    assert scanner.last_complete_fragment_end == len(prefix)


@pytest.mark.parametrize("size", range(2, 8))
def test_box_size_smaller_than_header(size: int) -> None:
    events, scanner = scan(struct.pack(">I4s", size, b"free"))
    assert events == [
        Malformed(0, f"bad size: box size {size} < its 8-byte header", fatal=True),
    ]
    assert scanner.broken


def test_broken_scanner_only_counts_bytes() -> None:
    scanner = Fmp4Scanner()
    events = scanner.feed(init_segment() + struct.pack(">I4s", 4, b"free"))
    assert isinstance(events[-1], Malformed)
    assert scanner.broken
    before = scanner.offset
    assert scanner.feed(stream(2)) == []
    assert scanner.feed(b"") == []
    assert scanner.offset == before + len(stream(2))
    assert scanner.eof() == []
    assert scanner.closed


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 12, 15])
def test_truncated_header(cut: int) -> None:
    prefix = init_segment()
    data = prefix + large_box(b"moof", bytes(8))[:cut]
    events, scanner = scan(data)
    bad = events[-1]
    assert isinstance(bad, Malformed)
    assert bad.fatal
    assert bad.offset == len(prefix)
    assert bad.reason.startswith("truncated:")
    assert scanner.broken


def test_truncated_body() -> None:
    prefix = init_segment() + simple_moof(1)
    data = prefix + mdat(100)[:50]
    events, scanner = scan(data)
    assert events[-1] == Malformed(
        len(prefix), "truncated: 'mdat' box of 108 bytes, the stream ends after 50", fatal=True
    )
    assert fragments(events) == []
    assert scanner.last_complete_fragment_end == len(init_segment())


def test_truncated_moov() -> None:
    data = init_segment()[:-10]
    events, scanner = scan(data)
    assert inits(events) == []
    assert malformed(events)[-1].reason.startswith("truncated:")
    assert scanner.last_complete_fragment_end == 0


def test_stream_ending_on_a_box_boundary_is_clean() -> None:
    events, scanner = scan(stream(2) + box(b"free"))
    assert not malformed(events)
    assert not scanner.broken


# --------------------------------------------------------------------------- size 0: to the end


def test_to_end_mdat_completes_the_fragment_at_eof() -> None:
    prefix = init_segment() + simple_moof(1)
    data = prefix + struct.pack(">I4s", 0, b"mdat") + bytes(1000)
    scanner = Fmp4Scanner()
    events = scanner.feed(data)
    assert events[-1] == BoxSeen("mdat", len(prefix), None, 8)
    assert fragments(events) == []
    tail = scanner.eof()
    assert tail == [
        FragmentComplete(
            0, len(init_segment()), len(data) - len(init_segment()), 1,
            (TrackRun(1, 0, 1536, 3, True),),
        )
    ]
    assert scanner.last_complete_fragment_end == len(data)
    scan(data)  # invariants, byte by byte


def test_to_end_box_with_nothing_after_it() -> None:
    events, scanner = scan(init_segment() + struct.pack(">I4s", 0, b"free"))
    assert events[-1] == BoxSeen("free", len(init_segment()), None, 8)
    assert not malformed(events)
    assert scanner.last_complete_fragment_end == len(init_segment())


def test_to_end_moov() -> None:
    body = standard_moov()[8:]
    data = ftyp() + struct.pack(">I4s", 0, b"moov") + body
    events, scanner = scan(data)
    (init,) = inits(events)
    assert init.data == data
    assert len(init.tracks) == 2
    assert scanner.last_complete_fragment_end == len(data)


def test_to_end_moof_never_forms_a_fragment() -> None:
    body = simple_moof(7)[8:]
    data = init_segment() + struct.pack(">I4s", 0, b"moof") + body
    events, _ = scan(data)
    assert fragments(events) == []
    (bad,) = malformed(events)
    assert not bad.fatal
    assert bad.reason.startswith("no mdat:")
    assert bad.offset == len(init_segment())


def test_to_end_moof_over_the_cap() -> None:
    data = init_segment() + struct.pack(">I4s", 0, b"moof") + simple_moof(1)[8:] + bytes(100)
    events, _ = scan(data, max_moof_size=64)
    bad = events[-1]
    assert isinstance(bad, Malformed)
    assert bad.fatal
    assert bad.reason.startswith("too large: moof")
    assert bad.offset == len(init_segment())


def test_to_end_box_before_moov_over_the_init_cap() -> None:
    data = ftyp() + struct.pack(">I4s", 0, b"free") + bytes(200)
    events, scanner = scan(data, max_init_size=100)
    bad = events[-1]
    assert isinstance(bad, Malformed)
    assert bad.fatal
    assert scanner.broken
    assert bad.reason.startswith("too large: init segment")
    assert bad.offset == 0
    # Just under the cap: the box simply ends with the stream, no init segment.
    events, _ = scan(data[:100], max_init_size=100)
    assert not malformed(events)
    assert inits(events) == []


def test_to_end_header_over_the_init_cap() -> None:
    """The cap is crossed by the header bytes of a size-0 box."""
    data = box(b"free", bytes(90)) + struct.pack(">I4s", 0, b"moov")
    events, _ = scan(data, max_init_size=100)
    assert events[-1] == Malformed(
        0, "too large: init segment exceeds max_init_size (100 bytes)", fatal=True
    )


# --------------------------------------------------------------------------------------- caps


def test_moof_over_the_cap() -> None:
    big = moof(1, traf(tfhd(1, 512), trun(40)))
    data = init_segment() + big + mdat()
    events, scanner = scan(data, max_moof_size=len(big) - 1)
    assert events[-2] == BoxSeen("moof", len(init_segment()), len(big), 8)
    assert events[-1] == Malformed(
        len(init_segment()),
        f"too large: moof box exceeds max_moof_size ({len(big) - 1} bytes)",
        fatal=True,
    )
    assert scanner.broken
    events, scanner = scan(data, max_moof_size=len(big))  # exactly at the cap: fine
    assert len(fragments(events)) == 1
    assert not malformed(events)


def test_init_over_the_cap() -> None:
    data = stream(1)
    init_size = len(init_segment())
    events, scanner = scan(data, max_init_size=init_size - 1)
    assert events[-1] == Malformed(
        0, f"too large: init segment exceeds max_init_size ({init_size - 1} bytes)", fatal=True
    )
    assert inits(events) == []
    assert scanner.broken
    events, _ = scan(data, max_init_size=init_size)
    assert len(inits(events)) == 1


def test_constructor_limits() -> None:
    with pytest.raises(ValueError, match="max_init_size"):
        Fmp4Scanner(max_init_size=31)
    with pytest.raises(ValueError, match="max_moof_size"):
        Fmp4Scanner(max_moof_size=0)
    Fmp4Scanner(max_init_size=32, max_moof_size=32)


# ------------------------------------------------------------------------------------ the moov


def test_moov_versions_and_trex() -> None:
    data = ftyp() + moov(
        trak(1, b"vide", 90000, version=1),
        trak(2, b"soun", 48000, version=0),
        trak(3, b"text", 1000, version=1),
        box(b"mvex", full_box(b"mehd", 0, 0, bytes(4)) + trex(2, 1024) + trex(1, 3000)),
    )
    events, scanner = scan(data)
    assert not malformed(events)
    assert scanner.tracks == (
        TrackInfo(1, "vide", 90000, 3000),
        TrackInfo(2, "soun", 48000, 1024),
        TrackInfo(3, "text", 1000, None),
    )


def test_moov_with_a_broken_trak() -> None:
    bad_trak = box(b"trak", tkhd(2) + box(b"mdia", mdhd(44100)))  # no hdlr
    moov_box = moov(trak(1, b"vide", 12800), bad_trak, box(b"mvex", trex(1, 512)))
    data = ftyp() + moov_box
    events, scanner = scan(data)
    bad, init = events[-2:]
    assert bad == Malformed(
        len(ftyp()) + 8 + 108 + len(trak(1, b"vide", 12800)),
        "bad moov: trak without hdlr",
        fatal=False,
    )
    assert isinstance(init, InitSegment)
    # Parsing stopped at the bad trak: the mvex after it was not read.
    assert init.tracks == (TrackInfo(1, "vide", 12800, None),)
    assert not scanner.broken
    assert scanner.last_complete_fragment_end == len(data)


@pytest.mark.parametrize(
    ("moov_payload", "reason"),
    [
        pytest.param(box(b"trak"), "trak without tkhd/mdhd/hdlr", id="empty-trak"),
        pytest.param(
            box(b"trak", full_box(b"tkhd", 1, 0, bytes(16))),
            "tkhd box too short",
            id="short-tkhd-v1",
        ),
        pytest.param(box(b"trak", box(b"tkhd")), "tkhd box too short", id="tkhd-no-version"),
        pytest.param(
            box(b"trak", box(b"mdia", full_box(b"hdlr", 0, 0, bytes(4)))),
            "hdlr box too short",
            id="short-hdlr",
        ),
        pytest.param(
            box(b"mvex", full_box(b"trex", 0, 0, bytes(16))), "trex box too short", id="short-trex"
        ),
        pytest.param(struct.pack(">I4s", 100, b"trak"), "does not fit", id="overflow"),
        pytest.param(b"\x00\x00\x00", "stray bytes", id="stray"),
        pytest.param(struct.pack(">I4sI", 1, b"trak", 0), "truncated largesize", id="largesize"),
        pytest.param(struct.pack(">I4sQ", 1, b"trak", 12), "does not fit", id="largesize<16"),
    ],
)
def test_moov_garbage_is_not_fatal(moov_payload: bytes, reason: str) -> None:
    data = ftyp() + box(b"moov", moov_payload) + simple_moof(1) + mdat()
    events, scanner = scan(data)
    (bad,) = malformed(events)
    assert not bad.fatal
    assert bad.reason.startswith("bad moov:")
    assert reason in bad.reason
    assert len(inits(events)) == 1
    assert len(fragments(events)) == 1
    assert not scanner.broken


def test_inner_size_zero_extends_to_the_parent_end() -> None:
    trak_payload = tkhd(5) + struct.pack(">I4s", 0, b"mdia") + mdhd(1000) + hdlr(b"vide")
    data = ftyp() + moov(box(b"trak", trak_payload))
    events, scanner = scan(data)
    assert not malformed(events)
    assert scanner.tracks == (TrackInfo(5, "vide", 1000, None),)


# ------------------------------------------------------------------------------------ the moof


def one_fragment(*trafs: bytes, seq: int = 1, **trex_defaults: int) -> list[Fmp4Event]:
    data = init_segment(**trex_defaults) + moof(seq, *trafs) + mdat()
    events, _ = scan(data)
    return events


def test_trun_with_per_sample_durations() -> None:
    events = one_fragment(traf(tfhd(1, 999), tfdt(10), trun(3, [100, 200, 300])))
    assert not malformed(events)
    assert fragments(events)[0].tracks == (TrackRun(1, 10, 600, 3, True),)


def test_trun_with_every_sample_field() -> None:
    t = trun(4, [1, 2, 3, 4], sizes=True, sample_flags=True, cts=True, first_flags=True)
    events = one_fragment(traf(tfhd(1), t))
    assert fragments(events)[0].tracks == (TrackRun(1, None, 10, 4, True),)


def test_trun_durations_from_tfhd_default() -> None:
    t = tfhd(
        1, 512, base_data_offset=True, description_index=True, default_size=True, default_flags=True
    )
    events = one_fragment(traf(t, tfdt(5, version=0), trun(7, sizes=False, data_offset=False)))
    assert not malformed(events)
    assert fragments(events)[0].tracks == (TrackRun(1, 5, 7 * 512, 7, False),)


def test_trun_durations_from_trex_default() -> None:
    events = one_fragment(traf(tfhd(2, default_flags=True), tfdt(2**40), trun(5)), audio_trex=1024)
    assert fragments(events)[0].tracks == (TrackRun(2, 2**40, 5 * 1024, 5, False),)


def test_sync_sample_from_per_sample_flags() -> None:
    """The first sample's own flags (after its duration and size) say it is not a sync sample;
    an empty run says nothing."""
    events = one_fragment(traf(tfhd(1), trun(3, [1, 1, 1], sample_flags=True)))
    assert fragments(events)[0].tracks[0].starts_with_sync is False
    events = one_fragment(traf(tfhd(1), trun(2, None, sizes=False, sample_flags=True)))
    assert fragments(events)[0].tracks[0].starts_with_sync is False
    events = one_fragment(traf(tfhd(1), trun(0)))
    assert fragments(events)[0].tracks[0].starts_with_sync is None


def test_trun_duration_unknown() -> None:
    data = moof(1, traf(tfhd(3), trun(5))) + mdat()
    events, _ = scan(data)  # no init segment at all: no trex
    (frag,) = fragments(events)
    assert frag.tracks == (TrackRun(3, None, None, 5, None),)
    # Mixed: a run with durations and one without, no default: unknown.
    events = one_fragment(traf(tfhd(3), trun(2, [5, 5]), trun(3)))
    assert fragments(events)[0].tracks == (TrackRun(3, None, None, 5, None),)


def test_several_truns_and_trafs() -> None:
    events = one_fragment(
        traf(tfhd(1, 100), tfdt(0), trun(2), trun(3, [1, 2, 3]), box(b"sdtp", bytes(5))),
        traf(tfhd(2), tfdt(7), trun(4, [10, 10, 10, 10]), trun(0)),
        box(b"free"),
        seq=42,
    )
    (frag,) = fragments(events)
    assert frag.sequence_number == 42
    assert frag.tracks == (TrackRun(1, 0, 206, 5, True), TrackRun(2, 7, 40, 4, True))


def test_moof_without_mfhd() -> None:
    data = init_segment() + box(b"moof", traf(tfhd(1, 10), trun(1))) + mdat()
    events, _ = scan(data)
    assert not malformed(events)
    assert fragments(events)[0].sequence_number is None


@pytest.mark.parametrize(
    ("moof_payload", "reason", "seq", "n_tracks"),
    [
        pytest.param(mfhd(1) + traf(tfdt(0), trun(1)), "traf without tfhd", 1, 0, id="no-tfhd"),
        pytest.param(
            mfhd(1) + full_box(b"mfhd", 0, 0), "mfhd box too short", 1, 0, id="short-mfhd"
        ),
        pytest.param(
            full_box(b"mfhd", 0, 0, b"\x00\x00"),
            "mfhd box too short",
            None,
            0,
            id="only-short-mfhd",
        ),
        pytest.param(
            mfhd(2) + traf(full_box(b"tfhd", 0, 0x08, struct.pack(">I", 1))),
            "tfhd box too short",
            2,
            0,
            id="tfhd-flag-without-field",
        ),
        pytest.param(
            mfhd(3) + traf(tfhd(1, 5), full_box(b"tfdt", 1, 0, bytes(4))),
            "tfdt box too short",
            3,
            0,
            id="short-tfdt-v1",
        ),
        pytest.param(
            mfhd(4) + traf(tfhd(1, 5), full_box(b"trun", 0, 0x100, struct.pack(">I", 9))),
            "too short for 9 samples",
            4,
            0,
            id="trun-count-too-big",
        ),
        pytest.param(
            mfhd(4) + traf(tfhd(1, 5), full_box(b"trun", 0, 0x5, struct.pack(">I", 0))),
            "too short for 0 samples",
            4,
            0,
            id="trun-missing-optional-fields",
        ),
        pytest.param(
            mfhd(4) + traf(tfhd(1, 5), full_box(b"trun", 0, 0x100)),
            "trun box too short",
            4,
            0,
            id="trun-no-count",
        ),
        pytest.param(
            mfhd(5) + traf(tfhd(1, 5), trun(1)) + struct.pack(">I4s", 99, b"traf"),
            "does not fit",
            5,
            1,
            id="second-traf-overflows",
        ),
        pytest.param(mfhd(6) + b"\xff" * 5, "stray bytes", 6, 0, id="stray"),
        pytest.param(
            struct.pack(">I4s", 5, b"mfhd") + bytes(8), "does not fit", None, 0, id="inner-size-5"
        ),
    ],
)
def test_moof_garbage_is_not_fatal(
    moof_payload: bytes, reason: str, seq: int | None, n_tracks: int
) -> None:
    prefix = init_segment()
    data = prefix + box(b"moof", moof_payload) + mdat() + simple_moof(9) + mdat()
    events, scanner = scan(data)
    (bad,) = malformed(events)
    assert not bad.fatal
    assert bad.reason.startswith("bad moof:")
    assert reason in bad.reason
    assert len(prefix) <= bad.offset < len(prefix) + 8 + len(moof_payload)
    first, second = fragments(events)
    assert first.sequence_number == seq
    assert len(first.tracks) == n_tracks
    assert first.offset == len(prefix)
    assert second.sequence_number == 9  # and scanning went on
    assert not scanner.broken
    assert scanner.last_complete_fragment_end == len(data)


# -------------------------------------------------------------------------- order of the boxes


def test_fragment_includes_boxes_between_moof_and_mdat() -> None:
    prefix = init_segment()
    data = prefix + box(b"styp") + simple_moof(1) + box(b"free", bytes(3)) + mdat(10)
    events, _ = scan(data)
    (frag,) = fragments(events)
    styp = len(box(b"styp"))
    assert (frag.offset, frag.size) == (len(prefix) + styp, len(data) - len(prefix) - styp)


def test_mdat_without_moof_is_not_a_fragment() -> None:
    data = init_segment() + mdat() + simple_moof(1) + mdat() + mdat()
    events, scanner = scan(data)
    assert not malformed(events)
    (frag,) = fragments(events)
    assert scanner.last_complete_fragment_end == frag.offset + frag.size < len(data)


def test_moof_followed_by_moof() -> None:
    prefix = init_segment()
    data = prefix + simple_moof(1) + simple_moof(2) + mdat()
    events, _ = scan(data)
    assert malformed(events) == [
        Malformed(len(prefix), f"no mdat: another moof after the moof at {len(prefix)}", False)
    ]
    (frag,) = fragments(events)
    assert frag.sequence_number == 2


def test_moof_at_end_of_stream() -> None:
    prefix = init_segment()
    events, scanner = scan(prefix + simple_moof(1))
    assert malformed(events) == [
        Malformed(len(prefix), f"no mdat: the stream ends after the moof at {len(prefix)}", False)
    ]
    assert not scanner.broken
    assert scanner.last_complete_fragment_end == len(prefix)


def test_moof_before_moov() -> None:
    data = ftyp() + simple_moof(1) + mdat() + standard_moov()
    events, _ = scan(data)
    bad = malformed(events)
    assert bad == [
        Malformed(
            len(ftyp()),
            "no init: moof before any moov; the init segment from offset 0 is abandoned",
            False,
        )
    ]
    (frag,) = fragments(events)
    (init,) = inits(events)  # the late moov starts an init segment of its own
    assert init.offset == frag.offset + frag.size
    assert init.data == standard_moov()


def test_second_init_segment() -> None:
    first = stream(2)
    second_moov = moov(trak(7, b"vide", 90000), box(b"mvex", trex(7, 3000)))
    data = first + box(b"free") + ftyp() + second_moov + moof(1, traf(tfhd(7), trun(2))) + mdat()
    events, scanner = scan(data)
    assert not malformed(events)
    _, b = inits(events)
    assert b.offset == len(first) + 8
    assert b.data == ftyp() + second_moov
    assert b.tracks == (TrackInfo(7, "vide", 90000, 3000),)
    assert scanner.tracks == b.tracks
    assert scanner.init_segment == b
    frags = fragments(events)
    assert frags[-1].tracks == (TrackRun(7, None, 6000, 2, True),)  # uses the new trex
    assert [f.index for f in frags] == [0, 1, 2]


def test_lone_moov_after_fragments_and_pending_moof() -> None:
    prefix = stream(1)
    data = prefix + simple_moof(2) + standard_moov(video_trex=1)
    events, scanner = scan(data)
    assert malformed(events) == [
        Malformed(len(prefix), f"no mdat: a moov after the moof at {len(prefix)}", False)
    ]
    init = inits(events)[-1]
    assert init.offset == len(prefix) + len(simple_moof(2))
    assert scanner.last_complete_fragment_end == len(data)


# ----------------------------------------------------------------------------------------- API


def test_feed_after_eof_raises() -> None:
    scanner = Fmp4Scanner()
    scanner.feed(ftyp())
    assert scanner.eof() == []
    assert scanner.eof() == []
    with pytest.raises(LocalProtocolError):
        scanner.feed(b"x")


def test_events_are_frozen_and_hashable() -> None:
    event = BoxSeen("mdat", 0, 8, 8)
    with pytest.raises(AttributeError):
        event.size = 9  # type: ignore[misc]
    assert hash(event) == hash(BoxSeen("mdat", 0, 8, 8))
    assert "data" not in repr(InitSegment(b"x" * 100, 0, 100, ()))


def test_skipping_a_huge_mdat_is_constant_time() -> None:
    """8 GiB of mdat payload in 8 MiB chunks: no copying, no slicing."""
    scanner = Fmp4Scanner()
    scanner.feed(stream(1) + simple_moof(2) + large_box(b"mdat")[:8])
    chunk = bytes(8 << 20)
    scanner.feed(struct.pack(">Q", 16 + 1024 * len(chunk)))
    start = time.perf_counter()
    for _ in range(1023):
        assert scanner.feed(chunk) == []
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    (frag,) = scanner.feed(chunk)
    assert isinstance(frag, FragmentComplete)
    assert frag.size == len(simple_moof(2)) + 16 + 1024 * len(chunk)
    assert scanner.eof() == []
    assert scanner.fragment_count == 2


# ------------------------------------------------------------------------------------- fuzzing


def fuzz_check(data: bytes, cuts: Sequence[int], **limits: int) -> list[Fmp4Event]:
    scanner = Fmp4Scanner(**limits)
    events = feed_chunks([data], scanner)
    check_invariants(data, events, scanner)
    assert feed_chunks(split_at(data, cuts), Fmp4Scanner(**limits)) == events
    return events


@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=20))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    fuzz_check(data, cuts)


@given(st.binary(max_size=300), st.lists(st.integers(0, 2000), max_size=20))
def test_fuzz_bytes_after_a_valid_prefix(tail: bytes, cuts: list[int]) -> None:
    fuzz_check(stream(1) + tail, cuts, max_init_size=4096, max_moof_size=256)


@given(data=st.data())
def test_fuzz_corrupted_real_file(fmp4_small: Media, data: st.DataObject) -> None:
    original = fmp4_small.data
    corrupted = bytearray(original)
    # Bias towards the box-dense start of the file.
    positions = st.one_of(st.integers(0, 3000), st.integers(0, len(original) - 1))
    for position, value in data.draw(
        st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=8)
    ):
        corrupted[position] = value
    cuts = data.draw(st.lists(st.integers(0, len(original)), max_size=10))
    fuzz_check(bytes(corrupted), cuts, max_moof_size=4096)


# A structured fuzzer: valid top-level framing around random moov/moof contents, so that the
# inner parsers see every kind of garbage.

inner_types = st.sampled_from(
    [
        b"mfhd",
        b"traf",
        b"tfhd",
        b"tfdt",
        b"trun",
        b"trak",
        b"tkhd",
        b"mdia",
        b"mdhd",
        b"hdlr",
        b"mvex",
        b"trex",
        b"free",
    ]
)


@st.composite
def inner_boxes(draw: st.DrawFn, depth: int = 0) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        typ = draw(inner_types)
        if typ in (b"traf", b"trak", b"mdia", b"mvex") and depth < 3:
            payload = draw(inner_boxes(depth + 1))
        else:
            version = draw(st.sampled_from([0, 1, 2]))
            flags = draw(st.integers(0, 0xFFFFFF))
            words = draw(st.lists(st.integers(0, 2**32 - 1), max_size=12))
            payload = struct.pack(f">I{len(words)}I", version << 24 | flags, *words)
            payload = payload[: draw(st.integers(0, len(payload)))]
        size_style = draw(st.sampled_from(["ok", "ok", "ok", "zero", "large", "lie"]))
        if size_style == "zero":
            out += struct.pack(">I4s", 0, typ) + payload
            break
        if size_style == "large":
            out += struct.pack(">I4sQ", 1, typ, 16 + len(payload)) + payload
        elif size_style == "lie":
            out += struct.pack(">I4s", draw(st.integers(0, 200)), typ) + payload
        else:
            out += box(typ, payload)
    return out


@given(
    moov_payload=inner_boxes(),
    moof_payloads=st.lists(inner_boxes(), max_size=3),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_fuzz_structured_moov_and_moof(
    moov_payload: bytes, moof_payloads: list[bytes], cuts: list[int]
) -> None:
    data = ftyp() + box(b"moov", moov_payload)
    for payload in moof_payloads:
        data += box(b"moof", payload) + mdat(8)
    events = fuzz_check(data, cuts)
    assert all(not m.fatal for m in malformed(events))
    assert len(fragments(events)) == len(moof_payloads)
    assert len(inits(events)) == 1
