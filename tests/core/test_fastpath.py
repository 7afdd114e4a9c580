"""The binary fast lane (``_frames``) and the unmaskers (``_mask``) against stock wsproto.

The fast lane must be invisible: for any byte stream — valid and invalid frames, split anywhere,
with or without EOF, with our own close in the middle — a server connection gives the same
events, the same bytes to send and the same states, read after read, whether its binary frames
go through the fast lane (with each unmasker) or through wsproto alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import struct
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import wsproto
from helpers import (
    BINARY,
    CLOSE,
    CONT,
    NOW,
    PING,
    PONG,
    TEXT,
    frame,
    split_at,
    upgrade_request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection as WSConnection
from wsproto.extensions import PerMessageDeflate

from meetstream_live import (
    ConnectionState,
    Event,
    MediaChunk,
    ServerConfig,
    ServerConnection,
    StreamStarted,
    _frames,
    _mask,
)

relaxed = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

try:
    importlib.import_module("numpy")
    HAVE_NUMPY = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_NUMPY = False

#: Every way the server can read binary frames; "off" is stock wsproto, the reference.
FAST_MODES = ["python", "numpy"] if HAVE_NUMPY else ["python"]
needs_numpy = pytest.mark.skipif(not HAVE_NUMPY, reason="numpy is not installed")


def moded(mode: str, config: ServerConfig | None = None) -> ServerConfig:
    """``config`` (the default one) with its unmasker set to ``mode``."""
    return dataclasses.replace(config or ServerConfig(), unmask=mode)


def reference_unmask(data: bytes, key: bytes) -> bytes:
    """XOR by the book, independent of ``_mask``."""
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(data))


# ============================================================================ strategies

keys = st.binary(min_size=4, max_size=4)


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


#: Payload sizes around every boundary of the length encoding, and small random payloads.
payloads = st.one_of(
    st.binary(max_size=24),
    st.binary(max_size=24),
    st.integers(200, 3000).map(pattern),
    st.sampled_from([0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536]).map(pattern),
)


def pieces_of(data: bytes, draw: st.DrawFn) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=3))
    points = sorted([0, *cuts, len(data)])
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def binary_message(draw: st.DrawFn) -> bytes:
    """A binary message in one frame or several, pings and pongs between the fragments."""
    parts = pieces_of(draw(payloads), draw)
    out = b""
    for i, part in enumerate(parts):
        opcode = BINARY if i == 0 else CONT
        out += frame(opcode, part, fin=i == len(parts) - 1, masking_key=draw(keys))
        if i < len(parts) - 1 and draw(st.booleans()):
            out += frame(draw(st.sampled_from([PING, PONG])), draw(st.binary(max_size=8)))
    return out


@st.composite
def text_message(draw: st.DrawFn) -> bytes:
    """A text message (valid UTF-8 or not, a JSON message or not) in one frame or several."""
    data = draw(
        st.text(max_size=12).map(str.encode)
        | st.binary(max_size=12)
        | st.sampled_from(
            [
                json.dumps({"type": "video_stream_start", "bot_id": "b"}).encode(),
                json.dumps({"type": "video_latency_ping", "seq": 1, "timestamp": 5}).encode(),
                json.dumps({"type": "video_stream_end"}).encode(),
            ]
        )
    )
    parts = pieces_of(data, draw)
    return b"".join(
        frame(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1, masking_key=draw(keys))
        for i, part in enumerate(parts)
    )


@st.composite
def control_frame(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([PING, PONG, CLOSE]))
    if opcode == CLOSE:
        code = draw(st.sampled_from([1000, 1001, 1002, 1005, 1006, 999, 2999, 3000, 4999, 5000]))
        payload = draw(
            st.just(b"")
            | st.just(b"\x03")
            | st.binary(max_size=6).map(lambda reason: struct.pack("!H", code) + reason)
        )
    else:
        payload = draw(st.binary(max_size=12) | st.just(pattern(126)))
    return frame(opcode, payload, fin=draw(st.booleans() | st.just(True)), masking_key=draw(keys))


@st.composite
def odd_frame(draw: st.DrawFn) -> bytes:
    """Any header at all: reserved opcodes and bits, unmasked, non-minimal or lying lengths."""
    payload = draw(st.binary(max_size=20) | st.just(pattern(130)))
    width = draw(st.sampled_from([None, 7, 16, 64]))
    declared = draw(
        st.none()
        | st.integers(0, 200)
        | st.sampled_from([125, 126, 65535, 65536, 1 << 63, (1 << 63) + 70000, (1 << 64) - 1])
    )
    if width == 7 and declared is not None:
        declared &= 0x7F
    if width == 16 and declared is not None:
        declared &= 0xFFFF
    return frame(
        draw(st.sampled_from([BINARY, BINARY, CONT, TEXT, PING, CLOSE]) | st.integers(0, 15)),
        payload,
        fin=draw(st.booleans()),
        rsv=draw(st.sampled_from([0, 0, 1, 2, 4, 7])),
        mask=draw(st.booleans() | st.just(True)),
        masking_key=draw(keys),
        length=declared if declared is None or declared < (1 << 64) else None,
        length_width=width if width != 7 or (declared or len(payload)) <= 125 else None,
    )


#: Mostly well-formed traffic, so that the fast lane runs a while before an error ends it.
frames = st.one_of(
    binary_message(),
    binary_message(),
    binary_message(),
    text_message(),
    control_frame(),
    # A bare data frame: BINARY or CONTINUATION with any FIN, whatever the message in flight.
    st.builds(
        lambda opcode, fin, payload, key: frame(opcode, payload, fin=fin, masking_key=key),
        st.sampled_from([BINARY, CONT]),
        st.booleans(),
        st.binary(max_size=10),
        keys,
    ),
    odd_frame(),
    st.binary(min_size=1, max_size=6),  # garbage
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(st.booleans() | st.just(True))
    wire = upgrade_request()
    if start:
        wire += frame(TEXT, json.dumps({"type": "video_stream_start", "bot_id": "b"}).encode())
    wire += b"".join(draw(st.lists(frames, max_size=8)))
    return {
        "wire": wire,
        "cuts": draw(st.lists(st.integers(0, len(wire)), max_size=12)),
        "eof": draw(st.booleans()),
        # Our own close, after this many reads (the bot may go on sending until it answers).
        "close_after": draw(st.none() | st.integers(0, 6)),
        "config": ServerConfig(
            max_early_bytes=draw(st.sampled_from([1 << 20, 40])),
            max_text_size=draw(st.sampled_from([1 << 20, 30])),
            max_message_size=draw(st.sampled_from([1 << 20, 50, 200])),
        ),
    }


def joined(events: list[Event]) -> list[Event]:
    """``events`` with each series of adjacent :class:`MediaChunk` made one: the fast lane
    delivers the whole messages of a read as one chunk where wsproto gives one per message
    (a chunk is bytes of the stream, not a message)."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, MediaChunk) and isinstance(last, MediaChunk):
            assert event.offset == last.offset + len(last.data)
            out[-1] = MediaChunk(last.data + event.data, last.offset)
        else:
            out.append(event)
    return out


def run(mode: str, scenario: dict[str, Any], *, in_one_buffer: bool = False) -> list[Any]:
    """Everything observable, read after read: events (adjacent chunks joined), bytes out,
    connection and session state. ``in_one_buffer``: each read is given as a view of one
    reused buffer (as ``recv_into`` fills it), scribbled over after every call: the core must
    not keep a view of it."""
    buffer = bytearray(max(1, len(scenario["wire"])))
    view = memoryview(buffer)
    conn = ServerConnection(moded(mode, scenario["config"]), now_ms=NOW)
    seen: list[Any] = []
    reads = split_at(scenario["wire"], scenario["cuts"])
    if scenario["eof"]:
        reads.append(b"")
    for i, data in enumerate(reads):
        if i == scenario["close_after"]:
            seen.append(conn.close(1001, "bye", now_ms=NOW))
        if in_one_buffer:
            buffer[: len(data)] = data
            events = joined(conn.receive_data(view[: len(data)], NOW))
            buffer[:] = b"\xa5" * len(buffer)
        else:
            events = joined(conn.receive_data(data, NOW))
        seen.append((events, conn.data_to_send(), conn.state, conn.session_state))
    seen.append("on" if conn._lane is not None else "off")
    return seen


# ============================================================================ the property


@relaxed
@given(scenarios())
def test_the_fast_lane_gives_exactly_what_stock_wsproto_gives(scenario: dict[str, Any]) -> None:
    reference = run("off", scenario)
    assert reference[-1] == "off"
    for mode in FAST_MODES:
        result = run(mode, scenario)
        assert result[:-1] == reference[:-1], mode


def test_the_property_is_not_vacuous() -> None:
    """The fast lane is on, and a big stream split badly comes out in the same chunks."""
    key = b"\x01\x80\xfe\x7f"
    media = [pattern(n) for n in (0, 5, 125, 126, 4096, 65535, 65536, 300_000)]
    wire = upgrade_request() + frame(
        TEXT, json.dumps({"type": "video_stream_start", "bot_id": "b"}).encode()
    )
    for i, data in enumerate(media):
        wire += frame(BINARY, data[:7], fin=False, masking_key=key)
        wire += frame(PING, b"p")
        wire += frame(CONT, data[7:], masking_key=key[i % 4 :] + key[: i % 4])
    scenario = {
        "wire": wire,
        "cuts": list(range(0, len(wire), 65_537)) + list(range(200, 400, 3)),
        "eof": True,
        "close_after": None,
        "config": None,
    }
    reference = run("off", scenario)
    for mode in FAST_MODES:
        result = run(mode, scenario)
        assert result[-1] == "on"
        assert result[:-1] == reference[:-1]
    events = [event for step in reference[:-1] for event in step[0]]
    assert any(isinstance(event, StreamStarted) for event in events)
    chunks = [event for event in events if isinstance(event, MediaChunk)]
    assert b"".join(chunk.data for chunk in chunks) == b"".join(media)
    assert len(chunks) > len(media)  # the reads cut frames: pieces come out as they arrive
    pongs = [step[1] for step in reference[:-1] if b"\x8a\x01p" in step[1]]
    assert pongs


START = frame(TEXT, json.dumps({"type": "video_stream_start", "bot_id": "b"}).encode())

#: Short streams around every decision of the fast lane, to be split at every pair of points.
EDGE_CASES = {
    "binary messages, pings between fragments": frame(BINARY, b"abcde", fin=False)
    + frame(PING, b"p")
    + frame(CONT, b"", fin=False)
    + frame(CONT, b"fghij")
    + frame(BINARY, b"")
    + frame(BINARY, b"k"),
    "16-bit length where 7 bits do": frame(BINARY, b"abc", length_width=16),
    "64-bit length where 16 bits do": frame(BINARY, b"abc", length_width=64),
    "64-bit length with the top bit set": frame(BINARY, b"abc", length=(1 << 63) + 70_000),
    "16-bit length, unmasked": frame(BINARY, pattern(130), mask=False),
    "7-bit length, unmasked": frame(BINARY, b"abc", mask=False),
    "RSV1 on a binary frame": frame(BINARY, b"abc", rsv=0b100),
    "CONTINUATION with no message": frame(CONT, b"abc"),
    "TEXT inside a binary message": frame(BINARY, b"ab", fin=False) + frame(TEXT, b"cd"),
    "BINARY inside a binary message": frame(BINARY, b"ab", fin=False) + frame(BINARY, b"cd"),
    "BINARY inside a text message": frame(TEXT, b"ab", fin=False) + frame(BINARY, b"cd"),
    "a text message, then binary": frame(TEXT, b"ab", fin=False)
    + frame(CONT, b"cd")
    + frame(BINARY, b"ef"),
    "close, then binary": frame(CLOSE, struct.pack("!H", 1000)) + frame(BINARY, b"ab"),
    "bad close, then binary": frame(CLOSE, b"\x03") + frame(BINARY, b"ab"),
    "bad UTF-8, then binary": frame(TEXT, b"\xff") + frame(BINARY, b"ab"),
    "garbage": b"\x8f\x80",
    "a ping too long": frame(PING, pattern(126)),
    "a fragmented ping, 16-bit length": frame(PING, pattern(200), fin=False),
    "a length that lies": frame(BINARY, b"abcdef", length=3) + frame(BINARY, b"gh"),
}


def splits(head: int, size: int) -> Iterator[list[int]]:
    """Every single cut, and every pair of cuts within the first bytes after ``head``."""
    for cut in range(head, size + 1):
        yield [cut]
    near = range(head, min(size, head + 24) + 1)
    for first, second in itertools.combinations(near, 2):
        yield [first, second]


@pytest.mark.parametrize("start", [True, False], ids=["streaming", "early"])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_split_at_every_point(case: str, start: bool) -> None:
    head = upgrade_request() + (START if start else b"")
    wire = head + EDGE_CASES[case]
    for cuts in splits(len(head), len(wire)):
        for eof in (False, True):
            scenario = {"wire": wire, "cuts": cuts, "eof": eof, "close_after": None, "config": None}
            reference = run("off", scenario)
            for mode in FAST_MODES:
                assert run(mode, scenario)[:-1] == reference[:-1], (cuts, eof, mode)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_read_of_any_bytes_like_type_gives_the_same_events(kind: Any) -> None:
    wire = START + frame(BINARY, pattern(3000)) + frame(PING, b"p") + frame(BINARY, b"abc")
    seen = []
    for convert in (bytes, kind):
        conn = ServerConnection(now_ms=NOW)
        conn.receive_data(upgrade_request(), NOW)
        assert conn._lane is not None
        events = [conn.receive_data(convert(piece), NOW) for piece in split_at(wire, [60, 2000])]
        assert all(type(e.data) is bytes for step in events for e in step if hasattr(e, "data"))
        seen.append((events, conn.data_to_send()))
    assert seen[0] == seen[1]


@relaxed
@given(scenarios())
def test_reads_from_a_reused_buffer_give_what_bytes_give(scenario: dict[str, Any]) -> None:
    for mode in [*FAST_MODES, "off"]:
        assert run(mode, scenario, in_one_buffer=True) == run(mode, scenario), mode


# ============================================================================ the unmaskers


def unmaskers() -> list[_mask.Unmask]:
    found = [_mask.unmask_python]
    numpy_one = _mask.numpy_unmask()
    if numpy_one is not None:
        found.append(numpy_one)
    return found


@relaxed
@given(
    st.binary(max_size=40) | st.integers(250, 2100).map(pattern),
    st.integers(0, 9),
    st.integers(0, 9),
    keys,
)
def test_every_unmasker_xors_any_slice_with_the_key(
    data: bytes, before: int, after: int, key: bytes
) -> None:
    buf = bytes(range(before)) + data + bytes(after)
    expected = reference_unmask(data, key)
    for unmask in unmaskers():
        result = unmask(buf, before, before + len(data), key)
        assert type(result) is bytes
        assert result == expected


def run_unmaskers() -> list[_mask.UnmaskRun]:
    found = [_mask.unmask_run_python]
    pair = _mask.numpy_unmaskers()
    if pair is not None:
        found.append(pair[1])
    return found


@relaxed
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=3),  # what lies between payloads (frame headers on the wire)
            st.binary(max_size=20) | st.integers(500, 1500).map(pattern),
            keys,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_every_run_unmasker_joins_the_unmasked_segments(
    parts: list[tuple[bytes, bytes, bytes]],
) -> None:
    buf = b""
    segments = []
    for gap, data, key in parts:
        buf += gap
        segments.append((len(buf), len(buf) + len(data), key))
        buf += data
    buf += b"after"
    expected = b"".join(reference_unmask(data, key) for _, data, key in parts)
    for unmask_run in run_unmaskers():
        result = unmask_run(buf, segments, len(expected))
        assert type(result) is bytes
        assert result == expected


#: (gap before, payload size) of each segment: runs of one size evenly spaced (one XOR for the
#: group in numpy), broken by a size, a spacing or an odd length.
LAYOUTS = [
    [(6, 4096)] * 16,
    [(8, 1024)] * 5 + [(8, 1000)] + [(8, 1024)] * 3,
    [(6, 512)] * 3 + [(7, 512)] * 3 + [(6, 512)],
    [(6, 520)] * 2 + [(6, 523)] * 2 + [(14, 65536)] * 2,
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_run_unmaskers_on_groups_of_even_frames(layout: list[tuple[int, int]]) -> None:
    buf = b""
    segments = []
    expected = b""
    for i, (gap, size) in enumerate(layout):
        buf += bytes(gap)
        key = bytes([i, 255 - i, 7 * i % 256, 0x5A])
        data = pattern(size)[i:] + pattern(i)
        segments.append((len(buf), len(buf) + size, key))
        buf += data
        expected += reference_unmask(data, key)
    for unmask_run in run_unmaskers():
        assert unmask_run(buf + b"after", segments, len(expected)) == expected


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("size", [1, 125, 4096, 65536, 100_000])
def test_whole_messages_of_one_read_come_out_joined_up_to_the_run_bound(
    mode: str, size: int
) -> None:
    media = [bytes([i]) * size for i in range(40)]
    wire = upgrade_request() + START + b"".join(frame(BINARY, m) for m in media)
    conn = ServerConnection(moded(mode), now_ms=NOW)
    events = conn.receive_data(wire, NOW)
    assert conn._lane is not None
    chunks = [event.data for event in events if isinstance(event, MediaChunk)]
    assert b"".join(chunks) == b"".join(media)
    per_run = max(1, _frames.RUN_BYTES // size)  # a bigger message is a run alone
    assert [len(c) for c in chunks] == [
        size * len(media[i : i + per_run]) for i in range(0, len(media), per_run)
    ]


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("joined", [0, 4096, 1 << 20])
def test_max_joined_bytes_bounds_the_chunks(mode: str, joined: int) -> None:
    media = [bytes([i]) * 4096 for i in range(40)]
    wire = upgrade_request() + START + b"".join(frame(BINARY, m) for m in media)
    conn = ServerConnection(moded(mode, ServerConfig(max_joined_bytes=joined)), now_ms=NOW)
    events = conn.receive_data(wire, NOW)
    chunks = [event.data for event in events if isinstance(event, MediaChunk)]
    assert b"".join(chunks) == b"".join(media)
    assert len(chunks) == (1 if joined == 1 << 20 else 40)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_a_run_stops_at_the_message_limit_at_a_cut_frame_and_at_a_fragment(mode: str) -> None:
    """What is not a whole final BINARY frame within the limit, all in this read, ends the run
    and takes the frame-by-frame way (which cuts oversize messages at the limit)."""
    small = [pattern(40)[:40 - i] for i in range(3)]
    big = pattern(100)
    split = pattern(50)
    wire = upgrade_request() + START
    wire += b"".join(frame(BINARY, m) for m in small)
    wire += frame(BINARY, split[:10], fin=False) + frame(CONT, split[10:])  # a fragmented one
    wire += b"".join(frame(BINARY, m) for m in small)
    wire += frame(BINARY, big)  # over the limit: 1009, what fits is delivered
    config = ServerConfig(max_message_size=60)
    cut = len(wire) - 30  # the last frame arrives in two reads
    conn = ServerConnection(moded(mode, config), now_ms=NOW)
    events = conn.receive_data(wire[:cut], NOW) + conn.receive_data(wire[cut:], NOW)
    ref = ServerConnection(moded("off", config), now_ms=NOW)
    expected = ref.receive_data(wire[:cut], NOW) + ref.receive_data(wire[cut:], NOW)
    chunks = [event.data for event in events if isinstance(event, MediaChunk)]
    assert chunks[0] == b"".join(small)  # the first run: one chunk
    assert joined(events) == joined(expected)
    assert conn.data_to_send() == ref.data_to_send()
    assert len(chunks) >= 4 and chunks[-2] == b"".join(small)  # the second run
    stream = b"".join(small) + split + b"".join(small) + big[:60]  # the rest refused: 1009
    assert b"".join(chunks) == stream


@needs_numpy
def test_numpy_unmasks_every_tail_length_and_alignment() -> None:
    unmask = _mask.numpy_unmask()
    assert unmask is not None
    key = b"\x9d\x13\x00\xff"
    for size in range(_mask.NUMPY_MIN_SIZE - 1, _mask.NUMPY_MIN_SIZE + 17):
        for offset in range(9):
            buf = bytes(offset) + pattern(size) + b"tail"
            assert unmask(buf, offset, offset + size, key) == reference_unmask(pattern(size), key)


@pytest.fixture
def fresh_process() -> Iterator[None]:
    """numpy's unmaskers not loaded yet, as in a new process (and forgotten again after)."""
    _mask._numpy.cache_clear()
    yield
    _mask._numpy.cache_clear()


@pytest.mark.usefixtures("fresh_process")
def test_without_numpy_the_python_unmasker_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy -> ImportError
    assert _mask.numpy_unmask() is None
    assert _mask.unmaskers()[:2] == ("python", _mask.unmask_python)
    assert _mask.unmask_backend("auto") == "python"
    with pytest.raises(ValueError, match="needs numpy"):
        _frames.fast_lane(fresh_ws(), "numpy")


@needs_numpy
@pytest.mark.usefixtures("fresh_process")
def test_with_numpy_the_numpy_unmasker_is_chosen() -> None:
    name, unmask, _run = _mask.unmaskers()
    assert name == "numpy" and _mask.unmaskers("numpy")[1] is unmask  # loaded once
    lane = _frames.fast_lane(fresh_ws(), "numpy")
    assert lane is not None and lane._unmask is unmask
    with pytest.raises(ValueError, match="no unmasker"):
        _mask.unmaskers("simd")
    with pytest.raises(ValueError, match="unmask must be one of"):
        ServerConfig(unmask="simd")


# ============================================================================ the wsproto guard


def fresh_ws() -> WSConnection:
    return WSConnection(ConnectionType.SERVER)


def test_the_installed_wsproto_is_one_the_fast_lane_was_checked_against() -> None:
    """A wsproto outside ``WSPROTO_TESTED`` turns the fast lane off: re-check its internals
    (``frame_protocol``, ``connection``) against ``_frames``, then widen the range."""
    assert _frames.wsproto_mismatch(fresh_ws()) is None, wsproto.__version__
    conn = ServerConnection(now_ms=NOW)
    conn.receive_data(upgrade_request(), NOW)
    assert conn.state is ConnectionState.OPEN
    assert isinstance(conn._lane, _frames.FastLane)


@pytest.mark.parametrize("version", ["1.1.0", "1.4.0", "2.0", "1.dev", ""])
def test_an_untested_wsproto_version_is_refused(version: str) -> None:
    problem = _frames.wsproto_mismatch(fresh_ws(), version)
    assert problem is not None and "outside the tested range" in problem


@pytest.mark.parametrize("version", ["1.2.0", "1.3.2", "1.3"])
def test_the_tested_wsproto_versions_are_accepted(version: str) -> None:
    assert _frames.wsproto_mismatch(fresh_ws(), version) is None


def mangled(how: str) -> WSConnection:
    ws = fresh_ws()
    proto: Any = ws._proto
    if how == "no proto":
        ws._proto = None  # type: ignore[assignment]
    elif how == "no frame decoder":
        proto._frame_decoder = object()
    elif how == "no message decoder":
        proto._message_decoder = object()
    elif how == "message decoder without opcode":
        del proto._message_decoder.opcode
    elif how == "client":
        ws = WSConnection(ConnectionType.CLIENT)
    elif how == "extensions":
        ext = PerMessageDeflate()
        ext._enabled = True
        ws = WSConnection(ConnectionType.SERVER, extensions=[ext])
    elif how == "data buffered":
        ws.receive_data(b"\x82")
    elif how == "in a message":
        ws.receive_data(frame(BINARY, b"x", fin=False))
        list(ws.events())
    elif how == "closed":
        ws.receive_data(None)
    return ws


@pytest.mark.parametrize(
    "how",
    [
        "no proto",
        "no frame decoder",
        "no message decoder",
        "message decoder without opcode",
        "client",
        "extensions",
        "data buffered",
        "in a message",
        "closed",
    ],
)
def test_unexpected_wsproto_internals_refuse_the_fast_lane(how: str) -> None:
    ws = mangled(how)
    assert _frames.wsproto_mismatch(ws) is not None
    with pytest.warns(RuntimeWarning, match="fast path off"):
        assert _frames.fast_lane(ws) is None


def test_a_refused_fast_lane_warns_and_the_connection_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_frames, "WSPROTO_TESTED", ((0, 1), (0, 2)))
    conn = ServerConnection(now_ms=NOW)
    with pytest.warns(RuntimeWarning, match="outside the tested range"):
        conn.receive_data(upgrade_request(), NOW)
    assert conn._lane is None
    start = frame(TEXT, json.dumps({"type": "video_stream_start", "bot_id": "b"}).encode())
    events = conn.receive_data(start + frame(BINARY, b"media"), NOW)
    assert [e for e in events if isinstance(e, MediaChunk)] == [MediaChunk(b"media", 0)]


@pytest.mark.parametrize("mode", ["off", "auto", *FAST_MODES])
def test_each_mode_gives_its_unmasker(mode: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lane = _frames.fast_lane(fresh_ws(), mode)
    if mode == "off":
        assert lane is None
        return
    assert lane is not None
    expected = _mask.unmaskers(mode)[1]
    assert lane._unmask is expected
