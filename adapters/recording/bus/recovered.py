"""The parts a crash interrupted, published whole after the restart (``serve --nats``; see
``docs/bus.md``, "A fleet").

A receiver that dies (SIGKILL, a power cut) leaves its parts as ``.part`` files, and the bus
without what the publisher had only in memory: the last fragments, the ``end`` message. At the
next start, :func:`~..recovery.recover` finishes the files (cut back to their last complete
fragment); :class:`Republisher` then publishes each recovered part again from its file, message
by message as the bus sink built them when it was live (the same boundaries, the same
``Nats-Msg-Id``: what JetStream already has, within its duplicate window, is stored once),
then its ``end`` message and the ``end`` and ``verdict`` events (``end_reason`` ``crash``). So
``consume --part N`` rebuilds the recovered file byte for byte.

It runs in a thread of its own, a part at a time, and waits while the publisher's memory is
over half its ``max_pending_bytes`` (a recovered part may be hours of media).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meetstream_live import Fmp4Scanner, FragmentComplete, InitSegment
from meetstream_live.adapters.recording.meter import fragment_seconds
from meetstream_live.adapters.recording.names import iso_ms
from meetstream_live.adapters.recording.sidecar import FinishedRecording

from .message import Outgoing
from .publisher import Publisher
from .sink import MAX_TAIL, end_message, event_message, media_message, part_state

__all__ = ["RecoveredPart", "Republisher", "recovered_part"]

log = logging.getLogger("meetstream_live.bus")

_READ = 1024 * 1024


@dataclass(frozen=True)
class RecoveredPart:
    """What the bus needs of a recovered part: its stream, session start, number, file."""

    bot_id: str
    speaker: str | None
    session_ms: int
    number: int
    path: Path
    sidecar: dict[str, Any]


def recovered_part(recording: FinishedRecording) -> RecoveredPart | None:
    """The part of ``recording`` as the bus named it, or None (no bot, no session start)."""
    doc = recording.sidecar
    bot_id, number = doc.get("bot_id"), doc.get("part")
    if not isinstance(bot_id, str) or not isinstance(number, int):
        return None
    speaker = doc.get("speaker_id") or doc.get("speaker_name")
    session_ms: int | None = None
    manifest = doc.get("session")
    if isinstance(manifest, str):
        try:
            session_ms = iso_ms(json.loads((recording.path.parent / manifest).read_bytes())
                             .get("started_at"))
        except (OSError, ValueError, AttributeError):
            session_ms = None
    if session_ms is None and number == 1 and isinstance(doc.get("started_at_ms"), int):
        session_ms = doc["started_at_ms"]  # the session began with this part
    if session_ms is None:
        return None
    return RecoveredPart(bot_id, speaker if isinstance(speaker, str) else None, session_ms,
                         number, recording.path, doc)


def part_messages(part: RecoveredPart) -> Iterator[Outgoing]:
    """The part's media messages from its file, then its events and its ``end``: as the bus
    sink published them (see the module)."""
    state = part_state(part.bot_id, part.speaker, part.session_ms, part.number)
    scanner = Fmp4Scanner()
    seconds = 0.0
    with open(part.path, "rb") as f:
        offset = 0
        done = False
        while not done:
            chunk = f.read(_READ)
            events = scanner.feed(chunk) if chunk else scanner.eof()
            done = not chunk
            offset += len(chunk)
            for event in events:
                if isinstance(event, InitSegment):
                    if state.end or state.seq:
                        done = True  # a second init is another part's (never in one file)
                        break
                    stop = event.offset + event.size
                elif isinstance(event, FragmentComplete) and state.end:
                    stop = event.offset + event.size
                else:
                    continue
                f.seek(state.end)
                data = f.read(stop - state.end)
                f.seek(offset)
                if isinstance(event, InitSegment):
                    yield media_message(state, state.end, data, fragment=False)
                else:
                    fragment = fragment_seconds(scanner.tracks, event)
                    seconds += fragment
                    yield media_message(state, state.end, data, fragment=True,
                                        seconds=fragment, keyframe=_keyframe(scanner, event))
        size = f.seek(0, 2)
        tail = b""
        if state.end < size <= state.end + MAX_TAIL:
            f.seek(state.end)
            tail = f.read(size - state.end)
        if len(tail) != size - state.end:
            size, tail = state.end, b""
    doc = part.sidecar
    yield event_message(state, "recovered.end", "end", part.bot_id, part.speaker, {
        "end_reason": doc.get("end_reason", "crash"), "fragments": state.seq,
        "media_seconds": round(seconds, 6), "complete": False, "recovered": True})
    yield event_message(state, "recovered.verdict", "verdict", part.bot_id, part.speaker, {
        "verdict": doc.get("verdict"), "bytes": size, "fragments": state.seq,
        "indexed": bool(doc.get("indexed")), "file": part.path.name, "recovered": True})
    yield end_message(state, tail, size, doc.get("verdict"))


def _keyframe(scanner: Fmp4Scanner, event: FragmentComplete) -> bool | None:
    """As the stream model says it: the video track's first sample is a sync sample."""
    tracks = scanner.tracks
    if not tracks:
        return None
    video = next((t for t in tracks if t.handler == "vide"), tracks[0])
    for run in event.tracks:
        if run.track_id == video.track_id:
            return run.starts_with_sync
    return None


class Republisher:
    """Publishes ``recordings`` (what :func:`~..recovery.recover` finished) through
    ``publisher``, in a thread of its own (:meth:`start`); one lane per part."""

    def __init__(self, publisher: Publisher, recordings: Iterable[FinishedRecording],
                 *, poll: float = 0.05) -> None:
        self.publisher = publisher
        self.parts = [p for p in map(recovered_part, recordings) if p is not None]
        self.poll = poll
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: The parts handed to the publisher whole (tests).
        self.done = 0

    def start(self) -> None:
        if not self.parts or self._thread is not None:
            return
        log.info("%s: publishing the %d part(s) recovered from a crash", self.publisher.where(),
                 len(self.parts))
        self._thread = threading.Thread(target=self._run, name="bus-recovered", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop between two messages (at the receiver's shutdown: before the publisher closes;
        the parts not handed over whole are logged)."""
        self._stop.set()
        self.join(timeout)
        left = len(self.parts) - self.done
        if self._thread is not None and left:
            log.warning("bus: %d recovered part(s) not republished whole (stopped)", left)

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        for part in self.parts:
            if self._stop.is_set():
                return
            try:
                self._one(part)
            except OSError as exc:
                log.error("bus: cannot publish the recovered part %s: %s", part.path, exc)
            else:
                self.done += 1

    def _one(self, part: RecoveredPart) -> None:
        lane = self.publisher.new_lane()
        room = max(1, self.publisher.config.max_pending_bytes // 2)
        last: Outgoing | None = None
        for message in part_messages(part):
            if last is not None:
                while not self._stop.is_set():
                    waiting = self.publisher.memory_bytes()
                    if not waiting or waiting + len(last.payload) <= room:
                        break
                    time.sleep(self.poll)
                if self._stop.is_set():
                    return
                self.publisher.submit(lane, [last])
            last = message
        if last is not None:
            self.publisher.submit(lane, [last], last=True)
