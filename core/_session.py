"""The MeetStream session: the message layer, below any WebSocket framing.

:class:`Session` sees whole text messages (or pieces of them) and binary bytes, and turns them
into events and reply messages. :class:`~meetstream_live.ServerConnection` drives it under
wsproto; the ASGI adapter drives it directly, because there the ASGI server does the framing.

States and transitions live in :data:`TRANSITIONS`; ``docs/protocol.md`` draws its diagram from
that table, and a pair missing from it means "the state does not change" (with a warning where
the message was unexpected).
"""

from __future__ import annotations

import enum
import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._events import (
    CloseCode,
    DisconnectCause,
    Disconnected,
    Event,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    WarningKind,
)

__all__ = [
    "DEFAULT_MAX_EARLY_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_TEXT_SIZE",
    "TRANSITIONS",
    "CloseRequest",
    "Session",
    "SessionInput",
    "SessionState",
]

DEFAULT_MAX_EARLY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_TEXT_SIZE = 1024 * 1024
#: Largest binary message: far above a 1080p keyframe (a few MiB), far below memory trouble
#: for a stack that buffers whole messages. Binary is streamed here, so this is hygiene.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_JSON_SAFE = 2**53 - 1  # the largest integer every JSON implementation (JavaScript's) holds


class SessionState(enum.Enum):
    """Where a connection's MeetStream session is."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"
    CLOSED = "closed"


class SessionInput(enum.Enum):
    """What can happen to a session (the columns of :data:`TRANSITIONS`)."""

    START = "video_stream_start"
    END = "video_stream_end"
    CONNECTION_LOST = "connection lost"


#: Every state change. Pings, binary data and bad messages never change the state.
TRANSITIONS: Mapping[tuple[SessionState, SessionInput], SessionState] = {
    (SessionState.AWAITING_START, SessionInput.START): SessionState.STREAMING,
    (SessionState.STREAMING, SessionInput.END): SessionState.ENDED,
    (SessionState.ENDED, SessionInput.START): SessionState.STREAMING,
    (SessionState.AWAITING_START, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
    (SessionState.STREAMING, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
    (SessionState.ENDED, SessionInput.CONNECTION_LOST): SessionState.CLOSED,
}


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """The session cannot go on: the connection must be closed with this WebSocket code."""

    code: int
    reason: str
    cause: DisconnectCause = DisconnectCause.MESSAGE_TOO_BIG


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(value: object) -> str:
    """A short repr of an untrusted value (bounded in length and nesting)."""
    return _REPR.repr(value)


def _as_float(value: object) -> float | None:
    """A JSON number as a float; None when it is not a number or too big for a float."""
    if not _is_number(value):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A JSON number we can use: ints, and finite floats (``1e999`` parses to infinity)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _echoable(value: object) -> bool:
    """Whether a ping field can go back in the pong as strict JSON, as it came."""
    return not isinstance(value, (list, dict)) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


class Session:
    """One connection's MeetStream session, from its first message to its end.

    Contract: after each ``receive_*`` call, send the messages returned by
    :meth:`messages_to_send` (pongs) before doing anything slow with the events, and if
    :attr:`close_request` is set, close the connection with its code. Once a close is requested,
    further input is ignored.
    """

    def __init__(
        self,
        *,
        max_early_bytes: int = DEFAULT_MAX_EARLY_BYTES,
        max_text_size: int = DEFAULT_MAX_TEXT_SIZE,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.max_early_bytes = max_early_bytes
        self.max_text_size = max_text_size
        self.max_message_size = max_message_size
        self._message_size = 0
        self.state = SessionState.AWAITING_START
        #: ``bot_id`` of the latest ``video_stream_start``, used for pongs without one.
        self.bot_id: str | None = None
        self.close_request: CloseRequest | None = None
        self.streams_started = 0
        self._offset = 0
        self._early: list[bytes] = []
        self._early_size = 0
        self._text: list[str] = []
        self._text_size = 0
        self._outgoing: list[str] = []

    # ------------------------------------------------------------------ input

    def receive_binary(self, data: bytes, *, finished: bool = True) -> list[Event]:
        """Bytes of a binary message, whole or any piece of one, in order; ``finished`` says
        whether the message ends with them (it bounds the message size)."""
        if self.close_request is not None or self.state is SessionState.CLOSED:
            return []
        limit = self.max_message_size
        if limit is not None:
            size = self._message_size + len(data)
            if size > limit:
                # What fits is delivered (it was received); the rest is refused with 1009.
                events = self._binary(data[: limit - self._message_size])
                self.close_request = CloseRequest(
                    CloseCode.MESSAGE_TOO_BIG, f"binary message over {limit} bytes"
                )
                return events
            self._message_size = 0 if finished else size
        return self._binary(data)

    def receive_whole_messages(self, data: bytes) -> list[Event]:
        """Bytes of one or more whole binary messages, joined, none of them over
        ``max_message_size`` (the caller checked each: the server's fast lane joins only such
        messages) and no message in flight before them. The same as one
        :meth:`receive_binary` per message, with one event instead of one per message."""
        if self.close_request is not None or self.state is SessionState.CLOSED:
            return []
        assert not self._message_size, "whole messages in the middle of a message"
        return self._binary(data)

    def _binary(self, data: bytes) -> list[Event]:
        if not data:
            return []
        if self.state is SessionState.STREAMING:
            chunk = MediaChunk(data, self._offset)
            self._offset += len(data)
            return [chunk]
        return self._hold_early(data)

    def receive_text(self, piece: str, wall_ms: int, *, finished: bool = True) -> list[Event]:
        """A text message, whole (``finished=True``) or a piece of one at a time. ``wall_ms``
        (Unix time in milliseconds) stamps ``server_received_at_ms`` in a pong."""
        if self.close_request is not None or self.state is SessionState.CLOSED:
            return []
        self._text_size += len(piece.encode("utf-8"))
        if self._text_size > self.max_text_size:
            self._text.clear()
            self.close_request = CloseRequest(
                CloseCode.MESSAGE_TOO_BIG, f"text message over {self.max_text_size} bytes"
            )
            return []
        if not finished:
            self._text.append(piece)
            return []
        if self._text:
            self._text.append(piece)
            piece = "".join(self._text)
            self._text.clear()
        self._text_size = 0
        return self._handle_text(piece, wall_ms)

    def connection_lost(
        self,
        code: int,
        reason: str = "",
        cause: DisconnectCause = DisconnectCause.CONNECTION_LOST,
    ) -> list[Event]:
        """The connection is over: release what is held, then :class:`Disconnected`."""
        if self.state is SessionState.CLOSED:
            return []
        events: list[Event] = []
        orphans = bool(self._early)
        if orphans:
            # Bytes with no stream to belong to (early bytes are only held outside a stream):
            # deliver them anyway, from offset 0, so nothing received is ever dropped.
            self._offset = 0
            events.extend(self._release_early())
        clean = self.state is not SessionState.STREAMING and not orphans
        self.state = TRANSITIONS[(self.state, SessionInput.CONNECTION_LOST)]
        events.append(Disconnected(code, reason, clean, cause))
        return events

    # ------------------------------------------------------------------ output

    def messages_to_send(self) -> list[str]:
        """Text messages to send to the bot (pongs), oldest first; clears the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    # ------------------------------------------------------------------ internals

    def _hold_early(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.state is SessionState.ENDED and not self._early:
            events.append(
                ProtocolWarning(
                    WarningKind.BINARY_OUTSIDE_STREAM,
                    "binary data after video_stream_end: held for the next stream",
                )
            )
        room = self.max_early_bytes - self._early_size
        if len(data) > room:
            # Keep exactly max_early_bytes (what is kept must not depend on how reads were
            # split), then close: the bot sent too much without a start.
            if room > 0:
                self._early.append(data[:room])
                self._early_size += room
            self.close_request = CloseRequest(
                CloseCode.MESSAGE_TOO_BIG,
                f"over {self.max_early_bytes} bytes of binary data without video_stream_start",
            )
            return events
        self._early.append(data)
        self._early_size += len(data)
        return events

    def _release_early(self) -> list[Event]:
        events: list[Event] = []
        for data in self._early:
            events.append(MediaChunk(data, self._offset))
            self._offset += len(data)
        self._early.clear()
        self._early_size = 0
        return events

    def _handle_text(self, text: str, wall_ms: int) -> list[Event]:
        try:
            message = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            return [ProtocolWarning(WarningKind.INVALID_JSON, f"text message is not JSON: {exc}")]
        if not isinstance(message, dict):
            return [
                ProtocolWarning(
                    WarningKind.NOT_AN_OBJECT,
                    f"text message is a JSON {type(message).__name__}, not an object",
                )
            ]
        kind = message.get("type")
        if kind == "video_latency_ping":
            return self._on_ping(message, wall_ms)
        if kind == "video_stream_start":
            return self._on_start(message)
        if kind == "video_stream_end":
            return self._on_end(message)
        if "type" not in message:
            return [ProtocolWarning(WarningKind.MISSING_FIELD, "message has no 'type'")]
        return [ProtocolWarning(WarningKind.UNKNOWN_TYPE, f"unknown message type {kind!r}")]

    def _on_ping(self, message: dict[str, Any], wall_ms: int) -> list[Event]:
        # Reply first, whatever else is wrong with the ping: a bot that gets no timely pong
        # declares the receiver dead. Fields are echoed exactly as received.
        pong: dict[str, Any] = {"type": "video_latency_pong"}
        for key in ("seq", "sent_at_ms"):
            if key in message:
                pong[key] = message[key]
        pong["server_received_at_ms"] = wall_ms
        bot_id = message.get("bot_id")
        if bot_id is None:
            bot_id = self.bot_id
        if bot_id is not None:
            pong["bot_id"] = bot_id
        events: list[Event] = []
        try:
            text = json.dumps(pong, separators=(",", ":"), allow_nan=False)
        except (ValueError, RecursionError):  # nested too deep, or a number JSON cannot hold
            events.append(
                ProtocolWarning(
                    WarningKind.BAD_FIELD, "ping fields that cannot be echoed as JSON: left out"
                )
            )
            echoable = {k: v for k, v in pong.items() if _echoable(v)}
            text = json.dumps(echoable, separators=(",", ":"), allow_nan=False)
        self._outgoing.append(text)

        seq = message.get("seq")
        sent_at_ms = message.get("sent_at_ms")
        if "seq" not in message:
            events.append(ProtocolWarning(WarningKind.MISSING_FIELD, "ping has no 'seq'"))
        elif not _is_int(seq):
            events.append(ProtocolWarning(WarningKind.BAD_FIELD, f"ping 'seq' is {_show(seq)}"))
        elif isinstance(seq, int) and not -_JSON_SAFE <= seq <= _JSON_SAFE:
            # Echoed all the same; but no JavaScript bot can send or match it.
            events.append(
                ProtocolWarning(
                    WarningKind.BAD_FIELD, "ping 'seq' is outside the JSON-safe integer range"
                )
            )
        if "sent_at_ms" not in message:
            events.append(ProtocolWarning(WarningKind.MISSING_FIELD, "ping has no 'sent_at_ms'"))
        elif not _is_number(sent_at_ms):
            events.append(
                ProtocolWarning(
                    WarningKind.BAD_FIELD, f"ping 'sent_at_ms' is {_show(sent_at_ms)}"
                )
            )
        events.append(
            LatencyPing(
                seq=seq if _is_int(seq) else None,
                sent_at_ms=sent_at_ms if _is_number(sent_at_ms) else None,
                received_at_ms=wall_ms,
                bot_id=bot_id if isinstance(bot_id, str) else None,
            )
        )
        return events

    def _on_start(self, message: dict[str, Any]) -> list[Event]:
        if self.state is SessionState.STREAMING:
            return [
                ProtocolWarning(
                    WarningKind.UNEXPECTED_MESSAGE,
                    "video_stream_start while a stream is in progress: ignored",
                )
            ]
        events: list[Event] = []
        fields = _StartFields(message, events)
        started = StreamStarted(
            bot_id=fields.text("bot_id", required=True),
            codec=fields.text("codec"),
            audio_codec=fields.text("audio_codec"),
            container=fields.text("container"),
            width=fields.integer("width"),
            height=fields.integer("height"),
            framerate=fields.number("framerate"),
            audio_sample_rate=fields.integer("audio_sample_rate"),
            audio_bitrate=fields.text("audio_bitrate", allow_int=True),
            speaker_id=fields.text("speakerId", "speaker_id", allow_int=True),
            speaker_name=fields.text("speakerName", "speaker_name"),
            raw=message,
        )
        self.state = TRANSITIONS[(self.state, SessionInput.START)]
        self.bot_id = started.bot_id
        self.streams_started += 1
        self._offset = 0
        events.append(started)
        events.extend(self._release_early())
        return events

    def _on_end(self, message: dict[str, Any]) -> list[Event]:
        if self.state is not SessionState.STREAMING:
            return [
                ProtocolWarning(
                    WarningKind.UNEXPECTED_MESSAGE,
                    f"video_stream_end with no stream in progress ({self.state.value}): ignored",
                )
            ]
        events: list[Event] = []
        raw_duration = message.get("duration_seconds")
        duration = _as_float(raw_duration)
        if raw_duration is not None and duration is None:
            events.append(
                ProtocolWarning(
                    WarningKind.BAD_FIELD, f"'duration_seconds' is {_show(raw_duration)}"
                )
            )
        self.state = TRANSITIONS[(self.state, SessionInput.END)]
        events.append(StreamEnded(duration, message))
        return events


class _StartFields:
    """Typed reads of ``video_stream_start`` fields, warning on each missing or mistyped one."""

    def __init__(self, message: dict[str, Any], warnings: list[Event]) -> None:
        self.message = message
        self.warnings = warnings

    def _get(self, names: tuple[str, ...], required: bool) -> tuple[str, Any]:
        for name in names:
            if name in self.message and self.message[name] is not None:
                return name, self.message[name]
        if required:
            self.warnings.append(
                ProtocolWarning(
                    WarningKind.MISSING_FIELD, f"video_stream_start has no {names[0]!r}"
                )
            )
        return names[0], None

    def _bad(self, name: str, value: object) -> None:
        self.warnings.append(
            ProtocolWarning(
                WarningKind.BAD_FIELD, f"video_stream_start {name!r} is {_show(value)}"
            )
        )

    def text(self, *names: str, required: bool = False, allow_int: bool = False) -> str | None:
        name, value = self._get(names, required)
        if value is None or isinstance(value, str):
            return value
        if allow_int and _is_int(value):
            return str(value)
        self._bad(name, value)
        return None

    def integer(self, name: str) -> int | None:
        _, value = self._get((name,), False)
        if value is None or _is_int(value):
            return value  # type: ignore[no-any-return]
        self._bad(name, value)
        return None

    def number(self, name: str) -> float | None:
        _, value = self._get((name,), False)
        if value is None:
            return None
        number = _as_float(value)
        if number is None:
            self._bad(name, value)
        return number
