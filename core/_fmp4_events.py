"""The events of :class:`~meetstream_live.fmp4.Fmp4Scanner` and what they carry (public through
:mod:`meetstream_live.fmp4`, where the model and the invariants are written down)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BoxSeen",
    "Fmp4Event",
    "FragmentComplete",
    "InitSegment",
    "Malformed",
    "TrackInfo",
    "TrackRun",
]


class Fmp4Event:
    """Base class of the events :class:`Fmp4Scanner` emits."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class BoxSeen(Fmp4Event):
    """The header of a top-level box is complete.

    ``size`` is the whole box (header included), or ``None`` for a ``size == 0`` box, which
    extends to the end of the stream. ``header_size`` is 8, 16 (``largesize``), 24 (``uuid``) or
    32 (both).
    """

    type: str
    offset: int
    size: int | None
    header_size: int


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One ``trak`` of the ``moov``.

    ``handler`` is the ``hdlr`` handler type (``"vide"``, ``"soun"``...), ``timescale`` the
    ``mdhd`` units per second, ``default_sample_duration`` the ``mvex/trex`` default for the
    track (``None`` without a ``trex``).
    """

    track_id: int
    handler: str
    timescale: int
    default_sample_duration: int | None


@dataclass(frozen=True, slots=True)
class InitSegment(Fmp4Event):
    """A ``moov`` ended: ``data`` is the init segment, the ``size`` bytes of the stream from
    ``offset`` through the end of the ``moov`` (normally ``ftyp`` + ``moov``, ``offset`` 0)."""

    data: bytes = field(repr=False)
    offset: int
    size: int
    tracks: tuple[TrackInfo, ...]


@dataclass(frozen=True, slots=True)
class TrackRun:
    """What one ``traf`` of a ``moof`` says about its track.

    ``base_decode_time`` is the ``tfdt`` baseMediaDecodeTime (``None`` without a ``tfdt``).
    ``duration`` is the sum of the sample durations of all its ``trun`` boxes in the track's
    timescale: per-sample durations when present, else ``sample_count`` times the ``tfhd``
    default, else times the ``trex`` default of the current init segment; ``None`` when some
    samples have no known duration. ``sample_count`` sums the ``trun`` sample counts.
    ``starts_with_sync`` says whether the first sample is a sync sample (a keyframe, for
    video): from the ``sample_is_non_sync_sample`` bit of its flags (the ``trun``'s
    ``first_sample_flags``, else its per-sample flags, else the ``tfhd`` default, else the
    ``trex`` default); ``None`` when no flags say, or the run has no samples.
    """

    track_id: int
    base_decode_time: int | None
    duration: int | None
    sample_count: int
    starts_with_sync: bool | None = None


@dataclass(frozen=True, slots=True)
class FragmentComplete(Fmp4Event):
    """An ``mdat`` that follows a ``moof`` ended: a complete fragment.

    ``index`` counts the fragments of the stream from 0. The fragment is the ``size`` bytes from
    ``offset`` (the start of the ``moof``) through the end of the ``mdat``. ``sequence_number``
    is the ``mfhd`` one (``None`` if it could not be parsed); ``tracks`` has one
    :class:`TrackRun` per ``traf``, in order.
    """

    index: int
    offset: int
    size: int
    sequence_number: int | None
    tracks: tuple[TrackRun, ...]


@dataclass(frozen=True, slots=True)
class Malformed(Fmp4Event):
    """Something is wrong at stream ``offset``.

    ``offset`` is the start of the box concerned: the top-level box whose header is bad or that
    is truncated or too large, the inner box of a ``moov``/``moof`` that could not be parsed, the
    ``moof`` that has no ``mdat``; for an init segment over ``max_init_size``, the start of the
    init segment.

    ``fatal`` means the scanner is now broken and reports nothing more; otherwise scanning goes
    on. ``reason`` starts with a fixed prefix (see the module documentation).
    """

    offset: int
    reason: str
    fatal: bool = True
