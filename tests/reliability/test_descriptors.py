"""File descriptors run out (``EMFILE``): upgrades get 503, streams in flight go on, the
server recovers when descriptors are free again. Every adapter, each in a server process of
its own whose ``RLIMIT_NOFILE`` the test lowers (``_server.py``: ``nofile``, ``hog``).

Two ways to run out, as in production:

* **connections use them up**: idle WebSockets are opened until one is answered 503 (the
  check of :class:`~meetstream_live.adapters._driver.Descriptors` on each new connection:
  the reserve must be whole and one descriptor more free). Without it the next connection
  is never answered at all (``accept(2)`` fails, the kernel keeps it waiting);
* **something else in the process uses them up** (``hog``: a leak, a burst of files): then
  even ``accept(2)`` fails; the socket adapters let their reserve go and answer the waiting
  upgrade 503. Under an ASGI server, the server accepts (uvicorn, hypercorn: asyncio's
  accept logs and retries every second), so the connection waits until descriptors are
  free and is then served: that is what is asserted there.

Then descriptors are freed, a new bot streams a whole recording, and the two bots that
streamed through it all have every byte recorded and every ping answered. The burst is
logged once ("out of file descriptors"), and its end once ("available again").
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from helpers import upgrade_request

from meetstream_live import PongReceived
from meetstream_live.adapters.sync import SyncBot

from ._process import ServerProcess
from .conftest import is_asgi

OUT_OF = "out of file descriptors"
BACK = "file descriptors are available again"


def answer_head(sock: socket.socket, timeout: float) -> bytes | None:
    """The HTTP answer's head, or None when nothing came in ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                return data or None
            data += more
    except TimeoutError:
        return None
    except OSError:
        return data or None
    return data


def upgrade(port: int, timeout: float) -> tuple[socket.socket, bytes | None]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request("/", host=f"127.0.0.1:{port}"))
    return sock, answer_head(sock, timeout)


class Streaming(threading.Thread):
    """A bot that streams ``media`` over ``seconds``, a ping with every chunk, each pong
    awaited (so a ping left unanswered shows)."""

    def __init__(self, port: int, media: bytes, bot_id: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.media, self.bot_id, self.seconds = port, media, bot_id, seconds
        self.pings = self.pongs = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            bot = SyncBot.connect(f"ws://127.0.0.1:{self.port}/", timeout=10)
            bot.send_start(self.bot_id)
            step = 4096
            pause = self.seconds / (len(self.media) / step)
            for i in range(0, len(self.media), step):
                bot.send_chunk(self.media[i : i + step])
                bot.send_ping(self.pings)
                self.pings += 1
                while not isinstance(event := bot.next_event(timeout=5), PongReceived):
                    pass
                assert event.matched
                self.pongs += 1
                time.sleep(pause)
            bot.send_end(2.0)
            bot.close(1000)
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_recordings(out: Path, count: int, timeout: float = 20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted(out.rglob("*.mp4"))
        if len(done) >= count and not list(out.rglob("*.part")):
            return done
        time.sleep(0.05)
    return sorted(out.rglob("*.mp4"))


def test_out_of_descriptors(adapter: str, media: bytes, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ServerProcess(adapter, out, tmp_path / "server.log") as server:
        port = server.port
        assert server.command("nofile 48").startswith("limit ")
        flowing = [Streaming(port, media, f"inflight-{n}", 4.0) for n in range(2)]
        for bot in flowing:
            bot.start()
        time.sleep(0.5)  # both streaming, their files open

        # 1. Connections use the descriptors up: one of them is answered 503.
        fillers: list[socket.socket] = []
        refused: bytes | None = b""
        for _ in range(80):
            sock, head = upgrade(port, timeout=3)
            fillers.append(sock)
            if head is None or not head.startswith(b"HTTP/1.1 101"):
                refused = head
                break
        assert refused is not None, "a connection was never answered: no 503 when out of fds"
        assert refused.startswith(b"HTTP/1.1 503"), refused
        for sock in fillers:
            sock.close()
        time.sleep(0.3)
        after = Streaming(port, media, "after-connections", 0.5)
        after.run()
        assert after.error is None, repr(after.error)

        # 2. Something else takes every descriptor: even accept(2) fails.
        assert server.command("hog").startswith("hogged ")
        sock, head = upgrade(port, timeout=1.5 if is_asgi(adapter) else 5)
        # Ours accept (a reserve descriptor) and answer 503. The ASGI servers' own accept loops
        # either wait for a descriptor, then serve it (below), or get one a closing socket gave
        # back and reach our driver, which answers 503 while the headroom is short.
        waited = head is None and is_asgi(adapter)
        if not waited:
            assert head is not None and head.startswith(b"HTTP/1.1 503"), head
        assert server.command("free") == "freed"
        if waited:
            late = answer_head(sock, timeout=5)
            assert late is not None and late.startswith(b"HTTP/1.1 101"), late
        sock.close()
        time.sleep(0.3)
        last = Streaming(port, media, "after-hog", 0.5)
        last.run()
        assert last.error is None, repr(last.error)

        for bot in flowing:
            bot.join(30)
            assert bot.error is None, (bot.bot_id, repr(bot.error))
            assert bot.pongs == bot.pings > 0
        logged = server.logged()
    recordings = wait_recordings(out, 4)
    by_bot: dict[str, bytes] = {}
    for path in recordings:
        bot_id = path.parent.name
        by_bot[bot_id] = by_bot.get(bot_id, b"") + path.read_bytes()
    expected = {"inflight-0", "inflight-1", "after-connections", "after-hog"}
    assert expected <= set(by_bot), (sorted(by_bot), recordings)
    for bot_id in expected:
        assert by_bot[bot_id] == media, bot_id  # every byte, the streams in flight too
    bursts = 1 if is_asgi(adapter) else 2
    assert logged.count(OUT_OF) == bursts, logged[-3000:]
    assert logged.count(BACK) == bursts, logged[-3000:]
