"""Two clocks: deadlines run on the monotonic one, pongs are stamped with the wall clock, and a
wall clock stepped by an hour either way (NTP, a VM resumed) moves neither a timeout nor a
deadline (issue 13, item 3)."""

from __future__ import annotations

import json

import pytest
from helpers import json_frame, open_server, read_frames, upgrade_request

from meetstream_live import (
    DisconnectCause,
    Disconnected,
    LatencyPing,
    ServerConfig,
    ServerConnection,
)
from meetstream_live.adapters import Handler, ServerOptions
from meetstream_live.adapters._driver import ConnectionDriver

HOUR = 3_600_000
MONO = 5_000  # a monotonic clock starts anywhere
WALL = 1_760_000_000_000

PING = {"type": "video_latency_ping", "bot_id": "b", "seq": 1, "sent_at_ms": WALL - 20}


def opened(config: ServerConfig) -> ServerConnection:
    conn = ServerConnection(config, now_ms=MONO)
    conn.receive_data(upgrade_request(), MONO, WALL)
    conn.data_to_send()
    return conn


def pong_stamp(conn: ServerConnection) -> int:
    (frame,) = read_frames(conn.data_to_send())
    stamp: int = json.loads(frame.text)["server_received_at_ms"]
    return stamp


@pytest.mark.parametrize("step", [-HOUR, HOUR])
def test_a_wall_clock_step_moves_the_stamp_not_the_idle_deadline(step: int) -> None:
    conn = opened(ServerConfig(idle_timeout_ms=30_000))
    deadline = conn.next_deadline()
    assert deadline == MONO + 30_000
    events = conn.receive_data(json_frame(PING), MONO + 1_000, WALL + step)
    (ping,) = [e for e in events if isinstance(e, LatencyPing)]
    assert ping.received_at_ms == WALL + step == pong_stamp(conn)
    # The read restarted the idle timer on the monotonic clock only.
    assert conn.next_deadline() == MONO + 1_000 + 30_000
    # Neither early (the wall clock is an hour ahead)...
    assert conn.handle_timeout(MONO + 30_000) == []
    assert conn.state.name == "OPEN"
    # ...nor late: exactly when the monotonic clock says.
    conn.handle_timeout(MONO + 31_000)
    assert conn.state.name == "CLOSING"


def test_without_a_wall_clock_the_deadline_clock_stamps() -> None:
    """For callers whose one clock is the Unix time (the docs' simple loop)."""
    conn = ServerConnection(now_ms=WALL)
    conn.receive_data(upgrade_request(), WALL)
    conn.data_to_send()
    conn.receive_data(json_frame(PING), WALL + 5)
    assert pong_stamp(conn) == WALL + 5


def test_the_handshake_and_close_timeouts_ignore_the_wall_clock() -> None:
    conn = ServerConnection(ServerConfig(handshake_timeout_ms=10_000), now_ms=MONO)
    conn.receive_data(b"GET / HTTP/1.1\r\n", MONO + 1, WALL + HOUR)
    assert conn.next_deadline() == MONO + 10_000
    assert conn.handle_timeout(MONO + 9_999) == []
    conn, _ = open_server(ServerConfig(close_timeout_ms=2_000), now_ms=MONO)
    conn.close(1001, "bye", now_ms=MONO + 10)
    assert conn.next_deadline() == MONO + 2_010
    events = conn.handle_timeout(MONO + 2_010)
    (end,) = [e for e in events if isinstance(e, Disconnected)]
    assert end.code == 1006 and end.cause is DisconnectCause.LOCAL_CLOSE


class Clocks:
    """A monotonic and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.mono = MONO
        self.wall = WALL


@pytest.mark.parametrize("step", [-HOUR, HOUR])
def test_the_driver_feeds_each_clock_where_it_belongs(step: int) -> None:
    clocks = Clocks()
    driver = ConnectionDriver(
        ServerOptions(config=ServerConfig(idle_timeout_ms=30_000)),
        lambda info: Handler(),
        peer="test",
        post=lambda fn: None,
        wall=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )
    driver.receive(upgrade_request())
    assert driver.seconds_to_deadline() == 30.0
    clocks.wall += step  # the wall clock jumps; no time passes
    assert driver.seconds_to_deadline() == 30.0
    step_out = driver.receive(json_frame(PING))
    (frame,) = read_frames(step_out.out)
    assert json.loads(frame.text)["server_received_at_ms"] == WALL + step
    clocks.mono += 29_999
    assert driver.timeout().events == [] and not driver.closed
