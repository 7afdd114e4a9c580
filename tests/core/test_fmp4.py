"""Tests of the incremental fMP4 box scanner (``meetstream_live.fmp4``).

* real files made by ffmpeg (``fmp4_small``, ``fmp4_medium`` from ``conftest.py``), checked
  against a plain non-incremental box walk and against PyAV;
* split independence: any chunking of a stream gives the same events;
* synthetic boxes for every edge case of the format and every ``Malformed`` reason;
* the inner boxes, the order of boxes, the API and fuzzing: ``test_fmp4_inner.py``.
"""

from __future__ import annotations

import itertools
import struct

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st
from media import Media, decodable_frames

from meetstream_live.fmp4 import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    Malformed,
    TrackInfo,
    TrackRun,
)

from .fmp4_boxes import (
    box,
    check_invariants,
    feed_chunks,
    fragments,
    ftyp,
    init_segment,
    inits,
    large_box,
    malformed,
    mdat,
    moof,
    of_type,
    reference_boxes,
    scan,
    simple_moof,
    split_at,
    standard_moov,
    stream,
    tfhd,
    traf,
    trun,
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
