"""One set of scenarios, every server adapter, real peers.

Each test runs a server in a background thread (``servers.running_server``): the asyncio, sync
and trio adapters, and the ASGI app under uvicorn and under hypercorn. It plays a bot with one of
the clients (ours, the ``websockets`` library's, Node's ``ws``), and checks the three things
that matter: the handler got exactly the bytes sent, in order; every ping got a correct pong;
the connection ended with the right close code. Where a server legitimately differs (close codes
it can see, torn frames, request-head timeout), its ``servers.Capabilities`` says how, and the
scenario asserts exactly that: every adapter x client pair runs.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import Any

import pytest

from meetstream_live import DisconnectCause, Disconnected, MediaChunk, ServerConfig, StreamEnded
from meetstream_live.adapters import ServerOptions

from .clients import (
    CLIENTS,
    Result,
    Script,
    masked_frame,
    node_available,
    raw_handshake,
    reset,
    run_ours,
)
from .servers import SERVERS, Collector, capabilities, running_server

ADAPTERS = sorted(SERVERS)
CLIENT_NAMES = ["ours", "websockets", "node"]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=CLIENT_NAMES)
def client(request: pytest.FixtureRequest) -> str:
    if request.param == "node" and not node_available():
        pytest.fail("the Node client is not installed: run `make test` (npm ci in tests/node)")
    return str(request.param)


@pytest.fixture
def media(fmp4_small: Any) -> bytes:
    return bytes(fmp4_small.data)


def url(port: int, path: str = "/") -> str:
    return f"ws://127.0.0.1:{port}{path}"


def assert_pongs(result: Result, bot_id: str) -> None:
    assert len(result.pongs) == len(result.pings) > 0
    for (seq, sent_at_ms), pong in zip(result.pings, result.pongs, strict=True):
        assert pong["type"] == "video_latency_pong"
        assert pong["seq"] == seq
        assert pong["sent_at_ms"] == sent_at_ms
        assert pong["bot_id"] == bot_id
        assert sent_at_ms - 5_000 <= pong["server_received_at_ms"] <= time.time() * 1000 + 5_000


def peer_close_code(adapter: str, code: int = 1000) -> int:
    """``Disconnected.code`` after the bot closed with ``code``: hypercorn only ever says 1006."""
    return code if capabilities(adapter).reports_peer_close_code else 1006


def run_scenario(adapter: str, client: str, script: Script) -> tuple[Result, Collector]:
    collector = Collector()
    with running_server(adapter, collector) as port:
        result = CLIENTS[client](url(port), script)
        collector.wait_finished(1)
    return result, collector


# ------------------------------------------------------------------ every adapter x client


def test_normal_stream(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, chunk=16 * 1024)
    result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert handler.data == media
    assert all(s.offsets_ok for s in handler.streams)
    assert handler.streams[0].started is not None
    assert handler.streams[0].started.bot_id == "bot-1"
    assert handler.streams[0].started.width == 320
    assert_pongs(result, "bot-1")
    assert result.close_code == 1000
    assert handler.disconnected.code == peer_close_code(adapter)
    assert handler.disconnected.clean


def test_binary_before_start_is_kept(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, early=3000)
    _result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert len(handler.streams) == 1
    assert handler.streams[0].data == media  # the init segment is not lost


def test_fragmented_messages(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, chunk=50_000, fragment=7_000)
    result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert handler.data == media
    assert_pongs(result, "bot-1")


def test_websocket_pings_mid_stream(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, chunk=40_000, ws_ping=True)
    result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert handler.data == media
    assert_pongs(result, "bot-1")


def test_end_without_close(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, close=False)
    _result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert handler.data == media
    assert any(isinstance(e, StreamEnded) for e in handler.events)
    # No close frame: 1006 (uvicorn: 1005, "no status received").
    assert handler.disconnected.code == capabilities(adapter).dropped_close_code
    assert handler.disconnected.clean  # the stream itself ended properly


def test_close_without_end(adapter: str, client: str, media: bytes) -> None:
    script = Script(media, end=False)
    result, collector = run_scenario(adapter, client, script)
    [handler] = collector.finished
    assert handler.data == media
    assert result.close_code == 1000
    assert handler.disconnected.code == peer_close_code(adapter)
    assert not handler.disconnected.clean


# ------------------------------------------------------------------ every adapter


def test_bot_vanishes_mid_frame(adapter: str, media: bytes) -> None:
    collector = Collector()
    with running_server(adapter, collector) as port:
        sock = raw_handshake(port)
        sock.sendall(masked_frame(0x1, b'{"type":"video_stream_start","bot_id":"gone"}'))
        sock.sendall(masked_frame(0x2, media[:5000]))
        half = masked_frame(0x2, media[5000:9000])[:2000]  # header + part of the payload
        sock.sendall(half)
        time.sleep(0.2)
        reset(sock)
        [handler] = collector.wait_finished(1)
    caps = capabilities(adapter)
    if caps.delivers_partial_frames:
        # Everything that arrived is delivered, including the part of the torn frame.
        assert handler.data == media[: 5000 + len(half) - 8]  # 8 = 2 + 2 (length) + 4 (mask)
    else:
        # ASGI delivers whole messages: the complete one arrives, the torn one is lost.
        assert handler.data == media[:5000]
        assert [len(e.data) for e in handler.events if isinstance(e, MediaChunk)] == [5000]
    assert handler.disconnected.code == caps.dropped_close_code
    assert not handler.disconnected.clean


@pytest.mark.parametrize("client_name", ["ours", "websockets"])
def test_two_streams_on_one_connection(adapter: str, client_name: str, media: bytes) -> None:
    collector = Collector()
    with running_server(adapter, collector) as port:
        if client_name == "ours":
            _two_streams_ours(url(port), media)
        else:
            _two_streams_websockets(url(port), media)
        [handler] = collector.wait_finished(1)
    assert [s.started.bot_id for s in handler.streams if s.started] == ["first", "second"]
    assert [bytes(s.data) for s in handler.streams] == [media, media[::-1]]
    assert all(s.offsets_ok for s in handler.streams)
    assert handler.disconnected.clean
    assert handler.disconnected.code == peer_close_code(adapter)


def _two_streams_ours(address: str, media: bytes) -> None:
    from meetstream_live.adapters.asyncio import AsyncioBot

    async def main() -> None:
        bot = await AsyncioBot.connect(address)
        for bot_id, data in (("first", media), ("second", media[::-1])):
            await bot.send_start(bot_id)
            await bot.send_chunk(data)
            await bot.send_end(1.0)
        assert (await bot.close()).code == 1000

    asyncio.run(asyncio.wait_for(main(), 30))


def _two_streams_websockets(address: str, media: bytes) -> None:
    import json

    from websockets.sync.client import connect

    with connect(address, max_size=None) as ws:
        for bot_id, data in (("first", media), ("second", media[::-1])):
            ws.send(json.dumps({"type": "video_stream_start", "bot_id": bot_id}))
            ws.send(data)
            ws.send(json.dumps({"type": "video_stream_end", "duration_seconds": 1.0}))


def test_close_while_a_reader_task_waits(adapter: str, media: bytes) -> None:
    """A bot whose own reader task waits in next_event (as a simulator's does) closes with
    start_close, which only writes: the reader gets the receiver's answer."""
    from meetstream_live import BotClosed, Event, PongReceived
    from meetstream_live.adapters.asyncio import AsyncioBot

    async def main(address: str) -> list[Event]:
        bot = await AsyncioBot.connect(address)
        events: list[Event] = []
        ponged = asyncio.Event()

        async def read() -> None:
            while not isinstance(event := await bot.next_event(10), BotClosed):
                events.append(event)
                ponged.set()
            events.append(event)

        reader = asyncio.create_task(read())
        await bot.send_start("reader")
        await bot.send_chunk(media)
        await bot.send_ping(1, 1234)
        await asyncio.wait_for(ponged.wait(), 10)
        await bot.send_end(1.0)
        await bot.start_close(1000, "done")
        await reader
        bot.abort()
        return events

    collector = Collector()
    with running_server(adapter, collector) as port:
        events = asyncio.run(asyncio.wait_for(main(url(port)), 30))
        [handler] = collector.wait_finished(1)
    pong, closed = events
    assert isinstance(pong, PongReceived) and (pong.seq, pong.sent_at_ms) == (1, 1234)
    assert isinstance(closed, BotClosed) and closed.code == 1000
    assert handler.data == media
    assert handler.disconnected.clean
    assert handler.disconnected.code == peer_close_code(adapter)


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked, unfragmented frame a server sent."""
    frames = []
    while data:
        opcode, n, i = data[0] & 0x0F, data[1] & 0x7F, 2
        if n == 126:
            n, i = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, i = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[i : i + n]))
        data = data[i + n :]
    return frames


def test_ping_in_the_same_read_as_the_close(adapter: str) -> None:
    """A latency ping and the close frame arrive together. The core handles a read in order:
    the pong goes out before the close answer. An ASGI server answers the close frame as it
    parses it, before the app has read the ping, and drops the app's late pong."""
    collector = Collector()
    with running_server(adapter, collector) as port:
        sock = raw_handshake(port)
        sock.sendall(masked_frame(0x1, b'{"type":"video_stream_start","bot_id":"late"}'))
        time.sleep(0.1)
        ping = b'{"type":"video_latency_ping","seq":9,"sent_at_ms":5}'
        sock.sendall(masked_frame(0x1, ping) + masked_frame(0x8, b"\x03\xe8"))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        sock.close()
        [handler] = collector.wait_finished(1)
    frames = _server_frames(answer)
    assert frames[-1] == (0x8, b"\x03\xe8")  # the close answer, 1000, comes last
    if capabilities(adapter).answers_before_peer_close:
        [(opcode, pong)] = frames[:-1]
        assert opcode == 0x1 and b'"seq":9' in pong and b"video_latency_pong" in pong
    else:
        assert frames[:-1] == []
    # Either way the handler hears of the ping, and of a clean close by the bot.
    assert [type(e).__name__ for e in handler.events] == [
        "StreamStarted",
        "LatencyPing",
        "Disconnected",
    ]
    assert handler.disconnected.code == peer_close_code(adapter)


def test_fifty_bots_at_once(adapter: str, media: bytes) -> None:
    from meetstream_live import PongReceived
    from meetstream_live.adapters.asyncio import AsyncioBot

    count = 50
    collector = Collector()

    async def one(address: str, n: int) -> None:
        bot = await AsyncioBot.connect(address)
        await bot.send_start(f"bot-{n}")
        for i in range(0, len(media), 20_000):
            await bot.send_chunk(media[i : i + 20_000])
        await bot.send_ping(n)
        event = await bot.next_event(20)
        assert isinstance(event, PongReceived) and event.matched and event.seq == n
        await bot.send_end(1.0)
        assert (await bot.close()).code == 1000

    async def many(address: str) -> None:
        await asyncio.gather(*(one(address, n) for n in range(count)))

    with running_server(adapter, collector) as port:
        asyncio.run(asyncio.wait_for(many(url(port)), 60))
        handlers = collector.wait_finished(count)
    starts = [h.streams[0].started for h in handlers]
    assert sorted(str(s.bot_id) for s in starts if s is not None) == sorted(
        f"bot-{n}" for n in range(count)
    )
    assert all(h.data == media and h.disconnected.clean for h in handlers)
    assert {h.disconnected.code for h in handlers} == {peer_close_code(adapter)}


def test_wss_with_a_throwaway_certificate(adapter: str, media: bytes) -> None:
    import trustme
    from websockets.sync.client import connect

    ca = trustme.CA()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    collector = Collector()
    with running_server(adapter, collector, tls=ca) as port:
        address = f"wss://127.0.0.1:{port}/"
        with connect(address, ssl=client_ctx, max_size=None) as ws:
            ws.send('{"type":"video_stream_start","bot_id":"tls"}')
            ws.send(media)
            ws.send('{"type":"video_latency_ping","seq":1,"sent_at_ms":5}')
            pong = ws.recv(timeout=10)
            assert '"seq":1' in str(pong)
        [handler] = collector.wait_finished(1)
        assert handler.data == media
        assert handler.info.secure
        # A client that does not trust the certificate never gets in.
        with pytest.raises(ssl.SSLError):
            connect(address, ssl=ssl.create_default_context(), open_timeout=5)


def test_connection_limit(adapter: str) -> None:
    collector = Collector()
    options = ServerOptions(max_connections=2)
    with running_server(adapter, collector, options) as port:
        held = [raw_handshake(port) for _ in range(2)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        sock.close()
        # The streams already open are not disturbed.
        for i, open_sock in enumerate(held):
            open_sock.sendall(masked_frame(0x1, b'{"type":"video_latency_ping","seq":%d}' % i))
            reply = open_sock.recv(4096)
            assert b"video_latency_pong" in reply
            open_sock.close()
        collector.wait_finished(2)


def test_a_message_over_the_limit_gets_1009(adapter: str) -> None:
    """``ServerConfig.max_message_size`` holds on every server, ASGI included (it used to be
    ignored there): the bytes up to the limit are delivered, then the close is 1009."""
    collector = Collector()
    limit = 256 * 1024
    options = ServerOptions(config=ServerConfig(max_message_size=limit))
    with running_server(adapter, collector, options) as port:
        sock = raw_handshake(port)
        start = b'{"type":"video_stream_start","bot_id":"big"}'
        sock.sendall(masked_frame(0x1, start) + masked_frame(0x2, bytes(range(256)) * 1024 * 2))
        received = b""
        sock.settimeout(10)
        while len(received) < 4 or received[0] != 0x88:
            chunk = sock.recv(4096)
            assert chunk, "closed without a close frame"
            received += chunk
        assert int.from_bytes(received[2:4], "big") == 1009
        sock.sendall(masked_frame(0x8, (1009).to_bytes(2, "big")))
        (handler,) = collector.wait_finished(1)
        sock.close()
    assert handler.disconnected.code == 1009
    assert handler.disconnected.cause is DisconnectCause.MESSAGE_TOO_BIG
    assert handler.data == (bytes(range(256)) * 1024 * 2)[:limit]


def test_handshake_timeout(adapter: str) -> None:
    """A request head that never completes: the core answers 408 after handshake_timeout_ms.
    Under ASGI the head is the server's: hypercorn closes without a response after its own
    timeout (set to the same time), uvicorn has none and keeps the connection until shutdown."""
    behaviour = capabilities(adapter).request_head_timeout
    options = ServerOptions(config=ServerConfig(handshake_timeout_ms=300))
    with running_server(adapter, Collector(), options) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        started = time.monotonic()
        if behaviour == "none":
            sock.settimeout(1.0)  # over three times the handshake timeout: nothing comes
            with pytest.raises(TimeoutError):
                sock.recv(4096)
        else:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert 0.2 <= time.monotonic() - started < 5
            if behaviour == "408":
                assert answer.startswith(b"HTTP/1.1 408"), answer
            else:
                assert answer == b""  # "close": the server's timeout sends no response
    if behaviour == "none":
        sock.settimeout(10)
        assert sock.recv(4096) == b""  # the server's shutdown closed it, without a response
    sock.close()


def test_graceful_shutdown_with_streams_in_flight(adapter: str, media: bytes) -> None:
    from meetstream_live import BotClosed
    from meetstream_live.adapters.asyncio import AsyncioBot

    collector = Collector()
    codes: list[int] = []
    sent = threading.Event()

    async def bot(address: str) -> None:
        client = await AsyncioBot.connect(address)
        await client.send_start("draining")
        await client.send_chunk(media)
        sent.set()
        while True:  # keep the stream open until the server closes it
            event = await client.next_event(30)
            if isinstance(event, BotClosed):
                codes.append(event.code)
                return

    with running_server(adapter, collector, drain_timeout=0.5) as port:
        thread = threading.Thread(target=asyncio.run, args=(bot(url(port)),))
        thread.start()
        assert sent.wait(10)
        time.sleep(0.3)
    # Leaving the block shut the server down: the stream was closed with 1001 and its
    # handler finished with every byte.
    thread.join(30)
    assert codes == [1001]
    [handler] = collector.finished
    assert handler.data == media
    assert isinstance(handler.events[-1], Disconnected)
    assert handler.disconnected.code == 1001


@pytest.mark.parametrize("slow_streams", [1, 8])
def test_slow_handler_does_not_delay_other_streams(
    adapter: str, media: bytes, slow_streams: int
) -> None:
    """Handlers that block on some streams hold up neither pongs nor data of another (8 is more
    than a 2-core machine's default executor has threads: the server's own pool must serve)."""
    from meetstream_live.adapters import ConnectionInfo, Handler

    gate = threading.Event()

    class Blocking(Handler):
        def on_chunk(self, event: Any) -> None:
            gate.wait(20)

    collector = Collector()
    made: list[str] = []

    def factory(info: ConnectionInfo) -> Handler:
        made.append(info.path)
        return Blocking() if info.path == "/slow" else collector(info)

    with running_server(adapter, factory) as port:
        blocked = []
        for _ in range(slow_streams):
            sock = raw_handshake(port, "/slow")
            sock.sendall(masked_frame(0x1, b'{"type":"video_stream_start","bot_id":"slow"}'))
            sock.sendall(masked_frame(0x2, media[:1000]))
            blocked.append(sock)
        time.sleep(0.2)
        started = time.monotonic()
        try:
            result = run_ours(url(port), Script(media, ping_every=2))
            # ... and its handler got everything while the slow ones are still blocked.
            [handler] = collector.wait_finished(1, timeout=10)
        finally:
            elapsed = time.monotonic() - started
            gate.set()
            for sock in blocked:
                sock.close()
    assert made == ["/slow"] * slow_streams + ["/"]
    assert elapsed < 10
    assert handler.data == media
    assert_pongs(result, "bot-1")



def test_handler_can_close_its_connection(adapter: str) -> None:
    """``ConnectionInfo.close`` from the handler's thread: the bot gets the close frame with
    the handler's code and reason, and the handler still gets ``on_disconnect``, with that
    code everywhere (under ASGI the app reports the close it sent, as the core does: hypercorn
    says 1000 for it, whatever the bot's answer)."""
    from meetstream_live import BotClosed, Event, StreamStarted
    from meetstream_live.adapters import ConnectionInfo, Handler

    from .servers import CollectingHandler

    threads: list[str] = []

    class Closing(CollectingHandler):
        def on_start(self, event: StreamStarted) -> None:
            threads.append(threading.current_thread().name)
            self.info.close(4000, "bye")

        def dispatch(self, events: Any) -> None:
            batch = list(events)
            Handler.dispatch(self, batch)  # on_start
            super().dispatch(batch)  # and what the collector keeps

    collector = Collector()

    def factory(info: ConnectionInfo) -> Handler:
        handler = Closing(collector, info)
        with collector.cond:
            collector.handlers.append(handler)
        return handler

    async def bot(address: str) -> list[Event]:
        from meetstream_live.adapters.asyncio import AsyncioBot

        client = await AsyncioBot.connect(address)
        await client.send_start("closed-by-handler")
        events: list[Event] = []
        while not isinstance(event := await client.next_event(10), BotClosed):
            events.append(event)
        # Our close answer went out with the read: drop the TCP connection only once the
        # receiver is done with it (a reset could discard the answer before it is read).
        await asyncio.to_thread(collector.wait_finished, 1)
        client.abort()
        return [*events, event]

    with running_server(adapter, factory) as port:
        events = asyncio.run(asyncio.wait_for(bot(url(port)), 30))
        [handler] = collector.wait_finished(1)
        handler.info.close(4001, "again")  # a no-op once closed
    handler.info.close(4002, "after shutdown")  # still a no-op
    [closed] = events
    assert isinstance(closed, BotClosed)
    assert (closed.code, closed.reason) == (4000, "bye")
    assert threads and threads[0] != "MainThread"
    assert [type(e).__name__ for e in handler.events] == ["StreamStarted", "Disconnected"]
    assert (handler.disconnected.code, handler.disconnected.reason) == (4000, "bye")
    assert not handler.disconnected.clean  # the stream never ended
