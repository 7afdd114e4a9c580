"""Tests of the fMP4 scanner inside the boxes it parses (``moov`` tracks, ``moof``/``traf``/``trun``
durations and keyframes), the order of top-level boxes, the API, and fuzzing: arbitrary,
corrupted and structured garbage never raises and always ends in a defined state."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from media import Media

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

from .fmp4_boxes import (
    box,
    check_invariants,
    feed_chunks,
    fragments,
    ftyp,
    full_box,
    hdlr,
    init_segment,
    inits,
    large_box,
    malformed,
    mdat,
    mdhd,
    mfhd,
    moof,
    moov,
    scan,
    simple_moof,
    split_at,
    standard_moov,
    stream,
    tfdt,
    tfhd,
    tkhd,
    traf,
    trak,
    trex,
    trun,
)

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
