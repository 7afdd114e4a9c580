"""Serve one MeetStream connection with the sans-IO core, a blocking socket and a clock.

Usage: python drive_the_core.py PORT OUTPUT_FILE  (port 0 picks a free port; the first line
printed is the port). The media goes to OUTPUT_FILE, every other event to stdout.
"""

from __future__ import annotations

import socket
import sys
import time

from meetstream_live import ConnectionState, MediaChunk, ServerConnection


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def serve_one(listener: socket.socket, out_path: str) -> None:
    sock, _ = listener.accept()
    conn = ServerConnection(now_ms=now_ms())
    with sock, open(out_path, "wb") as out:
        while conn.state is not ConnectionState.CLOSED:
            deadline = conn.next_deadline()  # a now_ms value, or None
            sock.settimeout(None if deadline is None else max(deadline - now_ms(), 1) / 1000)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                events = conn.handle_timeout(now_ms())
            except OSError:  # a reset connection ends like EOF
                events = conn.receive_data(b"", now_ms())
            else:
                events = conn.receive_data(data, now_ms())  # b"" is EOF
            try:
                sock.sendall(conn.data_to_send())  # first: pongs must not wait for our work
            except OSError:  # the bot is gone: EOF as well
                events += conn.receive_data(b"", now_ms())
            for event in events:
                if isinstance(event, MediaChunk):
                    out.write(event.data)
                else:
                    print(event, flush=True)


if __name__ == "__main__":
    with socket.create_server(("127.0.0.1", int(sys.argv[1]))) as listener:
        print(listener.getsockname()[1], flush=True)
        serve_one(listener, sys.argv[2])
