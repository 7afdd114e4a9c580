"""The bus sink: every stream's events and media on NATS JetStream while it is recorded
(``serve --nats nats://HOST:4222``; see ``docs/bus.md``).

Media follows the file, as the upload sink does: the file sink's
:class:`~..sinks.FragmentStored` says which bytes of the part's file are a complete fragment
(or the init segment), and the sink reads them back from the file it has just written (one
``pread`` from the page cache, in the file sink's thread). Each message's payload is the file's
bytes from the end of the previous message to the end of the fragment, at the file offset
``Meetstream-Offset``: written at their offsets, the messages of a part are its recording,
byte for byte (without ``--index``, which rewrites the ``moov`` at the end).

Events come from the stream model: ``start`` (:class:`~..sinks.PartOpened`), ``pong``
(:class:`~..sinks.PingSeen`, the latency), ``warning`` (:class:`~..sinks.Note`), ``paused``,
``resumed``, ``end`` (:class:`~..sinks.PartClosed`) and ``verdict``
(:class:`~..sinks.PartFinalized`). The media subject's ``end`` message carries the file's
bytes after its last fragment (ffmpeg's ``mfra``, a stream the scanner gave up on) and its
size.

:meth:`BusSink.handle` runs inline (``runs = "inline"``): it builds the messages and hands them
to the :class:`~.publisher.Publisher`'s queue; the network is the publisher's thread's. NATS
slow or down costs that queue its memory (bounded), never a pong or the local recording.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from meetstream_live.adapters.recording.sinks import (
    FragmentStored,
    Note,
    Part,
    PartClosed,
    PartFinalized,
    PartOpened,
    PingSeen,
    Sink,
    SinkEvent,
    SinkSet,
    StreamPaused,
    StreamResumed,
)

from .publisher import Outgoing, Publisher
from .subjects import (
    H_BOT,
    H_FRAGMENTS,
    H_KEYFRAME,
    H_KIND,
    H_MSG_ID,
    H_OFFSET,
    H_PART,
    H_SECONDS,
    H_SEQ,
    H_SESSION,
    H_SIZE,
    H_SPEAKER,
    H_VERDICT,
    StreamKey,
)

__all__ = ["BusSink"]

log = logging.getLogger("meetstream_live.bus")

#: The most bytes after the last fragment the end message carries (more: the bus copy of the
#: part ends at its last fragment, and the consumer says it is incomplete).
MAX_TAIL = 16 * 1024 * 1024

#: ``summary`` fields of :class:`PartClosed` that go into the ``end`` event.
END_FIELDS = ("end_reason", "session_over", "fragments", "media_seconds", "complete",
              "lost_bytes", "lost_fragments", "pings")


@dataclass
class _PartState:
    key: StreamKey
    base: dict[str, str]
    msg_prefix: str
    fd: int | None = None
    end: int = 0  # file bytes sent up to here
    seq: int = 0  # fragments so far
    events: int = 0  # events so far


class BusSink(Sink):
    """Publishes every part's events and media through ``publisher`` (see the module).
    ``pongs``: publish every pong's latency as an event (False: none)."""

    name: ClassVar[str] = "bus"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (
        PartOpened, PingSeen, Note, StreamPaused, StreamResumed, PartClosed, FragmentStored,
        PartFinalized)
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(self, publisher: Publisher, *, pongs: bool = True,
                 drain_timeout: float = 10.0) -> None:
        self.publisher = publisher
        self.pongs = pongs
        self.drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._parts: dict[int, _PartState] = {}
        #: Stopped at :meth:`close` before the publisher (``serve`` sets it: the parts a
        #: crash interrupted, :mod:`.recovered`).
        self.before_close: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ the Sink contract

    def start(self, sinks: SinkSet) -> None:
        self.publisher.start()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        for event in events:
            kind = type(event)
            if kind is FragmentStored:
                assert isinstance(event, FragmentStored)
                self._stored(part, event)
            elif kind is PartFinalized:
                assert isinstance(event, PartFinalized)
                self._finalized(part, event)
            else:
                self._event(part, event)

    def abandon(self, part: Part, exc: Exception) -> None:
        self._forget(part)

    def close(self) -> None:
        for stop in self.before_close:
            stop()
        with self._lock:
            states = list(self._parts.values())
            self._parts.clear()
        for state in states:
            if state.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(state.fd)
        self.publisher.close(self.drain_timeout)

    def report(self, part: Part) -> dict[str, Any]:
        with self._lock:
            state = self._parts.get(part.id)
        if state is None:
            return {}
        return {"subject": state.key.subject("media"), "fragments": state.seq}

    # ------------------------------------------------------------------ building messages

    def _state(self, part: Part) -> _PartState:
        with self._lock:
            state = self._parts.get(part.id)
            if state is None:
                state = self._parts[part.id] = part_state(
                    part.bot_id or "", part.speaker, part.session_started_ms or part.started_ms,
                    part.number)
            return state

    def _forget(self, part: Part) -> None:
        with self._lock:
            state = self._parts.pop(part.id, None)
        if state is not None and state.fd is not None:
            with contextlib.suppress(OSError):
                os.close(state.fd)

    def _stored(self, part: Part, event: FragmentStored) -> None:
        state = self._state(part)
        if state.fd is None:
            state.fd = os.open(event.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        stop = event.file_offset + event.size
        # From the end of what was sent (the bytes between boxes too), or from the fragment's
        # start when the file was cut back below it.
        start = state.end if state.end <= event.file_offset else event.file_offset
        data = os.pread(state.fd, stop - start, start)
        if len(data) != stop - start:
            raise OSError(f"{event.path}: {len(data)} of {stop - start} bytes at {start}")
        message = media_message(state, start, data, fragment=event.fragment is not None,
                                seconds=event.seconds, keyframe=event.keyframe)
        self.publisher.submit(part.id, [message])

    def _finalized(self, part: Part, event: PartFinalized) -> None:
        state = self._state(part)
        doc = event.recording.sidecar
        fd = state.fd
        if fd is None:  # no fragment was stored: the file is read from its final name
            with contextlib.suppress(OSError):
                fd = os.open(event.recording.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        size = state.end
        tail = b""
        if fd is not None:
            # The bytes after the last fragment (an mfra, a plain stream's bytes): the end
            # message carries them, so that the bus copy is the whole file.
            size = os.fstat(fd).st_size
            if state.end < size <= state.end + MAX_TAIL:
                tail = os.pread(fd, size - state.end, state.end)
            if len(tail) != size - state.end:
                size = state.end
                tail = b""
            if fd != state.fd:
                os.close(fd)
        verdict = {"verdict": doc.get("verdict"), "bytes": size, "fragments": state.seq,
                   "indexed": bool(doc.get("indexed")), "file": event.recording.path.name}
        messages = [self._event_message(part, state, "verdict", verdict),
                    end_message(state, tail, size, doc.get("verdict"))]
        self._forget(part)
        self.publisher.submit(part.id, messages, last=True)

    def _event(self, part: Part, event: SinkEvent) -> None:
        doc: dict[str, Any]
        if isinstance(event, PartOpened):
            start = part.start
            kind = "start"
            doc = {"why": part.why, "started_ms": part.started_ms,
                   "start": dict(start.raw) if start is not None else None}
        elif isinstance(event, PingSeen):
            if not self.pongs:
                return
            kind, doc = "pong", {"seq": event.seq, "latency_ms": event.latency_ms}
        elif isinstance(event, Note):
            kind, doc = "warning", {"source": event.source, "kind": event.kind,
                                    "message": event.message}
        elif isinstance(event, StreamPaused):
            kind, doc = "paused", {"grace": event.grace}
        elif isinstance(event, StreamResumed):
            kind, doc = "resumed", {}
        elif isinstance(event, PartClosed):
            kind = "end"
            doc = {name: event.summary[name] for name in END_FIELDS if name in event.summary}
        else:
            return
        state = self._state(part)
        self.publisher.submit(part.id, [self._event_message(part, state, kind, doc)])

    def _event_message(self, part: Part, state: _PartState, kind: str,
                       doc: dict[str, Any]) -> Outgoing:
        with self._lock:
            state.events += 1
            number = state.events
        return event_message(state, f"e{number}", kind, part.bot_id, part.speaker, doc)


# The messages of one part, as the sink builds them; the republisher of recovered parts
# (:mod:`.recovered`) builds the same (the same IDs: JetStream stores each once).


def part_state(bot_id: str, speaker: str | None, session_ms: int, number: int) -> _PartState:
    """The headers and message-ID prefix of part ``number`` of the session that began at
    ``session_ms``."""
    key = StreamKey(bot_id, speaker or None)
    bot, speaker_token = key.tokens.split(".")
    base = {H_BOT: bot, H_SPEAKER: speaker_token, H_SESSION: str(session_ms),
            H_PART: str(number)}
    return _PartState(key, base, f"{key.tokens}.{session_ms}.{number}")


def media_message(state: _PartState, start: int, data: bytes, *, fragment: bool,
                  seconds: float = 0.0, keyframe: bool | None = None) -> Outgoing:
    """The init segment (``fragment`` False) or the next fragment: ``data``, the file's bytes
    from ``start`` (the end of the previous message) to the end of the box; advances
    ``state``."""
    state.end = start + len(data)
    headers = {**state.base, H_OFFSET: str(start)}
    also = None
    if not fragment:
        kind = "init"
        headers[H_SEQ] = "0"
        headers[H_MSG_ID] = f"{state.msg_prefix}.i{start}"
        also = state.key.subject("init")
    else:
        kind = "fragment"
        state.seq += 1
        headers[H_SEQ] = str(state.seq)
        headers[H_MSG_ID] = f"{state.msg_prefix}.f{state.seq}"
        headers[H_SECONDS] = f"{seconds:.6f}"
        if keyframe is not None:
            headers[H_KEYFRAME] = "1" if keyframe else "0"
    headers[H_KIND] = kind
    return Outgoing(state.key.subject("media"), data, headers, kind, also)


def end_message(state: _PartState, tail: bytes, size: int, verdict: object) -> Outgoing:
    """The media subject's ``end`` of the part: the file's ``tail`` after its last fragment,
    its ``size``."""
    headers = {**state.base, H_KIND: "end", H_MSG_ID: f"{state.msg_prefix}.end",
               H_OFFSET: str(state.end), H_SIZE: str(size), H_FRAGMENTS: str(state.seq),
               H_VERDICT: str(verdict)}
    return Outgoing(state.key.subject("media"), tail, headers, "end")


def event_message(state: _PartState, ident: str, kind: str, bot_id: str | None,
                  speaker: str | None, doc: dict[str, Any]) -> Outgoing:
    """An event of the part; ``ident`` ends its message ID."""
    body = {"type": kind, "bot_id": bot_id, "speaker": speaker,
            "session": int(state.base[H_SESSION]), "part": int(state.base[H_PART]), **doc}
    headers = {**state.base, H_KIND: "event", H_MSG_ID: f"{state.msg_prefix}.{ident}"}
    return Outgoing(state.key.subject("events"), _json(body), headers, "event")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
