"""The WebSocket relay: ``/live/{bot}[/{speaker}]/ws`` sends a stream's fMP4 as it is stored,
for programs and for a sub-second preview through Media Source Extensions.

A viewer gets, as WebSocket messages:

1. a JSON text header ``{"type": "header", "codecs": "avc1.64001f,mp4a.40.2", "mime":
   "video/mp4; codecs=\\"...\\"", "bot_id", "speaker", "part"}`` (codecs from the init
   segment's ``avcC``/``esds``: :mod:`.codecs`);
2. the init segment (binary);
3. the fragments from the latest keyframe fragment on (binary, one message each), then each
   fragment as the file sink stores it.

A new part of the stream (rotation, a new init segment) starts again at 1. When the stream
ends: ``{"type": "end"}`` and the close (1000). A viewer that reads slower than the stream is
never buffered without bound: once more than ``viewer_buffer`` bytes wait for it, what waits is
dropped, it is skipped forward to the next keyframe fragment and told ``{"type": "skipped",
"skips": n}``. Each fragment is read from the file once, whatever the number of viewers (they
share the same bytes), in the relay's own thread (a sink that drops, never blocks: the bot is
never slowed by a viewer).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

from meetstream_live import Disconnected
from meetstream_live.adapters import ConnectionInfo, Viewer
from meetstream_live.adapters.recording.sinks import (
    Dropped,
    FragmentStored,
    Part,
    PartFinalized,
    PartOpened,
    Sink,
    SinkEvent,
)

from .codecs import codecs_of
from .registry import LiveRegistry

__all__ = ["MAX_GOP_BYTES", "VIEWER_PATHS", "LiveRelay", "RelayViewer"]

log = logging.getLogger("meetstream_live.live")

#: The viewer paths (``ServerConfig.viewer_paths``).
VIEWER_PATHS = ("/live/*/ws", "/live/*/*/ws")
#: A stream's fragments since its latest keyframe kept (as offsets) for a viewer that joins;
#: beyond this, a joining viewer waits for the next keyframe.
MAX_GOP_BYTES = 16 * 1024 * 1024
#: Bytes handed to the adapter per pull (it pulls again when the socket takes more).
PULL_BYTES = 1024 * 1024


@dataclass
class _Part:
    part_id: int
    key: tuple[str, str]
    number: int
    path: Path | None = None
    init: tuple[int, int] | None = None
    init_bytes: bytes | None = None
    header: str | None = None
    #: (offset, size, keyframe) of the fragments since the latest keyframe one.
    gop: list[tuple[int, int, bool | None]] = field(default_factory=list)
    gop_bytes: int = 0
    fd: int | None = None

    def read(self, offset: int, size: int) -> bytes:
        if self.fd is None:
            assert self.path is not None
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes at {offset}")
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RelayViewer(Viewer):
    """One viewer connection: a bounded queue the adapter pulls from (see the module)."""

    def __init__(self, relay: LiveRelay, info: ConnectionInfo, bot_id: str,
                 speaker: str | None, limit: int) -> None:
        self.relay = relay
        self.info = info
        self.bot_id = bot_id
        self.speaker = speaker
        self.limit = limit
        #: Joined the stream's flow (after its catch-up).
        self.live = False
        self.skips = 0
        self.skipped_fragments = 0
        self.sent_bytes = 0
        self._lock = threading.Lock()
        self._queue: deque[tuple[bytes | str, bool]] = deque()  # (message, droppable)
        self._bytes = 0
        self._need_key = True
        self._ending = False
        self._gone = False

    # ---- from the relay (its thread, under its lock)

    def start(self, header: str, init: bytes) -> None:
        """A part begins for this viewer: what waits of the earlier one is dropped."""
        with self._lock:
            self._queue = deque([(header, False), (init, False)])
            self._bytes = len(init)
            self._need_key = True
        self.info.wake()

    def fragment(self, data: bytes, keyframe: bool | None) -> None:
        with self._lock:
            if self._need_key:
                if keyframe is False:
                    self.skipped_fragments += 1
                    return
                self._need_key = False
            if self._bytes + len(data) > self.limit:
                kept = deque(item for item in self._queue if not item[1])
                self.skipped_fragments += sum(1 for item in self._queue if item[1])
                self._queue = kept
                self._bytes = sum(len(m) for m, _ in kept)
                self.skips += 1
                self.relay.count_skip(self)
                self._queue.append((json.dumps({"type": "skipped", "skips": self.skips}),
                                    False))
                if keyframe is False:
                    self._need_key = True
                    self.skipped_fragments += 1
                    data = b""
            if data:
                self._queue.append((data, True))
                self._bytes += len(data)
        self.info.wake()

    def gap(self) -> None:
        """Bytes of the stream were missed: go on at the next keyframe."""
        with self._lock:
            self._need_key = True

    def end(self, message: str) -> None:
        with self._lock:
            self._queue.append((message, False))
            self._ending = True
        self.info.wake()

    # ---- from the adapter

    def pull(self) -> list[bytes | str]:
        out: list[bytes | str] = []
        size = 0
        close = False
        with self._lock:
            while self._queue and (not out or size < PULL_BYTES):
                message, _ = self._queue.popleft()
                out.append(message)
                if isinstance(message, bytes):
                    size += len(message)
                    self._bytes -= len(message)
            more = bool(self._queue)
            close = self._ending and not out and not more
            self.sent_bytes += size
        if close:
            self.info.close(1000, "stream ended")
        elif more or self._ending:
            self.info.wake()
        return out

    def on_disconnect(self, event: Disconnected) -> None:
        self._gone = True
        self.relay.leave(self)

    @property
    def waiting_bytes(self) -> int:
        with self._lock:
            return self._bytes


class LiveRelay(Sink):
    """The relay (see the module): a sink following the file sink, and the viewer factory."""

    name: ClassVar[str] = "live_relay"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (
        PartOpened, FragmentStored, PartFinalized, Dropped)
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    runs: ClassVar[Literal["thread", "inline"]] = "thread"
    threads: ClassVar[int] = 1
    max_queue_events: ClassVar[int] = 2_000

    def __init__(self, *, viewer_buffer: int = 4 * 1024 * 1024) -> None:
        self.viewer_buffer = viewer_buffer
        self._lock = threading.Lock()
        self._parts: dict[int, _Part] = {}
        self._current: dict[tuple[str, str], _Part] = {}
        self._viewers: dict[tuple[str, str | None], set[RelayViewer]] = {}
        self._skips: dict[tuple[str, str], int] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="live-relay-join")
        self.read_errors = 0

    # ------------------------------------------------------------------ viewers

    def viewer(self, info: ConnectionInfo) -> Viewer:
        """The viewer factory (``ServerOptions.viewer_factory``), for the paths in
        :data:`VIEWER_PATHS`; called on the adapter's loop: it never reads a file."""
        names = [unquote(s) for s in info.path.split("/")[2:-1]]
        bot_id = names[0]
        speaker = names[1] if len(names) > 1 else None
        viewer = RelayViewer(self, info, bot_id, speaker, self.viewer_buffer)
        with self._lock:
            if speaker is None:  # the bot's latest stream, if it has one now
                latest = [p for k, p in self._current.items() if k[0] == bot_id]
                if latest:
                    viewer.speaker = speaker = latest[-1].key[1]
            self._viewers.setdefault((bot_id, speaker), set()).add(viewer)
            part = self._current.get((bot_id, speaker)) if speaker is not None else None
        if part is not None and part.init is not None:
            self._pool.submit(self._catch_up, viewer, part)
        return viewer

    def leave(self, viewer: RelayViewer) -> None:
        with self._lock:
            found = self._viewers.get((viewer.bot_id, viewer.speaker))
            if found is not None:
                found.discard(viewer)
                if not found:
                    del self._viewers[(viewer.bot_id, viewer.speaker)]

    def count_skip(self, viewer: RelayViewer) -> None:
        key = (viewer.bot_id, viewer.speaker or "")
        self._skips[key] = self._skips.get(key, 0) + 1

    def _catch_up(self, viewer: RelayViewer, part: _Part) -> None:
        """A joining viewer: the header, the init segment, the fragments since the latest
        keyframe; then it follows the stream (all under the lock: in order with
        :meth:`handle`)."""
        with self._lock:
            if self._parts.get(part.part_id) is not part or viewer.live:
                return
            try:
                self._send_start(part, [viewer])
                for offset, size, keyframe in part.gop:
                    viewer.fragment(part.read(offset, size), keyframe)
            except OSError as exc:
                self.read_errors += 1
                log.warning("live relay: cannot read %s: %s", part.path, exc)
                viewer.gap()
            viewer.live = True

    def _send_start(self, part: _Part, viewers: Sequence[RelayViewer]) -> None:
        if part.init is None:
            return
        if part.init_bytes is None:
            part.init_bytes = part.read(*part.init)
            codecs = ",".join(codecs_of(part.init_bytes))
            part.header = json.dumps({
                "type": "header", "bot_id": part.key[0], "speaker": part.key[1],
                "part": part.number, "codecs": codecs,
                "mime": f'video/mp4; codecs="{codecs}"',
            })
        assert part.header is not None
        for viewer in viewers:
            viewer.start(part.header, part.init_bytes)
            viewer.live = True

    def _watching(self, key: tuple[str, str]) -> list[RelayViewer]:
        found = list(self._viewers.get(key, ()))
        waiting = self._viewers.get((key[0], None))
        if waiting:  # viewers of the bot that came before any stream: this one is theirs
            for viewer in waiting:
                viewer.speaker = key[1]
            self._viewers.setdefault(key, set()).update(waiting)
            del self._viewers[(key[0], None)]
            found += waiting
        return found

    # ------------------------------------------------------------------ the sink

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self._lock:
            for event in events:
                self._handle(part, event)

    def _handle(self, part: Part, event: SinkEvent) -> None:
        key = LiveRegistry.key(part)
        if isinstance(event, PartOpened):
            self._parts[part.id] = self._current[key] = _Part(part.id, key, part.number)
            return
        relayed = self._parts.get(part.id)
        if relayed is None:
            return
        viewers = self._watching(key) if self._current.get(key) is relayed else []
        if isinstance(event, FragmentStored):
            relayed.path = event.path
            try:
                if event.fragment is None:
                    relayed.init = (event.file_offset, event.size)
                    relayed.init_bytes = None
                    self._send_start(relayed, viewers)
                    return
                self._keep(relayed, event)
                live = [v for v in viewers if v.live]
                if live:
                    data = relayed.read(event.file_offset, event.size)
                    for viewer in live:
                        viewer.fragment(data, event.keyframe)
            except OSError as exc:
                self.read_errors += 1
                log.warning("live relay: cannot read %s: %s", relayed.path, exc)
                for viewer in viewers:
                    viewer.gap()
        elif isinstance(event, Dropped):
            relayed.gop.clear()
            relayed.gop_bytes = 0
            for viewer in viewers:
                viewer.gap()
        elif isinstance(event, PartFinalized):
            relayed.close()
            del self._parts[part.id]
            if self._current.get(key) is relayed:
                del self._current[key]
                for viewer in viewers:
                    viewer.end(json.dumps({"type": "end"}))

    @staticmethod
    def _keep(relayed: _Part, event: FragmentStored) -> None:
        if event.keyframe is not False:
            relayed.gop = [(event.file_offset, event.size, event.keyframe)]
            relayed.gop_bytes = event.size
        elif relayed.gop and relayed.gop_bytes + event.size <= MAX_GOP_BYTES:
            relayed.gop.append((event.file_offset, event.size, event.keyframe))
            relayed.gop_bytes += event.size
        else:
            relayed.gop.clear()
            relayed.gop_bytes = 0

    # ------------------------------------------------------------------ reading

    def stats(self) -> dict[str, Any]:
        """Per stream (``"bot/speaker"``): viewers now and skips so far."""
        with self._lock:
            out: dict[str, Any] = {}
            for (bot, speaker), viewers in self._viewers.items():
                out.setdefault(f"{bot}/{speaker or ''}", {"viewers": 0, "skips": 0})[
                    "viewers"] += len(viewers)
            for (bot, speaker), skips in self._skips.items():
                out.setdefault(f"{bot}/{speaker}", {"viewers": 0, "skips": 0})["skips"] = skips
            return out

    def viewers(self) -> list[RelayViewer]:
        with self._lock:
            return [v for found in self._viewers.values() for v in found]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for relayed in self._parts.values():
                relayed.close()
            viewers = [v for found in self._viewers.values() for v in found]
        for viewer in viewers:
            viewer.info.close(1001, "server going away")
