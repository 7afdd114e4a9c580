"""The recorder's handler: one per connection, it turns the core's events into calls of the
stream model (:class:`~.stream.Stream`) under its session's lock. It touches memory and queues
only, so the adapters run it on the event loop (:meth:`RecordingHandler.dispatch_inline`),
except for the end of the connection: :class:`~meetstream_live.Disconnected` goes to a handler
thread, which waits (at most :attr:`RecordingHandler.settle_timeout`) until the file sink has
finalized the parts it closed. So a connection that is over has its recording final, as it
always had: the bot is gone, nothing but that thread waits for it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from meetstream_live import (
    Disconnected,
    Event,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import ConnectionInfo, Handler

from .durable import JOIN_BELOW
from .sidecar import MAX_WARNINGS

if TYPE_CHECKING:
    from .sessions import Recorder
    from .stream import Stream

__all__ = ["RecordingHandler"]


class RecordingHandler(Handler):
    """Records the streams of one connection (made by :class:`~.sessions.Recorder`)."""

    #: Take every batch on the event loop (asyncio, trio): the handler does no I/O and never
    #: waits (the file sink writes in its own threads), but the end of the connection.
    #: False: always in a handler thread.
    write_on_loop = True
    #: Seconds the end of a connection waits for its parts' files to be final.
    settle_timeout = 60.0

    def __init__(self, recorder: Recorder, info: ConnectionInfo) -> None:
        self.recorder = recorder
        self.info = info
        self.stream: Stream | None = None
        self._early_warnings: list[tuple[str, str]] = []
        self._ended: list[Stream] = []  # this connection's streams that ended

    def dispatch(self, events: Iterable[Event]) -> None:
        try:
            if type(self).on_chunk is RecordingHandler.on_chunk:
                self._dispatch_runs(events)
            else:  # a subclass's on_chunk hears of every chunk
                super().dispatch(events)
        except Exception:
            metrics = self.recorder.metrics
            if metrics is not None:
                metrics.errors.inc(label="handler")
            raise

    def dispatch_inline(self, events: list[Event]) -> bool:
        if not self.write_on_loop or type(events[-1]) is Disconnected:
            return False
        self.dispatch(events)
        return True

    def _dispatch_runs(self, events: Iterable[Event]) -> None:
        """:meth:`dispatch`, with each run of chunks fed under one lock (per-event costs count
        at 4 KiB chunks)."""
        run: list[MediaChunk] = []
        for event in events:
            if type(event) is MediaChunk:
                run.append(event)
                continue
            if run:
                self._on_chunks(run)
                run = []
            super().dispatch((event,))
        if run:
            self._on_chunks(run)

    def _on_chunks(self, run: list[MediaChunk]) -> None:
        stream = self.stream
        if stream is None:
            for event in run:
                self.on_chunk(event)
            return
        with stream.session.lock:
            if stream.superseded:
                stream.ignore(sum(len(event.data) for event in run))
                return
            size = sum(len(event.data) for event in run)
            if size < JOIN_BELOW * len(run):
                # Small chunks: joined into one (the one copy the file's write would make
                # anyway), so that the scanner and every sink see one chunk, not dozens.
                stream.feed(b"".join([event.data for event in run]))
            else:
                for event in run:
                    stream.feed(event.data)
            stream.publish()

    def _new_stream(self, start: StreamStarted | None) -> Stream:
        stream = self.stream = self.recorder.open_stream(self.info, start)
        with stream.session.lock:
            for kind, message in self._early_warnings:
                stream.warn(kind, message, source="protocol")
            if start is None:
                stream.warn("no_stream_start", "binary data without video_stream_start")
            stream.publish()
        self._early_warnings.clear()
        return stream

    def on_start(self, event: StreamStarted) -> None:
        if self.stream is not None:  # the core never does this; finish it anyway
            stream = self.stream
            with stream.session.lock:
                stream.finish(clean=False)
            self._ended.append(stream)
        self._new_stream(event)

    def on_chunk(self, event: MediaChunk) -> None:
        # Bytes with no video_stream_start (the core delivers them just before the
        # disconnect): kept under unknown/, never dropped.
        stream = self.stream if self.stream is not None else self._new_stream(None)
        with stream.session.lock:
            if stream.superseded:
                stream.ignore(len(event.data))
                return
            stream.feed(event.data)
            stream.publish()

    def on_ping(self, event: LatencyPing) -> None:
        stream = self.stream
        if stream is not None:
            with stream.session.lock:
                stream.ping(event)
                stream.publish()

    def on_end(self, event: StreamEnded) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with stream.session.lock:
                stream.finish(clean=True, reported=event.duration_seconds)
            self._ended.append(stream)

    def on_warning(self, event: ProtocolWarning) -> None:
        stream = self.stream
        if stream is not None:
            with stream.session.lock:
                stream.warn(event.kind.value, event.message, source="protocol")
                stream.publish()
        elif len(self._early_warnings) < MAX_WARNINGS:
            self._early_warnings.append((event.kind.value, event.message))

    def on_disconnect(self, event: Disconnected) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with stream.session.lock:
                stream.finish(clean=False, code=event.code, reason=event.reason)
            self._ended.append(stream)
        closed = [part for ended in self._ended for part in ended.closed]
        self._ended.clear()
        if closed:  # the connection is over: its recordings are final when this returns
            self.recorder.files.wait_settled(closed, self.settle_timeout)
