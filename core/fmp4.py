"""An incremental scanner of a fragmented MP4 byte stream (ISO-BMFF, ISO/IEC 14496-12).

Model
=====

A fragmented MP4 is a sequence of *top-level boxes*. Each box starts with a header: a 32-bit
big-endian ``size`` and a four-character ``type``; ``size == 1`` means a 64-bit ``largesize``
follows, ``size == 0`` means "the box extends to the end of the stream", and type ``uuid`` adds a
16-byte ``usertype``. MeetStream (like ``ffmpeg -movflags frag_keyframe+empty_moov``) sends::

    ftyp moov | moof mdat | moof mdat | ...
    init segment  fragment    fragment

:class:`Fmp4Scanner` is fed the stream in chunks of any size (``feed``), then told the stream has
ended (``eof``). It walks the top-level boxes only; it never looks inside an ``mdat`` (it counts
the payload bytes and skips them) and it keeps a copy of two things only, both capped:

* the **init segment**: the bytes from its start through the end of its ``moov`` box, at most
  ``max_init_size``. The first one starts at offset 0, so it holds the ``ftyp`` and anything else
  before the ``moov``. Once an init segment is complete (or abandoned, see ``"no init:"``), the
  next one starts at the next ``ftyp`` or ``moov`` box (a new ``ftyp`` + ``moov`` mid-stream,
  e.g. after an encoder restart); when it completes, its tracks replace the previous ones;
* the current **moof** box, at most ``max_moof_size`` bytes, parsed when it ends.

Events, in stream order:

* :class:`BoxSeen` as soon as a top-level box header is complete;
* :class:`InitSegment` when a ``moov`` ends, with the copied bytes and the tracks of the
  ``moov`` (``tkhd`` track id, ``hdlr`` handler, ``mdhd`` timescale, ``mvex/trex`` default
  sample duration);
* :class:`FragmentComplete` when an ``mdat`` that follows a ``moof`` ends: the fragment spans
  the ``moof`` start to the ``mdat`` end (boxes between the two, e.g. ``free``, belong to it), with
  the ``mfhd`` sequence number and, per ``traf``, a :class:`TrackRun`;
* :class:`Malformed` when something is wrong (see below).

Recovery: ``last_complete_fragment_end`` is the stream offset just after the last complete
fragment or init segment. A recording of the stream cut there is an init segment followed by
whole fragments, whatever happened after (a crash, a truncated upload, garbage).

Invariants
==========

* **Split independence.** The list of events a stream produces (everything ``feed`` returned,
  then what ``eof`` returned) depends only on the bytes, never on how they were cut into chunks.
  Every decision is taken at a fixed byte position of the stream.
* **Bounded memory.** Apart from the init segment copy and the current ``moof`` (both capped),
  the scanner holds at most one box header (32 bytes). ``mdat`` payloads are never copied.
* **O(1) skipping.** A ``feed`` call that falls entirely inside an ``mdat`` (or any box that is
  not copied) costs a length comparison and two additions, whatever its size.
* **Bounded work per box run.** At most ``max_boxes`` top-level boxes follow one another
  without an :class:`InitSegment` or a :class:`FragmentComplete`; the next one is a fatal
  ``"too many boxes:"``. So the boxes a ``feed`` call reports number at most ``max_boxes``
  times one more than the init segments and fragments it completes, however small they are
  (the decision is taken at the header of the box that goes over, a fixed stream position:
  split independence holds).
* **Never raises on input.** Whatever the bytes, ``feed`` and ``eof`` return events. Only API
  misuse raises: ``feed`` after ``eof`` raises :class:`~meetstream_live.LocalProtocolError`, and
  bad constructor arguments raise :class:`ValueError`.
* **Offsets** are stream offsets: the number of bytes fed before the byte in question. They line
  up with ``MediaChunk.offset``.

Malformed input and the broken state
====================================

:class:`Malformed` has a ``fatal`` flag.

``fatal=True``: the top-level framing cannot be trusted any more (or a cap was hit), so nothing
after this point can be located. The scanner enters the terminal **broken** state: ``broken`` is
true, every later ``feed`` only adds its length to ``offset`` and returns ``[]``, and ``eof``
returns ``[]``. ``last_complete_fragment_end`` keeps the value it had, so the stream can still be
cut back to its last complete fragment. Reasons start with:

* ``"bad size:"``: a box size smaller than its own header (``size`` 2..7, a ``largesize`` below
  16, a ``uuid`` box below 24 or 32);
* ``"bad type:"``: a box type that is not four printable ASCII characters (0x20..0x7E);
* ``"too large:"``: a ``moof`` larger than ``max_moof_size``, or an init segment that would
  exceed ``max_init_size``;
* ``"too many boxes:"``: more than ``max_boxes`` top-level boxes in a row complete neither an
  init segment nor a fragment (a flood of small boxes that look valid, e.g. 8-byte ``free``
  boxes, or bytes that are not fMP4 and happen to parse): the scanner gives up on the stream
  rather than report a :class:`BoxSeen` every few bytes;
* ``"truncated:"``: at ``eof``, the stream ends inside a box header or before the end of a box
  whose size says it goes further.

``fatal=False``: a problem *inside* a ``moov`` or ``moof`` (or in the order of the top-level
boxes), while the top-level framing is intact. Scanning goes on; the events concerned carry what
could be parsed. Reasons start with:

* ``"bad moov:"``: an inner box does not fit, or a ``trak`` lacks its ``tkhd``/``mdhd``/``hdlr``.
  The :class:`InitSegment` still follows, with the tracks parsed before the problem;
* ``"bad moof:"``: an inner box does not fit, a ``traf`` lacks its ``tfhd``, a ``trun`` claims
  more samples than it holds... The :class:`FragmentComplete` still follows (at the end of the
  ``mdat``), with ``sequence_number`` ``None`` if the ``mfhd`` was not parsed and only the
  ``traf`` boxes parsed before the problem;
* ``"no init:"``: a ``moof`` arrives while an init segment is being collected (no ``moov``
  yet): that init segment is abandoned;
* ``"no mdat:"``: a ``moof`` is followed by another ``moof``, a ``ftyp`` or a ``moov``, or by
  the end of the stream, before any ``mdat``: it never forms a fragment.

Reason texts after the prefix are for humans and may change.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from ._errors import LocalProtocolError
from ._fmp4_events import (
    BoxSeen,
    Fmp4Event,
    FragmentComplete,
    InitSegment,
    Malformed,
    TrackInfo,
    TrackRun,
)

__all__ = [
    "BoxSeen",
    "Fmp4Event",
    "Fmp4Scanner",
    "FragmentComplete",
    "InitSegment",
    "Malformed",
    "TrackInfo",
    "TrackRun",
]

DEFAULT_MAX_INIT_SIZE: Final = 4 * 1024 * 1024
DEFAULT_MAX_MOOF_SIZE: Final = 1024 * 1024
#: Top-level boxes in a row that complete neither an init segment nor a fragment. A real
#: stream has a handful between two fragments (``styp``, ``sidx``, ``prft``, ``emsg``,
#: ``free``...): 256 is generous, and bounds what a flood of 8-byte boxes costs (2 KiB).
DEFAULT_MAX_BOXES: Final = 256
#: The longest possible box header: size, type, largesize, usertype.
MAX_HEADER_SIZE: Final = 32

_HDR: Final = struct.Struct(">I4s")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")

# Scanner states.
_HEADER: Final = 0  # collecting a box header
_BODY: Final = 1  # inside a box of known size: ``_remaining`` bytes left
_TO_END: Final = 2  # inside a ``size == 0`` box: it ends with the stream
_BROKEN: Final = 3  # terminal, after a fatal Malformed

# tfhd flags
_TFHD_BASE_DATA_OFFSET: Final = 0x000001
_TFHD_SAMPLE_DESCRIPTION_INDEX: Final = 0x000002
_TFHD_DEFAULT_DURATION: Final = 0x000008
_TFHD_DEFAULT_SIZE: Final = 0x000010
_TFHD_DEFAULT_FLAGS: Final = 0x000020
# trun flags
_TRUN_DATA_OFFSET: Final = 0x000001
_TRUN_FIRST_SAMPLE_FLAGS: Final = 0x000004
_TRUN_SAMPLE_DURATION: Final = 0x000100
_TRUN_SAMPLE_SIZE: Final = 0x000200
_TRUN_SAMPLE_FLAGS: Final = 0x000400
_TRUN_SAMPLE_FIELDS: Final = 0x000F00  # duration, size, flags, composition time offset
# sample flags (ISO/IEC 14496-12 8.8.3.1)
_SAMPLE_IS_NON_SYNC: Final = 0x00010000


# ------------------------------------------------------------------------------- inner parsing


class _Bad(Exception):
    """A problem inside a moov or moof; ``offset`` is relative to the parsed buffer."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _children(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """Yield ``(type, box_start, payload_start, box_end)`` for each box in ``buf[start:end]``.

    Raises :class:`_Bad` on a box that does not fit. A ``size == 0`` box extends to ``end``.
    """
    pos = start
    while pos < end:
        if end - pos < 8:
            raise _Bad(pos, f"{end - pos} stray bytes after the last inner box")
        size, typ = _HDR.unpack_from(buf, pos)
        hlen = 8
        if size == 1:
            if end - pos < 16:
                raise _Bad(pos, f"inner box {typ!r} has a truncated largesize")
            size = _U64.unpack_from(buf, pos + 8)[0]
            hlen = 16
        elif size == 0:
            size = end - pos
        if size < hlen or size > end - pos:
            raise _Bad(pos, f"inner box {typ!r} of size {size} does not fit in {end - pos} bytes")
        yield typ, pos, pos + hlen, pos + size
        pos += size


def _full_box(buf: bytes, start: int, payload: int, end: int, need: int = 0) -> tuple[int, int]:
    """Version and flags of the full box ``buf[start:end]`` (payload at ``payload``), after
    checking that ``need`` more bytes follow them."""
    if end - payload < 4 + need:
        name = bytes(buf[start + 4 : start + 8]).decode("latin-1")
        raise _Bad(start, f"{name} box too short ({end - start} bytes)")
    word: int = _U32.unpack_from(buf, payload)[0]
    return word >> 24, word & 0xFFFFFF


def _versioned(buf: bytes, start: int, payload: int, end: int, need0: int, need1: int) -> int:
    """Version of a full box that needs ``need0`` bytes after version and flags in version 0,
    ``need1`` in version 1 (64-bit times)."""
    version, _ = _full_box(buf, start, payload, end)
    _full_box(buf, start, payload, end, need1 if version == 1 else need0)
    return version


def _parse_trak(buf: bytes, start: int, payload: int, end: int) -> tuple[int, str, int]:
    """Track id, handler type and timescale of a ``trak``."""
    track_id: int | None = None
    handler: str | None = None
    timescale: int | None = None
    for typ, s, p, e in _children(buf, payload, end):
        if typ == b"tkhd":
            # v0: creation(4) modification(4) track_ID(4); v1: creation(8) modification(8) ...
            version = _versioned(buf, s, p, e, 12, 20)
            track_id = _U32.unpack_from(buf, p + (20 if version == 1 else 12))[0]
        elif typ == b"mdia":
            for typ2, s2, p2, e2 in _children(buf, p, e):
                if typ2 == b"mdhd":
                    # v0: creation(4) modification(4) timescale(4); v1: (8) (8) (4)
                    version = _versioned(buf, s2, p2, e2, 12, 20)
                    timescale = _U32.unpack_from(buf, p2 + (20 if version == 1 else 12))[0]
                elif typ2 == b"hdlr":
                    _full_box(buf, s2, p2, e2, 8)  # pre_defined(4) handler_type(4)
                    handler = bytes(buf[p2 + 8 : p2 + 12]).decode("latin-1")
    if track_id is None or handler is None or timescale is None:
        missing = [
            name
            for name, value in (("tkhd", track_id), ("mdhd", timescale), ("hdlr", handler))
            if value is None
        ]
        raise _Bad(start, f"trak without {'/'.join(missing)}")
    return track_id, handler, timescale


def _parse_moov(
    buf: bytes, payload: int
) -> tuple[tuple[TrackInfo, ...], dict[int, tuple[int, int]], _Bad | None]:
    """Tracks and ``trex`` default durations of the moov box whose payload is ``buf[payload:]``.

    On a problem, returns the tracks parsed before it and the problem.
    """
    traks: list[tuple[int, str, int]] = []
    trex: dict[int, tuple[int, int]] = {}
    bad: _Bad | None = None
    try:
        for typ, s, p, e in _children(buf, payload, len(buf)):
            if typ == b"trak":
                traks.append(_parse_trak(buf, s, p, e))
            elif typ == b"mvex":
                for typ2, s2, p2, e2 in _children(buf, p, e):
                    if typ2 == b"trex":
                        # track_ID(4) default_sample_description_index(4) default_duration(4)
                        # default_size(4) default_flags(4)
                        _full_box(buf, s2, p2, e2, 20)
                        trex[_U32.unpack_from(buf, p2 + 4)[0]] = (
                            _U32.unpack_from(buf, p2 + 12)[0],
                            _U32.unpack_from(buf, p2 + 20)[0],
                        )
    except _Bad as exc:
        bad = exc
    tracks = tuple(
        TrackInfo(tid, handler, ts, trex[tid][0] if tid in trex else None)
        for tid, handler, ts in traks
    )
    return tracks, trex, bad


def _parse_traf(
    buf: bytes, start: int, payload: int, end: int, trex: dict[int, tuple[int, int]]
) -> TrackRun:
    """The :class:`TrackRun` of a ``traf``."""
    track_id: int | None = None
    default_duration: int | None = None
    default_flags: int | None = None
    first_flags: int | None = None  # the flags of the fragment's first sample, when a trun says
    base_decode_time: int | None = None
    runs: list[tuple[int, int | None]] = []  # (sample_count, their duration if per-sample)
    for typ, s, p, e in _children(buf, payload, end):
        if typ == b"tfhd":
            _, flags = _full_box(buf, s, p, e, 4)
            need = 4  # track_ID
            need += 8 if flags & _TFHD_BASE_DATA_OFFSET else 0
            need += 4 if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX else 0
            at = p + 4 + need  # where default_sample_duration is, when present
            need += 4 if flags & _TFHD_DEFAULT_DURATION else 0
            need += 4 if flags & _TFHD_DEFAULT_SIZE else 0
            flags_at = p + 4 + need  # where default_sample_flags is, when present
            need += 4 if flags & _TFHD_DEFAULT_FLAGS else 0
            _full_box(buf, s, p, e, need)
            track_id = _U32.unpack_from(buf, p + 4)[0]
            if flags & _TFHD_DEFAULT_DURATION:
                default_duration = _U32.unpack_from(buf, at)[0]
            if flags & _TFHD_DEFAULT_FLAGS:
                default_flags = _U32.unpack_from(buf, flags_at)[0]
        elif typ == b"tfdt":
            if _versioned(buf, s, p, e, 4, 8) == 1:
                base_decode_time = _U64.unpack_from(buf, p + 4)[0]
            else:
                base_decode_time = _U32.unpack_from(buf, p + 4)[0]
        elif typ == b"trun":
            _, flags = _full_box(buf, s, p, e, 4)
            count: int = _U32.unpack_from(buf, p + 4)[0]
            q = p + 8
            q += 4 if flags & _TRUN_DATA_OFFSET else 0
            first_at = q  # where first_sample_flags is, when present
            q += 4 if flags & _TRUN_FIRST_SAMPLE_FLAGS else 0
            words = (flags & _TRUN_SAMPLE_FIELDS).bit_count()  # 32-bit fields per sample
            if q + count * words * 4 > e:
                raise _Bad(s, f"trun of {e - s} bytes is too short for {count} samples")
            if flags & _TRUN_FIRST_SAMPLE_FLAGS and not runs and count:
                first_flags = _U32.unpack_from(buf, first_at)[0]
            if first_flags is None and not runs and count and flags & _TRUN_SAMPLE_FLAGS:
                # The flags field follows duration and size, when those are present.
                before = (flags & (_TRUN_SAMPLE_DURATION | _TRUN_SAMPLE_SIZE)).bit_count()
                first_flags = _U32.unpack_from(buf, q + 4 * before)[0]
            if flags & _TRUN_SAMPLE_DURATION:
                # The duration is the first field of each sample record.
                values = struct.unpack_from(f">{count * words}I", buf, q)
                runs.append((count, sum(values[::words])))
            else:
                runs.append((count, None))
    if track_id is None:
        raise _Bad(start, "traf without tfhd")
    defaults = trex.get(track_id)
    if default_duration is None and defaults is not None:
        default_duration = defaults[0]
    if first_flags is None and any(count > 0 for count, _ in runs):
        if default_flags is not None:
            first_flags = default_flags
        elif defaults is not None:
            first_flags = defaults[1]
    duration: int | None = 0
    sample_count = 0
    for count, run_duration in runs:
        sample_count += count
        if run_duration is None and default_duration is not None:
            run_duration = count * default_duration
        duration = None if duration is None or run_duration is None else duration + run_duration
    sync = None if first_flags is None else not first_flags & _SAMPLE_IS_NON_SYNC
    return TrackRun(track_id, base_decode_time, duration, sample_count, sync)


def _parse_moof(
    buf: bytes, payload: int, trex: dict[int, tuple[int, int]]
) -> tuple[int | None, tuple[TrackRun, ...], _Bad | None]:
    """The ``mfhd`` sequence number and the track runs of the moof box ``buf`` (payload at
    ``payload``). On a problem, returns what was parsed before it and the problem."""
    sequence_number: int | None = None
    runs: list[TrackRun] = []
    try:
        for typ, s, p, e in _children(buf, payload, len(buf)):
            if typ == b"mfhd":
                _full_box(buf, s, p, e, 4)
                sequence_number = _U32.unpack_from(buf, p + 4)[0]
            elif typ == b"traf":
                runs.append(_parse_traf(buf, s, p, e, trex))
    except _Bad as exc:
        return sequence_number, tuple(runs), exc
    return sequence_number, tuple(runs), None


# ------------------------------------------------------------------------------------ scanner


class Fmp4Scanner:
    """Incremental scanner of a fragmented MP4 stream: ``feed`` chunks, then ``eof``.

    See the module documentation for the events, the invariants and the broken state.

    ``max_init_size`` caps the init segment copy, ``max_moof_size`` the ``moof`` copy (whole
    boxes, headers included); both must be at least 32. ``max_boxes`` (at least 2) bounds the
    top-level boxes in a row that complete neither an init segment nor a fragment (see
    ``"too many boxes:"``).
    """

    __slots__ = (
        "_box_end",
        "_box_hlen",
        "_box_offset",
        "_box_size",
        "_box_type",
        "_boxes",
        "_closed",
        "_fragments",
        "_hdr",
        "_hlen",
        "_init",
        "_init_segment",
        "_init_start",
        "_last_end",
        "_max_boxes",
        "_max_init",
        "_max_moof",
        "_mdat_completes",
        "_offset",
        "_pending",
        "_remaining",
        "_sink",
        "_sink_limit",
        "_state",
        "_tracks",
        "_trex",
    )

    def __init__(
        self,
        *,
        max_init_size: int = DEFAULT_MAX_INIT_SIZE,
        max_moof_size: int = DEFAULT_MAX_MOOF_SIZE,
        max_boxes: int = DEFAULT_MAX_BOXES,
    ) -> None:
        if max_init_size < MAX_HEADER_SIZE or max_moof_size < MAX_HEADER_SIZE:
            raise ValueError(
                f"max_init_size and max_moof_size must be >= {MAX_HEADER_SIZE}, "
                f"got {max_init_size} and {max_moof_size}"
            )
        if max_boxes < 2:  # ftyp + moov: the smallest run that completes something
            raise ValueError(f"max_boxes must be >= 2, got {max_boxes}")
        self._max_init = max_init_size
        self._max_moof = max_moof_size
        self._max_boxes = max_boxes
        self._boxes = 0  # top-level boxes since the last init segment or fragment
        self._offset = 0  # bytes fed so far
        self._closed = False  # eof() was called
        self._state = _HEADER
        # The current box.
        self._box_offset = 0
        self._box_type = ""
        self._box_size: int | None = None
        self._box_hlen = 0
        self._box_end = 0  # stream offset where the current box ends (if its size is known)
        self._hdr = bytearray()  # header bytes of a header split across feed calls
        self._hlen = 0  # header length once its first 8 bytes are known (0: not yet)
        self._remaining = 0  # state _BODY: bytes of the current box still to come
        self._sink: bytearray | None = None  # where the current box's bytes are copied
        self._sink_limit = 0  # state _TO_END: maximum length of the sink
        # The init segment being collected: from offset _init_start, None when not collecting.
        self._init: bytearray | None = bytearray()
        self._init_start = 0
        self._init_segment: InitSegment | None = None
        self._tracks: tuple[TrackInfo, ...] = ()
        self._trex: dict[int, tuple[int, int]] = {}
        # The last complete moof waiting for its mdat: (offset, sequence_number, track runs).
        self._pending: tuple[int, int | None, tuple[TrackRun, ...]] | None = None
        self._mdat_completes = False  # the current box is an mdat that ends a fragment
        self._fragments = 0
        self._last_end = 0

    # ------------------------------------------------------------------------------- state

    @property
    def offset(self) -> int:
        """Bytes fed so far (the stream offset of the next byte)."""
        return self._offset

    @property
    def broken(self) -> bool:
        """A fatal :class:`Malformed` was emitted: the scanner reports nothing more."""
        return self._state == _BROKEN

    @property
    def closed(self) -> bool:
        """``eof()`` was called."""
        return self._closed

    @property
    def tracks(self) -> tuple[TrackInfo, ...]:
        """The tracks of the latest init segment (empty before the first one)."""
        return self._tracks

    @property
    def init_segment(self) -> InitSegment | None:
        """The latest :class:`InitSegment`, or ``None``."""
        return self._init_segment

    @property
    def fragment_count(self) -> int:
        """How many :class:`FragmentComplete` were emitted."""
        return self._fragments

    @property
    def last_complete_fragment_end(self) -> int:
        """Stream offset just after the last complete fragment or init segment, whichever is
        later (0 before either). Cutting a recording of the stream here leaves a playable file:
        init segment plus whole fragments."""
        return self._last_end

    # ---------------------------------------------------------------------------------- API

    def feed(self, data: bytes | bytearray | memoryview) -> list[Fmp4Event]:
        """Scan the next bytes of the stream; return the events they complete."""
        if self._closed:
            raise LocalProtocolError("Fmp4Scanner.feed() after eof()")
        n = len(data)
        state = self._state
        # Fast paths: inside a box that is not copied and does not end in this chunk.
        if state == _BODY and self._sink is None and self._remaining > n:
            self._remaining -= n
            self._offset += n
            return []
        if (state == _TO_END and self._sink is None) or state == _BROKEN or not n:
            self._offset += n
            return []
        events: list[Fmp4Event] = []
        view = memoryview(data)
        base = self._offset
        pos = 0
        while pos < n:
            state = self._state
            if state == _HEADER:
                pos = self._header(view, pos, n, events)
            elif state == _BODY:
                take = min(self._remaining, n - pos)
                sink = self._sink
                if sink is not None:
                    sink += view[pos : pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_box(events, self._box_end)
            elif state == _TO_END:
                sink = self._sink
                if sink is not None:
                    if n - pos > self._sink_limit - len(sink):
                        self._too_large(events)
                    else:
                        sink += view[pos:n]
                pos = n
            else:  # _BROKEN
                pos = n
        self._offset = base + n
        return events

    def eof(self) -> list[Fmp4Event]:
        """The stream has ended: report a truncated last box, complete a ``size == 0`` one.

        Calling it again returns ``[]``; calling ``feed`` afterwards raises.
        """
        if self._closed:
            return []
        self._closed = True
        events: list[Fmp4Event] = []
        state = self._state
        if state == _HEADER:
            if self._hdr:
                self._fail(
                    events,
                    self._box_offset,
                    f"truncated: the stream ends inside a box header ({len(self._hdr)} bytes)",
                )
        elif state == _BODY:
            size = self._box_size
            self._fail(
                events,
                self._box_offset,
                f"truncated: {self._box_type!r} box of {size} bytes, "
                f"the stream ends after {self._offset - self._box_offset}",
            )
        elif state == _TO_END:
            self._end_box(events, self._offset)
        if self._pending is not None:
            self._drop_pending(events, "the stream ends")
        return events

    # ------------------------------------------------------------------------------ internal

    def _fail(self, events: list[Fmp4Event], offset: int, reason: str) -> None:
        events.append(Malformed(offset, reason, True))
        self._state = _BROKEN
        self._sink = None
        self._init = None
        self._pending = None
        self._hdr.clear()

    def _too_large(self, events: list[Fmp4Event]) -> None:
        if self._box_type == "moof":
            self._fail(
                events,
                self._box_offset,
                f"too large: moof box exceeds max_moof_size ({self._max_moof} bytes)",
            )
        else:
            self._fail(
                events,
                self._init_start,
                f"too large: init segment exceeds max_init_size ({self._max_init} bytes)",
            )

    def _drop_pending(self, events: list[Fmp4Event], what: str) -> None:
        assert self._pending is not None
        offset = self._pending[0]
        self._pending = None
        events.append(Malformed(offset, f"no mdat: {what} after the moof at {offset}", False))

    def _header(self, view: memoryview, pos: int, n: int, events: list[Fmp4Event]) -> int:
        """Consume header bytes from ``view[pos:n]``; return the new position."""
        hdr = self._hdr
        if not hdr and n - pos >= 8:
            # Fast path: read straight from the chunk.
            size32, typ = _HDR.unpack_from(view, pos)
            hlen = self._first8(size32, typ, events)
            if not hlen:
                return n
            if n - pos >= hlen:
                self._begin_box(size32, typ, view[pos : pos + hlen], events)
                return pos + hlen
            hdr += view[pos:n]
            self._hlen = hlen
            return n
        if not self._hlen:
            take = min(8 - len(hdr), n - pos)
            hdr += view[pos : pos + take]
            pos += take
            if len(hdr) < 8:
                return pos
            size32, typ = _HDR.unpack_from(hdr, 0)
            self._hlen = self._first8(size32, typ, events)
            if not self._hlen:
                return n
        hlen = self._hlen
        take = min(hlen - len(hdr), n - pos)
        hdr += view[pos : pos + take]
        pos += take
        if len(hdr) == hlen:
            size32, typ = _HDR.unpack_from(hdr, 0)
            self._begin_box(size32, typ, memoryview(bytes(hdr)), events)
        return pos

    def _first8(self, size32: int, typ: bytes, events: list[Fmp4Event]) -> int:
        """Check the first 8 bytes of a header; return the header length, 0 if malformed."""
        offset = self._box_offset
        if 2 <= size32 < 8:
            self._fail(events, offset, f"bad size: box size {size32} < its 8-byte header")
            return 0
        name = typ.decode("latin-1")
        if not (name.isascii() and name.isprintable()):
            self._fail(events, offset, f"bad type: box type {typ!r} is not printable ASCII")
            return 0
        hlen = 16 if size32 == 1 else 8
        if typ == b"uuid":
            hlen += 16
            if 8 <= size32 < 24:
                self._fail(events, offset, f"bad size: uuid box size {size32} < its 24-byte header")
                return 0
        return hlen

    def _begin_box(
        self, size32: int, typ: bytes, header: memoryview, events: list[Fmp4Event]
    ) -> None:
        """A complete header: check it, report it, decide what happens to the box's bytes."""
        offset = self._box_offset
        hlen = len(header)
        self._hdr.clear()
        self._hlen = 0
        size: int | None
        if size32 == 1:
            size = _U64.unpack_from(header, 8)[0]
            if size < hlen:
                self._fail(events, offset, f"bad size: largesize {size} < its {hlen}-byte header")
                return
        else:
            size = size32 or None
        self._boxes += 1
        if self._boxes > self._max_boxes:
            self._fail(events, offset, f"too many boxes: {self._max_boxes} top-level boxes in a "
                       "row complete neither an init segment nor a fragment")
            return
        btype = typ.decode("ascii")
        events.append(BoxSeen(btype, offset, size, hlen))
        self._box_type = btype
        self._box_size = size
        self._box_hlen = hlen
        self._box_end = offset + size if size is not None else 0
        self._mdat_completes = False
        sink: bytearray | None
        if btype == "moof":
            if self._init is not None:
                events.append(
                    Malformed(
                        offset,
                        f"no init: moof before any moov; the init segment from offset "
                        f"{self._init_start} is abandoned",
                        False,
                    )
                )
                self._init = None
            if self._pending is not None:
                self._drop_pending(events, "another moof")
            if size is not None and size > self._max_moof:
                self._too_large(events)
                return
            sink = bytearray(header)
            limit = self._max_moof
        else:
            if btype in ("ftyp", "moov"):
                if self._pending is not None:
                    self._drop_pending(events, f"a {btype}")
                if self._init is None:
                    self._init = bytearray()
                    self._init_start = offset
            elif btype == "mdat":
                self._mdat_completes = self._pending is not None
            sink = self._init
            limit = self._max_init
            if sink is not None:
                if size is not None and offset + size - self._init_start > limit:
                    self._too_large(events)
                    return
                sink += header
                if len(sink) > limit:
                    self._too_large(events)
                    return
        self._sink = sink
        self._sink_limit = limit
        if size is None:
            self._state = _TO_END
        else:
            self._state = _BODY
            self._remaining = size - hlen
            if not self._remaining:
                self._end_box(events, offset + size)

    def _end_box(self, events: list[Fmp4Event], end: int) -> None:
        """The current box ended at stream offset ``end``."""
        btype = self._box_type
        if btype == "moov" and self._init is not None:
            data = bytes(self._init)
            start = self._init_start
            tracks, trex, bad = _parse_moov(data, self._box_offset - start + self._box_hlen)
            if bad is not None:
                events.append(Malformed(start + bad.offset, f"bad moov: {bad.reason}", False))
            segment = InitSegment(data, start, len(data), tracks)
            events.append(segment)
            self._init = None
            self._init_segment = segment
            self._tracks = tracks
            self._trex = trex
            self._last_end = end
            self._boxes = 0
        elif btype == "moof" and self._sink is not None:
            sequence_number, runs, bad = _parse_moof(bytes(self._sink), self._box_hlen, self._trex)
            if bad is not None:
                events.append(
                    Malformed(self._box_offset + bad.offset, f"bad moof: {bad.reason}", False)
                )
            self._pending = (self._box_offset, sequence_number, runs)
        elif self._mdat_completes and self._pending is not None:
            moof_offset, sequence_number, runs = self._pending
            self._pending = None
            events.append(
                FragmentComplete(
                    self._fragments, moof_offset, end - moof_offset, sequence_number, runs
                )
            )
            self._fragments += 1
            self._last_end = end
            self._boxes = 0
        self._mdat_completes = False
        self._sink = None
        self._state = _HEADER
        self._box_offset = end
