"""Wire compatibility with an independent implementation, without sockets: the sans-IO
protocols of the ``websockets`` library talk to our server and to our bot, bytes in memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import NOW, merge_chunks
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from meetstream_live import (
    Accepted,
    BotAccepted,
    BotClosed,
    BotConnection,
    BotRejected,
    ConnectionState,
    Disconnected,
    Event,
    HTTPRejected,
    LatencyPing,
    MediaChunk,
    PongReceived,
    ServerConfig,
    ServerConnection,
    StreamEnded,
    StreamStarted,
)

START = {"type": "video_stream_start", "bot_id": "bot-123", "codec": "h264", "width": 1920}


# ======================================================================= their client, our server


class TheirClient:
    """``websockets``' ClientProtocol wired to our ServerConnection."""

    def __init__(self, config: ServerConfig | None = None, url: str = "ws://receiver.test/"):
        self.client = ClientProtocol(parse_uri(url), max_size=None)
        self.server = ServerConnection(config, now_ms=NOW)
        self.client.send_request(self.client.connect())

    def to_server(self, now_ms: int = NOW) -> list[Event]:
        events: list[Event] = []
        for data in self.client.data_to_send():
            events += self.server.receive_data(data, now_ms)  # b"" is EOF for both
        return events

    def to_client(self) -> list[Any]:
        data = self.server.data_to_send()
        if data:
            self.client.receive_data(data)
        if self.server.state is ConnectionState.CLOSED:
            self.client.receive_eof()
        return self.client.events_received()

    def open(self) -> TheirClient:
        assert [type(e) for e in self.to_server()] == [Accepted]
        (response,) = self.to_client()
        assert isinstance(response, Response)
        assert response.status_code == 101
        assert self.client.state is State.OPEN
        return self


def frames(events: list[Any]) -> list[tuple[Opcode, bytes]]:
    return [(f.opcode, bytes(f.data)) for f in events if isinstance(f, Frame)]


def test_their_handshake_is_accepted_by_our_server() -> None:
    peer = TheirClient(url="ws://receiver.test:9876/video?room=7")
    (event,) = peer.to_server()
    assert isinstance(event, Accepted)
    assert (event.path, event.query) == ("/video", "room=7")
    (response,) = peer.to_client()
    assert response.status_code == 101
    assert peer.client.state is State.OPEN


def test_our_rejection_reaches_their_client_as_a_response() -> None:
    peer = TheirClient(ServerConfig(token="s3cret"))
    (event,) = peer.to_server()
    assert isinstance(event, HTTPRejected)
    (response,) = peer.to_client()
    assert response.status_code == 401
    assert response.body == b"401 Unauthorized\n"
    assert peer.client.handshake_exc is not None


def test_their_token_in_the_query_is_accepted() -> None:
    peer = TheirClient(ServerConfig(token="s3cret"), url="ws://receiver.test/?token=s3cret")
    peer.open()


def test_their_session_gives_our_events_and_their_fragments_are_reassembled() -> None:
    peer = TheirClient().open()
    peer.client.send_text(json.dumps(START).encode())
    peer.client.send_binary(b"ftyp....", fin=False)
    peer.client.send_continuation(b"moov", fin=False)
    peer.client.send_continuation(b"", fin=True)
    peer.client.send_binary(b"")
    peer.client.send_binary(b"moof")
    peer.client.send_text(b'{"type": "video_stream_end", "duration_seconds": 2.5}')
    events = merge_chunks(peer.to_server())
    assert events == [
        StreamStarted("bot-123", codec="h264", width=1920),
        MediaChunk(b"ftyp....moovmoof", 0),
        StreamEnded(2.5),
    ]


def test_their_fragmented_text_is_one_message() -> None:
    peer = TheirClient().open()
    text = json.dumps(START).encode()
    peer.client.send_text(text[:10], fin=False)
    peer.client.send_continuation(text[10:], fin=True)
    assert [type(e) for e in peer.to_server()] == [StreamStarted]


def test_their_latency_ping_gets_a_pong_text_frame_with_the_fields_echoed() -> None:
    peer = TheirClient().open()
    peer.client.send_text(json.dumps(START).encode())
    ping = {
        "type": "video_latency_ping",
        "bot_id": "bot-123",
        "seq": 42,
        "sent_at_ms": 1743500000123,
    }
    peer.client.send_text(json.dumps(ping).encode())
    events = peer.to_server(now_ms=1743500000189)
    assert events[-1] == LatencyPing(42, 1743500000123, 1743500000189, "bot-123")
    ((opcode, data),) = frames(peer.to_client())
    assert opcode is Opcode.TEXT
    assert json.loads(data) == {
        "type": "video_latency_pong",
        "seq": 42,
        "sent_at_ms": 1743500000123,
        "server_received_at_ms": 1743500000189,
        "bot_id": "bot-123",
    }


def test_their_websocket_ping_gets_a_pong_frame_with_the_same_payload() -> None:
    peer = TheirClient().open()
    peer.client.send_ping(b"\x00\x01binary\xff")
    assert peer.to_server() == []
    assert frames(peer.to_client()) == [(Opcode.PONG, b"\x00\x01binary\xff")]


def test_their_close_is_echoed_and_ends_both_sides() -> None:
    peer = TheirClient().open()
    peer.client.send_text(json.dumps(START).encode())
    peer.client.send_text(b'{"type": "video_stream_end"}')
    peer.client.send_close(1000, "done")
    events = peer.to_server()
    assert events[-1] == Disconnected(1000, "done", True)
    ((opcode, _),) = frames(peer.to_client())
    assert opcode is Opcode.CLOSE
    assert peer.client.state is State.CLOSED
    assert (peer.client.close_code, peer.client.close_reason) == (1000, "done")


def test_our_close_reaches_them_and_their_answer_ends_our_side() -> None:
    peer = TheirClient().open()
    peer.server.close(1001, "shutting down", now_ms=NOW)
    ((opcode, _),) = frames(peer.to_client())
    assert opcode is Opcode.CLOSE
    assert peer.client.close_rcvd is not None
    assert peer.client.close_rcvd.code == 1001
    assert peer.to_server() == [Disconnected(1001, "shutting down", True)]
    assert peer.server.state is ConnectionState.CLOSED


def test_their_invalid_utf8_text_gets_close_1007() -> None:
    peer = TheirClient().open()
    peer.client.send_text(b'{"type": "\xc3\x28"}')
    (event,) = peer.to_server()
    assert isinstance(event, Disconnected)
    assert event.code == 1007
    peer.to_client()
    assert peer.client.close_rcvd is not None
    assert peer.client.close_rcvd.code == 1007


def test_their_text_over_our_limit_gets_close_1009() -> None:
    peer = TheirClient(ServerConfig(max_text_size=1000)).open()
    for _ in range(11):
        peer.client.send_text(
            b"x" * 100, fin=False
        ) if peer.client.expect_continuation_frame is False else peer.client.send_continuation(
            b"x" * 100, fin=False
        )
    assert peer.to_server() == []
    peer.to_client()
    assert peer.client.close_rcvd is not None
    assert peer.client.close_rcvd.code == 1009
    peer.to_client()
    assert peer.to_server() == [Disconnected(1009, "text message over 1000 bytes", True)]


def test_their_early_binary_over_our_limit_gets_close_1009_and_is_delivered() -> None:
    peer = TheirClient(ServerConfig(max_early_bytes=10)).open()
    peer.client.send_binary(b"0123456789")
    peer.client.send_binary(b"abc")
    assert peer.to_server() == []
    peer.to_client()
    assert peer.client.close_rcvd is not None
    assert peer.client.close_rcvd.code == 1009
    events = peer.to_server()
    assert merge_chunks(events) == [
        MediaChunk(b"0123456789", 0),  # exactly max_early_bytes kept, the rest refused
        Disconnected(1009, events[-1].reason, False),  # type: ignore[attr-defined]
    ]


def test_their_eof_without_close_is_1006() -> None:
    peer = TheirClient().open()
    peer.client.send_text(json.dumps(START).encode())
    peer.client.send_binary(b"x")
    peer.to_server()
    peer.client.receive_eof()  # their side half-closes: in memory, we feed our own EOF
    assert peer.server.receive_data(b"", NOW) == [Disconnected(1006, "", False)]


# ======================================================================= our bot, their server


class TheirServer:
    """Our BotConnection wired to ``websockets``' ServerProtocol."""

    def __init__(self, url: str = "ws://receiver.test/") -> None:
        self.bot = BotConnection(url)
        self.server = ServerProtocol(max_size=None)

    def to_server(self) -> list[Any]:
        self.server.receive_data(self.bot.data_to_send())
        return self.server.events_received()

    def to_bot(self, now_ms: int = NOW) -> list[Event]:
        events: list[Event] = []
        for data in self.server.data_to_send():
            events += self.bot.receive_data(data, now_ms)
        return events

    def open(self) -> TheirServer:
        (request,) = self.to_server()
        assert isinstance(request, Request)
        self.server.send_response(self.server.accept(request))
        assert [type(e) for e in self.to_bot()] == [BotAccepted]
        assert self.server.state is State.OPEN
        return self


def test_our_handshake_is_accepted_by_their_server() -> None:
    peer = TheirServer("ws://receiver.test:9876/video?token=t")
    (request,) = peer.to_server()
    assert request.path == "/video?token=t"
    assert request.headers["Host"] == "receiver.test:9876"
    response = peer.server.accept(request)
    assert response.status_code == 101
    peer.server.send_response(response)
    assert [type(e) for e in peer.to_bot()] == [BotAccepted]


def test_their_rejection_reaches_our_bot_with_status_and_body() -> None:
    peer = TheirServer()
    peer.to_server()
    peer.server.send_response(peer.server.reject(403, "go away\n"))
    (event,) = peer.to_bot()
    assert isinstance(event, BotRejected)
    assert (event.status, event.body) == (403, b"go away\n")


def test_our_messages_are_frames_their_server_reads() -> None:
    peer = TheirServer().open()
    peer.bot.send_start("bot-1", codec="h264")
    peer.bot.send_chunk(b"ftyp", final=False)
    peer.bot.send_chunk(b"moov", final=False)
    peer.bot.send_chunk(b"")
    peer.bot.send_ping(1, 1000)
    peer.bot.send_end(1.5)
    received = [(f.opcode, f.fin, bytes(f.data)) for f in peer.to_server()]
    assert [(opcode, fin) for opcode, fin, _ in received] == [
        (Opcode.TEXT, True),
        (Opcode.BINARY, False),
        (Opcode.CONT, False),
        (Opcode.CONT, True),
        (Opcode.TEXT, True),
        (Opcode.TEXT, True),
    ]
    assert json.loads(received[0][2]) == {
        "type": "video_stream_start",
        "bot_id": "bot-1",
        "codec": "h264",
    }
    assert b"".join(data for opcode, _, data in received if opcode is not Opcode.TEXT) == (
        b"ftypmoov"
    )
    assert json.loads(received[4][2]) == {
        "type": "video_latency_ping",
        "seq": 1,
        "sent_at_ms": 1000,
        "bot_id": "bot-1",
    }
    assert json.loads(received[5][2])["duration_seconds"] == 1.5


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_every_payload_length_encoding_is_read_by_their_server(size: int) -> None:
    peer = TheirServer().open()
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    peer.bot.send_chunk(payload)
    (received,) = peer.to_server()
    assert bytes(received.data) == payload


def test_their_pong_is_matched_by_our_bot() -> None:
    peer = TheirServer().open()
    peer.bot.send_start("bot-1")
    peer.bot.send_ping(5, 1000)
    peer.to_server()
    pong = {
        "type": "video_latency_pong",
        "seq": 5,
        "sent_at_ms": 1000,
        "server_received_at_ms": 1020,
        "bot_id": "bot-1",
    }
    peer.server.send_text(json.dumps(pong).encode())
    assert peer.to_bot(now_ms=1040) == [PongReceived(5, 1000, 1020, "bot-1", 40.0, True)]


def test_their_websocket_ping_is_answered_by_our_bot() -> None:
    peer = TheirServer().open()
    peer.server.send_ping(b"still there?")
    assert peer.to_bot() == []
    assert [(f.opcode, bytes(f.data)) for f in peer.to_server()] == [(Opcode.PONG, b"still there?")]


def test_our_close_is_echoed_by_their_server() -> None:
    peer = TheirServer().open()
    peer.bot.close(1000, "bye")
    (close,) = peer.to_server()
    assert close.opcode is Opcode.CLOSE
    assert peer.server.close_rcvd is not None
    assert (peer.server.close_rcvd.code, peer.server.close_rcvd.reason) == (1000, "bye")
    assert peer.to_bot() == [BotClosed(1000, "bye")]


def test_their_close_is_echoed_by_our_bot() -> None:
    peer = TheirServer().open()
    peer.server.send_close(1001, "going away")
    assert peer.to_bot() == [BotClosed(1001, "going away")]
    (echo,) = peer.to_server()
    assert echo.opcode is Opcode.CLOSE
    assert peer.server.close_rcvd is not None
    assert (peer.server.close_rcvd.code, peer.server.close_rcvd.reason) == (1001, "going away")
