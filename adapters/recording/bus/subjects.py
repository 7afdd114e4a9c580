"""Names on the bus: subject tokens, subjects, headers, message IDs and the streams' limits
(``docs/bus.md``). Pure functions, no I/O: the publisher and the consumers share them.

Subjects, one pair per stream of a meeting (``{speaker}`` is ``_`` without a speaker)::

    meetstream.{bot_id}.{speaker}.events   JSON, one message per event
    meetstream.{bot_id}.{speaker}.media    the init segment, then whole fragments, then "end"
    meetstream.{bot_id}.{speaker}.init     the latest init segment (kept: 1 per subject)

A token is injective and safe in a subject: ``[A-Za-z0-9-]`` stay as they are, every other
byte of the UTF-8 form (``_``, ``.``, ``*``, ``>``, whitespace, anything beyond ASCII) becomes
``_`` and two upper-case hex digits; the empty (or absent) value is ``_`` alone, which no
encoded value is. :func:`decode_token` inverts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "EVENTS_STREAM",
    "H_BOT",
    "H_CHUNK",
    "H_FRAGMENTS",
    "H_INIT_SEQ",
    "H_KEYFRAME",
    "H_KIND",
    "H_MSG_ID",
    "H_OFFSET",
    "H_PART",
    "H_SECONDS",
    "H_SEQ",
    "H_SESSION",
    "H_SIZE",
    "H_SPEAKER",
    "H_VERDICT",
    "INIT_STREAM",
    "PREFIX",
    "StreamKey",
    "StreamLimits",
    "decode_token",
    "encode_token",
    "media_subject",
]

PREFIX = "meetstream"
#: The stream of events and media (``meetstream.*.*.events``, ``meetstream.*.*.media``).
EVENTS_STREAM = "MEETSTREAM"
#: The stream of init segments, one kept per subject (``meetstream.*.*.init``).
INIT_STREAM = "MEETSTREAM_INIT"

#: JetStream's deduplication header: the same ID within the duplicate window is stored once.
H_MSG_ID = "Nats-Msg-Id"
H_BOT = "Meetstream-Bot"  # the encoded token
H_SPEAKER = "Meetstream-Speaker"  # the encoded token (``_``: none)
H_SESSION = "Meetstream-Session"  # the session's start, ms since the epoch
H_PART = "Meetstream-Part"  # the part number (1, 2...: one recording file each)
H_KIND = "Meetstream-Kind"  # init | fragment | end | event
H_OFFSET = "Meetstream-Offset"  # where the payload's first byte is in the recording file
H_SEQ = "Meetstream-Seq"  # 0: the init segment, 1, 2...: the fragments of the part
H_KEYFRAME = "Meetstream-Keyframe"  # 1, 0, or absent when the fMP4 does not say
H_SECONDS = "Meetstream-Seconds"  # the fragment's media duration
H_INIT_SEQ = "Meetstream-Init-Seq"  # the stream sequence of this part's init message
H_CHUNK = "Meetstream-Chunk"  # "i/n" (1-based) when a message is one piece of a split one
H_SIZE = "Meetstream-Size"  # split: the whole payload's size; end: the recording's size
H_FRAGMENTS = "Meetstream-Fragments"  # end: the fragments the part has
H_VERDICT = "Meetstream-Verdict"  # end: the receiver's verdict (complete, partial...)

_SAFE = re.compile(r"[A-Za-z0-9-]")
_ESCAPED = re.compile(r"_([0-9A-F]{2})")


def encode_token(value: str | None) -> str:
    """``value`` as one subject token (see the module); ``None`` and ``""`` are ``_``."""
    if not value:
        return "_"
    out: list[str] = []
    for char in value:
        if char.isascii() and _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"_{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def decode_token(token: str) -> str:
    """The value :func:`encode_token` made ``token`` from (``""`` for ``_``); ValueError
    for what it cannot have made."""
    if token == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        char = token[i]
        if char == "_":
            match = _ESCAPED.match(token, i)
            if match is None:
                raise ValueError(f"not an encoded token: {token!r}")
            raw.append(int(match.group(1), 16))
            i += 3
        elif char.isascii() and _SAFE.fullmatch(char):
            raw += char.encode()
            i += 1
        else:
            raise ValueError(f"not an encoded token: {token!r}")
    text = raw.decode("utf-8", "surrogatepass")
    if encode_token(text) != token:  # e.g. "_41" for "A": not what encode makes
        raise ValueError(f"not an encoded token: {token!r}")
    return text


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One stream of a meeting on the bus: a bot and, for per-speaker streams, a speaker."""

    bot_id: str
    speaker: str | None = None

    @property
    def tokens(self) -> str:
        return f"{encode_token(self.bot_id)}.{encode_token(self.speaker)}"

    def subject(self, kind: str) -> str:
        """``kind``: ``events``, ``media`` or ``init``."""
        return f"{PREFIX}.{self.tokens}.{kind}"


def media_subject(bot_id: str, speaker: str | None = None) -> str:
    return StreamKey(bot_id, speaker).subject("media")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The limits ``serve --nats`` creates the streams with, when they do not exist (an
    existing stream is used as it is). ``max_age`` seconds; ``max_bytes`` for the stream of
    events and media (the init stream is bounded by its one message per subject and the same
    age); ``duplicate_window`` seconds in which a republished ``Nats-Msg-Id`` is dropped;
    ``replicas`` (1 on a single server, 3 in a cluster)."""

    max_age: float = 24 * 3600.0
    max_bytes: int = 10 * 1024**3
    duplicate_window: float = 120.0
    replicas: int = 1
