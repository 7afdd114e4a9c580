"""Play the MeetStream bot against a receiver: the simulator and the protocol check.

* :func:`simulate` runs N bots at once, each streaming a real fMP4 file (as fast as possible,
  or paced by media time with ``realtime=True``), pinging at an interval, and measures the
  pong round trips.
* :func:`check` walks the protocol document's quick-test checklist against any receiver and
  says PASS or FAIL for each item.

Both use :class:`~meetstream_live.adapters.asyncio.AsyncioBot`; the command line is in
:mod:`meetstream_live.adapters.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import ssl as ssl_module
import struct
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import IO, Any

from meetstream_live import (
    BotClosed,
    BotState,
    Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    LocalProtocolError,
    PongReceived,
    ProtocolWarning,
    parse_ws_url,
)
from meetstream_live.adapters import HandshakeFailed
from meetstream_live.adapters._common import now_ms
from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.recording.meter import fragment_seconds

__all__ = [
    "CHAOS",
    "CheckItem",
    "MediaPlan",
    "SimulationResult",
    "check",
    "format_check",
    "format_simulation",
    "plan_media",
    "simulate",
]

MESSAGE_TOO_BIG = 1009
BIG_MESSAGE = 16 * 1024 * 1024


# ---------------------------------------------------------------------------- media


@dataclass(frozen=True)
class Segment:
    """A piece of the stream sent at once: the init segment, or one fragment."""

    start: int
    end: int
    #: Media time (s) at which the segment is complete: when a live recorder would emit it.
    due: float


@dataclass(frozen=True)
class MediaPlan:
    """An fMP4 file cut into segments (init segment, then one per fragment), each with the
    media time at which a live recorder would have it complete; ``duration`` is the total."""

    data: bytes
    segments: tuple[Segment, ...]
    duration: float

    def chunks(self, segment: Segment, size: int) -> list[bytes]:
        view = memoryview(self.data)
        return [bytes(view[i : min(i + size, segment.end)]) for i in range(segment.start,
                                                                           segment.end, size)]


def plan_media(data: bytes) -> MediaPlan:
    """Cut ``data`` at fragment boundaries using :class:`Fmp4Scanner`; bytes the scanner does
    not place in a fragment (a trailer, garbage) form a last segment."""
    scanner = Fmp4Scanner()
    segments: list[Segment] = []
    position = 0
    media_time = 0.0
    for event in [*scanner.feed(data), *scanner.eof()]:
        if isinstance(event, FragmentComplete):
            media_time += fragment_seconds(scanner.tracks, event)
        elif not isinstance(event, InitSegment):
            continue
        end = event.offset + event.size
        segments.append(Segment(position, end, media_time))
        position = end
    if position < len(data):
        segments.append(Segment(position, len(data), media_time))
    return MediaPlan(data, tuple(segments), media_time)


#: What a ``video_stream_start`` says besides ``bot_id`` (the protocol document's example
#: without the picture size, which the scanner does not report).
START_FIELDS: dict[str, Any] = {
    "codec": "h264",
    "audio_codec": "aac",
    "container": "fmp4",
    "framerate": 25,
    "audio_sample_rate": 44100,
    "audio_bitrate": "128k",
}


def client_ssl(url: str, cafile: str | None) -> ssl_module.SSLContext | None:
    """The TLS context for ``wss://`` (default verification, plus ``cafile`` when given)."""
    if not parse_ws_url(url).secure:
        return None
    context = ssl_module.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile)
    return context


def auth_headers(token: str | None) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"Authorization", b"Bearer " + token.encode("utf-8")),) if token else ()


async def _close(bot: AsyncioBot, reader: asyncio.Task[BotClosed], timeout: float) -> BotClosed:
    """Send our close frame while the reader task keeps reading; wait for its answer."""
    try:
        await bot.start_close(1000)  # AsyncioBot.close() would read too, racing the reader
        return await asyncio.wait_for(asyncio.shield(reader), timeout)
    except (OSError, TimeoutError, LocalProtocolError):
        return BotClosed(1006, "no close frame from the receiver")
    finally:
        bot.abort()
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


# ---------------------------------------------------------------------------- chaos

#: The faults ``simulate(chaos=...)`` (``meetstream-live simulate --chaos NAME``) can play, so
#: that anyone can run them against their own receiver. Each works on its own; several combine.
CHAOS: dict[str, str] = {
    "split": "binary messages cut at random sizes (1 byte to 2x --chunk-size) that split "
    "boxes and straddle fragments",
    "big-keyframes": "each fragment sent as one 5-20 MiB message (a random-size 'free' box, "
    "which players skip, in front of it)",
    "early-binary": "the init segment sent before video_stream_start",
    "no-end": "no video_stream_end: close 1000 right after the media",
    "reset": "a TCP reset in the middle of a random fragment (the stream is cut there)",
    "reconnect": "a reset mid-fragment, then a new connection with the same bot_id that "
    "streams the whole file",
    "duplicate": "two concurrent connections per bot with the same bot_id, both streaming",
    "slow-reader": "the bot reads the receiver's answers slowly (0.05-0.2 s between reads)",
    "ping-storm": "20 latency pings after every binary message, every one to be answered",
}

BIG_KEYFRAME_MIN = 5 * 1024 * 1024
BIG_KEYFRAME_MAX = 20 * 1024 * 1024


def _free_box(size: int) -> bytes:
    """An ISO-BMFF ``free`` box of ``size`` bytes (header included): players skip it."""
    return struct.pack(">I4s", size, b"free") + bytes(size - 8)


def _messages(
    plan: MediaPlan, chunk_size: int, chaos: frozenset[str], rng: random.Random
) -> list[tuple[float, list[bytes]]]:
    """The binary messages of one stream, grouped per segment with the media time at which
    the segment is due: ``[(due, [message, ...]), ...]``."""
    groups: list[tuple[float, list[bytes]]] = []
    carry = b""
    for index, segment in enumerate(plan.segments):
        data = carry + plan.data[segment.start : segment.end]
        carry = b""
        if "big-keyframes" in chaos and index > 0:
            padding = _free_box(rng.randint(BIG_KEYFRAME_MIN, BIG_KEYFRAME_MAX))
            groups.append((segment.due, [padding + data]))
            continue
        if "split" in chaos:
            pieces: list[bytes] = []
            position = 0
            while position < len(data):
                size = rng.randint(1, 2 * chunk_size)
                pieces.append(data[position : position + size])
                position += size
            if index + 1 < len(plan.segments) and pieces and rng.random() < 0.5:
                carry = pieces.pop()  # straddles this fragment and the next
            groups.append((segment.due, pieces))
            continue
        groups.append((segment.due, [data[i : i + chunk_size]
                                     for i in range(0, len(data), chunk_size)]))
    if carry:
        groups.append((plan.duration, [carry]))
    return groups


def _reset(bot: AsyncioBot) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a killed bot's kernel may."""
    sock = bot._writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bot.abort()


# ---------------------------------------------------------------------------- simulate


@dataclass
class BotResult:
    bot_id: str
    bytes_sent: int = 0
    pings: int = 0
    round_trips: list[float] = field(default_factory=list)
    unmatched: int = 0
    unanswered: int = 0
    close_code: int | None = None
    error: str | None = None
    #: The connection was cut on purpose (``reset``; the first one of ``reconnect``).
    cut: bool = False
    #: Bytes sent on this connection, per stream offset: what the receiver must have kept
    #: (all of it, or a prefix when ``cut``).
    sent: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def ok(self) -> bool:
        if self.error is not None or self.unanswered:
            return False
        return self.cut or self.close_code == 1000


@dataclass
class SimulationResult:
    bots: list[BotResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(bot.ok for bot in self.bots)


class _Progress:
    def __init__(self, stream: IO[str] | None, total: int) -> None:
        self.stream = stream
        self.total = total
        self.sent = 0
        self.pongs = 0
        self.connected = 0
        self.done = 0
        self._last = 0.0

    def show(self, bots: int, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.5:
            return
        self._last = now
        tty = self.stream.isatty()
        text = (
            f"bots {self.connected}/{bots} connected, {self.done} done; "
            f"{self.sent / 1e6:.1f}/{self.total / 1e6:.1f} MB sent; {self.pongs} pongs"
        )
        self.stream.write(("\r" + text + ("\n" if final else "")) if tty else text + "\n")
        self.stream.flush()


@dataclass(frozen=True)
class _BotSettings:
    url: str
    chunk_size: int
    realtime: bool
    ping_interval: float
    pong_timeout: float
    context: ssl_module.SSLContext | None
    headers: tuple[tuple[bytes, bytes], ...]
    timeout: float
    chaos: frozenset[str]
    keep_sent: bool


async def _run_bot(
    settings: _BotSettings,
    bot_id: str,
    plan: MediaPlan,
    progress: _Progress,
    rng: random.Random,
    *,
    cut: bool = False,
) -> BotResult:
    """One connection: start, the media, pings, end, close 1000 (as ``settings.chaos`` says).
    With ``cut``, the connection is reset in the middle of a random fragment instead."""
    chaos = settings.chaos
    result = BotResult(bot_id)
    try:
        bot = await AsyncioBot.connect(
            settings.url, ssl=settings.context, headers=settings.headers,
            timeout=settings.timeout,
        )
    except (HandshakeFailed, OSError, TimeoutError) as exc:
        result.error = f"connect: {exc}"
        return result
    progress.connected += 1

    async def read() -> BotClosed:
        while True:
            if "slow-reader" in chaos:
                await asyncio.sleep(rng.uniform(0.05, 0.2))
            event = await bot.next_event()
            if isinstance(event, PongReceived):
                progress.pongs += 1
                if event.matched and event.round_trip_ms is not None:
                    result.round_trips.append(event.round_trip_ms)
                else:
                    result.unmatched += 1
            elif isinstance(event, BotClosed):
                return event

    reader = asyncio.create_task(read())
    seq = 0
    ping_interval = settings.ping_interval

    async def ping() -> None:
        nonlocal seq
        seq += 1
        await bot.send_ping(seq)
        result.pings += 1

    async def send(message: bytes) -> None:
        if reader.done():
            raise ConnectionError("the receiver closed the connection")
        await bot.send_chunk(message)
        result.bytes_sent += len(message)
        progress.sent += len(message)
        if settings.keep_sent:
            result.sent += message

    groups = _messages(plan, settings.chunk_size, chaos, rng)
    cut_group = rng.randrange(1, len(groups)) if cut and len(groups) > 1 else None
    try:
        if "early-binary" in chaos and groups:
            for message in groups[0][1]:
                await send(message)
            groups = [(groups[0][0], []), *groups[1:]]
        await bot.send_start(bot_id, **START_FIELDS)
        await ping()
        started = time.monotonic()
        next_ping = started + ping_interval
        for index, (due, messages) in enumerate(groups):
            if settings.realtime:
                delay = started + due - time.monotonic()
                while delay > 0:
                    until_ping = next_ping - time.monotonic() if ping_interval > 0 else delay
                    await asyncio.sleep(min(delay, max(0.0, until_ping)))
                    if ping_interval > 0 and time.monotonic() >= next_ping:
                        await ping()
                        next_ping += ping_interval
                    delay = started + due - time.monotonic()
            if index == cut_group:
                whole = b"".join(messages)
                if whole:
                    await send(whole[: rng.randrange(1, len(whole) + 1)])
                await asyncio.sleep(0.05)  # let the bytes leave before the reset
                result.cut = True
                _reset(bot)
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
                progress.done += 1
                return result
            for message in messages:
                await send(message)
                if "ping-storm" in chaos:
                    for _ in range(20):
                        await ping()
                if time.monotonic() >= next_ping:
                    await ping()
                    next_ping += ping_interval
                progress.show(progress.connected)
        await ping()
        # Give the last pongs their time before ending the stream.
        deadline = time.monotonic() + settings.pong_timeout
        while bot.conn.outstanding_pings and time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(0.01)
        if "no-end" not in chaos:
            await bot.send_end(plan.duration)
    except (OSError, LocalProtocolError) as exc:
        with contextlib.suppress(TimeoutError):  # did the receiver close? let the reader tell
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        if reader.done() and not reader.cancelled() and reader.exception() is None:
            closed = reader.result()
            result.error = f"the receiver closed the connection ({closed.code} {closed.reason})"
        else:
            result.error = f"{type(exc).__name__}: {exc}"
    closed = await _close(bot, reader, settings.timeout)
    result.close_code = closed.code
    result.unanswered = len(bot.conn.outstanding_pings)
    progress.done += 1
    return result


async def _run_chaos_bot(
    settings: _BotSettings, bot_id: str, plan: MediaPlan, progress: _Progress, seed: int
) -> list[BotResult]:
    """One simulated bot: one connection, or the several its chaos options call for."""
    rng = random.Random(f"{seed}:{bot_id}")
    chaos = settings.chaos
    if "duplicate" in chaos:
        twins = [random.Random(f"{seed}:{bot_id}:{n}") for n in range(2)]
        results = await asyncio.gather(
            *(_run_bot(settings, bot_id, plan, progress, twin) for twin in twins)
        )
        return list(results)
    if "reconnect" in chaos:
        first = await _run_bot(settings, bot_id, plan, progress, rng, cut=True)
        return [first, await _run_bot(settings, bot_id, plan, progress, rng)]
    return [await _run_bot(settings, bot_id, plan, progress, rng, cut="reset" in chaos)]


async def simulate(
    url: str,
    plan: MediaPlan,
    *,
    bots: int = 1,
    bot_id: str = "sim-bot",
    chunk_size: int = 32 * 1024,
    realtime: bool = False,
    ping_interval: float = 1.0,
    pong_timeout: float = 5.0,
    cafile: str | None = None,
    token: str | None = None,
    progress: IO[str] | None = None,
    timeout: float = 10.0,
    chaos: Collection[str] = (),
    seed: int = 0,
    keep_sent: bool = False,
) -> SimulationResult:
    """Run ``bots`` bots at once against ``url``; each streams ``plan`` and closes with 1000,
    unless ``chaos`` (names from :data:`CHAOS`) says otherwise. ``seed`` makes the random
    choices repeatable; ``keep_sent`` keeps each connection's bytes in ``BotResult.sent``."""
    unknown = set(chaos) - set(CHAOS)
    if unknown:
        raise ValueError(f"unknown chaos option(s): {', '.join(sorted(unknown))}")
    settings = _BotSettings(
        url=url, chunk_size=chunk_size, realtime=realtime, ping_interval=ping_interval,
        pong_timeout=pong_timeout, context=client_ssl(url, cafile),
        headers=auth_headers(token), timeout=timeout, chaos=frozenset(chaos),
        keep_sent=keep_sent,
    )
    state = _Progress(progress, len(plan.data) * bots)
    began = time.monotonic()
    names = [bot_id if bots == 1 else f"{bot_id}-{i + 1}" for i in range(bots)]
    groups = await asyncio.gather(
        *(_run_chaos_bot(settings, name, plan, state, seed) for name in names)
    )
    state.show(bots, final=True)
    return SimulationResult([r for group in groups for r in group], time.monotonic() - began)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


def format_simulation(result: SimulationResult) -> str:
    lines = []
    for bot in result.bots:
        status = "ok" if bot.ok else "FAILED"
        detail = f" ({bot.error})" if bot.error else ""
        lines.append(
            f"{bot.bot_id}: {status}{detail}: {bot.bytes_sent} bytes, {bot.pings} pings, "
            f"{len(bot.round_trips)} pongs, {bot.unanswered} unanswered, "
            f"{bot.unmatched} unmatched, "
            + ("cut on purpose" if bot.cut else f"close {bot.close_code}")
        )
    rtts = [rtt for bot in result.bots for rtt in bot.round_trips]
    sent = sum(bot.bytes_sent for bot in result.bots)
    lines.append(
        f"{len(result.bots)} bot(s), {sent} bytes in {result.seconds:.2f} s "
        f"({sent / max(result.seconds, 1e-9) / 1e6:.1f} MB/s)"
    )
    if rtts:
        lines.append(
            f"pong round trip: count {len(rtts)}, p50 {_percentile(rtts, 0.5):.1f} ms, "
            f"p99 {_percentile(rtts, 0.99):.1f} ms, max {max(rtts):.1f} ms"
        )
    else:
        lines.append("pong round trip: no pongs")
    lines.append(
        f"unanswered pings: {sum(b.unanswered for b in result.bots)}, "
        f"unmatched pongs: {sum(b.unmatched for b in result.bots)}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- check


@dataclass
class CheckItem:
    """One line of the checklist: ``ok`` is None when the item was skipped."""

    name: str
    ok: bool | None
    detail: str


class _Checker:
    def __init__(
        self,
        bot: AsyncioBot,
        bot_id: str,
        *,
        pong_timeout: float,
        max_skew_ms: float,
        clock: Callable[[], int],
    ) -> None:
        self.bot = bot
        self.bot_id = bot_id
        self.pong_timeout = pong_timeout
        self.max_skew_ms = max_skew_ms
        self.clock = clock
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.closed: BotClosed | None = None
        self.seq = 0
        #: Pings the close of the connection left without an answer (reported by the close).
        self.cut_short = 0
        self.problems: list[str] = []
        self.round_trips: list[float] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> BotClosed:
        while True:
            event = await self.bot.next_event()
            await self.events.put(event)
            if isinstance(event, BotClosed):
                self.closed = event
                return event

    @property
    def close_code(self) -> int | None:
        return None if self.closed is None else self.closed.code

    def closed_detail(self) -> str:
        closed = self.closed
        assert closed is not None
        text = f"the receiver closed the connection ({closed.code}"
        return text + (f" {closed.reason!r})" if closed.reason else ")")

    async def ping(self, where: str) -> bool:
        """One ping, then wait for its pong and check every field. False if none came."""
        self.seq += 1
        seq = self.seq
        sent_at = self.clock()
        if not await self.attempt(lambda: self.bot.send_ping(seq, sent_at)):
            self.cut_short += 1
            return False
        began = time.monotonic()
        deadline = began + self.pong_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.problems.append(f"{where}: no pong for seq {seq} in {self.pong_timeout:g} s")
                return False
            try:
                event = await asyncio.wait_for(self.events.get(), remaining)
            except TimeoutError:
                continue
            if isinstance(event, BotClosed):
                self.cut_short += 1
                return False
            if isinstance(event, ProtocolWarning):
                self.problems.append(f"{where}: {event.message}")
                continue
            if isinstance(event, PongReceived):
                took = (time.monotonic() - began) * 1000
                self.round_trips.append(took)
                self._check_pong(where, event, seq, sent_at, took)
                return True

    def _check_pong(
        self, where: str, pong: PongReceived, seq: int, sent_at: int, took: float
    ) -> None:
        bad: list[str] = []
        if not (isinstance(pong.seq, int) and not isinstance(pong.seq, bool) and pong.seq == seq):
            bad.append(f"seq {pong.seq!r} (sent {seq})")
        if not (isinstance(pong.sent_at_ms, int) and pong.sent_at_ms == sent_at):
            bad.append(f"sent_at_ms {pong.sent_at_ms!r} (sent {sent_at})")
        if pong.bot_id != self.bot_id:
            bad.append(f"bot_id {pong.bot_id!r} (sent {self.bot_id!r})")
        received = pong.server_received_at_ms
        if not isinstance(received, (int, float)) or isinstance(received, bool):
            bad.append(f"server_received_at_ms {received!r} is not a number")
        else:
            now = self.clock()
            if abs(received - now) > self.max_skew_ms:
                bad.append(
                    f"server_received_at_ms {received} is {(received - now) / 1000:+.1f} s "
                    "from local time"
                )
            elif received < sent_at - self.max_skew_ms:
                bad.append(f"server_received_at_ms {received} is before sent_at_ms {sent_at}")
        if bad:
            self.problems.append(f"{where}: pong for seq {seq} ({took:.0f} ms): " + ", ".join(bad))

    async def is_open(self, wait: float = 0.0) -> bool:
        """True if the connection is open (after ``wait`` seconds). When the connection is
        over, give the reader a moment to report how (:attr:`closed`)."""
        if self.bot.conn.state is not BotState.OPEN:
            wait = max(wait, 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.reader), wait)
        return self.closed is None and self.bot.conn.state is BotState.OPEN

    async def send(self, data: bytes) -> bool:
        """A binary message; False when the connection is (or gets) closed."""
        return await self.attempt(lambda: self.bot.send_chunk(data))

    async def attempt(self, send: Callable[[], Awaitable[None]]) -> bool:
        if not await self.is_open():
            return False
        with contextlib.suppress(OSError, LocalProtocolError):
            await send()
        return await self.is_open()


async def check(
    url: str,
    plan: MediaPlan,
    *,
    bot_id: str = "check-bot",
    chunk_size: int = 64 * 1024,
    pong_timeout: float = 5.0,
    idle: float | None = None,
    max_skew: float = 600.0,
    cafile: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    report: Callable[[CheckItem], None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> list[CheckItem]:
    """The quick-test checklist of the protocol document, against any receiver at ``url``."""
    items: list[CheckItem] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        item = CheckItem(name, ok, detail)
        items.append(item)
        if report is not None:
            report(item)

    names = ("start accepted", "binary flowing", "pongs", "16 MiB message", "idle", "end",
             "clean close")
    secure = parse_ws_url(url).secure
    began = time.monotonic()
    try:
        context = client_ssl(url, cafile)
        bot = await AsyncioBot.connect(url, ssl=context, headers=auth_headers(token),
                                       timeout=timeout)
    except ssl_module.SSLError as exc:
        add("tls", False, f"{type(exc).__name__}: {exc}")
        add("handshake", False, "not completed (TLS failed)")
        for name in names:
            add(name, False, "not run")
        return items
    except (HandshakeFailed, OSError, TimeoutError) as exc:
        if secure:
            add("tls", None, "not reached")
        add("handshake", False, str(exc) or type(exc).__name__)
        for name in names:
            add(name, False, "not run")
        return items
    took = (time.monotonic() - began) * 1000
    if secure:
        add("tls", True, f"certificate verified for {parse_ws_url(url).host}")
    else:
        add("tls", None, "ws:// has no TLS: use wss:// in production")
    add("handshake", True, f"101 Switching Protocols in {took:.0f} ms")

    checker = _Checker(bot, bot_id, pong_timeout=pong_timeout, max_skew_ms=max_skew * 1000,
                       clock=clock)
    try:
        await _check_session(checker, plan, chunk_size=chunk_size, idle=idle, add=add,
                             timeout=timeout)
    finally:
        bot.abort()
        checker.reader.cancel()
        with contextlib.suppress(BaseException):
            await checker.reader
    return items


async def _check_session(
    c: _Checker,
    plan: MediaPlan,
    *,
    chunk_size: int,
    idle: float | None,
    add: Callable[[str, bool | None, str], None],
    timeout: float,
) -> None:
    bot = c.bot
    # 1. start accepted: the connection stays open, and a ping is answered.
    started = await c.attempt(lambda: bot.send_start(c.bot_id, **START_FIELDS))
    pinged = started and await c.is_open(0.3) and await c.ping("after start")
    if pinged and await c.is_open():
        add("start accepted", True, "connection open after video_stream_start")
    else:
        add("start accepted", False, c.closed_detail() if c.closed else "no pong after start")

    # 2. binary flowing: the sample in chunks, a ping halfway and after it.
    sent = 0
    flowing = await c.is_open()
    half = len(plan.segments) // 2
    for i, segment in enumerate(plan.segments):
        for chunk in plan.chunks(segment, chunk_size):
            if not await c.send(chunk):
                flowing = False
                break
            sent += len(chunk)
        if not flowing:
            break
        if i == half:
            await c.ping("while streaming")
    flowing = flowing and await c.ping("after the media")
    if flowing:
        add("binary flowing", True, f"{sent} bytes in {len(plan.segments)} segment(s)")
    else:
        detail = c.closed_detail() if c.closed else "no pong after the media"
        add("binary flowing", False, f"after {sent} bytes: {detail}")

    # 3. a 16 MiB binary message: a `free` box, which players skip, at a box boundary.
    big_ok = False
    if await c.is_open():
        big = struct.pack(">I4s", BIG_MESSAGE, b"free") + bytes(BIG_MESSAGE - 8)
        began = time.monotonic()
        big_ok = await c.send(big)
        saved, c.pong_timeout = c.pong_timeout, max(c.pong_timeout, timeout)
        big_ok = big_ok and await c.ping("after the 16 MiB message")
        c.pong_timeout = saved
        took = time.monotonic() - began
    if big_ok:
        add("16 MiB message", True, f"accepted; answered a ping {took:.1f} s after sending")
    elif c.close_code == MESSAGE_TOO_BIG:
        add("16 MiB message", False, "closed with 1009 (message too big): raise the limit")
    else:
        add("16 MiB message", False, c.closed_detail() if c.closed else "no pong afterwards")

    # 4. an idle gap, then a ping.
    if idle is None:
        add("idle", None, "not requested (--idle 90s)")
    elif await c.is_open():
        await asyncio.sleep(idle)
        if await c.ping(f"after {idle:g} s idle"):
            add("idle", True, f"still open after {idle:g} s without traffic")
        else:
            add("idle", False, c.closed_detail() if c.closed else "no pong after the gap")
    else:
        add("idle", False, "not run: connection closed")

    # 5. the pongs, all of them.
    if c.problems:
        add("pongs", False, "; ".join(c.problems))
    elif not c.round_trips:
        add("pongs", False, "no ping could be sent")
    else:
        rtts = sorted(c.round_trips)
        short = f"; {c.cut_short} not sent or cut short by the close" if c.cut_short else ""
        add("pongs", True, f"{len(rtts)} correct; round trip median "
            f"{rtts[len(rtts) // 2]:.1f} ms, max {rtts[-1]:.1f} ms{short}")

    # 6. video_stream_end: the receiver keeps the connection until we close.
    if await c.attempt(lambda: bot.send_end(plan.duration)):
        if await c.is_open(0.3):
            add("end", True, "video_stream_end sent, connection still open")
        elif c.close_code == 1000:
            add("end", True, "video_stream_end sent; the receiver closed with 1000")
        else:
            add("end", False, c.closed_detail())
    elif c.closed is not None:
        add("end", False, c.closed_detail())
    else:
        add("end", False, "not run: connection closed")

    # 7. clean close: our 1000, answered with 1000.
    closed = c.closed
    if closed is None:
        closed = await _close(bot, c.reader, timeout)
    if closed.code == 1000:
        add("clean close", True, "close code 1000")
    else:
        add("clean close", False, f"close code {closed.code} {closed.reason!r}")


def format_check(item: CheckItem) -> str:
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[item.ok]
    return f"{status}  {item.name:<16} {item.detail}"
