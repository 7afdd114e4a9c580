"""The receiver's side of one connection: HTTP upgrade, WebSocket frames, deadlines, session."""

from __future__ import annotations

import json
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
    feed,
    frame,
    http_status,
    json_frame,
    merge_chunks,
    of_type,
    open_server,
    read_frames,
    text_frame,
    upgrade_request,
)

from meetstream_live import (
    Accepted,
    ConnectionState,
    Disconnected,
    HTTPRejected,
    HTTPRequest,
    LatencyPing,
    LocalProtocolError,
    MediaChunk,
    Reject,
    Route,
    ServerConfig,
    ServerConnection,
    SessionState,
    StreamEnded,
    StreamStarted,
    route_request,
)

START = {"type": "video_stream_start", "bot_id": "bot-123"}
END = {"type": "video_stream_end", "bot_id": "bot-123", "duration_seconds": 1.5}


def reject(
    data: bytes, config: ServerConfig | None = None, **kwargs: Any
) -> tuple[HTTPRejected, bytes]:
    """Feed a request that must be refused; the one event and the response bytes."""
    conn = ServerConnection(config, now_ms=NOW, **kwargs)
    events = conn.receive_data(data, NOW)
    assert conn.state is ConnectionState.CLOSED
    (event,) = events
    assert isinstance(event, HTTPRejected)
    response = conn.data_to_send()
    assert http_status(response) == event.status
    assert b"\r\nConnection: close\r\n" in response
    return event, response


def accept(data: bytes, config: ServerConfig | None = None) -> Accepted:
    conn = ServerConnection(config, now_ms=NOW)
    (event,) = conn.receive_data(data, NOW)
    assert isinstance(event, Accepted)
    assert conn.state is ConnectionState.OPEN
    assert http_status(conn.data_to_send()) == 101
    return event


def sent_close_code(conn: ServerConnection) -> int | None:
    frames = read_frames(conn.data_to_send())
    assert [f.opcode for f in frames][-1:] == [CLOSE], frames
    return frames[-1].close_code


# ============================================================================ HTTP


def test_a_valid_upgrade_is_accepted_with_101_and_the_rfc_accept_token() -> None:
    conn = ServerConnection(now_ms=NOW)
    events = conn.receive_data(upgrade_request("/video?room=1"), NOW)
    assert events == [Accepted("/video", "room=1", events[0].headers)]  # type: ignore[attr-defined]
    response = conn.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert conn.state is ConnectionState.OPEN
    assert conn.session_state is SessionState.AWAITING_START


def test_accepted_carries_the_request_headers_lower_cased() -> None:
    event = accept(upgrade_request(extra=[("X-Bot", "yes")]))
    assert (b"x-bot", b"yes") in event.headers


def test_the_request_may_arrive_one_byte_at_a_time() -> None:
    conn = ServerConnection(now_ms=NOW)
    data = upgrade_request()
    events = feed(conn, data, cuts=range(len(data)))
    assert [type(e) for e in events] == [Accepted]


def test_frames_in_the_same_read_as_the_request_are_handled() -> None:
    conn = ServerConnection(now_ms=NOW)
    events = conn.receive_data(upgrade_request() + json_frame(START) + frame(BINARY, b"x"), NOW)
    assert [type(e) for e in events] == [Accepted, StreamStarted, MediaChunk]


def test_garbage_instead_of_http_is_rejected_400() -> None:
    event, _ = reject(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    assert event.status == 400


def test_eof_in_the_middle_of_a_request_head_is_rejected_400() -> None:
    conn = ServerConnection(now_ms=NOW)
    assert conn.receive_data(upgrade_request()[:30], NOW) == []
    (event,) = conn.receive_data(b"", NOW)
    assert isinstance(event, HTTPRejected)
    assert event.status == 400
    assert conn.state is ConnectionState.CLOSED


def test_a_request_head_over_16_kib_is_rejected_431() -> None:
    data = upgrade_request(extra=[("X-Padding", "p" * (20 * 1024))])
    conn = ServerConnection(now_ms=NOW)
    (event,) = feed(conn, data, cuts=range(0, len(data), 1024))
    assert isinstance(event, HTTPRejected)
    assert event.status == 431
    assert http_status(conn.data_to_send()) == 431
    assert conn.state is ConnectionState.CLOSED


def test_max_request_head_is_configurable() -> None:
    data = upgrade_request(extra=[("X-Padding", "p" * 200)])
    conn = ServerConnection(ServerConfig(max_request_head=100), now_ms=NOW)
    (event,) = feed(conn, data, cuts=range(0, len(data), 10))
    assert isinstance(event, HTTPRejected)
    assert event.status == 431


def test_a_request_head_over_the_limit_in_one_read_is_rejected_431() -> None:
    event, _ = reject(upgrade_request(extra=[("X-Padding", "p" * (16 * 1024))]))
    assert event.status == 431


def test_a_request_head_of_exactly_the_limit_is_accepted() -> None:
    data = upgrade_request(extra=[("X-Padding", "p" * 100)])
    accept(data, ServerConfig(max_request_head=len(data)))


@pytest.mark.parametrize("padding", ["p" * 50, "p" * 50 + "   "], ids=["plain", "trailing-ows"])
def test_the_431_limit_does_not_depend_on_how_the_reads_split_the_head(padding: str) -> None:
    data = upgrade_request(extra=[("X-Padding", padding)])
    for limit in range(len(data) - 4, len(data) + 2):
        outcomes = set()
        for cut in range(len(data) + 1):
            conn = ServerConnection(ServerConfig(max_request_head=limit), now_ms=NOW)
            (event,) = feed(conn, data, cuts=[cut])
            outcomes.add(getattr(event, "status", 101))
        assert len(outcomes) == 1, (limit, len(data), outcomes)


def test_a_wrong_path_is_rejected_404_when_a_path_is_configured() -> None:
    event, _ = reject(upgrade_request("/other"), ServerConfig(path="/video"))
    assert (event.status, event.path) == (404, "/other")


def test_the_configured_path_is_accepted_with_any_query() -> None:
    assert accept(upgrade_request("/video?x=1"), ServerConfig(path="/video")).path == "/video"


def test_any_path_is_accepted_when_no_path_is_configured() -> None:
    assert accept(upgrade_request("/any/where")).path == "/any/where"


def test_a_wrong_method_is_rejected_405_with_allow_get() -> None:
    event, response = reject(upgrade_request(method="POST"))
    assert event.status == 405
    assert b"\r\nAllow: GET\r\n" in response


def test_get_without_upgrade_is_rejected_426_naming_websocket() -> None:
    event, response = reject(upgrade_request(omit=["upgrade", "connection"]))
    assert event.status == 426
    assert b"\r\nUpgrade: websocket\r\n" in response


def test_get_without_connection_upgrade_is_rejected_400() -> None:
    event, _ = reject(upgrade_request(omit=["connection"]))
    assert event.status == 400


def test_missing_sec_websocket_key_is_rejected_400() -> None:
    event, _ = reject(upgrade_request(omit=["sec_websocket_key"]))
    assert event.status == 400


def test_a_wrong_sec_websocket_version_is_rejected_426_naming_13() -> None:
    event, response = reject(upgrade_request(sec_websocket_version="8"))
    assert event.status == 426
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in response


def test_a_missing_sec_websocket_version_is_rejected_400() -> None:
    event, _ = reject(upgrade_request(omit=["sec_websocket_version"]))
    assert event.status == 400


def test_a_rejection_says_why_in_the_event_and_only_the_status_in_the_body() -> None:
    event, response = reject(upgrade_request("/?<script>", omit=["sec_websocket_key"]))
    assert "Sec-WebSocket-Key" in event.reason
    head, body = response.split(b"\r\n\r\n", 1)
    assert body == b"400 Bad Request\n"
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head + b"\r\n"
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in head + b"\r\n"


@pytest.mark.parametrize("target", ["//[", "//[x]/", "http://[::1/"])
def test_a_target_urlsplit_refuses_is_rejected_400_not_raised(target: str) -> None:
    event, _ = reject(upgrade_request(target))
    assert event.status == 400


@pytest.mark.parametrize("host", ["r\xe9ceiver.test", "xn--", "xn--zz-.test"])
def test_a_host_that_is_not_valid_idna_is_rejected_400(host: str) -> None:
    event, _ = reject(upgrade_request(host=host))
    assert event.status == 400


@pytest.mark.parametrize("omit", [(), ("host",)], ids=["with-host", "without-host"])
def test_an_http_1_0_upgrade_is_rejected_400(omit: tuple[str, ...]) -> None:
    event, _ = reject(upgrade_request(version="HTTP/1.0", omit=omit))
    assert event.status == 400


def test_an_http_1_0_request_on_an_http_path_is_still_served() -> None:
    conn = ServerConnection(ServerConfig(http_paths=frozenset({"/healthz"})), now_ms=NOW)
    (event,) = conn.receive_data(b"GET /healthz HTTP/1.0\r\n\r\n", NOW)
    assert isinstance(event, HTTPRequest)


def test_route_request_rejects_a_target_it_cannot_parse_with_400() -> None:
    route = route_request(ServerConfig(), "GET", "//[", ((b"upgrade", b"websocket"),))
    assert isinstance(route, Reject)
    assert (route.status, route.path) == (400, None)


# ---------------------------------------------------------------------------- token


TOKEN = ServerConfig(token="s3cret")


def test_a_missing_token_is_rejected_401_with_www_authenticate() -> None:
    event, response = reject(upgrade_request(), TOKEN)
    assert event.status == 401
    assert b"\r\nWWW-Authenticate: Bearer\r\n" in response


def test_a_wrong_token_in_the_query_is_rejected_401() -> None:
    event, _ = reject(upgrade_request("/?token=nope"), TOKEN)
    assert event.status == 401


def test_a_wrong_bearer_token_is_rejected_401() -> None:
    event, _ = reject(upgrade_request(extra=[("Authorization", "Bearer nope")]), TOKEN)
    assert event.status == 401


def test_a_right_token_in_a_non_bearer_authorization_is_rejected_401() -> None:
    event, _ = reject(upgrade_request(extra=[("Authorization", "Basic s3cret")]), TOKEN)
    assert event.status == 401


def test_the_right_token_in_the_query_is_accepted() -> None:
    assert accept(upgrade_request("/?a=1&token=s3cret"), TOKEN).query == "a=1&token=s3cret"


def test_the_right_bearer_token_is_accepted_whatever_the_scheme_case() -> None:
    accept(upgrade_request(extra=[("Authorization", "Bearer s3cret")]), TOKEN)
    accept(upgrade_request(extra=[("Authorization", "bearer  s3cret ")]), TOKEN)


def test_one_right_token_among_wrong_ones_is_accepted() -> None:
    accept(
        upgrade_request("/?token=wrong&token=s3cret", extra=[("Authorization", "Bearer x")]),
        TOKEN,
    )


def test_a_non_ascii_token_is_compared_as_utf8() -> None:
    config = ServerConfig(token="clé")
    accept(upgrade_request("/?token=cl%C3%A9"), config)
    event, _ = reject(upgrade_request("/?token=cle"), config)
    assert event.status == 401


# ---------------------------------------------------------------------------- overload, probes


def test_an_upgrade_is_rejected_503_with_retry_after_when_overloaded() -> None:
    event, response = reject(upgrade_request(), overloaded=True)
    assert event.status == 503
    assert b"\r\nRetry-After: 5\r\n" in response


def test_an_http_path_is_still_served_when_overloaded() -> None:
    conn = ServerConnection(
        ServerConfig(http_paths=frozenset({"/healthz"})), now_ms=NOW, overloaded=True
    )
    (event,) = conn.receive_data(b"GET /healthz?full=1 HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    assert event == HTTPRequest("GET", "/healthz?full=1", "/healthz", "full=1", ((b"host", b"x"),))
    assert conn.state is ConnectionState.HTTP_RESPONSE


def test_an_http_request_is_answered_with_send_response_and_closed() -> None:
    conn = ServerConnection(ServerConfig(http_paths=frozenset({"/metrics"})), now_ms=NOW)
    conn.receive_data(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    assert conn.data_to_send() == b""
    conn.send_response(
        200,
        b"up 1\n",
        content_type="text/plain; version=0.0.4",
        headers=((b"Cache-Control", b"no-store"),),
    )
    response = conn.data_to_send()
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"\r\nContent-Type: text/plain; version=0.0.4" in head
    assert b"\r\nCache-Control: no-store" in head
    assert b"\r\nContent-Length: 5" in head
    assert b"\r\nConnection: close" in head
    assert body == b"up 1\n"
    assert conn.state is ConnectionState.CLOSED


def test_send_response_with_an_unknown_status_has_an_empty_phrase() -> None:
    conn = ServerConnection(ServerConfig(http_paths=frozenset({"/x"})), now_ms=NOW)
    conn.receive_data(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    conn.send_response(599)
    assert conn.data_to_send().startswith(b"HTTP/1.1 599 \r\n")


def test_bytes_after_an_http_request_are_ignored() -> None:
    conn = ServerConnection(ServerConfig(http_paths=frozenset({"/x"})), now_ms=NOW)
    conn.receive_data(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    assert conn.receive_data(b"GET /x HTTP/1.1\r\n", NOW) == []
    assert conn.state is ConnectionState.HTTP_RESPONSE


def test_an_upgrade_on_an_http_path_is_a_websocket() -> None:
    config = ServerConfig(http_paths=frozenset({"/healthz"}))
    assert accept(upgrade_request("/healthz"), config).path == "/healthz"


@pytest.mark.parametrize("state", ["handshake", "open", "closed"])
def test_send_response_without_a_pending_request_raises(state: str) -> None:
    if state == "open":
        conn, _ = open_server()
    else:
        conn = ServerConnection(now_ms=NOW)
        if state == "closed":
            conn.receive_data(b"", NOW)
    with pytest.raises(LocalProtocolError):
        conn.send_response(200)


def test_a_reject_carries_a_fixed_body_that_never_reflects_the_request() -> None:
    refusal = Reject(404, "no WebSocket endpoint at /<script>", "/<script>")
    assert refusal.body == b"404 Not Found\n"
    assert Reject(599, "odd").body == b"599 \n"


def test_a_reject_answers_with_nosniff_then_its_own_headers() -> None:
    refusal = Reject(405, "no", headers=((b"Allow", b"GET"),))
    assert refusal.response_headers == ((b"X-Content-Type-Options", b"nosniff"), (b"Allow", b"GET"))


def test_the_server_sends_exactly_what_route_request_decided() -> None:
    config = ServerConfig(path="/v")
    refusal = route_request(config, "GET", "/x", ((b"upgrade", b"websocket"),))
    assert isinstance(refusal, Reject)
    _, response = reject(upgrade_request("/x"), config)
    head, body = response.split(b"\r\n\r\n", 1)
    assert body == refusal.body
    for name, value in refusal.response_headers:
        assert b"\r\n" + name + b": " + value in head


def test_route_request_sends_an_upgrade_to_the_websocket_with_its_query() -> None:
    route = route_request(ServerConfig(), "GET", "/v?a=b", ((b"upgrade", b"WebSocket"),))
    assert route == Route("/v", "a=b")


def test_route_request_takes_an_empty_path_as_root() -> None:
    route = route_request(ServerConfig(path="/"), "GET", "?a=b", ((b"upgrade", b"websocket"),))
    assert route == Route("/", "a=b")


def test_route_request_checks_path_before_method_before_upgrade_before_token() -> None:
    config = ServerConfig(path="/v", token="t")
    assert route_request(config, "POST", "/x", ()).status == 404  # type: ignore[union-attr]
    assert route_request(config, "POST", "/v", ()).status == 405  # type: ignore[union-attr]
    assert route_request(config, "GET", "/v", ()).status == 426  # type: ignore[union-attr]
    upgrade = ((b"upgrade", b"websocket"),)
    assert route_request(config, "GET", "/v", upgrade).status == 401  # type: ignore[union-attr]
    rejected = route_request(config, "GET", "/v?token=t", upgrade, overloaded=True)
    assert rejected == Reject(503, rejected.reason, "/v", ((b"Retry-After", b"5"),))  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- deadlines, EOF


def test_the_handshake_deadline_runs_from_construction() -> None:
    conn = ServerConnection(ServerConfig(handshake_timeout_ms=500), now_ms=1000)
    assert conn.next_deadline() == 1500
    conn.receive_data(b"GET / HTTP/1.1\r\n", 1400)
    assert conn.next_deadline() == 1500


def test_handle_timeout_before_the_deadline_does_nothing() -> None:
    conn = ServerConnection(ServerConfig(handshake_timeout_ms=500), now_ms=1000)
    assert conn.handle_timeout(1499) == []
    assert conn.state is ConnectionState.HANDSHAKE
    assert conn.data_to_send() == b""


def test_no_complete_request_by_the_handshake_deadline_is_rejected_408() -> None:
    conn = ServerConnection(ServerConfig(handshake_timeout_ms=500), now_ms=1000)
    conn.receive_data(b"GET / HTTP/1.1\r\n", 1100)
    (event,) = conn.handle_timeout(1500)
    assert isinstance(event, HTTPRejected)
    assert event.status == 408
    assert http_status(conn.data_to_send()) == 408
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_deadline() is None


def test_eof_before_any_request_closes_without_event_or_bytes() -> None:
    conn = ServerConnection(now_ms=NOW)
    assert conn.receive_data(b"", NOW) == []
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""


def test_close_before_the_upgrade_just_closes() -> None:
    conn = ServerConnection(now_ms=NOW)
    assert conn.close(now_ms=NOW) == []
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""


def test_close_while_an_http_request_waits_for_its_answer_just_closes() -> None:
    conn = ServerConnection(ServerConfig(http_paths=frozenset({"/x"})), now_ms=NOW)
    conn.receive_data(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    assert conn.next_deadline() is None
    conn.close(now_ms=NOW)
    assert conn.state is ConnectionState.CLOSED


def test_input_after_a_rejection_is_ignored() -> None:
    conn = ServerConnection(now_ms=NOW)
    conn.receive_data(b"garbage\r\n\r\n", NOW)
    conn.data_to_send()
    assert conn.receive_data(upgrade_request(), NOW) == []
    assert conn.handle_timeout(NOW + 10**9) == []
    assert conn.data_to_send() == b""


# ============================================================================ WebSocket frames


@pytest.mark.parametrize(
    "bad_frame",
    [
        pytest.param(frame(BINARY, b"abc", mask=False), id="unmasked"),
        pytest.param(frame(BINARY, b"abc", rsv=0b100), id="rsv1"),
        pytest.param(frame(BINARY, b"abc", rsv=0b010), id="rsv2"),
        pytest.param(frame(TEXT, b"{}", rsv=0b001), id="rsv3"),
        pytest.param(frame(0x3, b"abc"), id="opcode-3"),
        pytest.param(frame(0xB, b"abc"), id="opcode-B"),
        pytest.param(frame(PING, b"x" * 126), id="ping-over-125"),
        pytest.param(frame(CLOSE, b"\x03\xe8" + b"x" * 124), id="close-over-125"),
        pytest.param(frame(PING, b"x", fin=False), id="fragmented-ping"),
        pytest.param(frame(CONT, b"abc"), id="continuation-first"),
        pytest.param(frame(BINARY, b"abc", length_width=16), id="non-minimal-length"),
        pytest.param(frame(BINARY, b"", length=2**63, length_width=64), id="length-msb-set"),
        pytest.param(close_frame(999), id="close-999"),
        pytest.param(close_frame(1005), id="close-1005"),
        pytest.param(close_frame(1006), id="close-1006"),
        pytest.param(close_frame(1016), id="close-1016"),
        pytest.param(frame(CLOSE, b"\x03"), id="close-1-byte"),
    ],
)
def test_a_protocol_violation_is_answered_with_close_1002(bad_frame: bytes) -> None:
    conn, _ = open_server()
    events = conn.receive_data(bad_frame, NOW)
    assert events[-1] == Disconnected(1002, events[-1].reason, True)  # type: ignore[attr-defined]
    assert sent_close_code(conn) == 1002
    assert conn.state is ConnectionState.CLOSED


def test_a_data_frame_interrupting_a_fragmented_message_is_close_1002() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(frame(BINARY, b"a", fin=False) + frame(TEXT, b"{}"), NOW)
    assert events[0] == MediaChunk(b"a", 0)
    assert events[-1] == Disconnected(1002, events[-1].reason, False)  # type: ignore[attr-defined]
    assert sent_close_code(conn) == 1002


def test_invalid_utf8_in_text_is_close_1007() -> None:
    conn, _ = open_server()
    (event,) = conn.receive_data(frame(TEXT, b'{"type": "\xff"}'), NOW)
    assert isinstance(event, Disconnected)
    assert event.code == 1007
    assert sent_close_code(conn) == 1007


def test_invalid_utf8_in_a_close_reason_is_close_1007() -> None:
    conn, _ = open_server()
    conn.receive_data(frame(CLOSE, b"\x03\xe8\xff"), NOW)
    assert sent_close_code(conn) == 1007


def test_a_text_message_over_max_text_size_is_close_1009() -> None:
    conn, _ = open_server(ServerConfig(max_text_size=64))
    assert conn.receive_data(text_frame("x" * 65), NOW) == []
    assert sent_close_code(conn) == 1009
    assert conn.state is ConnectionState.CLOSING


def test_a_text_message_over_max_text_size_in_many_fragments_is_close_1009() -> None:
    conn, _ = open_server(ServerConfig(max_text_size=64))
    conn.receive_data(text_frame("x" * 10, fin=False), NOW)
    for _ in range(5):
        conn.receive_data(frame(CONT, b"x" * 10, fin=False), NOW)
    assert conn.data_to_send() == b""
    conn.receive_data(frame(CONT, b"x" * 10, fin=True), NOW)
    assert sent_close_code(conn) == 1009


def test_after_a_close_for_too_big_text_media_is_dropped_until_the_bot_answers() -> None:
    conn, _ = open_server(ServerConfig(max_text_size=64))
    conn.receive_data(json_frame(START) + text_frame("x" * 65), NOW)
    conn.data_to_send()
    assert conn.receive_data(frame(BINARY, b"dropped") + json_frame(END), NOW) == []
    events = conn.receive_data(close_frame(1009), NOW)
    assert events == [Disconnected(1009, "text message over 64 bytes", False)]


def test_a_websocket_ping_is_answered_with_a_pong_with_the_same_payload() -> None:
    conn, _ = open_server()
    assert conn.receive_data(frame(PING, b"are you there?"), NOW) == []
    (pong,) = read_frames(conn.data_to_send())
    assert (pong.opcode, pong.payload) == (PONG, b"are you there?")


def test_a_websocket_ping_between_fragments_is_answered_and_the_message_goes_on() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(
        frame(BINARY, b"ab", fin=False) + frame(PING, b"p") + frame(CONT, b"cd"), NOW
    )
    assert events == [MediaChunk(b"ab", 0), MediaChunk(b"cd", 2)]
    (pong,) = read_frames(conn.data_to_send())
    assert pong.payload == b"p"


def test_an_unsolicited_websocket_pong_is_ignored() -> None:
    conn, _ = open_server()
    assert conn.receive_data(frame(PONG, b"x"), NOW) == []
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.OPEN


# ---------------------------------------------------------------------------- close handshakes


def test_a_close_from_the_bot_is_echoed_and_ends_the_connection() -> None:
    conn, _ = open_server()
    events = conn.receive_data(close_frame(4000, "done"), NOW)
    assert events == [Disconnected(4000, "done", True)]
    (echo,) = read_frames(conn.data_to_send())
    assert (echo.close_code, echo.close_reason) == (4000, "done")
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_deadline() is None


def test_a_close_without_a_code_is_code_1005_and_echoed_without_one() -> None:
    conn, _ = open_server()
    assert conn.receive_data(close_frame(None), NOW) == [Disconnected(1005, "", True)]
    (echo,) = read_frames(conn.data_to_send())
    assert (echo.opcode, echo.payload) == (CLOSE, b"")


def test_data_after_the_close_is_ignored() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(close_frame(1000) + frame(BINARY, b"late"), NOW)
    assert events == [Disconnected(1000, "", False)]
    conn.data_to_send()
    assert conn.receive_data(frame(BINARY, b"later") + frame(PING, b""), NOW) == []
    assert conn.receive_data(b"", NOW) == []
    assert conn.data_to_send() == b""


def test_our_close_answered_by_the_bot_gives_disconnected_with_our_code() -> None:
    conn, _ = open_server()
    assert conn.close(1001, "shutting down", now_ms=NOW) == []
    (ours,) = read_frames(conn.data_to_send())
    assert (ours.close_code, ours.close_reason) == (1001, "shutting down")
    assert conn.state is ConnectionState.CLOSING
    events = conn.receive_data(close_frame(1001, "shutting down"), NOW)
    assert events == [Disconnected(1001, "shutting down", True)]
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSED


def test_disconnected_reports_our_close_code_whatever_code_the_bot_answers_with() -> None:
    conn, _ = open_server()
    conn.close(1001, "shutting down", now_ms=NOW)
    events = conn.receive_data(close_frame(1000, "ok"), NOW)
    assert events == [Disconnected(1001, "shutting down", True)]


def test_an_idle_close_answered_by_the_bot_is_disconnected_1001() -> None:
    conn, _ = open_server(ServerConfig(idle_timeout_ms=1000))
    conn.handle_timeout(NOW + 1000)
    conn.data_to_send()
    assert conn.receive_data(close_frame(1001), NOW + 1001) == [
        Disconnected(1001, "idle timeout", True)
    ]


def test_eof_after_our_close_is_disconnected_1006() -> None:
    conn, _ = open_server()
    conn.close(1001, now_ms=NOW)
    assert conn.receive_data(b"", NOW) == [Disconnected(1006, "", True)]


def test_media_until_the_bot_answers_our_close_is_still_delivered() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    conn.close(1001, now_ms=NOW)
    events = conn.receive_data(frame(BINARY, b"tail") + json_frame(END) + close_frame(1001), NOW)
    assert events == [MediaChunk(b"tail", 0), StreamEnded(1.5), Disconnected(1001, "", True)]


def test_a_latency_ping_after_our_close_is_reported_but_gets_no_pong() -> None:
    conn, _ = open_server()
    conn.close(1001, now_ms=NOW)
    conn.data_to_send()
    events = conn.receive_data(
        json_frame({"type": "video_latency_ping", "seq": 1, "sent_at_ms": 1}) + frame(PING, b"p"),
        NOW,
    )
    assert of_type(events, LatencyPing) == [LatencyPing(1, 1, NOW, None)]
    assert conn.data_to_send() == b""


def test_our_close_never_answered_ends_with_1006_at_the_close_timeout() -> None:
    conn, _ = open_server(ServerConfig(close_timeout_ms=2000))
    conn.receive_data(json_frame(START), NOW)
    conn.close(1001, now_ms=NOW + 10)
    assert conn.next_deadline() == NOW + 2010
    assert conn.handle_timeout(NOW + 2009) == []
    assert conn.handle_timeout(NOW + 2010) == [
        Disconnected(1006, "close handshake timed out", False)
    ]
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_deadline() is None


def test_the_close_timeout_does_not_move_while_the_bot_keeps_sending() -> None:
    conn, _ = open_server(ServerConfig(close_timeout_ms=2000))
    conn.close(1001, now_ms=NOW)
    conn.receive_data(frame(BINARY, b"x"), NOW + 1500)
    assert conn.next_deadline() == NOW + 2000


def test_close_when_already_closing_or_closed_does_nothing() -> None:
    conn, _ = open_server()
    conn.close(1001, now_ms=NOW)
    conn.data_to_send()
    conn.close(1000, now_ms=NOW)
    assert conn.data_to_send() == b""
    conn.receive_data(close_frame(1001), NOW)
    conn.close(1000, now_ms=NOW)
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSED


def test_an_idle_connection_is_closed_1001_at_the_idle_timeout() -> None:
    conn, _ = open_server(ServerConfig(idle_timeout_ms=1000, close_timeout_ms=50))
    conn.receive_data(frame(PING, b""), NOW + 300)
    conn.data_to_send()
    assert conn.next_deadline() == NOW + 1300
    assert conn.handle_timeout(NOW + 1299) == []
    assert conn.handle_timeout(NOW + 1300) == []
    assert sent_close_code(conn) == 1001
    assert conn.state is ConnectionState.CLOSING
    assert conn.next_deadline() == NOW + 1350


def test_keep_alive_restarts_the_idle_timer() -> None:
    conn, _ = open_server(ServerConfig(idle_timeout_ms=1000))
    conn.keep_alive(NOW + 900)
    assert conn.next_deadline() == NOW + 1900
    assert conn.handle_timeout(NOW + 1000) == []
    assert conn.state is ConnectionState.OPEN
    assert conn.data_to_send() == b""


def test_keep_alive_never_moves_the_idle_timer_back() -> None:
    conn, _ = open_server(ServerConfig(idle_timeout_ms=1000))
    conn.receive_data(frame(PONG), NOW + 500)
    conn.keep_alive(NOW + 100)
    assert conn.next_deadline() == NOW + 1500


def test_keep_alive_does_not_move_the_handshake_or_close_deadlines() -> None:
    conn = ServerConnection(ServerConfig(handshake_timeout_ms=500), now_ms=NOW)
    conn.keep_alive(NOW + 400)
    assert conn.next_deadline() == NOW + 500
    conn, _ = open_server(ServerConfig(close_timeout_ms=500))
    conn.close(1001, now_ms=NOW)
    conn.keep_alive(NOW + 400)
    assert conn.next_deadline() == NOW + 500


def test_no_idle_timeout_means_no_deadline_while_open() -> None:
    conn, _ = open_server(ServerConfig(idle_timeout_ms=None))
    assert conn.next_deadline() is None
    assert conn.handle_timeout(NOW + 10**12) == []
    assert conn.state is ConnectionState.OPEN


# ---------------------------------------------------------------------------- EOF, limits


def test_eof_mid_frame_delivers_every_byte_that_arrived_then_1006() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    whole = frame(BINARY, b"0123456789")
    events = conn.receive_data(whole[:-4], NOW)
    events += conn.receive_data(b"", NOW)
    assert events == [MediaChunk(b"012345", 0), Disconnected(1006, "", False)]
    assert conn.state is ConnectionState.CLOSED


def test_eof_inside_a_frame_that_claims_more_bytes_delivers_what_came() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(frame(BINARY, b"abc", length=1000, length_width=16), NOW)
    events += conn.receive_data(b"", NOW)
    assert events == [MediaChunk(b"abc", 0), Disconnected(1006, "", False)]


def test_early_binary_over_max_early_bytes_is_close_1009_and_still_delivered() -> None:
    conn, _ = open_server(ServerConfig(max_early_bytes=8))
    events = conn.receive_data(frame(BINARY, b"12345") + frame(BINARY, b"6789"), NOW)
    assert events == []
    assert sent_close_code(conn) == 1009
    assert conn.receive_data(frame(BINARY, b"dropped"), NOW) == []
    events = conn.receive_data(close_frame(1009), NOW)
    assert events == [
        # Exactly max_early_bytes are kept, however the reads split (the two whole messages
        # of one read are one chunk; wsproto's way gives the same bytes in two).
        MediaChunk(b"12345678", 0),
        Disconnected(1009, "over 8 bytes of binary data without video_stream_start", False),
    ]


def test_the_early_bytes_kept_before_a_1009_close_do_not_depend_on_the_reads() -> None:
    data = frame(BINARY, b"0123456789") + close_frame(1009)
    header = len(frame(BINARY, b"0123456789")) - 10
    delivered = []
    for cuts in [(), (header + 3, header + 6)]:
        conn, _ = open_server(ServerConfig(max_early_bytes=5))
        events = feed(conn, data, cuts=cuts)
        delivered.append(b"".join(e.data for e in of_type(events, MediaChunk)))
    assert delivered[0] == delivered[1]


def test_early_binary_within_max_early_bytes_waits_for_the_start() -> None:
    conn, _ = open_server(ServerConfig(max_early_bytes=8))
    conn.receive_data(frame(BINARY, b"12345678"), NOW)
    events = conn.receive_data(json_frame(START), NOW)
    assert events == [StreamStarted("bot-123"), MediaChunk(b"12345678", 0)]
    assert conn.data_to_send() == b""


# ============================================================================ MeetStream messages


def test_latency_pings_are_answered_in_text_frames_right_away() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START), NOW)
    ping = {"type": "video_latency_ping", "bot_id": "bot-123", "seq": 42, "sent_at_ms": 7}
    (event,) = conn.receive_data(json_frame(ping), NOW + 66)
    assert event == LatencyPing(42, 7, NOW + 66, "bot-123")
    (pong,) = read_frames(conn.data_to_send())
    assert pong.opcode == TEXT
    assert json.loads(pong.text) == {
        "type": "video_latency_pong",
        "seq": 42,
        "sent_at_ms": 7,
        "server_received_at_ms": NOW + 66,
        "bot_id": "bot-123",
    }


def test_a_close_without_end_is_not_clean() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START) + frame(BINARY, b"x"), NOW)
    assert conn.receive_data(close_frame(1000), NOW) == [Disconnected(1000, "", False)]


def test_an_end_then_eof_is_clean_with_code_1006() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START) + frame(BINARY, b"x") + json_frame(END), NOW)
    assert conn.receive_data(b"", NOW) == [Disconnected(1006, "", True)]


def test_binary_without_any_start_comes_out_before_disconnected_and_is_not_clean() -> None:
    conn, _ = open_server()
    conn.receive_data(frame(BINARY, b"ab"), NOW)
    conn.receive_data(frame(BINARY, b"cd"), NOW)
    assert conn.receive_data(close_frame(1000), NOW) == [
        MediaChunk(b"ab", 0),
        MediaChunk(b"cd", 2),
        Disconnected(1000, "", False),
    ]


def test_binary_after_end_with_no_next_stream_comes_out_before_disconnected() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START) + json_frame(END), NOW)
    conn.receive_data(frame(BINARY, b"late"), NOW)
    assert conn.receive_data(b"", NOW) == [MediaChunk(b"late", 0), Disconnected(1006, "", False)]


def test_a_second_stream_after_end_restarts_offsets_at_0() -> None:
    conn, _ = open_server()
    conn.receive_data(json_frame(START) + frame(BINARY, b"one") + json_frame(END), NOW)
    events = conn.receive_data(frame(BINARY, b"x") + json_frame({**START, "bot_id": "b2"}), NOW)
    assert events[-2:] == [StreamStarted("b2"), MediaChunk(b"x", 0)]
    assert conn.receive_data(frame(BINARY, b"yz"), NOW) == [MediaChunk(b"yz", 1)]


def test_a_fragmented_text_message_is_one_message() -> None:
    conn, _ = open_server()
    data = json.dumps(START).encode()
    events = conn.receive_data(
        frame(TEXT, data[:7], fin=False)
        + frame(CONT, data[7:20], fin=False)
        + frame(CONT, data[20:]),
        NOW,
    )
    assert events == [StreamStarted("bot-123")]


def test_the_whole_session_through_our_bot() -> None:
    pair = Pair().open()
    pair.bot.send_start("bot-9", codec="h264", width=1280)
    pair.bot.send_chunk(b"ftyp", final=False)
    pair.bot.send_chunk(b"moov")
    pair.bot.send_ping(1, NOW)
    pair.bot.send_end(2.0)
    pair.bot.close()
    pair.exchange()
    assert pair.server_events == [
        StreamStarted("bot-9", codec="h264", width=1280),
        MediaChunk(b"ftyp", 0),
        MediaChunk(b"moov", 4),
        LatencyPing(1, NOW, NOW, "bot-9"),
        StreamEnded(2.0),
        Disconnected(1000, "", True),
    ]
    assert pair.server.state is ConnectionState.CLOSED


@pytest.mark.parametrize("key", ["short", "!!!notbase64!!!!!!!!!!!", "dGhlIHNhbXBsZSBub25jZQ"])
def test_a_sec_websocket_key_that_is_not_16_bytes_of_base64_is_400(key: str) -> None:
    event, _ = reject(upgrade_request(sec_websocket_key=key))
    assert event.status == 400


def test_route_request_refuses_a_head_over_the_limit_when_told_its_size() -> None:
    config = ServerConfig(max_request_head=100)
    decision = route_request(config, "GET", "/", ((b"upgrade", b"websocket"),), head_size=101)
    assert isinstance(decision, Reject)
    assert decision.status == 431


# ----------------------------------------------------------------- binary message size


def test_a_binary_message_over_max_message_size_is_1009_and_what_fits_is_delivered() -> None:
    conn, _ = open_server(ServerConfig(max_message_size=10))
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(frame(BINARY, b"0123456789abc"), NOW)
    assert merge_chunks(events) == [MediaChunk(b"0123456789", 0)]
    assert sent_close_code(conn) == 1009


def test_the_message_size_counts_every_fragment_of_a_message() -> None:
    conn, _ = open_server(ServerConfig(max_message_size=10))
    conn.receive_data(json_frame(START), NOW)
    events = conn.receive_data(
        frame(BINARY, b"012345", fin=False) + frame(CONT, b"6789") + frame(BINARY, b"0123456789"),
        NOW,
    )
    assert merge_chunks(events) == [MediaChunk(b"01234567890123456789", 0)]  # two messages
    assert conn.data_to_send() == b""
    events = conn.receive_data(frame(BINARY, b"01234", fin=False) + frame(CONT, b"567890"), NOW)
    assert merge_chunks(events) == [MediaChunk(b"0123456789", 20)]
    assert sent_close_code(conn) == 1009


def test_a_frame_header_claiming_2_to_the_63_minus_1_bytes_is_1009_with_flat_memory() -> None:
    conn, _ = open_server(ServerConfig(max_message_size=1 << 20))
    conn.receive_data(json_frame(START), NOW)
    header = bytes([0x82, 0x80 | 127]) + (2**63 - 1).to_bytes(8, "big") + b"\0\0\0\0"
    delivered = 0
    conn.receive_data(header, NOW)
    for _ in range(20):  # 1.25 MiB of the claimed 8 EiB, in 64 KiB reads
        delivered += sum(len(e.data) for e in conn.receive_data(b"\0" * 65536, NOW)
                         if isinstance(e, MediaChunk))
    assert delivered == 1 << 20
    assert sent_close_code(conn) == 1009
