"""``meetstream-live check``: the protocol document's quick-test checklist, against any
receiver, PASS/FAIL/SKIP per item (TLS, handshake, start, binary, pongs, a 16 MiB message, an
idle gap, end, clean close). A receiver that is not there is said so once ("nothing
listening at HOST:PORT"), not as one failure per item."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meetstream_live import (
    BotClosed,
    BotState,
    Event,
    LocalProtocolError,
    PongReceived,
    ProtocolWarning,
    parse_ws_url,
)
from meetstream_live.adapters import HandshakeFailed
from meetstream_live.adapters._driver import now_ms
from meetstream_live.adapters.asyncio import AsyncioBot

from .simulate import (
    BIG_MESSAGE,
    MESSAGE_TOO_BIG,
    START_FIELDS,
    MediaPlan,
    _close,
    auth_headers,
    client_ssl,
)

__all__ = ["CheckItem", "check", "format_check"]


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
    except ConnectionRefusedError:
        target = parse_ws_url(url)
        shown = f"[{target.host}]" if ":" in target.host else target.host
        add("handshake", False, f"nothing listening at {shown}:{target.port} "
            "(connection refused): is the receiver running, on this host and port?")
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
