"""The load generator: MeetStream bots on raw sockets, in a process of their own.

``python -m benchmarks.loadgen '{"mode": "flat", ...}'`` prints one JSON result on stdout.

* Frames are built before the clock starts: the stream (see :func:`build_media`) is cut into
  chunks, each chunk masked once with its own seeded key, and the masked frames are reused
  (a ring of 3 MiB of fragments). Only pings are built while running (they carry the time).
* ``flat``: one bot sends ``total`` bytes as fast as the socket takes them (``sendall`` of
  ~256 KiB batches of pre-built frames), a ping every ``ping_interval``; a reader thread reads
  the pongs. The clock stops when the receiver's close frame (or EOF) comes back, so every byte
  was read by the receiver.
* ``many``: ``bots`` connections, each on a token schedule (one chunk every
  ``chunk * 8 / rate_bps`` seconds, random phase), a ping every ``ping_interval`` (random
  phase) put in front of the frames still queued, all multiplexed on one ``selectors`` loop
  with non-blocking sockets. A bot the receiver does not keep up with falls behind: achieved
  throughput is what left the sockets during the window.
* ``path`` (both modes, default ``/``): the upgrade request's path, ``{bot_id}`` replaced by
  each bot's id (``/v1/streams/{bot_id}``: what a load balancer hashing the path routes on).

Round trips are measured with ``time.perf_counter`` from the moment a ping's first byte is
written to the moment its pong is parsed, matched by ``seq``.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

from ._common import (
    OP_CLOSE,
    OP_TEXT,
    SEED,
    Media,
    build_media,
    client_frame,
    close_frame,
    frames_of,
    percentile,
    ping_message,
    start_message,
    text_frame,
    upgrade_request,
)

BATCH = 256 * 1024


OP_PING, OP_PONG = 0x9, 0xA


def pong_frame(payload: bytes) -> bytes:
    """The masked answer to a WebSocket ping from the receiver (a keepalive)."""
    return client_frame(OP_PONG, payload, os.urandom(4))


class FrameReader:
    """Parses the receiver's (unmasked) frames; collects pongs, WebSocket pings to answer,
    and notes the close."""

    def __init__(self, pings: dict[int, float], rtts: list[float]) -> None:
        self.buf = bytearray()
        self.pings = pings
        self.rtts = rtts
        self.closed = False
        self.ws_pings: list[bytes] = []

    def feed(self, data: bytes, now: float) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from(">H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from(">Q", buf, 2)[0]
                pos = 10
            if b1 & 0x80:
                pos += 4  # a masked frame from a server would be a bug; skip the key
            if len(buf) < pos + n:
                return
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    document = json.loads(bytes(buf[pos : pos + n]))
                    sent = self.pings.pop(int(document["seq"]))
                    self.rtts.append((now - sent) * 1000.0)
            elif opcode == OP_CLOSE:
                self.closed = True
            elif opcode == OP_PING:
                self.ws_pings.append(bytes(buf[pos : pos + n]))
            del buf[: pos + n]


def handshake(host: str, port: int, timeout: float = 30.0,
              path: str = "/") -> tuple[socket.socket, bytes]:
    """Connect and upgrade (``GET path``); the socket and any bytes read past the response
    head."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, accept = upgrade_request(host, port, path)
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed during the handshake")
        head += data
    head, rest = head.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0] or accept not in head:
        raise ConnectionError(f"handshake refused: {head[:200]!r}")
    return sock, rest


def summary(rtts: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(rtts, 50), "p99": percentile(rtts, 99),
        "max": max(rtts) if rtts else float("nan"),
    }


def bot_path(a: dict[str, Any], bot_id: str) -> str:
    """The upgrade request's path: ``a["path"]`` (default ``/``) with ``{bot_id}`` replaced,
    e.g. ``/v1/streams/{bot_id}`` for a load balancer that hashes the path."""
    return str(a.get("path", "/")).replace("{bot_id}", bot_id)


def cpu_self() -> float:
    return time.process_time()


# ---------------------------------------------------------------------------- flat


def run_flat(a: dict[str, Any], media: Media) -> dict[str, Any]:
    rng = random.Random(a.get("seed", SEED))
    chunk, total = int(a["chunk"]), int(a["total"])
    bot_id = a.get("bot_id", "flat-0")
    ring = frames_of(media.ring, chunk, rng)
    per_batch = max(1, BATCH // chunk)
    batches = [b"".join(ring[i : i + per_batch]) for i in range(0, len(ring), per_batch)]
    batch_payload = [min(per_batch, len(ring) - i) * chunk for i in range(0, len(ring), per_batch)]
    init = b"".join(frames_of(media.init, chunk, rng))
    end = text_frame({"type": "video_stream_end", "bot_id": bot_id, "duration_seconds": 1.0}, rng)
    close = close_frame(rng)

    sock, rest = handshake(a["host"], int(a["port"]), path=bot_path(a, bot_id))
    sock.settimeout(None)
    pings: dict[int, float] = {}
    rtts: list[float] = []
    reader = FrameReader(pings, rtts)
    done_at: list[float] = []
    lock = threading.Lock()

    send_lock = threading.Lock()  # frames from two threads must not interleave
    closing: list[bool] = []  # nothing may follow the close frame

    def read() -> None:
        if rest:
            reader.feed(rest, time.perf_counter())
        while not reader.closed:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            now = time.perf_counter()
            if not data:
                break
            with lock:
                reader.feed(data, now)
            while reader.ws_pings:
                frame = pong_frame(reader.ws_pings.pop(0))
                with send_lock, contextlib.suppress(OSError):
                    if not closing:
                        sock.sendall(frame)
        done_at.append(time.perf_counter())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    interval = float(a.get("ping_interval", 0.1))
    seq = 0
    cpu0 = cpu_self()
    sock.sendall(text_frame(start_message(bot_id), rng) + init)
    payload = len(media.init)
    target = max(total, payload)
    t0 = time.perf_counter()
    next_ping = t0 + interval
    i = 0
    while payload < target:
        with send_lock:
            sock.sendall(batches[i])
        payload += batch_payload[i]
        i = (i + 1) % len(batches)
        now = time.perf_counter()
        if now >= next_ping:
            seq += 1
            frame = text_frame(ping_message(bot_id, seq), rng)
            with send_lock:
                with lock:
                    pings[seq] = time.perf_counter()
                sock.sendall(frame)
            next_ping = now + interval
    t_sent = time.perf_counter()
    with send_lock:
        closing.append(True)
        sock.sendall(end + close)
    if a.get("half_close"):
        sock.shutdown(socket.SHUT_WR)
    thread.join(float(a.get("timeout", 300)))
    t_done = done_at[0] if done_at else float("nan")
    cpu = cpu_self() - cpu0
    sock.close()
    seconds = t_done - t0
    return {
        "mode": "flat", "chunk": chunk, "payload_bytes": payload, "seconds": seconds,
        "mbps": payload / seconds / 1e6, "send_seconds": t_sent - t0,
        "send_mbps": payload / (t_sent - t0) / 1e6, "pings": seq, "pongs": len(rtts),
        "rtt_ms": summary(rtts), "closed_by_peer": reader.closed, "loadgen_cpu_s": cpu,
        "expected": {bot_id: payload},
    }


# ---------------------------------------------------------------------------- many

_FRAME, _PING, _CONTROL = 0, 1, 2


class Bot:
    __slots__ = (
        "closing",
        "enqueued",
        "id",
        "next_ping",
        "off",
        "pings",
        "queue",
        "reader",
        "sent",
        "seq",
        "sock",
        "t0",
        "wants_write",
    )

    def __init__(self, bot_id: str, sock: socket.socket, reader: FrameReader) -> None:
        self.id = bot_id
        self.sock = sock
        self.reader = reader
        self.pings = reader.pings
        self.queue: deque[tuple[int, Any, int]] = deque()
        self.off = 0
        self.sent = 0  # payload bytes whose frame was written completely
        self.enqueued = 0  # frames put on the queue (index into the bot's frame sequence)
        self.t0 = 0.0
        self.next_ping = 0.0
        self.seq = 0
        self.wants_write = False
        self.closing = False  # the close frame is queued: nothing may be put before it


def run_many(a: dict[str, Any], media: Media) -> dict[str, Any]:
    rng = random.Random(a.get("seed", SEED))
    chunk, nbots = int(a["chunk"]), int(a["bots"])
    rate = float(a.get("rate_bps", 4_000_000))
    duration = float(a["duration"])
    ping_interval = float(a.get("ping_interval", 1.0))
    prefix = a.get("id_prefix", "bot")
    interval = chunk * 8 / rate
    ring = [(f, chunk) for f in frames_of(media.ring, chunk, rng)]
    init = (b"".join(frames_of(media.init, chunk, rng)), len(media.init))
    sel = selectors.DefaultSelector()
    rtts: list[float] = []
    bots: list[Bot] = []
    connect_failures = 0
    t_connect = time.perf_counter()
    for i in range(nbots):
        bot_id = f"{prefix}{i:05d}"
        try:
            sock, rest = handshake(a["host"], int(a["port"]), path=bot_path(a, bot_id))
            sock.sendall(text_frame(start_message(bot_id), rng))
        except OSError:
            connect_failures += 1
            continue
        sock.setblocking(False)
        bot = Bot(bot_id, sock, FrameReader({}, rtts))
        if rest:
            bot.reader.feed(rest, time.perf_counter())
        bots.append(bot)
        sel.register(sock, selectors.EVENT_READ, bot)
    connect_seconds = time.perf_counter() - t_connect
    start = time.perf_counter() + 0.2
    heap: list[tuple[float, int]] = []
    for n, bot in enumerate(bots):
        bot.t0 = start + rng.uniform(0, interval)
        bot.next_ping = start + rng.uniform(0, ping_interval)
        heap.append((min(bot.t0, bot.next_ping), n))
    heapq.heapify(heap)
    deadline = start + duration

    def flush(bot: Bot) -> None:
        queue, sock = bot.queue, bot.sock
        while queue:
            kind, data, payload = queue[0]
            if kind == _PING and bot.off == 0 and isinstance(data, int):
                frame = text_frame(ping_message(bot.id, data), rng)
                bot.pings[data] = time.perf_counter()
                queue[0] = (_PING, frame, 0)
                data = frame
            try:
                n = sock.send(memoryview(data)[bot.off :] if bot.off else data)
            except BlockingIOError:
                n = 0
            except OSError:
                queue.clear()
                return
            bot.off += n
            if bot.off < len(data):
                if not bot.wants_write:
                    bot.wants_write = True
                    sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, bot)
                return
            bot.off = 0
            bot.sent += payload
            queue.popleft()
        if bot.wants_write:
            bot.wants_write = False
            sel.modify(sock, selectors.EVENT_READ, bot)

    def on_read(bot: Bot) -> None:
        try:
            data = bot.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            bot.reader.feed(data, time.perf_counter())
            if bot.reader.ws_pings and not bot.closing:
                for payload in bot.reader.ws_pings:
                    item = (_CONTROL, pong_frame(payload), 0)
                    if bot.off and bot.queue:
                        bot.queue.insert(1, item)
                    else:
                        bot.queue.appendleft(item)
                bot.reader.ws_pings.clear()
                if not bot.wants_write:
                    flush(bot)
        else:
            bot.reader.closed = True
            bot.queue.clear()
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(bot.sock)

    def poll(timeout: float) -> None:
        for key, events in sel.select(timeout):
            bot = key.data
            if events & selectors.EVENT_READ:
                on_read(bot)
            if events & selectors.EVENT_WRITE and not bot.reader.closed:
                flush(bot)

    nring = len(ring)
    cpu0 = cpu_self()
    now = time.perf_counter()
    while now < deadline:
        while heap and heap[0][0] <= now:
            _, n = heapq.heappop(heap)
            bot = bots[n]
            if bot.reader.closed:
                continue
            due = int((now - bot.t0) / interval) + 1 if now >= bot.t0 else 0
            queue = bot.queue
            while bot.enqueued < due:
                if bot.enqueued == 0:
                    queue.append((_FRAME, init[0], init[1]))
                else:
                    frame, payload = ring[(bot.enqueued - 1) % nring]
                    queue.append((_FRAME, frame, payload))
                bot.enqueued += 1
            if now >= bot.next_ping:
                bot.seq += 1
                item = (_PING, bot.seq, 0)
                if bot.off and queue:
                    queue.insert(1, item)
                else:
                    queue.appendleft(item)
                bot.next_ping += ping_interval
            if not bot.wants_write:
                flush(bot)
            heapq.heappush(heap, (min(bot.t0 + bot.enqueued * interval, bot.next_ping), n))
        now = time.perf_counter()
        wake = min(heap[0][0] if heap else deadline, deadline)
        poll(max(0.0, wake - now))
        now = time.perf_counter()
    sent_in_window = sum(b.sent for b in bots)
    scheduled = 0  # payload of the frames due before the deadline
    for bot in bots:
        count = max(0, -int(-(deadline - bot.t0) // interval))
        if count:
            scheduled += init[1] + (count - 1) * chunk
    cpu_window = cpu_self() - cpu0
    lagging = 0
    dropped_frames = 0
    for bot in bots:
        keep = 1 if bot.off else 0
        dropped = [item for item in list(bot.queue)[keep:] if item[0] == _FRAME]
        dropped_frames += len(dropped)
        lagging += bool(dropped)
        while len(bot.queue) > keep:
            bot.queue.pop()
        end = text_frame({"type": "video_stream_end", "bot_id": bot.id,
                          "duration_seconds": duration}, rng)
        bot.queue.append((_CONTROL, end + close_frame(rng), 0))
        bot.closing = True
        if not bot.reader.closed and not bot.wants_write:
            flush(bot)
    drain_until = time.perf_counter() + float(a.get("drain_timeout", 60))
    half_closed: set[int] = set()
    while time.perf_counter() < drain_until and any(not b.reader.closed for b in bots):
        if a.get("half_close"):  # the TCP sink answers no close frame: it waits for EOF
            for n, bot in enumerate(bots):
                if n not in half_closed and not bot.queue:
                    half_closed.add(n)
                    with contextlib.suppress(OSError):
                        bot.sock.shutdown(socket.SHUT_WR)
        poll(0.2)
    unclosed = sum(not b.reader.closed for b in bots)
    for bot in bots:
        bot.sock.close()
    pings = sum(b.seq for b in bots)
    # Pings sent in the last second may lose their pong to the close that follows them (a
    # receiver that answers the close before its handler got to the ping): counted apart.
    settle = deadline - 1.0
    unanswered_early = sum(
        1 for b in bots for sent in b.pings.values() if sent - settle < 0
    )
    return {
        "mode": "many", "bots": len(bots), "connect_failures": connect_failures,
        "connect_seconds": connect_seconds, "chunk": chunk, "duration": duration,
        "offered_mbps": nbots * rate / 8 / 1e6, "achieved_mbps": sent_in_window / duration / 1e6,
        "scheduled_bytes": scheduled, "achieved_ratio": sent_in_window / max(1, scheduled),
        "sent_in_window": sent_in_window, "lagging_bots": lagging,
        "dropped_frames": dropped_frames, "pings": pings, "pongs": len(rtts),
        "pongs_missing_before_last_second": unanswered_early,
        "rtt_ms": summary(rtts), "unclosed": unclosed, "loadgen_cpu_s": cpu_window,
        "loadgen_cpu_pct": 100.0 * cpu_window / duration,
        "expected": {b.id: b.sent for b in bots},
    }


def payload_media(kind: str, seed: int = SEED) -> Media:
    """What the bots send: ``fmp4`` (the real stream), ``random`` (seeded random bytes, the
    same length: what an encoder we do not know looks like to the scanner) or ``flood``
    (8-byte ``free`` boxes: valid framing that never completes an init segment or fragment)."""
    media = build_media(seed)
    if kind == "fmp4":
        return media
    if kind == "random":
        rng = random.Random(seed)
        return Media(rng.randbytes(len(media.init)), rng.randbytes(len(media.ring)))
    if kind == "flood":
        box = struct.pack(">I4s", 8, b"free")
        return Media(box * (len(media.init) // 8), box * (len(media.ring) // 8))
    raise ValueError(f"unknown payload {kind!r}")


def main(argv: list[str]) -> int:
    args: dict[str, Any] = json.loads(argv[0])
    media = payload_media(str(args.get("payload", "fmp4")), int(args.get("seed", SEED)))
    result = run_flat(args, media) if args["mode"] == "flat" else run_many(args, media)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
