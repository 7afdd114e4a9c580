"""A fleet that keeps sessions whole when a receiver is killed (issue 16, item 5): three
receivers with ``--nats`` behind a real HAProxy (consistent hash on ``/v1/streams/{bot_id}``,
health checks on ``/readyz``) and one nats-server with JetStream. Twelve bots stream real fMP4
through HAProxy; mid-stream the receiver with the most bots is SIGKILLed. HAProxy marks it
DOWN, its bots reconnect through HAProxy and land on the other two, which continue each
session as part 2 (the lease the dead node left in JetStream's key-value store); the killed
receiver is then restarted on the same port and output directory: its recovery finalizes the
parts it left as ``.part`` files and its bus publishes them whole (``bus.recovered``).

Then: every session is complete across the nodes (its parts 1..n, no gap, no duplicate, each
file decodes); every byte of every connection that ended cleanly is in the recordings, and of
the killed connections what the dead node had written to its disk; each part's bus copy
(``consume --part N``) is byte for byte its file; no message, part, verdict or session twice.
Last, the moved bots come back for a new meeting: the hash sends them to the restarted node,
which starts new sessions for them (their old ones ended elsewhere: the bus has no lease),
not a second part 2. With ``--nats-leases false`` the test fails (the moved bots get a new
session at the kill)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.test_bus import consume
from cli.test_serve import LISTENING
from media import Media, decodable_frames, fragment_spans
from services import HAProxy, haproxy, nats_server, require_module, stream_messages

from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.recording.bus import EVENTS_STREAM
from meetstream_live.adapters.recording.verify import verify_file

NODES = 3
BOTS = 12
#: Pieces (the init segment, then one fragment each) sent before the barrier the kill waits
#: for: every bot is mid-stream when its receiver dies.
BEFORE_KILL = 6
PACE = 0.1  # seconds between pieces: the streams last a few seconds
SERVE = ("--reconnect-grace", "60s", "--drain-timeout", "5s", "--nats-max-bytes", "256m")


@dataclass
class Node:
    """One receiver: ``serve`` in a subprocess; it may be killed and started again."""

    tmp_path: Path
    output: Path
    argv: tuple[str, ...]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log_path = self.tmp_path / f"log-{self.output.name}-{len(self.logs)}"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meetstream_live.adapters.cli", "serve",
                 "--port", str(self.port), "--output", str(self.output), *self.argv],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = LISTENING.findall(log_path.read_text("utf-8", "replace"))
            if found:
                self.port = int(found[0])
                return
            assert self.proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        raise AssertionError(log_path.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(60)
            assert code == 0, self.logs[-1].read_text()


@contextmanager
def kill_fleet(tmp_path: Path, *argv: str) -> Iterator[tuple[HAProxy, list[Node]]]:
    nodes = [Node(tmp_path, tmp_path / f"r{n}", (*SERVE, *argv)) for n in range(1, NODES + 1)]
    with ExitStack() as stack:
        for node in nodes:
            stack.callback(node.stop)
            node.start()
        lb = stack.enter_context(haproxy(
            {f"r{n}": ("127.0.0.1", node.port) for n, node in enumerate(nodes, 1)},
            hash_on="path", check_path="/readyz"))
        for n in range(1, NODES + 1):
            lb.wait_state(f"r{n}", "UP", timeout=30)
        yield lb, nodes


def pieces(data: bytes) -> list[bytes]:
    """The stream a bot sends: the init segment, then one piece per fragment (ffmpeg's
    ``mfra`` after the last fragment is left out: a live bot does not send one)."""
    init_end, spans = fragment_spans(data)
    return [data[:init_end], *(data[at:at + size] for at, size in spans)]


@dataclass
class Connection:
    node: int | None = None  # found afterwards, from the disk
    sent: int = 0  # bytes handed to the socket
    clean: bool = False  # sent everything, the end, and got 1000


class Bots:
    """The bots: each streams ``stream`` over one connection through HAProxy; one whose
    connection dies reconnects (through HAProxy) and streams it again from the start, as a
    bot does after a reconnect (a new init segment)."""

    def __init__(self, url: str, bot_ids: list[str], stream: list[bytes]) -> None:
        self.url = url
        self.stream = stream
        self.connections: dict[str, list[Connection]] = {b: [] for b in bot_ids}
        self.at_barrier = 0
        self.release = asyncio.Event()

    async def run(self, bot_id: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            conn = Connection()
            self.connections[bot_id].append(conn)
            first = len(self.connections[bot_id]) == 1
            try:
                bot = await AsyncioBot.connect(f"{self.url}/v1/streams/{bot_id}", timeout=10)
            except (OSError, ConnectionError, TimeoutError):
                self.connections[bot_id].pop()  # HAProxy had no node yet: again
                await asyncio.sleep(0.2)
                continue
            if await self._stream(bot, bot_id, conn, barrier=first):
                return
        raise AssertionError(f"{bot_id}: no clean connection in 120 s")

    async def _stream(self, bot: AsyncioBot, bot_id: str, conn: Connection, *,
                      barrier: bool) -> bool:
        """One connection; True if it ended cleanly (False: the receiver went away)."""
        gone = asyncio.Event()  # the receiver's end of the connection closed
        reader = asyncio.create_task(self._watch(bot, gone))
        try:
            await bot.send_start(bot_id)
            for n, piece in enumerate(self.stream):
                if barrier and n == BEFORE_KILL:
                    self.at_barrier += 1
                    await self.release.wait()
                if gone.is_set():
                    return False
                await bot.send_chunk(piece)
                conn.sent += len(piece)
                await asyncio.sleep(PACE)
        except (OSError, ConnectionError):
            bot.abort()
            return False
        finally:
            reader.cancel()  # the close handshake reads the receiver's answer itself
            await asyncio.gather(reader, return_exceptions=True)
        if gone.is_set():
            return False
        try:
            await bot.send_end(1.0)
        except (OSError, ConnectionError):
            bot.abort()
            return False
        closed = await bot.close(timeout=30)
        conn.clean = closed.code == 1000
        return conn.clean

    @staticmethod
    async def _watch(bot: AsyncioBot, gone: asyncio.Event) -> None:
        from meetstream_live import BotClosed

        while not isinstance(await bot.next_event(), BotClosed):
            pass  # pongs
        gone.set()
        bot.abort()


def by_node(nodes: list[Node], bot_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(node index, manifest) of every session manifest of ``bot_id``."""
    return [(n, json.loads(path.read_text())) for n, node in enumerate(nodes)
            for path in sorted((node.output / bot_id).glob("*.session.json"))]


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


async def leases_left(url: str) -> list[str]:
    import nats
    from nats.js.errors import NoKeysError

    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("MEETSTREAM_SESSIONS")
        try:
            return list(await kv.keys())
        except NoKeysError:
            return []
    finally:
        await nc.close()


def test_a_killed_receiver_s_sessions_go_on_elsewhere_and_stay_whole(
        tmp_path: Path, fmp4_medium: Media) -> None:
    require_module("nats")
    stream = pieces(fmp4_medium.data)
    whole = b"".join(stream)
    boundaries = {sum(len(p) for p in stream[:n]) for n in range(1, len(stream) + 1)}
    bot_ids = [f"kill-{n}" for n in range(BOTS)]
    with nats_server() as ns, kill_fleet(tmp_path, "--nats", ns.url) as (lb, nodes):
        bots = Bots(lb.ws_url, bot_ids, stream)
        killed: dict[str, Any] = {}

        def node_of(bot_id: str) -> int | None:
            found = [n for n, node in enumerate(nodes) if (node.output / bot_id).is_dir()]
            return found[0] if len(found) == 1 else None

        async def kill_one() -> None:
            # Every bot mid-stream (at the barrier), each recorded on one node.
            while bots.at_barrier < BOTS or any(node_of(b) is None for b in bot_ids):
                await asyncio.sleep(0.05)
            counts = [sum(1 for b in bot_ids if node_of(b) == n) for n in range(NODES)]
            victim = counts.index(max(counts))
            on_disk = {b: sum(p.stat().st_size for p in
                              (nodes[victim].output / b).glob("*.mp4.part"))
                       for b in bot_ids if node_of(b) == victim}
            nodes[victim].kill()  # SIGKILL: no drain, no finalize, its memory lost
            killed.update(victim=victim, on_disk=on_disk, counts=counts)
            bots.release.set()

        async def meeting() -> None:
            await asyncio.gather(kill_one(), *(bots.run(b) for b in bot_ids))

        asyncio.run(meeting())
        victim: int = killed["victim"]
        moved = sorted(killed["on_disk"])
        assert moved and len(killed["counts"]) == NODES, killed
        lb.wait_state(f"r{victim + 1}", "DOWN", timeout=30)
        for bot_id in bot_ids:  # who was where: the first connection on its first node
            first, *rest = bots.connections[bot_id]
            first.node = victim if bot_id in moved else node_of(bot_id)
            assert rest[-1].clean if rest else first.clean, bots.connections[bot_id]
            assert len(rest) == (1 if bot_id in moved else 0), bots.connections[bot_id]

        # Every moved session continued on the node its reconnect landed on (finished).
        def continued() -> bool:
            return all(any(n != victim and m.get("state") == "finished"
                           for n, m in by_node(nodes, b)) for b in moved)

        wait_for("the moved sessions finished elsewhere", continued)
        wait_for("the other sessions finished", lambda: all(
            any(m.get("state") == "finished" for _, m in by_node(nodes, b))
            for b in bot_ids if b not in moved))

        # The killed receiver comes back on its port and output: recovery, then the bus.
        assert list(nodes[victim].output.rglob("*.mp4.part"))
        nodes[victim].start()
        lb.wait_state(f"r{victim + 1}", "UP", timeout=30)
        assert not list(nodes[victim].output.rglob("*.mp4.part"))

        parts: dict[str, dict[int, tuple[int, Path, dict[str, Any]]]] = {}
        for bot_id in bot_ids:
            manifests = by_node(nodes, bot_id)
            # One story: every manifest of the bot is the same session (its start).
            assert len({m["started_at"] for _, m in manifests}) == 1, manifests
            found: dict[int, tuple[int, Path, dict[str, Any]]] = {}
            for n, manifest in manifests:
                for entry in manifest["parts"]:
                    assert entry["part"] not in found, (bot_id, manifests)  # no duplicate
                    sidecar = json.loads(
                        (nodes[n].output / bot_id / entry["sidecar"]).read_text())
                    assert sidecar["part"] == entry["part"] and sidecar["bot_id"] == bot_id
                    found[entry["part"]] = (n, nodes[n].output / bot_id / entry["file"],
                                            sidecar)
            expected = 2 if bot_id in moved else 1
            assert sorted(found) == list(range(1, expected + 1)), (bot_id, manifests)
            parts[bot_id] = found
            for _, path, sidecar in found.values():
                report = verify_file(path)
                assert report.parts and all(p["torn_tail_bytes"] == 0 and p["fatal"] is None
                                            for p in report.parts), (path, report)
                assert decodable_frames(path.read_bytes()) > 0, path
                assert sidecar["bytes"] == path.stat().st_size
            if bot_id not in moved:
                (n, path, sidecar), = found.values()
                # A connection that ended cleanly: every byte the bot sent is the file.
                assert path.read_bytes() == whole, (bot_id, path)
                assert sidecar["end_reason"] == "stream_end"
                continue
            (n1, path1, side1), (n2, path2, side2) = found[1], found[2]
            assert n1 == victim and n2 != victim
            # Part 2: the reconnect, continued by the lease on another node, ended cleanly:
            # every byte of that connection.
            assert path2.read_bytes() == whole
            assert side2["started_by"] == "reconnect" and side2["end_reason"] == "stream_end"
            (_, m2), = [(n, m) for n, m in by_node(nodes, bot_id) if n == n2]
            assert m2["connections"] == 2 and m2["state"] == "finished", m2
            # Part 1: the connection the kill cut. What the bot sent after the last byte the
            # dead node had written to its file (its write buffer, the kernel's socket
            # buffers, HAProxy's) may be lost, and recovery cuts the file back to its last
            # complete fragment; so the file is a prefix of what the bot sent on that
            # connection, ends at a fragment boundary, and has at least every fragment that
            # was whole in the file when the node was killed (its size on disk just before
            # the SIGKILL: the page cache survives a process's death).
            data = path1.read_bytes()
            assert data == whole[:len(data)] and len(data) in boundaries, (bot_id, len(data))
            before = killed["on_disk"][bot_id]
            assert len(data) >= max(b for b in boundaries | {0} if b <= before), (
                bot_id, len(data), before)
            assert len(data) <= bots.connections[bot_id][0].sent
            assert side1["recovered"] is True and side1["end_reason"] == "crash"

        # The bus: each part's copy is its file, byte for byte (the killed node's parts once
        # it has republished them after its restart).
        for bot_id, found in parts.items():
            for number, (_, path, _) in found.items():
                out = tmp_path / f"bus-{bot_id}-{number}.mp4"
                deadline = time.monotonic() + 60
                while True:
                    done = consume(ns.url, "--bot", bot_id, "--part", str(number), "-o",
                                   str(out))
                    if done.returncode == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                assert done.returncode == 0, (bot_id, number, done.stderr)
                assert out.read_bytes() == path.read_bytes(), (bot_id, number)

        # Nothing twice on the bus: every message once (JetStream's duplicate window took
        # what the restart republished), one session per bot, one verdict per part.
        messages = asyncio.run(stream_messages(ns.url, EVENTS_STREAM))
        ids = [h["Nats-Msg-Id"] for _, h, _ in messages]
        assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]
        for bot_id, found in parts.items():
            mine = [(h, d) for s, h, d in messages if s.startswith(f"meetstream.{bot_id}.")]
            assert len({h["Meetstream-Session"] for h, _ in mine}) == 1, bot_id
            assert {int(h["Meetstream-Part"]) for h, _ in mine} == set(found), bot_id
            verdicts = [json.loads(d)["part"] for h, d in mine
                        if h["Meetstream-Kind"] == "event" and json.loads(d)["type"] == "verdict"]
            assert sorted(verdicts) == sorted(found), (bot_id, verdicts)
        # Every session is over: no lease is left (the nodes that ended them deleted them).
        assert asyncio.run(leases_left(ns.url)) == []
        text = nodes[victim].logs[-1].read_text()
        assert re.search(r"publishing the \d+ part\(s\) recovered from a crash", text), text

        # The moved bots come back (a new meeting, within the grace of the restart): the
        # hash sends them to the restarted node, which has their recovered sessions, but the
        # bus says those ended elsewhere (no lease): each is a new session there, not a
        # second part 2 of the old one.
        again = Bots(lb.ws_url, moved, stream)
        again.release.set()

        async def come_back() -> None:
            await asyncio.gather(*(again.run(b) for b in moved))

        asyncio.run(come_back())
        for bot_id in moved:
            assert [c.clean for c in again.connections[bot_id]] == [True]
        wait_for("the new sessions finished", lambda: all(
            sum(1 for n, m in by_node(nodes, b) if m.get("state") == "finished") == 2
            for b in moved))
        for bot_id in moved:
            old_start = next(m["started_at"] for _, m in by_node(nodes, bot_id))
            new = [(n, m) for n, m in by_node(nodes, bot_id) if m["started_at"] != old_start]
            assert len(new) == 1, by_node(nodes, bot_id)
            (n, manifest), = new
            assert n == victim, (bot_id, n)  # consistent hashing: back on its node
            assert [p["part"] for p in manifest["parts"]] == [1], manifest
            assert (nodes[n].output / bot_id / manifest["parts"][0]["file"]).read_bytes() \
                == whole
            old_parts = [p["part"] for _, m in by_node(nodes, bot_id)
                         if m["started_at"] == old_start for p in m["parts"]]
            assert sorted(old_parts) == [1, 2], (bot_id, old_parts)  # the old story as it was
