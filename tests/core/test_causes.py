"""``Disconnected.cause``: why a connection ended, for programs (no reason strings parsed)."""

from __future__ import annotations

from helpers import BINARY, NOW, close_frame, frame, json_frame, open_server

from meetstream_live import (
    CloseCode,
    DisconnectCause,
    Disconnected,
    Event,
    ServerConfig,
    ServerConnection,
)

START = json_frame({"type": "video_stream_start", "bot_id": "b"})


def ended(events: list[Event]) -> Disconnected:
    (end,) = [e for e in events if isinstance(e, Disconnected)]
    return end


def test_the_bot_closes() -> None:
    conn, _ = open_server()
    end = ended(conn.receive_data(close_frame(1000), NOW))
    assert (end.code, end.cause) == (CloseCode.NORMAL, DisconnectCause.REMOTE_CLOSE)
    assert isinstance(end.code, CloseCode)


def test_the_transport_ends_without_a_close_frame() -> None:
    conn, _ = open_server()
    end = ended(conn.receive_data(b"", NOW))
    assert (end.code, end.cause) == (1006, DisconnectCause.CONNECTION_LOST)


def test_a_protocol_error() -> None:
    conn, _ = open_server()
    end = ended(conn.receive_data(frame(BINARY, b"x", rsv=0b100), NOW))  # RSV1 unnegotiated
    assert (end.code, end.cause) == (CloseCode.PROTOCOL_ERROR, DisconnectCause.PROTOCOL_ERROR)


def test_a_message_over_the_limit() -> None:
    conn, _ = open_server(ServerConfig(max_message_size=10))
    conn.receive_data(START + frame(BINARY, bytes(11)), NOW)
    end = ended(conn.receive_data(close_frame(1009), NOW))
    assert (end.code, end.cause) == (1009, DisconnectCause.MESSAGE_TOO_BIG)


def test_the_idle_timeout_even_when_the_bot_then_drops() -> None:
    """Once we closed, the cause stays ours, whatever the bot does next."""
    conn, _ = open_server(ServerConfig(idle_timeout_ms=1_000))
    conn.handle_timeout(NOW + 1_000)
    end = ended(conn.receive_data(b"", NOW + 1_001))
    assert (end.code, end.cause) == (1006, DisconnectCause.IDLE_TIMEOUT)


def test_the_caller_says_why_it_closes() -> None:
    for cause in (DisconnectCause.SHUTDOWN, DisconnectCause.HANDLER_ERROR):
        conn, _ = open_server()
        conn.close(1001, "server shutting down", now_ms=NOW, cause=cause)
        end = ended(conn.receive_data(close_frame(1001), NOW))
        assert (end.code, end.reason, end.cause) == (1001, "server shutting down", cause)
    conn, _ = open_server()
    conn.close(1000, "superseded", now_ms=NOW)
    assert ended(conn.receive_data(close_frame(1000), NOW)).cause is DisconnectCause.LOCAL_CLOSE


def test_a_code_the_enum_does_not_know_is_a_plain_int() -> None:
    conn, _ = open_server()
    end = ended(conn.receive_data(close_frame(4321, "app"), NOW))
    assert end.code == 4321 and type(end.code) is int
    assert end.cause is DisconnectCause.REMOTE_CLOSE


def test_causes_do_not_change_event_equality() -> None:
    """``cause`` is excluded from comparison: a hand-made Disconnected equals the core's."""
    assert Disconnected(1000, "", True, DisconnectCause.SHUTDOWN) == Disconnected(1000, "", True)
    assert ServerConnection(now_ms=NOW).state.name == "HANDSHAKE"
