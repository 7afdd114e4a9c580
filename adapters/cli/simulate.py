"""Play the MeetStream bot against a receiver: the simulator.

:func:`simulate` runs N bots at once, each streaming a real fMP4 file (as fast as possible, or
paced by media time with ``realtime=True``), pinging at an interval, and measures the pong
round trips; :mod:`.progress` shows how far it is. The protocol check, on the same bot, is in
:mod:`.check`. Both use :class:`~meetstream_live.adapters.asyncio.AsyncioBot`; the command
line is in :mod:`meetstream_live.adapters.cli`.
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
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import IO, Any

from meetstream_live import (
    BotClosed,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    LocalProtocolError,
    PongReceived,
    parse_ws_url,
)
from meetstream_live.adapters import HandshakeFailed
from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.recording.meter import fragment_seconds

from .progress import Progress

__all__ = [
    "CHAOS",
    "MediaPlan",
    "SimulationResult",
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
    progress: Progress,
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
    settings: _BotSettings, bot_id: str, plan: MediaPlan, progress: Progress, seed: int
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
    state = Progress(progress, len(plan.data) * bots)
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
