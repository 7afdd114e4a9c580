"""``--remux mp4``: a plain (non-fragmented) MP4 copy of a finished recording.

:func:`remux_mp4` writes ``<stem>.remux.mp4`` beside ``<stem>.mp4``: the same H.264 and AAC
packets (stream copy, nothing is re-encoded) in one ``moov`` placed before the ``mdat``
(``movflags=+faststart``), for players and tools that handle fragmented MP4 badly. It needs
PyAV (the ``media`` extra); :func:`require` checks for it at ``serve`` start.

The hooks runner (:mod:`.hooks`) calls it as the journaled ``remux`` hook, before
``--on-finish`` and ``--webhook``: it runs (at least) once per recording, even across a crash.
It is idempotent: an existing ``<stem>.remux.mp4`` (renamed there only once complete and
fsynced) is kept; a half-written ``<stem>.remux.mp4.tmp`` from a crash is written over.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["REMUX_SUFFIX", "RemuxUnavailable", "remux_mp4", "remux_path", "require"]

#: ``<stem>.mp4`` -> ``<stem>.remux.mp4``.
REMUX_SUFFIX = ".remux.mp4"


class RemuxUnavailable(RuntimeError):
    """PyAV is not installed."""


def require() -> None:
    """Raise :class:`RemuxUnavailable` unless PyAV can be imported."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise RemuxUnavailable(
            "--remux needs PyAV: pip install 'meetstream-live[media]'"
        ) from exc


def remux_path(media: str | os.PathLike[str]) -> Path:
    """Where the remuxed copy of ``media`` goes."""
    path = Path(media)
    return path.with_name(path.name.removesuffix(".mp4") + REMUX_SUFFIX)


def remux_mp4(
    source: str | os.PathLike[str], target: str | os.PathLike[str] | None = None
) -> Path:
    """Copy the audio and video packets of ``source`` into a plain, faststart MP4.

    Timestamps are shifted so that the earliest packet starts at 0 (a live stream's first
    fragment usually does not), by the same amount on every track, which keeps them in sync.
    Returns the target path; does nothing when it already exists.
    """
    import av

    src = Path(source)
    dst = remux_path(src) if target is None else Path(target)
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    with av.open(str(src)) as input_:
        streams = [s for s in input_.streams if s.type in ("video", "audio")]
        if not streams:
            raise ValueError(f"{src}: no audio or video stream")
        # The earliest start over all the tracks, in microseconds (AV_TIME_BASE).
        start_us = input_.start_time if input_.start_time and input_.start_time > 0 else 0
        try:
            with av.open(str(tmp), "w", format="mp4",
                         options={"movflags": "+faststart"}) as output:
                mapping = {s.index: output.add_stream_from_template(s) for s in streams}
                offsets = {
                    s.index: (int(start_us / 1_000_000 / s.time_base) if s.time_base else 0)
                    for s in streams
                }
                muxed = 0
                for packet in input_.demux(*streams):
                    if packet.dts is None and packet.pts is None:
                        continue  # the demuxer's flush packet
                    index = packet.stream.index
                    shift = offsets[index]
                    if shift:
                        if packet.pts is not None:
                            packet.pts -= shift
                        if packet.dts is not None:
                            packet.dts -= shift
                    packet.stream = mapping[index]
                    output.mux(packet)
                    muxed += 1
                if not muxed:
                    raise ValueError(f"{src}: no packet to remux")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    with contextlib.suppress(OSError):
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return dst
