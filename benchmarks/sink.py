"""The ceiling: a raw TCP sink on loopback that accepts the WebSocket upgrade, then reads every
byte with ``recv_into`` into one buffer and discards it (no parsing, no disk).

``python -m benchmarks.sink PORT`` prints ``ready`` when it listens; one thread per connection.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: One buffer shared by every connection: the bytes are discarded, so threads may overwrite
#: each other's (and 1500 connections do not cost 1500 buffers).
BUFFER = bytearray(1024 * 1024)


def serve_one(conn: socket.socket) -> None:
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while conn.recv_into(BUFFER):
            pass


def main(argv: list[str]) -> int:
    port = int(argv[0]) if argv else 0
    with socket.create_server(("127.0.0.1", port), backlog=1024) as server:
        print("ready", server.getsockname()[1], flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
