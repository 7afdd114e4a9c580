"""Test helpers for the sans-IO core.

* :class:`Pair` — a :class:`BotConnection` and a :class:`ServerConnection` wired together in
  memory (after h11's ``ConnectionPair``), with optional split points for the bytes going each way.
* :func:`frame` — a raw WebSocket frame built bit by bit, so that tests can break any rule
  (unmasked, reserved bits, bad opcodes, lying payload lengths...).
* :func:`upgrade_request` — a raw HTTP upgrade request, any header left out or overridden.
* :func:`read_frames` — the frames a server wrote (unmasked), for checking close codes and pongs.
* :func:`merge_chunks` / :func:`streams` — normalizations of server events for comparisons.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meetstream_live import (
    BotConnection,
    BotState,
    ConnectionState,
    Event,
    MediaChunk,
    ServerConfig,
    ServerConnection,
    StreamEnded,
    StreamStarted,
)

T = TypeVar("T")

#: A fixed "now" (2023-11-14) for every test that does not care about time.
NOW = 1_700_000_000_000

#: The key of RFC 6455 section 1.3, and the accept token the server must answer with.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ---------------------------------------------------------------------------- byte streams


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at each position in ``cuts`` (clipped to the data, duplicates ignored)."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    return [piece for piece in pieces if piece] or [data]


def feed(
    conn: ServerConnection, data: bytes, *, cuts: Iterable[int] = (), now_ms: int = NOW
) -> list[Event]:
    """Feed ``data`` to a server connection in pieces; every event, in order."""
    events: list[Event] = []
    for piece in split_at(data, cuts):
        if piece:
            events += conn.receive_data(piece, now_ms)
    return events


# ---------------------------------------------------------------------------- two peers


@dataclass
class Pair:
    """Our bot and our server, talking through memory.

    Every ``to_*`` call moves what one side has queued to the other side, cut at ``cuts``
    (positions in the bytes moved), and returns (and records) the events it made.
    """

    config: ServerConfig | None = None
    url: str = "ws://receiver.test/"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    now_ms: int = NOW
    overloaded: bool = False
    bot: BotConnection = field(init=False)
    server: ServerConnection = field(init=False)
    server_events: list[Event] = field(init=False, default_factory=list)
    bot_events: list[Event] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.bot = BotConnection(self.url, headers=self.headers)
        self.server = ServerConnection(self.config, now_ms=self.now_ms, overloaded=self.overloaded)

    def to_server(self, *, cuts: Iterable[int] = (), now_ms: int | None = None) -> list[Event]:
        data = self.bot.data_to_send()
        events: list[Event] = []
        for piece in split_at(data, cuts):
            if piece:
                events += self.server.receive_data(piece, self.now_ms if now_ms is None else now_ms)
        self.server_events += events
        return events

    def to_bot(self, *, cuts: Iterable[int] = (), now_ms: int | None = None) -> list[Event]:
        data = self.server.data_to_send()
        events: list[Event] = []
        for piece in split_at(data, cuts):
            if piece:
                events += self.bot.receive_data(piece, self.now_ms if now_ms is None else now_ms)
        self.bot_events += events
        return events

    def eof_to_server(self, now_ms: int | None = None) -> list[Event]:
        events = self.server.receive_data(b"", self.now_ms if now_ms is None else now_ms)
        self.server_events += events
        return events

    def eof_to_bot(self, now_ms: int | None = None) -> list[Event]:
        events = self.bot.receive_data(b"", self.now_ms if now_ms is None else now_ms)
        self.bot_events += events
        return events

    def exchange(self, *, now_ms: int | None = None) -> None:
        """Move bytes both ways until neither side has anything left to send."""
        for _ in range(10):
            if not (self.bot._out or self.server._out):
                return
            self.to_server(now_ms=now_ms)
            self.to_bot(now_ms=now_ms)
        raise AssertionError("the peers never went quiet")

    def open(self) -> Pair:
        """Run the handshake; both sides end ``OPEN`` with nothing left to say."""
        self.to_server()
        self.to_bot()
        assert self.server.state is ConnectionState.OPEN, self.server_events
        assert self.bot.state is BotState.OPEN, self.bot_events
        self.server_events.clear()
        self.bot_events.clear()
        return self


# ---------------------------------------------------------------------------- raw frames


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    masking_key: bytes = b"\x37\xfa\x21\x3d",
    length: int | None = None,
    length_width: int | None = None,
) -> bytes:
    """A WebSocket frame as a client would write it, every field under the caller's control.

    ``rsv`` is the 3-bit RSV1..RSV3 value (``0b100`` is RSV1). ``length`` is the payload length
    written in the header (default: the real one), ``length_width`` its encoding: 7, 16 or 64
    bits (default: the shortest that fits), so that frames can lie or use non-minimal lengths.
    The payload is masked with ``masking_key`` unless ``mask`` is false.
    """
    declared = len(payload) if length is None else length
    if length_width is None:
        length_width = 7 if declared <= 125 else 16 if declared <= 0xFFFF else 64
    head = bytes([(0x80 if fin else 0) | (rsv & 0b111) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask else 0
    if length_width == 7:
        head += bytes([mask_bit | declared])
    elif length_width == 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", declared)
    if not mask:
        return head + payload
    masked = bytes(b ^ masking_key[i % 4] for i, b in enumerate(payload))
    return head + masking_key + masked


def text_frame(text: str, **kwargs: Any) -> bytes:
    return frame(TEXT, text.encode("utf-8"), **kwargs)


def json_frame(message: Any) -> bytes:
    return frame(TEXT, json.dumps(message).encode("utf-8"))


def close_frame(code: int | None = 1000, reason: str = "", **kwargs: Any) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode("utf-8")
    return frame(CLOSE, payload, **kwargs)


@dataclass(frozen=True)
class RawFrame:
    opcode: int
    fin: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == CLOSE
        return self.payload[2:].decode("utf-8")

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


def read_frames(data: bytes) -> list[RawFrame]:
    """Parse the frames a server wrote; the bytes must hold whole, unmasked frames."""
    frames: list[RawFrame] = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "a server frame is never masked"
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack("!H", data[pos : pos + 2]), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack("!Q", data[pos : pos + 8]), pos + 8
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame"
        frames.append(RawFrame(first & 0x0F, bool(first & 0x80), payload))
        pos += length
    return frames


# ---------------------------------------------------------------------------- HTTP requests


def upgrade_request(
    target: str = "/",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    omit: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
    **overrides: str,
) -> bytes:
    """A raw WebSocket upgrade request. Header names are given in snake case as keyword
    overrides (``sec_websocket_version="8"``); ``omit`` leaves headers out by that name."""
    headers = {
        "host": "receiver.test",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec_websocket_key": KEY.decode("ascii"),
        "sec_websocket_version": "13",
    }
    headers.update(overrides)
    lines = [f"{method} {target} {version}"]
    for name, value in headers.items():
        if name not in omit:
            lines.append(f"{name.replace('_', '-').title()}: {value}")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def open_server(
    config: ServerConfig | None = None, *, now_ms: int = NOW
) -> tuple[ServerConnection, list[Event]]:
    """A server connection past a valid handshake (the 101 already drained)."""
    conn = ServerConnection(config, now_ms=now_ms)
    events = conn.receive_data(upgrade_request(), now_ms)
    assert conn.state is ConnectionState.OPEN, events
    assert b" 101 " in conn.data_to_send()
    return conn, events


def http_status(data: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------------------- events


def merge_chunks(events: Iterable[T]) -> list[T]:
    """Adjacent, contiguous :class:`MediaChunk` events merged into one: chunks follow the reads,
    so only their concatenation is meaningful. Anything else passes through."""
    merged: list[Any] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, MediaChunk)
            and isinstance(last, MediaChunk)
            and last.offset + len(last.data) == event.offset
        ):
            merged[-1] = MediaChunk(last.data + event.data, last.offset)
        else:
            merged.append(event)
    return merged


def streams(events: Iterable[Event]) -> list[bytes]:
    """The media bytes between stream boundaries, in order: a new entry begins at each
    :class:`StreamStarted` and at each :class:`StreamEnded`. So with one stream the result is
    ``[bytes before it, the stream, bytes after it]``, where the bytes outside streams can only be
    orphans delivered just before :class:`Disconnected`. Asserts that the offsets within each
    entry are contiguous from 0."""
    result: list[bytearray] = [bytearray()]
    for event in events:
        if isinstance(event, (StreamStarted, StreamEnded)):
            result.append(bytearray())
        elif isinstance(event, MediaChunk):
            assert event.offset == len(result[-1]), (event.offset, len(result[-1]))
            result[-1] += event.data
    return [bytes(b) for b in result]


def of_type(events: Iterable[Event], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]
