"""An adversarial bot against a server connection: any interleaving of valid and invalid actions,
fed in arbitrary splits, keeps the documented invariants (docs/protocol.md).

It drives the sans-IO core (:class:`ServerConnection`), which every socket adapter runs
unchanged, so thousands of interleavings fit in seconds. The invariants, checked after every
step:

* nothing raises: remote misbehaviour only ever comes out as events;
* media: offsets are contiguous from 0 in each stream; no byte is invented; once the connection
  is over, every binary byte the bot sent before it closed (or broke the protocol) came out;
* every ping read while the connection is ``OPEN`` gets exactly one pong, in order, echoing its
  ``seq``; nothing but pongs and close/pong frames is ever written after the 101;
* ``Disconnected`` comes once, last; after ``CLOSED`` nothing more comes out;
* the session state follows the start/end messages as the model says.
"""

from __future__ import annotations

import json
from typing import Any

from helpers import (
    BINARY,
    CLOSE,
    CONT,
    NOW,
    PING,
    TEXT,
    close_frame,
    frame,
    open_server,
    read_frames,
    split_at,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meetstream_live import (
    ConnectionState,
    Disconnected,
    Event,
    MediaChunk,
    ServerConfig,
    SessionState,
    StreamStarted,
)

CONFIG = ServerConfig(max_text_size=4096, max_early_bytes=64 * 1024, idle_timeout_ms=60_000)

#: Frames that break RFC 6455: the connection must end with this code.
PROTOCOL_ERRORS: list[tuple[bytes, int]] = [
    (frame(BINARY, b"x", mask=False), 1002),
    (frame(BINARY, b"x", rsv=0b100), 1002),
    (frame(0x3, b""), 1002),
    (frame(CONT, b"x"), 1002),
    (frame(PING, b"p" * 126), 1002),
    (frame(PING, b"p", fin=False), 1002),
    (frame(BINARY, b"", length=2**63), 1002),
    (close_frame(1005), 1002),
    (frame(CLOSE, b"\x03"), 1002),
    (frame(TEXT, b"\xff"), 1007),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)


class AdversarialBot(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn, _ = open_server(CONFIG)
        self.now = NOW
        self.events: list[Event] = []
        self.sent_binary = bytearray()  # binary payload the core must deliver
        self.delivered = bytearray()
        self.stream_offset: int | None = None
        self.pings_expected: list[Any] = []  # seqs of pings read while OPEN, in order
        self.pongs: list[dict[str, Any]] = []
        self.model = SessionState.AWAITING_START
        self.closing_code: int | None = None
        self.over = False  # the bot may send no more (closed, protocol error, limit)
        self.partial = False  # a fragmented binary message is open

    # ------------------------------------------------------------------ plumbing

    def feed(self, raw: bytes, cuts: list[int]) -> list[Event]:
        out: list[Event] = []
        for piece in split_at(raw, cuts):
            self.now += 1
            out += self.conn.receive_data(piece, self.now)
        self.take(out)
        return out

    def take(self, events: list[Event]) -> None:
        if any(isinstance(e, Disconnected) for e in self.events):
            assert events == [], events  # nothing after Disconnected
        for event in events:
            if isinstance(event, StreamStarted):
                self.stream_offset = 0
            elif isinstance(event, MediaChunk):
                if event.offset == 0 and self.stream_offset not in (None, 0):
                    self.stream_offset = 0  # orphans released before Disconnected
                expected = 0 if self.stream_offset is None else self.stream_offset
                assert event.offset == expected, (event.offset, expected)
                self.stream_offset = expected + len(event.data)
                self.delivered += event.data
        if events and isinstance(events[-1], Disconnected):
            assert sum(isinstance(e, Disconnected) for e in events) == 1
        else:
            assert not any(isinstance(e, Disconnected) for e in events)
        self.events += events
        request = self.conn.session.close_request
        if request is not None:  # the early-bytes or text limit: close 1009
            assert request.code == 1009
            self.closing_code = request.code
            self.over = True
        for raw in read_frames(self.conn.data_to_send()):
            if raw.opcode == TEXT:
                pong = json.loads(raw.text)
                assert pong["type"] == "video_latency_pong"
                self.pongs.append(pong)
            else:
                assert raw.opcode in (CLOSE, 0xA), raw

    @property
    def open(self) -> bool:
        return self.conn.state is ConnectionState.OPEN and not self.over

    # ------------------------------------------------------------------ actions

    @precondition(lambda self: self.open and not self.partial)
    @rule(bot_id=st.one_of(st.none(), st.text(max_size=12)), cuts=st.lists(st.integers(0, 80)))
    def start(self, bot_id: str | None, cuts: list[int]) -> None:
        message: dict[str, Any] = {"type": "video_stream_start"}
        if bot_id is not None:
            message["bot_id"] = bot_id
        self.feed(frame(TEXT, json.dumps(message).encode()), cuts)
        if self.model is not SessionState.STREAMING:
            self.model = SessionState.STREAMING

    @precondition(lambda self: self.open and not self.partial)
    @rule(cuts=st.lists(st.integers(0, 80)))
    def end(self, cuts: list[int]) -> None:
        self.feed(frame(TEXT, b'{"type":"video_stream_end","duration_seconds":1.5}'), cuts)
        if self.model is SessionState.STREAMING:
            self.model = SessionState.ENDED

    @precondition(lambda self: self.open)
    @rule(data=st.binary(min_size=1, max_size=3000), final=st.booleans(),
          cuts=st.lists(st.integers(0, 3100)))
    def binary(self, data: bytes, final: bool, cuts: list[int]) -> None:
        self.feed(frame(CONT if self.partial else BINARY, data, fin=final), cuts)
        self.partial = not final
        if not self.over:
            self.sent_binary += data

    @precondition(lambda self: self.open and not self.partial)
    @rule(seq=json_values, with_seq=st.booleans(), cuts=st.lists(st.integers(0, 200)))
    def ping(self, seq: Any, with_seq: bool, cuts: list[int]) -> None:
        message: dict[str, Any] = {"type": "video_latency_ping", "sent_at_ms": self.now}
        if with_seq:
            message["seq"] = seq
        self.feed(frame(TEXT, json.dumps(message).encode()), cuts)
        self.pings_expected.append(message.get("seq", "<absent>"))

    @precondition(lambda self: self.open and not self.partial)
    @rule(text=st.one_of(st.text(max_size=50), json_values.map(json.dumps)),
          cuts=st.lists(st.integers(0, 80)))
    def junk_text(self, text: str, cuts: list[int]) -> None:
        events = self.feed(frame(TEXT, text.encode()), cuts)
        if len(text.encode()) > CONFIG.max_text_size:  # pragma: no cover - max_size 50
            self.over = True
        for event in events:
            if isinstance(event, StreamStarted):
                self.model = SessionState.STREAMING
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict):
            if message.get("type") == "video_latency_ping":
                self.pings_expected.append(message.get("seq", "<absent>"))
            elif message.get("type") == "video_stream_end" and (
                self.model is SessionState.STREAMING
            ):
                self.model = SessionState.ENDED

    @precondition(lambda self: self.open)
    @rule(payload=st.binary(max_size=125))
    def ws_ping(self, payload: bytes) -> None:
        self.feed(frame(PING, payload), [])

    @precondition(lambda self: self.open and not self.partial)
    @rule(size=st.integers(CONFIG.max_text_size + 1, CONFIG.max_text_size + 100))
    def oversized_text(self, size: int) -> None:
        self.feed(frame(TEXT, b"a" * size), [size // 2])
        self.over = True
        self.closing_code = 1009

    # Not inside a fragmented binary message: there a CONTINUATION is no error, and a TEXT
    # frame is 1002 (a new message inside one), not 1007.
    @precondition(lambda self: self.open and not self.partial)
    @rule(index=st.integers(0, len(PROTOCOL_ERRORS) - 1))
    def protocol_error(self, index: int) -> None:
        raw, code = PROTOCOL_ERRORS[index]
        events = self.feed(raw, [])
        self.over = True
        assert self.conn.state is ConnectionState.CLOSED
        assert isinstance(events[-1], Disconnected) and events[-1].code == code

    @precondition(lambda self: self.conn.state is not ConnectionState.CLOSED)
    @rule(code=st.sampled_from([1000, 1001, 3000, 4999]))
    def bot_closes(self, code: int) -> None:
        self.feed(close_frame(code), [])
        self.over = True

    @precondition(lambda self: self.conn.state is not ConnectionState.CLOSED)
    @rule()
    def vanish(self) -> None:
        self.feed(b"", [])
        self.over = True

    @precondition(lambda self: self.conn.state is ConnectionState.OPEN)
    @rule()
    def server_closes(self) -> None:
        self.take(self.conn.close(1001, "shutdown", now_ms=self.now))

    @rule(ms=st.integers(0, 120_000))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        self.take(self.conn.handle_timeout(self.now))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def media_is_exact(self) -> None:
        assert bytes(self.sent_binary).startswith(bytes(self.delivered)) or (
            self.closing_code == 1009
        )
        if self.conn.state is ConnectionState.CLOSED and self.closing_code is None:
            assert bytes(self.delivered) == bytes(self.sent_binary)

    @invariant()
    def every_ping_answered(self) -> None:
        assert [p.get("seq", "<absent>") for p in self.pongs] == self.pings_expected[
            : len(self.pongs)
        ]
        if self.conn.state is ConnectionState.OPEN and not self.over:
            assert len(self.pongs) == len(self.pings_expected)

    @invariant()
    def state_follows_the_model(self) -> None:
        if self.conn.state is ConnectionState.CLOSED:
            assert self.events and isinstance(self.events[-1], Disconnected)
            assert self.conn.session_state is SessionState.CLOSED
            assert self.conn.receive_data(b"more", self.now) == []
            assert self.conn.handle_timeout(self.now + 10**9) == []
        elif self.conn.session.close_request is None:
            assert self.conn.session_state is self.model


AdversarialBot.TestCase.settings = settings(
    max_examples=settings().max_examples * 2, stateful_step_count=40, deadline=None
)
TestAdversarialBot = AdversarialBot.TestCase
