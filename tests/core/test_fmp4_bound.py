"""The scanner's box bound (``max_boxes``): its verdict depends on the bytes only, never on
how they are cut into chunks, and it is exactly the count a simple model of the stream gives
(boxes in a row that complete neither an init segment nor a fragment)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from meetstream_live import Fmp4Event, Fmp4Scanner, Malformed

TOO_MANY = "too many boxes:"


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


MFHD = box(b"mfhd", b"\x00\x00\x00\x00" + struct.pack(">I", 1))
#: The pieces a stream is made of: (bytes, top-level boxes, whether the last box completes
#: something). An init segment completes at the end of its moov, a fragment at its mdat.
PIECES = {
    "free": (box(b"free"), 1, False),
    "padded": (box(b"skip", b"\x00" * 11), 1, False),
    "init": (box(b"ftyp", b"isom\x00\x00\x02\x00") + box(b"moov"), 2, True),
    "fragment": (box(b"moof", MFHD) + box(b"mdat", b"\x01" * 9), 2, True),
}


def scan(chunks: list[bytes], max_boxes: int) -> list[Fmp4Event]:
    scanner = Fmp4Scanner(max_boxes=max_boxes)
    events: list[Fmp4Event] = []
    for chunk in chunks:
        events += scanner.feed(chunk)
    return events + scanner.eof()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def too_many(events: list[Fmp4Event]) -> list[int]:
    return [e.offset for e in events if isinstance(e, Malformed) and e.reason.startswith(TOO_MANY)]


def model(names: list[str], max_boxes: int) -> int | None:
    """Where the scanner must give up: the offset of the box that goes over, or None."""
    run = offset = 0
    for name in names:
        data, _, completes = PIECES[name]
        for kind_end in _box_offsets(data):
            run += 1
            if run > max_boxes:
                return offset + kind_end
        if completes:
            run = 0
        offset += len(data)
    return None


def _box_offsets(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += struct.unpack_from(">I", data, pos)[0]
    return starts


streams = st.lists(st.sampled_from(sorted(PIECES)), max_size=60)


@given(
    names=streams,
    garbage=st.binary(max_size=64),
    max_boxes=st.integers(2, 12),
    cuts=st.lists(st.integers(0, 2_000), max_size=30),
)
def test_the_verdict_does_not_depend_on_the_chunks(
    names: list[str], garbage: bytes, max_boxes: int, cuts: list[int]
) -> None:
    data = b"".join(PIECES[n][0] for n in names) + garbage
    whole = scan([data], max_boxes)
    assert scan(split(data, cuts), max_boxes) == whole
    assert scan([data[i : i + 1] for i in range(len(data))], max_boxes) == whole
    assert len(too_many(whole)) <= 1


@given(names=streams, max_boxes=st.integers(2, 12), cuts=st.lists(st.integers(0, 2_000)))
def test_the_verdict_is_the_count_of_boxes_in_a_row(
    names: list[str], max_boxes: int, cuts: list[int]
) -> None:
    data = b"".join(PIECES[n][0] for n in names)
    expected = model(names, max_boxes)
    events = scan(split(data, cuts), max_boxes)
    assert too_many(events) == ([] if expected is None else [expected])
    if expected is not None:  # nothing after the verdict: the scanner is broken
        last = events[-1]
        assert isinstance(last, Malformed) and last.fatal and last.offset == expected


def test_a_flood_of_free_boxes_stops_at_the_bound() -> None:
    flood = box(b"free") * 10_000
    scanner = Fmp4Scanner(max_boxes=256)
    events = scanner.feed(flood)
    assert too_many(events) == [256 * 8]
    assert len(events) == 257  # 256 BoxSeen, then the verdict; nothing per chunk afterwards
    assert scanner.broken
    assert scanner.feed(flood) == [] and scanner.eof() == []
