"""The bot's side: :func:`parse_ws_url` and :class:`BotConnection`."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    BINARY,
    CLOSE,
    CONT,
    NOW,
    PING,
    PONG,
    TEXT,
    Pair,
    close_frame,
    frame,
    read_frames,
)

from meetstream_live import (
    BotAccepted,
    BotClosed,
    BotConnection,
    BotRejected,
    BotState,
    LocalProtocolError,
    PongReceived,
    ProtocolWarning,
    ServerConfig,
    WarningKind,
    WebSocketURL,
    parse_ws_url,
)


def open_bot() -> BotConnection:
    """A bot past the handshake (answered by our server), with nothing left to send."""
    return Pair().open().bot


def switching_protocols(bot: BotConnection, extra: bytes = b"") -> bytes:
    """A 101 answering the handshake request the bot queued, with the right accept token."""
    request = bot.data_to_send()
    (key,) = [
        line.split(b": ")[1]
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    ]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + extra
        + b"Sec-WebSocket-Accept: "
        + accept
        + b"\r\n\r\n"
    )


def from_server(opcode: int, payload: bytes = b"", **kwargs: Any) -> bytes:
    return frame(opcode, payload, mask=False, **kwargs)


def pong_frame(**fields: Any) -> bytes:
    return from_server(TEXT, json.dumps({"type": "video_latency_pong", **fields}).encode())


def sent_frames(bot: BotConnection) -> list[tuple[int, bytes]]:
    """The frames a bot wrote, unmasked, as (opcode, payload)."""
    data, frames, pos = bot.data_to_send(), [], 0
    while pos < len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80, "a bot frame is always masked"
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        key, pos = data[pos : pos + 4], pos + 4
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[pos : pos + length]))
        frames.append((opcode, payload))
        pos += length
    return frames


# ============================================================================ parse_ws_url


def test_a_ws_url_defaults_to_port_80_and_path_slash() -> None:
    assert parse_ws_url("ws://receiver.test") == WebSocketURL(False, "receiver.test", 80, "/")


def test_a_wss_url_defaults_to_port_443_and_is_secure() -> None:
    assert parse_ws_url("wss://receiver.test/v") == WebSocketURL(True, "receiver.test", 443, "/v")


def test_an_explicit_port_is_kept() -> None:
    assert parse_ws_url("ws://receiver.test:9876/").port == 9876


def test_the_query_is_part_of_the_target() -> None:
    assert parse_ws_url("wss://h/video?token=abc&x=1").target == "/video?token=abc&x=1"


def test_a_query_without_a_path_gets_path_slash() -> None:
    assert parse_ws_url("ws://h?token=abc").target == "/?token=abc"


def test_an_ipv6_host_loses_its_brackets_and_gets_them_back_in_host_header() -> None:
    url = parse_ws_url("ws://[::1]:8080/x")
    assert (url.host, url.port, url.target) == ("::1", 8080, "/x")
    assert url.host_header == "[::1]:8080"


def test_the_host_header_omits_the_default_port() -> None:
    assert parse_ws_url("wss://h:443/").host_header == "h"
    assert parse_ws_url("ws://h:80/").host_header == "h"
    assert parse_ws_url("ws://h:443/").host_header == "h:443"
    assert parse_ws_url("ws://[::1]/").host_header == "[::1]"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://receiver.test/", "not a WebSocket URL"),
        ("receiver.test:80", "not a WebSocket URL"),
        ("", "not a WebSocket URL"),
        ("ws:///path", "without a host"),
        ("wss://:443/", "without a host"),
        ("ws://h:99999/", "bad port"),
        ("ws://h:abc/", "bad port"),
    ],
)
def test_a_url_that_is_not_a_websocket_url_raises_value_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ws_url(url)


def test_a_bot_takes_a_parsed_url_as_it_is() -> None:
    url = WebSocketURL(True, "h", 8443, "/v")
    assert BotConnection(url).url is url


def test_a_bot_with_a_bad_url_raises_value_error() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        BotConnection("https://h/")


# ============================================================================ handshake


def test_the_handshake_request_is_queued_at_construction() -> None:
    bot = BotConnection(
        "ws://receiver.test:9876/video?token=t", headers=((b"Authorization", b"Bearer t"),)
    )
    request = bot.data_to_send()
    assert request.startswith(b"GET /video?token=t HTTP/1.1\r\n")
    assert b"\r\nHost: receiver.test:9876\r\n" in request
    assert b"\r\nAuthorization: Bearer t\r\n" in request
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in request
    assert bot.state is BotState.CONNECTING
    assert bot.data_to_send() == b""


def test_an_accepted_handshake_gives_bot_accepted_and_opens() -> None:
    pair = Pair()
    pair.to_server()
    events = pair.to_bot()
    assert [type(e) for e in events] == [BotAccepted]
    assert pair.bot.state is BotState.OPEN


def test_the_101_response_may_arrive_one_byte_at_a_time() -> None:
    pair = Pair()
    pair.to_server()
    events = pair.to_bot(cuts=range(200))
    assert [type(e) for e in events] == [BotAccepted]


def test_a_rejected_handshake_gives_bot_rejected_with_status_and_body() -> None:
    pair = Pair(ServerConfig(token="right"))
    pair.to_server()
    (event,) = pair.to_bot()
    assert isinstance(event, BotRejected)
    assert event.status == 401
    assert (b"www-authenticate", b"Bearer") in event.headers
    assert event.body == b"401 Unauthorized\n"
    assert pair.bot.state is BotState.CLOSED


def test_a_rejection_body_split_across_reads_is_collected() -> None:
    bot = BotConnection("ws://h/")
    response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\ntry later!"
    events = []
    for i in range(len(response)):
        events += bot.receive_data(response[i : i + 1], NOW)
    assert events == [BotRejected(503, ((b"content-length", b"10"),), b"try later!")]


def test_a_rejection_body_without_length_ends_at_eof() -> None:
    bot = BotConnection("ws://h/")
    assert bot.receive_data(b"HTTP/1.1 403 Forbidden\r\n\r\nno ", NOW) == []
    assert bot.receive_data(b"way", NOW) == []
    (event,) = bot.receive_data(b"", NOW)
    assert isinstance(event, BotRejected)
    assert (event.status, event.body) == (403, b"no way")
    assert bot.state is BotState.CLOSED


def test_an_informational_status_other_than_101_is_a_rejection_without_body() -> None:
    bot = BotConnection("ws://h/")
    assert bot.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n", NOW) == [BotRejected(100, (), b"")]
    assert bot.state is BotState.CLOSED


def test_a_garbage_handshake_response_is_bot_closed_1002() -> None:
    bot = BotConnection("ws://h/")
    (event,) = bot.receive_data(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", NOW)
    assert isinstance(event, BotClosed)
    assert event.code == 1002
    assert bot.state is BotState.CLOSED


def test_a_101_with_a_wrong_accept_token_is_bot_closed_1002() -> None:
    bot = BotConnection("ws://h/")
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
    )
    (event,) = bot.receive_data(response, NOW)
    assert isinstance(event, BotClosed)
    assert event.code == 1002


def test_a_hand_made_101_is_accepted() -> None:
    bot = BotConnection("ws://h/")
    assert bot.receive_data(switching_protocols(bot), NOW) == [BotAccepted(())]
    assert bot.state is BotState.OPEN


@pytest.mark.parametrize(
    "header",
    [
        b"Connection: close\xff\r\n",
        b"Sec-WebSocket-Extensions: \xff\r\n",
        b"Sec-WebSocket-Protocol: \xff\r\n",
    ],
    ids=["connection", "extensions", "protocol"],
)
def test_a_101_with_an_undecodable_header_is_bot_closed_1002(header: bytes) -> None:
    bot = BotConnection("ws://h/")
    (event,) = bot.receive_data(switching_protocols(bot, header), NOW)
    assert isinstance(event, BotClosed)
    assert event.code == 1002
    assert bot.state is BotState.CLOSED


@pytest.mark.parametrize(
    ("received", "expected"),
    [
        (b"", BotClosed(1006, "connection lost during the handshake")),
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nabc",
            BotRejected(403, ((b"content-length", b"10"),), b"abc"),
        ),
    ],
    ids=["before-any-byte", "inside-a-rejection-body"],
)
def test_eof_during_the_handshake_is_reported_as_such(received: bytes, expected: Any) -> None:
    bot = BotConnection("ws://h/")
    events = bot.receive_data(received, NOW) if received else []
    events += bot.receive_data(b"", NOW)
    assert events == [expected]
    assert bot.state is BotState.CLOSED


def test_eof_in_the_middle_of_the_response_head_is_bot_closed_1006() -> None:
    bot = BotConnection("ws://h/")
    assert bot.receive_data(b"HTTP/1.1 101 Switching", NOW) == []
    (event,) = bot.receive_data(b"", NOW)
    assert isinstance(event, BotClosed)
    assert event.code == 1006
    assert bot.state is BotState.CLOSED


def test_input_after_closed_is_ignored() -> None:
    bot = BotConnection("ws://h/")
    bot.receive_data(b"", NOW)
    assert bot.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", NOW) == []
    assert bot.receive_data(b"", NOW) == []


def test_closing_while_connecting_just_closes() -> None:
    bot = BotConnection("ws://h/")
    bot.data_to_send()
    bot.close()
    assert bot.state is BotState.CLOSED
    assert bot.data_to_send() == b""


# ============================================================================ sending


SENDS: list[Callable[[BotConnection], None]] = [
    lambda bot: bot.send_start("b"),
    lambda bot: bot.send_chunk(b"x"),
    lambda bot: bot.send_ping(1, 2),
    lambda bot: bot.send_end(1.0),
    lambda bot: bot.send_text("{}"),
    lambda bot: bot.send_json({}),
    lambda bot: bot.send_ws_ping(b"p"),
]
SEND_IDS = ["start", "chunk", "ping", "end", "text", "json", "ws_ping"]


@pytest.mark.parametrize("send", SENDS, ids=SEND_IDS)
def test_sending_while_connecting_raises(send: Callable[[BotConnection], None]) -> None:
    with pytest.raises(LocalProtocolError, match="CONNECTING"):
        send(BotConnection("ws://h/"))


@pytest.mark.parametrize("send", SENDS, ids=SEND_IDS)
def test_sending_while_closing_raises(send: Callable[[BotConnection], None]) -> None:
    bot = open_bot()
    bot.close()
    with pytest.raises(LocalProtocolError, match="CLOSING"):
        send(bot)


@pytest.mark.parametrize("send", SENDS, ids=SEND_IDS)
def test_sending_after_closed_raises(send: Callable[[BotConnection], None]) -> None:
    bot = open_bot()
    bot.receive_data(b"", NOW)
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        send(bot)


def test_the_start_message_carries_bot_id_and_fields() -> None:
    bot = open_bot()
    bot.send_start("bot-1", codec="h264", width=1920)
    ((opcode, payload),) = sent_frames(bot)
    assert opcode == TEXT
    assert json.loads(payload) == {
        "type": "video_stream_start",
        "bot_id": "bot-1",
        "codec": "h264",
        "width": 1920,
    }
    assert bot.bot_id == "bot-1"


def test_pings_and_end_carry_the_bot_id_after_a_start() -> None:
    bot = open_bot()
    bot.send_ping(1, 100)
    bot.send_start("bot-1")
    bot.send_ping(2, 200)
    bot.send_end(3.5)
    messages = [json.loads(payload) for _, payload in sent_frames(bot)]
    assert messages[0] == {"type": "video_latency_ping", "seq": 1, "sent_at_ms": 100}
    assert messages[2] == {
        "type": "video_latency_ping",
        "seq": 2,
        "sent_at_ms": 200,
        "bot_id": "bot-1",
    }
    assert messages[3] == {"type": "video_stream_end", "duration_seconds": 3.5, "bot_id": "bot-1"}


def test_an_end_before_any_start_has_no_bot_id() -> None:
    bot = open_bot()
    bot.send_end(1.0)
    ((_, payload),) = sent_frames(bot)
    assert json.loads(payload) == {"type": "video_stream_end", "duration_seconds": 1.0}


def test_chunks_with_final_false_are_fragments_of_one_message() -> None:
    bot = open_bot()
    bot.send_chunk(b"ab", final=False)
    bot.send_chunk(b"cd", final=False)
    bot.send_chunk(b"ef")
    assert sent_frames(bot) == [(BINARY, b"ab"), (CONT, b"cd"), (CONT, b"ef")]


def test_text_with_final_false_is_a_fragment() -> None:
    bot = open_bot()
    bot.send_text('{"ty', final=False)
    bot.send_text('pe": 1}')
    assert sent_frames(bot) == [(TEXT, b'{"ty'), (CONT, b'pe": 1}')]


def test_a_websocket_ping_is_a_ping_frame() -> None:
    bot = open_bot()
    bot.send_ws_ping(b"hello")
    assert sent_frames(bot) == [(PING, b"hello")]


# ============================================================================ receiving


def test_a_matching_pong_is_matched_with_its_round_trip_time() -> None:
    bot = open_bot()
    bot.send_ping(7, 1000)
    assert bot.outstanding_pings == {7: 1000}
    (event,) = bot.receive_data(
        pong_frame(seq=7, sent_at_ms=1000, server_received_at_ms=1030, bot_id="b"), 1075
    )
    assert event == PongReceived(7, 1000, 1030, "b", 75.0, True)
    assert bot.outstanding_pings == {}


def test_a_second_pong_for_the_same_ping_is_not_matched() -> None:
    bot = open_bot()
    bot.send_ping(7, 1000)
    bot.receive_data(pong_frame(seq=7, sent_at_ms=1000), 1010)
    (event,) = bot.receive_data(pong_frame(seq=7, sent_at_ms=1000), 1020)
    assert isinstance(event, PongReceived)
    assert not event.matched
    assert event.round_trip_ms == 20.0


def test_a_pong_with_an_unknown_seq_is_not_matched() -> None:
    bot = open_bot()
    bot.send_ping(1, 1000)
    (event,) = bot.receive_data(pong_frame(seq=2, sent_at_ms=1000), 1010)
    assert isinstance(event, PongReceived)
    assert not event.matched
    assert bot.outstanding_pings == {1: 1000}


def test_a_pong_with_the_right_seq_but_another_sent_at_ms_is_not_matched() -> None:
    bot = open_bot()
    bot.send_ping(1, 1000)
    (event,) = bot.receive_data(pong_frame(seq=1, sent_at_ms=999), 1010)
    assert isinstance(event, PongReceived)
    assert not event.matched


def test_a_pong_with_an_unhashable_seq_is_not_matched() -> None:
    bot = open_bot()
    (event,) = bot.receive_data(pong_frame(seq=[1], sent_at_ms=5), 10)
    assert isinstance(event, PongReceived)
    assert (event.seq, event.matched) == ([1], False)


@pytest.mark.parametrize("sent_at_ms", ["1000", None, True, [1]])
def test_a_pong_without_a_numeric_sent_at_ms_has_no_round_trip_time(sent_at_ms: Any) -> None:
    bot = open_bot()
    bot.send_ping("s", sent_at_ms)
    (event,) = bot.receive_data(pong_frame(seq="s", sent_at_ms=sent_at_ms), 2000)
    assert isinstance(event, PongReceived)
    assert event.round_trip_ms is None
    assert event.matched


def test_a_pong_without_fields_is_reported_with_none() -> None:
    bot = open_bot()
    (event,) = bot.receive_data(pong_frame(), 10)
    assert event == PongReceived(None, None, None, None, None, False)


def test_a_pong_with_a_huge_sent_at_ms_does_not_raise() -> None:
    bot = open_bot()
    (event,) = bot.receive_data(pong_frame(seq=1, sent_at_ms=10**400), 10)
    assert isinstance(event, PongReceived)


def test_a_fragmented_text_from_the_receiver_is_one_message() -> None:
    bot = open_bot()
    text = json.dumps({"type": "video_latency_pong", "seq": 1}).encode()
    events = bot.receive_data(
        from_server(TEXT, text[:5], fin=False) + from_server(CONT, text[5:]), NOW
    )
    assert [type(e) for e in events] == [PongReceived]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"not json", WarningKind.INVALID_JSON),
        (b"[1, 2]", WarningKind.NOT_AN_OBJECT),
        (b'{"type": "video_stream_start"}', WarningKind.UNKNOWN_TYPE),
        (b'{"seq": 1}', WarningKind.UNKNOWN_TYPE),
    ],
)
def test_text_other_than_a_pong_is_a_warning(payload: bytes, kind: WarningKind) -> None:
    bot = open_bot()
    (event,) = bot.receive_data(from_server(TEXT, payload), NOW)
    assert isinstance(event, ProtocolWarning)
    assert event.kind is kind


def test_binary_from_the_receiver_is_one_warning_per_message() -> None:
    bot = open_bot()
    events = bot.receive_data(from_server(BINARY, b"a", fin=False) + from_server(CONT, b"b"), NOW)
    assert [e.kind for e in events] == [WarningKind.UNEXPECTED_MESSAGE]  # type: ignore[attr-defined]


def test_a_ping_from_the_receiver_is_answered_with_the_same_payload() -> None:
    bot = open_bot()
    assert bot.receive_data(from_server(PING, b"alive?"), NOW) == []
    assert sent_frames(bot) == [(PONG, b"alive?")]


def test_a_ping_from_the_receiver_while_closing_is_not_answered() -> None:
    bot = open_bot()
    bot.close()
    bot.data_to_send()
    assert bot.receive_data(from_server(PING, b"alive?"), NOW) == []
    assert bot.data_to_send() == b""


# ============================================================================ closing


def test_our_close_answered_by_the_receiver_gives_bot_closed() -> None:
    pair = Pair().open()
    pair.bot.close(4001, "bye")
    assert pair.bot.state is BotState.CLOSING
    pair.to_server()
    assert pair.to_bot() == [BotClosed(4001, "bye")]
    assert pair.bot.state is BotState.CLOSED
    assert pair.bot.data_to_send() == b""


def test_a_close_from_the_receiver_is_echoed() -> None:
    pair = Pair().open()
    pair.server.close(1001, "going away", now_ms=NOW)
    assert pair.to_bot() == [BotClosed(1001, "going away")]
    ((opcode, payload),) = sent_frames(pair.bot)
    assert (opcode, payload[:2]) == (CLOSE, b"\x03\xe9")


def test_a_protocol_error_from_the_receiver_is_bot_closed_1002_and_a_close_frame() -> None:
    bot = open_bot()
    (event,) = bot.receive_data(frame(BINARY, b"masked", mask=True), NOW)
    assert isinstance(event, BotClosed)
    assert event.code == 1002
    ((opcode, payload),) = sent_frames(bot)
    assert (opcode, payload[:2]) == (CLOSE, b"\x03\xea")


def test_eof_while_open_is_bot_closed_1006() -> None:
    bot = open_bot()
    assert bot.receive_data(b"", NOW) == [BotClosed(1006, "")]
    assert bot.state is BotState.CLOSED


def test_close_when_closing_or_closed_does_nothing() -> None:
    bot = open_bot()
    bot.close()
    bot.data_to_send()
    bot.close()
    assert bot.data_to_send() == b""
    bot.receive_data(from_server(CLOSE, b"\x03\xe8"), NOW)
    bot.close()
    assert bot.data_to_send() == b""
    assert bot.state is BotState.CLOSED


def test_frames_after_the_close_are_ignored() -> None:
    bot = open_bot()
    events = bot.receive_data(close_frame(1000, mask=False) + pong_frame(seq=1), NOW)
    assert events == [BotClosed(1000, "")]
    assert bot.receive_data(pong_frame(seq=2), NOW) == []


def test_the_close_frame_from_the_receiver_is_read_with_read_frames() -> None:
    pair = Pair().open()
    pair.server.close(1001, now_ms=NOW)
    (close,) = read_frames(pair.server.data_to_send())
    assert close.close_code == 1001


def test_sending_a_number_json_cannot_hold_is_a_local_error() -> None:
    bot = open_bot()
    with pytest.raises(LocalProtocolError):
        bot.send_ping(1, float("nan"))
