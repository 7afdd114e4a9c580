"""Raw bytes against a running server: requests, frames, and what the server answers.

Every read has a timeout, so a defence that is missing makes a test fail, never hang.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from helpers import close_frame, read_frames, upgrade_request

__all__ = [
    "Answer",
    "connect",
    "http_answer",
    "open_ws",
    "read_all",
    "rss_bytes",
    "ws_answer",
]


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_all(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server writes until it closes: ``(bytes, closed)``; ``closed`` is false
    when ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(data), False
        except OSError:  # reset: the server is gone too
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def read_response(
    sock: socket.socket, *, require_close: bool = True, timeout: float = 10.0
) -> tuple[bytes, bool]:
    """An HTTP answer: ``(bytes, closed)``. Without ``require_close`` it returns as soon as
    the head and its ``Content-Length`` body are in (some servers keep the TCP connection open
    a while after a ``Connection: close`` answer); otherwise it reads until the server closes."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while (remaining := deadline - time.monotonic()) > 0:
        if not require_close and b"\r\n\r\n" in data:
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return bytes(data), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def http_answer(
    port: int, request: bytes, *, require_close: bool = True, timeout: float = 10.0
) -> tuple[int | None, bytes]:
    """Send ``request``; the status of the answer (None if none came) and the whole answer.
    With ``require_close``, asserts the server closed the connection after it."""
    with connect(port) as sock:
        with suppress(OSError):  # the server answered and closed before taking it all
            sock.sendall(request)
        data, closed = read_response(sock, require_close=require_close, timeout=timeout)
    if require_close:
        assert closed, f"the server kept the connection open after {data[:200]!r}"
    if not data.startswith(b"HTTP/1."):
        return None, data
    return int(data.split(b" ", 2)[1]), data


def open_ws(port: int, path: str = "/") -> socket.socket:
    """A socket past a valid WebSocket handshake."""
    sock = connect(port)
    sock.sendall(upgrade_request(path, host=f"127.0.0.1:{port}"))
    response = b""
    while b"\r\n\r\n" not in response:
        more = sock.recv(4096)
        assert more, f"closed during the handshake: {response!r}"
        response += more
    assert response.startswith(b"HTTP/1.1 101"), response
    _head, _, rest = response.partition(b"\r\n\r\n")
    assert not rest, rest
    return sock


@dataclass(frozen=True)
class Answer:
    """What the server wrote on an open WebSocket until it closed the TCP connection."""

    texts: list[str]
    close_code: int | None
    closed: bool


def _whole_frames(data: bytes) -> int:
    """How many leading bytes of ``data`` form whole (unmasked) frames."""
    pos = 0
    while pos + 2 <= len(data):
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            if pos + 4 > len(data):
                break
            (length,), head = struct.unpack("!H", data[pos + 2 : pos + 4]), 4
        elif length == 127:
            if pos + 10 > len(data):
                break
            (length,), head = struct.unpack("!Q", data[pos + 2 : pos + 10]), 10
        if pos + head + length > len(data):
            break
        pos += head + length
    return pos


def ws_answer(sock: socket.socket, timeout: float = 10.0) -> Answer:
    """Read until the server closes the TCP connection, answering its close frame (as a bot
    does) so that the server need not wait for its close timeout."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    closed = answered = False
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
        if not answered:
            whole = read_frames(bytes(data[: _whole_frames(bytes(data))]))
            close = next((f for f in whole if f.opcode == 0x8), None)
            if close is not None:
                answered = True
                with suppress(OSError):
                    sock.sendall(close_frame(close.close_code or 1000))
    frames = read_frames(bytes(data[: _whole_frames(bytes(data))]))
    texts = [f.text for f in frames if f.opcode == 0x1]
    codes = [f.close_code for f in frames if f.opcode == 0x8]
    return Answer(texts, codes[0] if codes else None, closed)


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST, like a process that dies."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def collecting_logs(name: str = "meetstream_live") -> Iterator[list[str]]:
    """Log records of ``name`` and below, as text, whatever the handlers pytest set."""
    import logging

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    logger = logging.getLogger(name)
    handler = _Keep(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
