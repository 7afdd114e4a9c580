"""Issue 6's catalogue of hostile input: one test per line, against every server adapter.

Each test names the defence it checks; the expected answer is the issue's (in brackets there).
Where an ASGI server does the HTTP and the framing, its documented behaviour is asserted
instead (see the ``adapters/asgi.py`` docstring). A defence the code does not have yet is an
``xfail(strict=True)`` with the fix in its reason, so the test turns red the day it passes.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from conformance.servers import Collector, capabilities, running_server
from helpers import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    close_frame,
    frame,
    json_frame,
    upgrade_request,
)

from meetstream_live import (
    BotClosed,
    Disconnected,
    Fmp4Scanner,
    FragmentComplete,
    MediaChunk,
    PongReceived,
    ServerConfig,
)
from meetstream_live.adapters import ConnectionInfo, Handler, HandlerFactory, ServerOptions
from meetstream_live.adapters.asgi import RECOMMENDED_MAX_MESSAGE_SIZE
from meetstream_live.adapters.recording.durable import Disk
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.recorder import Recorder
from meetstream_live.adapters.sync import SyncBot

from ._wire import (
    collecting_logs,
    http_answer,
    open_ws,
    read_all,
    read_response,
    reset,
    rss_bytes,
    ws_answer,
)
from .conftest import Switch, is_asgi

START = {"type": "video_stream_start", "bot_id": "bot-1"}
PING_1 = {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1}


def url(port: int, path: str = "/") -> str:
    return f"ws://127.0.0.1:{port}{path}"


@contextmanager
def served(shared: Switch, factory: HandlerFactory, connections: int = 1) -> Iterator[int]:
    """The shared server with ``factory``; at exit, wait for ``connections`` to be over."""
    yield shared.use(factory)
    shared.wait(connections)


def xfail_for(request: pytest.FixtureRequest, when: bool, reason: str) -> None:
    """Mark this parametrized case as a known, strict failure (the fix is in ``reason``)."""
    if when:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


class CountingFactory:
    """A handler factory that counts the connections it was asked for."""

    def __init__(self, inner: Callable[[ConnectionInfo], Handler] | None = None) -> None:
        self.calls = 0
        self.inner = inner or (lambda info: Handler())

    def __call__(self, info: ConnectionInfo) -> Handler:
        self.calls += 1
        return self.inner(info)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def recordings(root: Path) -> list[Path]:
    return sorted(root.rglob("*.mp4"))


def sidecar(mp4: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(mp4.with_suffix(".json").read_text("utf-8"))
    return document


# ============================================================ handshake and HTTP

GARBAGE = {
    "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",
    "binary-noise": bytes(range(256)) + b"\r\n\r\n",
    "not-a-request-line": b"HELLO THERE\r\n\r\n",
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_instead_of_http(shared: Switch, garbage: str) -> None:
    """[400, closed] Defence: h11 refuses what it cannot parse (core, ``_receive_http``)."""
    factory = CountingFactory()
    status, answer = http_answer(shared.use(factory), GARBAGE[garbage])
    assert status == 400, answer[:200]
    assert factory.calls == 0


@pytest.mark.parametrize("reads", ["one-read", "trickled"])
def test_headers_over_16_kib(adapter: str, shared: Switch, reads: str, request: Any) -> None:
    """[431 or 400] Defence: ``ServerConfig.max_request_head`` (16 KiB), whatever the reads
    (hypercorn: h11's own 16 KiB limit)."""
    factory = CountingFactory()
    head = upgrade_request(extra=[(f"X-Pad-{i}", "a" * 1000) for i in range(17)])
    assert len(head) > 16 * 1024
    port = shared.use(factory)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if reads == "one-read":
            sock.sendall(head)
        else:
            for i in range(0, len(head), 1500):
                try:
                    sock.sendall(head[i : i + 1500])
                except OSError:
                    break  # the server answered and closed
                time.sleep(0.001)
        answer, closed = read_response(sock, require_close=not is_asgi(adapter), timeout=3)
    assert closed or is_asgi(adapter)
    assert answer.split(b" ", 2)[1] in (b"431", b"400"), answer[:200]
    assert factory.calls == 0


def test_slowloris_dropped_at_the_handshake_timeout(adapter: str) -> None:
    """[dropped at the handshake timeout] Defence: the handshake deadline counts from the
    connect, not from the last byte (``ServerConnection.next_deadline`` in HANDSHAKE).

    The request is trickled a byte every 0.2 s (one a second would only make the test slower:
    the deadline does not move either way) for up to 6 s; the server must drop it at ~1 s.
    """
    behaviour = capabilities(adapter).request_head_timeout
    options = ServerOptions(config=ServerConfig(handshake_timeout_ms=1000))
    factory = CountingFactory()
    trickle = upgrade_request(extra=[("X-Slow", "z" * 200)])
    with running_server(adapter, factory, options) as port, socket.create_connection(
        ("127.0.0.1", port), timeout=10
    ) as sock:
        began = time.monotonic()
        answer = b""
        closed = False
        for byte in trickle[:30]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                more, closed = read_all(sock, 1.0)
                answer += more
                if closed:
                    break
        took = time.monotonic() - began
    assert factory.calls == 0
    if behaviour == "none":
        # Documented (adapters/asgi.py): uvicorn has no request-head timeout; put a proxy
        # with one in front. The trickle outlives the configured timeout six times over.
        assert not closed and took > 5.0, (closed, took)
        return
    assert closed, f"still open after {took:.1f} s of trickling"
    assert took < 3.0, took
    if behaviour == "408":
        assert answer.startswith(b"HTTP/1.1 408"), answer
    else:  # hypercorn: closed without an answer at its (same) timeout
        assert answer == b"", answer


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-key", {400}),
        ("bad-key", {400}),
        ("no-version", {400, 426}),
        ("version-8", {426}),
    ],
)
def test_bad_websocket_key_or_version(
    adapter: str, shared: Switch, case: str, expected: set[int], request: Any
) -> None:
    """[400/426] Defence: the handshake checks of RFC 6455 section 4.2.1 (wsproto's handshake
    in the core, the ASGI server's own otherwise)."""
    cases: dict[str, dict[str, Any]] = {
        "no-key": {"omit": ["sec_websocket_key"]},
        "bad-key": {"sec_websocket_key": "not-sixteen-bytes"},
        "no-version": {"omit": ["sec_websocket_version"]},
        "version-8": {"sec_websocket_version": "8"},
    }
    headers = cases[case]
    if is_asgi(adapter):
        expected = {400, 426}  # RFC 6455 4.2.2 allows either for a bad version
    factory = CountingFactory()
    status, answer = http_answer(
        shared.use(factory), upgrade_request(**headers), require_close=not is_asgi(adapter),
        timeout=1.5,
    )
    assert status in expected, answer[:300]
    assert factory.calls == 0


def test_wrong_path(adapter: str) -> None:
    """[404] Defence: ``ServerConfig.path`` (``route_request``)."""
    factory = CountingFactory()
    options = ServerOptions(config=ServerConfig(path="/video"))
    with running_server(adapter, factory, options) as port:
        status, answer = http_answer(port, upgrade_request("/admin"))
        assert status == 404, answer[:300]
        assert factory.calls == 0
        SyncBot.connect(url(port, "/video")).close()
    assert factory.calls == 1


@pytest.mark.parametrize(
    "offer", ["none", "wrong-query", "wrong-bearer", "prefix", "empty-bearer", "basic"]
)
def test_no_or_wrong_token(adapter: str, offer: str, tmp_path: Path) -> None:
    """[401, nothing written] Defence: ``ServerConfig.token`` (``route_request``,
    ``_authorized``). The right token is let in (so the test tells the two apart)."""
    out = tmp_path / "out"
    factory = CountingFactory(Recorder(out))
    options = ServerOptions(config=ServerConfig(token="s3cret-token"))
    target, extra = {
        "none": ("/", []),
        "wrong-query": ("/?token=guess", []),
        "wrong-bearer": ("/", [("Authorization", "Bearer guess")]),
        "prefix": ("/?token=s3cret", []),
        "empty-bearer": ("/", [("Authorization", "Bearer ")]),
        "basic": ("/", [("Authorization", "Basic czNjcmV0LXRva2Vu")]),
    }[offer]
    with running_server(adapter, factory, options) as port:
        status, answer = http_answer(port, upgrade_request(target, extra=extra))
        assert status == 401, answer[:300]
        assert factory.calls == 0
        bot = SyncBot.connect(url(port, "/?token=s3cret-token"))
        bot.close()
    assert factory.calls == 1
    assert not out.exists() or files_under(out) == []


def test_connection_flood(adapter: str, media: bytes) -> None:
    """[503, existing streams unaffected] Defence: ``ServerOptions.max_connections``."""
    collector = Collector()
    options = ServerOptions(max_connections=3)
    half = len(media) // 2
    with running_server(adapter, collector, options) as port:
        bots = [SyncBot.connect(url(port)) for _ in range(3)]
        for n, bot in enumerate(bots):
            bot.send_start(f"held-{n}")
            bot.send_chunk(media[:half])
        statuses: list[int | None] = []

        def flood() -> None:
            for _ in range(10):
                status, _answer = http_answer(port, upgrade_request())
                statuses.append(status)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for n, bot in enumerate(bots):
            bot.send_chunk(media[half:])
            bot.send_ping(n)
            pong = bot.next_event(10)
            assert isinstance(pong, PongReceived) and pong.matched, pong
            bot.send_end(2.0)
            assert bot.close().code == 1000
        handlers = collector.wait_finished(3)
    assert statuses == [503] * 40
    assert len(collector.handlers) == 3
    assert all(h.data == media and h.disconnected.clean for h in handlers)


# ============================================================ WebSocket framing


def run_frames(shared: Switch, frames: list[bytes]) -> tuple[Any, Any]:
    """Open a WebSocket, send a start and ``frames``; what the server answered, and the
    handler (after its Disconnected)."""
    collector = Collector()
    sock = open_ws(shared.use(collector))
    with sock:
        sock.sendall(json_frame(START))
        for raw in frames:
            try:
                sock.sendall(raw)
            except OSError:
                break
        answer = ws_answer(sock)
    [handler] = collector.wait_finished(1)
    return answer, handler


PROTOCOL_ERRORS: dict[str, list[bytes]] = {
    "unmasked": [frame(BINARY, b"x" * 10, mask=False)],
    "rsv1": [frame(BINARY, b"x", rsv=0b100)],
    "rsv2": [frame(TEXT, b"{}", rsv=0b010)],
    "rsv3": [frame(BINARY, b"x", rsv=0b001)],
    "opcode-3": [frame(0x3, b"x")],
    "opcode-7": [frame(0x7, b"x")],
    "opcode-b": [frame(0xB, b"")],
    "opcode-f": [frame(0xF, b"")],
    "continuation-first": [frame(CONT, b"x")],
    "control-126-bytes": [frame(PING, b"p" * 126)],
    "fragmented-ping": [frame(PING, b"p", fin=False)],
    "fragmented-close": [frame(CLOSE, b"\x03\xe8", fin=False)],
    "length-msb-set": [frame(BINARY, b"", length=2**63)],
    "close-code-999": [close_frame(999)],
    "close-code-1004": [close_frame(1004)],
    "close-code-1005": [close_frame(1005)],
    "close-code-1006": [close_frame(1006)],
    "close-code-1015": [close_frame(1015)],
    "close-code-2999": [close_frame(2999)],
    "close-code-5000": [close_frame(5000)],
    "close-one-byte": [frame(CLOSE, b"\x03")],
}


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS), ids=list(PROTOCOL_ERRORS))
def test_protocol_error_closes_1002(
    adapter: str, shared: Switch, case: str, media: bytes
) -> None:
    """[1002] unmasked frames, reserved bits, unknown opcodes, control frames over 125 bytes
    or fragmented, a 64-bit length with its MSB set, bad close codes. Defence: wsproto's frame
    checks (core), the ASGI server's otherwise. Nothing after the bad frame is taken."""
    after = frame(BINARY, b"after the error")
    answer, handler = run_frames(
        shared, [frame(BINARY, media[:1000]), *PROTOCOL_ERRORS[case], after]
    )
    assert answer.closed
    assert b"after" not in handler.data
    if not is_asgi(adapter):
        assert answer.close_code == 1002, answer
        assert handler.data == media[:1000]  # what came before is kept
        assert handler.disconnected.code == 1002
    else:
        _assert_asgi_protocol_close(adapter, answer, handler, 1002, case)


def _assert_asgi_protocol_close(
    adapter: str, answer: Any, handler: Any, code: int, case: str = ""
) -> None:
    """ASGI servers end the connection on a protocol error their own way: uvicorn sends the
    close frame with the code (which a TCP reset can overtake: it closes with the rest of the
    bot's bytes unread), hypercorn drops the TCP connection without one. Either way the app
    hears of the end and takes nothing more."""
    assert isinstance(handler.events[-1], Disconnected)
    if adapter == "asgi-hypercorn":
        assert answer.close_code is None, answer
    else:  # websockets checks its size limit before the length's MSB: 1009 for that one
        assert answer.close_code in (code, 1009 if case == "length-msb-set" else code, None)


INVALID_UTF8 = {
    "one-frame": [frame(TEXT, b'{"type":"\xff"}')],
    "split-sequence": [frame(TEXT, b'{"a":"\xe2\x82', fin=False), frame(CONT, b'\xff"}')],
    "surrogate": [frame(TEXT, b'"\xed\xa0\x80"')],
    "overlong": [frame(TEXT, b'"\xc0\xaf"')],
    "close-reason": [frame(CLOSE, b"\x03\xe8\xff\xfe")],
}


@pytest.mark.parametrize("case", list(INVALID_UTF8), ids=list(INVALID_UTF8))
def test_invalid_utf8_closes_1007(adapter: str, shared: Switch, case: str) -> None:
    """[1007] Defence: wsproto's incremental UTF-8 validation (core)."""
    answer, handler = run_frames(shared, [*INVALID_UTF8[case], json_frame(PING_1)])
    assert answer.closed
    assert answer.texts == []  # the ping after the bad text is not answered
    if not is_asgi(adapter):
        assert answer.close_code == 1007, answer
        assert handler.disconnected.code == 1007
    else:
        _assert_asgi_protocol_close(adapter, answer, handler, 1007)


@pytest.mark.parametrize("shape", ["one-frame", "fragmented"])
def test_text_over_the_limit_closes_1009(shared: Switch, shape: str) -> None:
    """[1009] Defence: ``ServerConfig.max_text_size`` (1 MiB; ``Session.receive_text``)."""
    text = b'{"type":"video_latency_ping","pad":"' + b"a" * (1024 * 1024) + b'"}'
    if shape == "one-frame":
        frames = [frame(TEXT, text)]
    else:
        pieces = [text[i : i + 100_000] for i in range(0, len(text), 100_000)]
        frames = [
            frame(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        ]
    answer, handler = run_frames(shared, frames)
    assert answer.close_code == 1009, answer
    assert answer.texts == []  # no pong for the oversized ping
    assert handler.disconnected.code == 1009


def test_huge_frame_header_keeps_memory_flat(adapter: str, shared: Switch) -> None:
    """[memory flat] A header claiming 2^63-1 bytes, then 96 MiB of payload: the binary is
    streamed to the handler as it comes, nothing is buffered, up to the 64 MiB message limit.
    Defence: the core delivers binary in pieces (``MediaChunk`` per read), never whole
    messages. ASGI servers buffer
    whole messages up to their size limit (64 MiB here), then close: memory is bounded by
    that limit instead."""
    received = [0]

    class Counting(Handler):
        def on_chunk(self, event: MediaChunk) -> None:
            received[0] += len(event.data)

    total = 96 * 1024 * 1024
    block = bytes(1024 * 1024)  # the mask is zeros: the payload goes as it is
    head = frame(BINARY, b"", length=2**63 - 1, masking_key=b"\0\0\0\0")
    with served(shared, lambda info: Counting()) as port:
        sock = open_ws(port)
        with sock:
            sock.sendall(json_frame(START))
            sock.sendall(head)
            with suppress(OSError):
                sock.sendall(block * 8)
            time.sleep(0.5)
            before = rss_bytes()
            sent = 8 * len(block)
            try:
                while sent < total:
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass  # closed with 1009 by a server that limits message size (ASGI)
            time.sleep(0.5)
            after = rss_bytes()
            answer = ws_answer(sock, timeout=2.0) if is_asgi(adapter) else None
    growth = after - before
    if answer is None:
        assert growth < 32 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"
        # Streamed as it came, not held back, up to ServerConfig.max_message_size (then 1009).
        assert received[0] == ServerConfig().max_message_size
    else:
        bound = 2 * RECOMMENDED_MAX_MESSAGE_SIZE
        assert growth < bound, f"RSS grew by {growth / 2**20:.0f} MiB"
        # Closed at the limit: a 1009 frame (our answer to it is stuck inside the huge frame,
        # so hypercorn waits), or the TCP connection (a reset can overtake the frame).
        assert answer.close_code == 1009 or answer.closed, answer
        assert received[0] == 0


def test_huge_frame_header_closes_1009(adapter: str, shared: Switch, request: Any) -> None:
    """[1009] A frame header claiming 2^63-1 bytes. Defence wanted: a maximum binary message
    size. The ASGI servers have one (16 MiB by default); the core has none: it streams binary
    with flat memory (test above), so the connection just goes on."""
    head = frame(BINARY, b"", length=2**63 - 1, masking_key=b"\0\0\0\0")
    sock = open_ws(shared.use(lambda info: Handler()))
    with sock:
        sock.sendall(json_frame(START))
        sock.sendall(head)
        sent = 0
        try:
            for _ in range(80):  # 80 MiB: past the 64 MiB limit proposed (and ASGI's)
                sock.sendall(bytes(1024 * 1024))
                sent += 1
        except OSError:
            pass
        answer = ws_answer(sock, timeout=1.5)
    # A 1009 frame, or (ASGI) a TCP reset that overtook it once the limit was passed.
    assert answer.close_code == 1009 or (is_asgi(adapter) and answer.closed and sent < 80), (
        answer, sent,
    )


def test_data_after_close_is_ignored(adapter: str, shared: Switch, media: bytes) -> None:
    """[ignored] Defence: after the bot's close frame the core reads nothing more
    (``_receive_ws`` stops at ``CloseConnection``)."""
    frames = [
        frame(BINARY, media[:2000]),
        close_frame(1000),
        frame(BINARY, media[2000:4000]),
        json_frame({"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1}),
        json_frame(START),
    ]
    answer, handler = run_frames(shared, frames)
    assert answer.close_code == 1000
    assert answer.texts == []  # no pong: the ping came after the close
    assert handler.data == media[:2000]
    assert len(handler.streams) == 1
    assert not [e for e in handler.events if isinstance(e, PongReceived)]


def test_socket_cut_mid_frame_recording_finalized(
    adapter: str, shared: Switch, media: bytes, tmp_path: Path
) -> None:
    """[recording finalized with every byte received] Defence: the core delivers the received
    part of a torn frame; the recorder finalizes on Disconnected. ASGI servers deliver whole
    messages only (documented), so there the torn message's part is not in the file."""
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        sock = open_ws(port)
        sock.sendall(json_frame({"type": "video_stream_start", "bot_id": "cut"}))
        sock.sendall(frame(BINARY, media[:5000]))
        torn = frame(BINARY, media[5000:9000])[:2000]  # header (8 bytes) + part of the payload
        sock.sendall(torn)
        time.sleep(0.3)
        reset(sock)
    [mp4] = recordings(out)
    assert not list(out.rglob("*.part"))
    expected = 5000 if is_asgi(adapter) else 5000 + len(torn) - 8
    assert mp4.read_bytes() == media[:expected]
    document = sidecar(mp4)
    assert document["bytes"] == expected
    assert document["end"] == "disconnect" and document["clean"] is False


# ============================================================ MeetStream messages

PING_MESSAGE = {"type": "video_latency_ping", "sent_at_ms": 1_700_000_000_000}

#: name -> (text sent in the middle of a stream, warning kind the sidecar must hold)
BAD_MESSAGES: dict[str, tuple[str, str]] = {
    "invalid-json": ("{not json", "invalid_json"),
    "json-array": ("[1, 2, 3]", "not_an_object"),
    "json-number": ("42", "not_an_object"),
    "json-null": ("null", "not_an_object"),
    "json-string": ('"video_stream_start"', "not_an_object"),
    "nan": ('{"type":"video_latency_ping","seq":NaN}', "invalid_json"),
    "deep-nesting": ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    "no-type": ('{"bot_id":"x"}', "missing_field"),
    "unknown-type": ('{"type":"video_stream_pause"}', "unknown_type"),
    "ping-without-seq": (json.dumps(PING_MESSAGE), "missing_field"),
    "ping-string-seq": (json.dumps({**PING_MESSAGE, "seq": "7"}), "bad_field"),
    "ping-huge-integer": (json.dumps({**PING_MESSAGE, "seq": 2**64}), "bad_field"),
    "ping-5000-digit-integer": ('{"type":"video_latency_ping","seq":' + "9" * 5000 + "}",
                                "invalid_json"),
    "ping-seq-object": (json.dumps({**PING_MESSAGE, "seq": {"a": [1]}}), "bad_field"),
    "second-start": (json.dumps({**START, "bot_id": "intruder"}), "unexpected_message"),
}


def _stream_with(
    port: int, media: bytes, bad: list[str], *, bot_id: str | None = "bot-1",
    before_start: list[str] = (),  # type: ignore[assignment]
) -> list[PongReceived]:
    """start, half the media, the ``bad`` texts, a ping (its pong must come), the other half,
    end, close 1000. Returns the pongs."""
    bot = SyncBot.connect(url(port))
    pongs: list[PongReceived] = []
    for text in before_start:
        bot.send_text(text)
    if bot_id is None:
        bot.send_text('{"type":"video_stream_start"}')
    else:
        bot.send_start(bot_id)
    half = len(media) // 2
    bot.send_chunk(media[:half])
    for text in bad:
        bot.send_text(text)
    bot.send_ping(99)
    while not any(p.seq == 99 for p in pongs):
        event = bot.next_event(10)
        assert not isinstance(event, BotClosed), f"the stream did not go on: {event}"
        if isinstance(event, PongReceived):
            pongs.append(event)
    bot.send_chunk(media[half:])
    bot.send_end(2.0)
    assert bot.close().code == 1000
    return pongs


def _kinds(document: dict[str, Any]) -> list[str]:
    return [w["kind"] for w in document["warnings"]]


@pytest.mark.parametrize("case", list(BAD_MESSAGES), ids=list(BAD_MESSAGES))
def test_bad_message_stream_goes_on(
    adapter: str, shared: Switch, case: str, media: bytes, tmp_path: Path, request: Any
) -> None:
    """[stream goes on, a warning is recorded, files land only under the output dir]
    Defence: ``Session`` turns every bad message into a ``ProtocolWarning`` (never a close);
    the recorder keeps warnings in the sidecar."""
    text, kind = BAD_MESSAGES[case]
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        pongs = _stream_with(port, media, [text])
    [mp4] = recordings(out)
    assert mp4.parent == out / "bot-1"
    assert mp4.read_bytes() == media
    document = sidecar(mp4)
    assert document["clean"] is True
    assert kind in _kinds(document), document["warnings"]
    assert [p.seq for p in pongs][-1] == 99
    if case.startswith("ping-") and case != "ping-5000-digit-integer":
        assert len(pongs) == 2  # the bad ping was answered too
    assert files_under(tmp_path) == files_under(out)


def test_start_without_bot_id(adapter: str, shared: Switch, media: bytes, tmp_path: Path) -> None:
    """[stream goes on, warning recorded] The recording goes under ``unknown/``."""
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        _stream_with(port, media, [], bot_id=None)
    [mp4] = recordings(out)
    assert mp4.parent == out / "unknown"
    assert mp4.read_bytes() == media
    assert "missing_field" in _kinds(sidecar(mp4))


def test_end_before_start(adapter: str, shared: Switch, media: bytes, tmp_path: Path) -> None:
    """[stream goes on, warning recorded] The warning from before the start is kept in the
    stream's sidecar."""
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        _stream_with(port, media, [], before_start=['{"type":"video_stream_end"}'])
    [mp4] = recordings(out)
    assert mp4.read_bytes() == media
    assert "unexpected_message" in _kinds(sidecar(mp4))


def test_binary_after_end_goes_to_the_next_stream(
    adapter: str, shared: Switch, media: bytes, tmp_path: Path
) -> None:
    """[stream goes on, warning recorded] Binary after ``video_stream_end`` is held for the next
    stream (not dropped), with a ``binary_outside_stream`` warning in that stream's sidecar."""
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        bot = SyncBot.connect(url(port))
        bot.send_start("first")
        bot.send_chunk(media)
        bot.send_end(2.0)
        bot.send_chunk(media[:3000])
        bot.send_ping(1)
        assert isinstance(bot.next_event(10), PongReceived)
        bot.send_start("second")
        bot.send_chunk(media[3000:])
        bot.send_end(2.0)
        assert bot.close().code == 1000
    first, second = (recordings(out / name)[0] for name in ("first", "second"))
    assert first.read_bytes() == media
    assert second.read_bytes() == media
    assert "binary_outside_stream" in _kinds(sidecar(second))


def test_binary_after_end_then_disconnect(
    adapter: str, shared: Switch, media: bytes, tmp_path: Path
) -> None:
    """[warning recorded, nothing dropped] Binary after the end, then the bot leaves: the bytes
    land in an ``unknown/`` recording, whose sidecar must say why."""
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        bot = SyncBot.connect(url(port))
        bot.send_start("first")
        bot.send_chunk(media)
        bot.send_end(2.0)
        bot.send_chunk(media[:3000])
        assert bot.close().code == 1000
    [orphan] = recordings(out / "unknown")
    assert orphan.read_bytes() == media[:3000]
    assert "binary_outside_stream" in _kinds(sidecar(orphan))


HOSTILE_IDS = {
    "dot-dot-etc-passwd": "../../etc/passwd",
    "absolute": "/abs/olute",
    "10-kib": "b" * 10 * 1024,
    "nul": "bot\x00id",
    "unicode-rtl-override": "bot\u202egpj.exe",
    "unicode-nfd": "bo\u0301t-\u30dc\u30c3\u30c8",
    "windows-reserved": "CON",
    "dots-only": "..",
    "backslashes": "..\\..\\windows",
}


def _hostile_stream(shared: Switch, bot_id: str, media: bytes, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    with served(shared, Recorder(out)) as port:
        bot = SyncBot.connect(url(port))
        bot.send_start(bot_id)
        bot.send_chunk(media)
        bot.send_ping(1)
        assert isinstance(bot.next_event(10), PongReceived)  # the stream goes on
        bot.send_end(2.0)
        assert bot.close().code == 1000
    return out


@pytest.mark.parametrize("case", list(HOSTILE_IDS), ids=list(HOSTILE_IDS))
def test_hostile_bot_id_stays_under_the_output_dir(
    adapter: str, shared: Switch, case: str, media: bytes, tmp_path: Path
) -> None:
    """[files land only under the output dir] Defence: ``recorder.safe_name`` and
    ``_inside``: one harmless path component per untrusted string."""
    bot_id = HOSTILE_IDS[case]
    out = _hostile_stream(shared, bot_id, media, tmp_path)
    [mp4] = recordings(out)
    assert mp4.read_bytes() == media
    assert files_under(tmp_path) == files_under(out)  # nothing beside the output dir
    relative = mp4.relative_to(out)
    assert len(relative.parts) == 2  # <bot>/<stem>.mp4: one component from the bot_id
    name = relative.parts[0]
    assert "\x00" not in name and "/" not in name and "\\" not in name
    assert not name.startswith(".") and len(name.encode()) <= 200
    assert sidecar(mp4)["bot_id"] == bot_id  # the real value is kept, in the sidecar


@pytest.mark.parametrize("case", list(HOSTILE_IDS), ids=list(HOSTILE_IDS))
def test_hostile_bot_id_warning_recorded(
    shared: Switch, case: str, media: bytes, tmp_path: Path, request: Any
) -> None:
    """[a warning is recorded] A bot_id that had to be changed to make a file name says so in
    the sidecar (else the directory name silently differs from the bot_id)."""
    out = _hostile_stream(shared, HOSTILE_IDS[case], media, tmp_path)
    [mp4] = recordings(out)
    assert "unsafe_name" in _kinds(sidecar(mp4))


# ============================================================ storage


def test_output_dir_not_writable_at_start(tmp_path: Path) -> None:
    """[clear error, exit non-zero] Defence: ``cli._check_writable`` before serving. (The CLI
    serves through one adapter per run; this is the asyncio default, checked once.)"""
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    argv = [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", "0",
            "--output", str(blocker / "recordings")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "not writable" in done.stderr and str(blocker) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


class _FillsUp(Disk):
    """The disk of the recordings of the bot ``full``: ENOSPC (and no free space) once
    60 000 bytes of its media are written; the other bot's files are fine."""

    def __init__(self) -> None:
        self.written = 0
        self.limit = 60_000
        self.paths: dict[int, str] = {}

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = str(path)
        return fd

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        target = self.paths.get(fd, "")
        if f"{os.sep}full{os.sep}" in target and target.endswith(".mp4.part"):
            room = self.limit - self.written
            if room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
            data = memoryview(data)[:room]
            self.written += len(data)
        return super().write(fd, data)

    def free_bytes(self, path: Path) -> int:
        return 0 if self.written >= self.limit else super().free_bytes(path)


def test_disk_full_mid_stream(adapter: str, shared: Switch, media: bytes, tmp_path: Path) -> None:
    """[that stream goes on: its connection stays open and its pings are answered, its file
    keeps its complete fragments and says what was lost, others go on, the error is logged
    once and counted] Defence: the file sink (issue 13): writes in its own threads, a failed
    write stops that part's writing (cut back to its last complete fragment), never the
    connection; ``Metrics.disk_error``. (Before: the connection was closed with 1011 and the
    ``.part`` files were left for ``recover``.)"""
    out = tmp_path / "out"
    metrics = Metrics()
    disk = _FillsUp()
    recorder = Recorder(out, metrics=metrics, buffer_size=4096, disk=disk)
    chunk = 4096
    with collecting_logs() as logs, served(shared, recorder, 2) as port:
        full = SyncBot.connect(url(port))
        other = SyncBot.connect(url(port))
        full.send_start("full")
        other.send_start("other")
        for i in range(0, len(media), chunk):
            other.send_chunk(media[i : i + chunk])
            full.send_chunk(media[i : i + chunk])
            full.send_ping(i)
            event = full.next_event(10)  # every ping answered, no close
            assert isinstance(event, PongReceived) and event.seq == i, event
        other.send_ping(1)
        assert isinstance(other.next_event(10), PongReceived)
        other.send_end(2.0)
        assert other.close().code == 1000
        full.send_end(2.0)
        assert full.close().code == 1000
    # The other stream is whole and final.
    [done] = recordings(out / "other")
    assert done.read_bytes() == media
    # The full one is final too: its complete fragments, a sidecar saying what was lost.
    assert not list(out.rglob("*.part"))
    [kept] = recordings(out / "full")
    doc = sidecar(kept)
    scanner = Fmp4Scanner()
    ends = [e.offset + e.size for e in scanner.feed(media) if isinstance(e, FragmentComplete)]
    good = max(end for end in ends if end <= disk.written)  # its last complete fragment
    assert kept.read_bytes() == media[:good] and doc["bytes"] == good
    assert doc["lost_bytes"] == len(media) - good and doc["holes"][0]["reason"] == "ENOSPC"
    assert doc["verdict"] == "truncated" and doc["pings"] == len(range(0, len(media), chunk))
    assert metrics.errors.value("disk") >= 1 and metrics.disk_errors.value("ENOSPC") >= 1
    errors = [line for line in logs if "ERROR" in line and "ENOSPC" in line]
    assert len(errors) == 1, logs  # logged once for the stream, not per chunk


def test_handler_that_raises(adapter: str, shared: Switch, media: bytes) -> None:
    """[that stream closed 1011, server fine] Defence: ``deliver`` catches the handler's
    exception, the adapter closes that connection only (``handler_error``)."""
    collector = Collector()

    class Exploding(Handler):
        def __init__(self) -> None:
            self.disconnected: Disconnected | None = None

        def on_chunk(self, event: MediaChunk) -> None:
            raise RuntimeError("boom")

        def on_disconnect(self, event: Disconnected) -> None:
            self.disconnected = event

    exploding: list[Exploding] = []

    def factory(info: ConnectionInfo) -> Handler:
        if info.path == "/boom":
            exploding.append(Exploding())
            return exploding[-1]
        return collector(info)

    with served(shared, factory, 3) as port:
        good = SyncBot.connect(url(port))
        good.send_start("good")
        bad = SyncBot.connect(url(port, "/boom"))
        bad.send_start("bad")
        bad.send_chunk(media[:1000])
        event = bad.next_event(10)
        while not isinstance(event, BotClosed):
            event = bad.next_event(10)
        bad.abort()
        good.send_chunk(media)
        good.send_ping(1)
        assert isinstance(good.next_event(10), PongReceived)
        good.send_end(2.0)
        assert good.close().code == 1000
        late = SyncBot.connect(url(port))  # the server still takes new connections
        late.send_start("late")
        assert late.close().code == 1000
        handlers = collector.wait_finished(2)
    assert event.code == 1011
    assert exploding[0].disconnected is not None  # still told of the end
    assert handlers[0].data == media and handlers[0].disconnected.clean
