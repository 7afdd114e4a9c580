"""The recorder's state machines, as tables: one Enum of states, one of inputs, and a Mapping
of every allowed ``(state, input) -> state``. A pair missing from a table is a bug (the code
asked for a change that cannot happen): :func:`advance` raises :class:`StateError`.

* :data:`PART` — one part (one output file) in the stream model: open, cutting (a rotation
  is due: it ends at the next box), dormant (its connection dropped, within the reconnect
  grace window), closed.
* :data:`STREAM` — one stream of one connection: deciding (a reconnect whose bytes wait
  until we know whether it continues the dormant part), recording, superseded (a newer
  connection took over: what it sends is ignored), ended.
* :data:`SESSION` — the streams of one ``(bot_id, speaker)`` over reconnects: active (a
  stream records), waiting (a dormant part, no stream), deciding, over.
* :data:`FILE` — the file sink's writing of one part: opening (no file yet), writing, lost
  (not writing: the disk failed or is low; it resumes at a fragment boundary), closed.

``docs/recording.md`` shows these tables; :func:`markdown` makes them (a test checks the doc).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

__all__ = [
    "FILE",
    "PART",
    "SESSION",
    "STREAM",
    "TABLES",
    "FileInput",
    "FileState",
    "PartInput",
    "PartState",
    "SessionInput",
    "SessionState",
    "StateError",
    "StreamInput",
    "StreamState",
    "advance",
    "doc_block",
    "markdown",
]


class StateError(RuntimeError):
    """A transition the tables do not have: a bug in the recorder."""


class PartState(enum.Enum):
    OPEN = "open"
    CUTTING = "cutting"
    DORMANT = "dormant"
    CLOSED = "closed"


class PartInput(enum.Enum):
    ROTATION_DUE = "rotation due"
    BOX_AT_CUT = "box at the cut"
    NEW_INIT = "new init segment"
    CONNECTION_LOST = "connection lost (grace)"
    RESUMED = "reconnect appends"
    ENDED = "ended"


PART: Mapping[tuple[PartState, PartInput], PartState] = {
    (PartState.OPEN, PartInput.ROTATION_DUE): PartState.CUTTING,
    (PartState.CUTTING, PartInput.BOX_AT_CUT): PartState.CLOSED,
    (PartState.OPEN, PartInput.NEW_INIT): PartState.CLOSED,
    (PartState.CUTTING, PartInput.NEW_INIT): PartState.CLOSED,
    (PartState.OPEN, PartInput.CONNECTION_LOST): PartState.DORMANT,
    (PartState.CUTTING, PartInput.CONNECTION_LOST): PartState.DORMANT,
    (PartState.DORMANT, PartInput.RESUMED): PartState.OPEN,
    (PartState.OPEN, PartInput.ENDED): PartState.CLOSED,
    (PartState.CUTTING, PartInput.ENDED): PartState.CLOSED,
    (PartState.DORMANT, PartInput.ENDED): PartState.CLOSED,
}


class StreamState(enum.Enum):
    DECIDING = "deciding"
    RECORDING = "recording"
    SUPERSEDED = "superseded"
    ENDED = "ended"


class StreamInput(enum.Enum):
    CONTINUES = "continues the dormant part"
    NEW_PART = "starts a new part"
    SUPERSEDED = "a newer connection took over"
    ENDED = "ended"


STREAM: Mapping[tuple[StreamState, StreamInput], StreamState] = {
    (StreamState.DECIDING, StreamInput.CONTINUES): StreamState.RECORDING,
    (StreamState.DECIDING, StreamInput.NEW_PART): StreamState.RECORDING,
    (StreamState.RECORDING, StreamInput.SUPERSEDED): StreamState.SUPERSEDED,
    (StreamState.RECORDING, StreamInput.ENDED): StreamState.ENDED,
    (StreamState.SUPERSEDED, StreamInput.ENDED): StreamState.ENDED,
}


class SessionState(enum.Enum):
    ACTIVE = "active"
    WAITING = "waiting"
    DECIDING = "deciding"
    OVER = "over"


class SessionInput(enum.Enum):
    DUPLICATE = "a duplicate connection"
    CONNECTION_LOST = "connection lost (grace)"
    RECONNECTED = "reconnected"
    DECIDED = "decided"
    EXPIRED = "grace over"
    ENDED = "ended"


SESSION: Mapping[tuple[SessionState, SessionInput], SessionState] = {
    (SessionState.ACTIVE, SessionInput.DUPLICATE): SessionState.ACTIVE,
    (SessionState.ACTIVE, SessionInput.CONNECTION_LOST): SessionState.WAITING,
    (SessionState.ACTIVE, SessionInput.ENDED): SessionState.OVER,
    (SessionState.WAITING, SessionInput.RECONNECTED): SessionState.DECIDING,
    (SessionState.WAITING, SessionInput.EXPIRED): SessionState.OVER,
    (SessionState.DECIDING, SessionInput.DECIDED): SessionState.ACTIVE,
}


class FileState(enum.Enum):
    OPENING = "opening"
    WRITING = "writing"
    LOST = "lost"
    CLOSED = "closed"


class FileInput(enum.Enum):
    OPENED = "file opened"
    FAILED = "a write failed"
    DISK_LOW = "disk low"
    DISK_BACK = "disk back (at a boundary)"
    CLOSED = "part closed"


FILE: Mapping[tuple[FileState, FileInput], FileState] = {
    (FileState.OPENING, FileInput.OPENED): FileState.WRITING,
    (FileState.WRITING, FileInput.FAILED): FileState.LOST,
    (FileState.WRITING, FileInput.DISK_LOW): FileState.LOST,
    (FileState.LOST, FileInput.DISK_BACK): FileState.WRITING,
    (FileState.OPENING, FileInput.CLOSED): FileState.CLOSED,
    (FileState.WRITING, FileInput.CLOSED): FileState.CLOSED,
    (FileState.LOST, FileInput.CLOSED): FileState.CLOSED,
}

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741


def advance(table: Mapping[tuple[S, I], S], state: S, event: I) -> S:
    """The state after ``event`` in ``state``; :class:`StateError` if the table has no such
    transition."""
    try:
        return table[(state, event)]
    except KeyError:
        raise StateError(f"no transition from {state.name} on {event.name}") from None


def markdown(name: str, table: Mapping[tuple[S, I], S]) -> str:
    """The table as a Markdown table (for ``docs/recording.md``)."""
    lines = [f"| `{name}` state | input | next |", "|---|---|---|"]
    for (state, event), after in table.items():
        lines.append(f"| {state.value} | {event.value} | {after.value} |")
    return "\n".join(lines)


#: The tables, as ``docs/recording.md`` shows them.
TABLES: dict[str, Mapping[tuple[enum.Enum, enum.Enum], enum.Enum]] = {
    "PART": PART,  # type: ignore[dict-item]
    "STREAM": STREAM,  # type: ignore[dict-item]
    "SESSION": SESSION,  # type: ignore[dict-item]
    "FILE": FILE,  # type: ignore[dict-item]
}


def doc_block() -> str:
    """What ``docs/recording.md`` holds between its ``states`` markers."""
    return "\n\n".join(markdown(name, table) for name, table in TABLES.items())
