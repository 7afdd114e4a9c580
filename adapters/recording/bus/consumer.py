"""Reading the bus (asyncio, ``nats-py``): a stream's media from any point, as
``(init, message)`` pairs, and a part's recording rebuilt byte for byte (``meetstream-live
consume``). See ``docs/bus.md``.

    js = nc.jetstream()
    async for init, message in follow(js, "bot-1", start="last"):
        if message is init: ...            # a new part begins: a decoder starts over
        elif message.kind == "fragment": decode(init.data + message.data)
        else: ...                          # "end": the part is final (message.size bytes)

``start``: ``"first"`` (everything the stream still has), ``"last"`` (from the newest
message: live, joining at the next keyframe), a stream sequence, or a ``datetime``. Joining
inside a part, the part's init segment is fetched by its sequence (``Meetstream-Init-Seq``).
Messages split for ``max_payload`` are joined before they are yielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .subjects import (
    EVENTS_STREAM,
    H_CHUNK,
    H_FRAGMENTS,
    H_INIT_SEQ,
    H_KEYFRAME,
    H_KIND,
    H_MSG_ID,
    H_OFFSET,
    H_PART,
    H_SECONDS,
    H_SEQ,
    H_SESSION,
    H_SIZE,
    H_VERDICT,
    StreamKey,
)

__all__ = ["Joiner", "MediaMessage", "Rebuilt", "follow", "parse", "rebuild"]

Start = str | int | dt.datetime


@dataclass(frozen=True)
class MediaMessage:
    """One message of a media subject, joined when it was split. ``kind``: ``init``,
    ``fragment`` or ``end``; ``offset``: where ``data`` goes in the part's recording;
    ``seq``: 0 for the init, 1, 2... for the fragments; ``end`` carries the file's bytes
    after its last fragment, its ``size`` (the recording's bytes) and ``fragments``;
    ``stream_seq``: the (first) JetStream sequence."""

    kind: str
    session: int
    part: int
    seq: int
    offset: int
    data: bytes
    keyframe: bool | None
    seconds: float
    stream_seq: int
    init_seq: int | None
    headers: Mapping[str, str]

    @property
    def size(self) -> int:
        return int(self.headers.get(H_SIZE, "0"))

    @property
    def fragments(self) -> int:
        return int(self.headers.get(H_FRAGMENTS, "0"))


def parse(data: bytes, headers: Mapping[str, str], stream_seq: int) -> MediaMessage:
    """A whole (joined) media message."""
    keyframe = headers.get(H_KEYFRAME)
    init_seq = headers.get(H_INIT_SEQ)
    return MediaMessage(
        kind=headers.get(H_KIND, ""),
        session=int(headers.get(H_SESSION, "0")),
        part=int(headers.get(H_PART, "0")),
        seq=int(headers.get(H_SEQ, "0")),
        offset=int(headers.get(H_OFFSET, "0")),
        data=data,
        keyframe=None if keyframe is None else keyframe == "1",
        seconds=float(headers.get(H_SECONDS, "0")),
        stream_seq=stream_seq,
        init_seq=int(init_seq) if init_seq is not None else None,
        headers=dict(headers),
    )


class Joiner:
    """Joins the pieces of split messages (``Meetstream-Chunk: i/n``, published in order by
    one lane); whole messages pass through."""

    def __init__(self) -> None:
        self._pieces: dict[str, list[bytes]] = {}
        self._first: dict[str, int] = {}

    def feed(self, data: bytes, headers: Mapping[str, str] | None,
             stream_seq: int) -> MediaMessage | None:
        headers = headers or {}
        chunk = headers.get(H_CHUNK)
        if chunk is None:
            return parse(data, headers, stream_seq)
        number, _, total = chunk.partition("/")
        base = headers.get(H_MSG_ID, "").rsplit(".c", 1)[0]
        if int(number) == 1:
            self._pieces[base] = []
            self._first[base] = stream_seq
        pieces = self._pieces.get(base)
        if pieces is None or len(pieces) != int(number) - 1:
            self._pieces.pop(base, None)  # joined mid-message: its start is not here
            return None
        pieces.append(data)
        if len(pieces) < int(total):
            return None
        del self._pieces[base]
        whole = b"".join(pieces)
        clean = {k: v for k, v in headers.items() if k != H_CHUNK}
        clean[H_MSG_ID] = base
        return parse(whole, clean, self._first.pop(base))


def _deliver(start: Start) -> dict[str, Any]:
    from nats.js.api import DeliverPolicy

    if start == "first":
        return {"deliver_policy": DeliverPolicy.ALL}
    if start == "last":
        return {"deliver_policy": DeliverPolicy.LAST}
    if isinstance(start, int) and not isinstance(start, bool):
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start}
    if isinstance(start, dt.datetime):
        return {"deliver_policy": DeliverPolicy.BY_START_TIME,
                "opt_start_time": start.astimezone(dt.timezone.utc)}
    raise ValueError(f"start: 'first', 'last', a sequence or a datetime, not {start!r}")


async def _fetch_init(js: Any, seq: int) -> MediaMessage | None:
    """The init message at stream sequence ``seq`` (and the pieces after it when split)."""
    from nats.js.errors import NotFoundError

    joiner = Joiner()
    for at in range(seq, seq + 10_000):
        try:
            raw = await js.get_msg(EVENTS_STREAM, at)
        except NotFoundError:
            return None
        message = joiner.feed(raw.data or b"", raw.headers, at)
        if raw.headers is None or H_CHUNK not in raw.headers:
            return message if message is not None and message.kind == "init" else None
        if message is not None:
            return message
    return None


async def _last_seq(js: Any, subject: str) -> int:
    from nats.js.errors import NotFoundError

    try:
        raw = await js.get_last_msg(EVENTS_STREAM, subject)
    except NotFoundError:
        return 0
    return int(raw.seq or 0)


async def follow(
    js: Any,
    bot_id: str,
    speaker: str | None = None,
    *,
    start: Start = "first",
    until_caught_up: bool = False,
    from_keyframe: bool = True,
    idle_timeout: float = 1.0,
) -> AsyncGenerator[tuple[MediaMessage, MediaMessage], None]:
    """The stream's media as ``(init, message)`` pairs, from ``start`` (see the module):
    ``message is init`` when a part begins, else a fragment or the part's end.
    ``until_caught_up``: stop after the newest message there was when it began (else wait
    for more, forever). ``from_keyframe``: joining inside a part, skip fragments up to the
    first that starts with a keyframe (or says nothing about it)."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import ConsumerConfig

    subject = StreamKey(bot_id, speaker).subject("media")
    last = await _last_seq(js, subject)
    if until_caught_up and last == 0:
        return
    sub = await js.subscribe(subject, ordered_consumer=True,
                             config=ConsumerConfig(**_deliver(start)))
    joiner = Joiner()
    init: MediaMessage | None = None
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            stream_seq = int(msg.metadata.sequence.stream)
            message = joiner.feed(msg.data, msg.headers, stream_seq)
            if message is not None:
                if message.kind == "init":
                    init = message
                    yield init, init
                elif init is not None and (init.session, init.part) == (message.session,
                                                                         message.part):
                    yield init, message
                elif message.init_seq is not None and (
                        message.kind == "end" or not from_keyframe
                        or message.keyframe is not False):
                    found = await _fetch_init(js, message.init_seq)
                    if found is not None:
                        init = found
                        yield init, init
                        yield init, message
            if until_caught_up and stream_seq >= last:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` wrote: the part's ``session`` and ``part`` number, ``size``
    bytes, ``fragments``; ``complete``: the part's end was on the bus and every fragment of
    it came (else the stream was still live, or messages aged out or were lost)."""

    session: int
    part: int
    size: int
    fragments: int
    complete: bool
    verdict: str | None


async def rebuild(
    js: Any,
    bot_id: str,
    speaker: str | None,
    out: BinaryIO,
    *,
    part: int | None = None,
    session: int | None = None,
    wait: bool = False,
) -> Rebuilt | None:
    """Write one part's recording to ``out`` (seekable) from the bus: the first part the
    stream still has, or part number ``part`` (of ``session``, the session's start in ms,
    when given). ``wait``: if the part has not ended yet, follow it until it does (else stop
    at the newest message). None when the bus has no such part."""
    messages = follow(js, bot_id, speaker, start="first", until_caught_up=not wait,
                      from_keyframe=False)
    async with contextlib.aclosing(messages):
        return await _rebuild(messages, out, part, session)


async def _rebuild(messages: AsyncIterator[tuple[MediaMessage, MediaMessage]], out: BinaryIO,
                   part: int | None, session: int | None) -> Rebuilt | None:
    chosen: tuple[int, int] | None = None
    seqs: set[int] = set()
    end = 0
    async for init, message in messages:
        ident = (message.session, message.part)
        if chosen is None:
            if message is not init or (part is not None and message.part != part) or (
                    session is not None and message.session != session):
                continue
            chosen = ident
        elif ident != chosen:
            continue
        if message.kind in ("init", "fragment"):
            out.seek(message.offset)
            out.write(message.data)
            end = max(end, message.offset + len(message.data))
            if message.kind == "fragment":
                seqs.add(message.seq)
        elif message.kind == "end":
            out.seek(message.offset)
            out.write(message.data)
            out.truncate(message.size)
            verdict = message.headers.get(H_VERDICT)
            complete = seqs == set(range(1, message.fragments + 1))
            return Rebuilt(ident[0], ident[1], message.size, len(seqs), complete, verdict)
    if chosen is None:
        return None
    out.truncate(end)
    return Rebuilt(chosen[0], chosen[1], end, len(seqs), False, None)
