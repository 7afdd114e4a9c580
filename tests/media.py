"""Real media for the tests: fragmented MP4 (H.264 + AAC) made by ffmpeg, measured by PyAV.

The ffmpeg binary is the static build shipped in the ``imageio-ffmpeg`` wheel
(``imageio_ffmpeg.get_ffmpeg_exe()``), which includes the ``libx264`` and native ``aac``
encoders, so nothing has to be installed on the machine. The stream looks like what MeetStream
sends: ``ftyp`` + ``moov`` (with ``mvex``, no samples), then one ``moof`` + ``mdat`` pair per
video keyframe (``-movflags frag_keyframe+empty_moov+default_base_moof``), each fragment
holding both tracks.

Typical use (the fixtures in ``conftest.py`` do this once per session)::

    media = make_fmp4(tmp_dir / "clip.mp4", duration_s=2.0)
    media.data          # the whole file, bytes
    media.video_frames  # frames PyAV decoded
    media.duration_s    # video duration PyAV measured
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import av

__all__ = [
    "Media",
    "Probe",
    "decodable_frames",
    "ffmpeg_exe",
    "fragment_spans",
    "frames_in_fragments",
    "make_fmp4",
    "make_resolution_change",
    "probe",
    "rebuild",
]

FRAGMENT_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True)
class Probe:
    """What PyAV measured by demuxing and decoding a file."""

    video_frames: int
    #: Video duration: from the first frame's timestamp to the end of the last frame.
    duration_s: float
    width: int
    height: int
    fps: float
    #: Decoded audio frames (AAC frames of 1024 samples), 0 when there is no audio stream.
    audio_frames: int
    audio_sample_rate: int | None


@dataclass(frozen=True)
class Media:
    """A generated fMP4 file: where it is, its bytes, and what PyAV measured."""

    path: Path
    data: bytes = field(repr=False)
    video_frames: int
    duration_s: float
    width: int
    height: int
    fps: float
    audio_frames: int
    audio_sample_rate: int | None

    @property
    def size(self) -> int:
        return len(self.data)


@cache
def ffmpeg_exe() -> str:
    """Path of an ffmpeg with ``libx264`` and ``aac``: imageio-ffmpeg's bundled binary, else
    one on ``PATH``. Raises ``RuntimeError`` when neither has both encoders."""
    candidates: list[str] = []
    try:
        import imageio_ffmpeg

        candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):  # pragma: no cover - depends on the environment
        pass
    on_path = shutil.which("ffmpeg")
    if on_path:  # pragma: no cover - depends on the environment
        candidates.append(on_path)
    for exe in candidates:
        encoders = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
        ).stdout
        names = {line.split()[1] for line in encoders.splitlines() if len(line.split()) > 1}
        if {"libx264", "aac"} <= names:
            return exe
    raise RuntimeError(  # pragma: no cover - depends on the environment
        f"no ffmpeg with libx264 and aac among {candidates}"
    )


def make_fmp4(
    path: Path,
    *,
    duration_s: float = 2.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    keyframe_interval_s: float = 0.5,
    audio: bool = True,
    sample_rate: int = 44100,
) -> Media:
    """Encode a test pattern (``testsrc2``) and a 440 Hz sine into a fragmented MP4 at ``path``.

    H.264 (libx264, ``ultrafast``, yuv420p, no B-frames) with a closed GOP of
    ``round(fps * keyframe_interval_s)`` frames and scene-cut detection off, so a new fragment
    starts at exactly that interval; AAC-LC at ``sample_rate``, mono. The file is probed with
    PyAV (:func:`probe`) and returned as :class:`Media`.
    """
    width, height = size
    gop = max(1, round(fps * keyframe_interval_s))
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={fps}:duration={duration_s}",
    ]
    if audio:
        cmd += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate={sample_rate}:duration={duration_s}",
        ]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-bf",
        "0",
    ]
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "64k", "-ac", "1"]
    cmd += [
        "-map_metadata",
        "-1",
        "-movflags",
        FRAGMENT_MOVFLAGS,
        "-f",
        "mp4",
        str(path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    data = path.read_bytes()
    p = probe(path)
    return Media(
        path=path,
        data=data,
        video_frames=p.video_frames,
        duration_s=p.duration_s,
        width=p.width,
        height=p.height,
        fps=p.fps,
        audio_frames=p.audio_frames,
        audio_sample_rate=p.audio_sample_rate,
    )


def probe(source: Path | str) -> Probe:
    """Demux and decode every packet of ``source`` with PyAV and measure it.

    Frames are counted by decoding. The video duration comes from the packet timestamps: from
    the smallest ``pts`` to the largest ``pts + duration`` (ffmpeg stretches the first video
    sample of an ``empty_moov`` file by the AAC priming delay, so "frames / fps" is off by a
    fraction of a frame; the timestamps are not).
    """
    with av.open(str(source)) as container:
        vstream = container.streams.video[0]
        astreams = container.streams.audio
        streams = [vstream, *astreams[:1]]
        video_frames = 0
        audio_frames = 0
        start: int | None = None
        end: int | None = None
        for packet in container.demux(*streams):
            if packet.stream.index == vstream.index and packet.pts is not None:
                start = packet.pts if start is None else min(start, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    video_frames += 1
                else:
                    audio_frames += 1
        rate = vstream.codec_context.framerate or vstream.guessed_rate
        fps = float(rate) if rate else 0.0
        time_base = vstream.time_base or Fraction(1, 1)
        duration_s = float((end - start) * time_base) if start is not None and end else 0.0
        return Probe(
            video_frames=video_frames,
            duration_s=duration_s,
            width=vstream.codec_context.width,
            height=vstream.codec_context.height,
            fps=fps,
            audio_frames=audio_frames,
            audio_sample_rate=astreams[0].codec_context.sample_rate if astreams else None,
        )


def decodable_frames(data: bytes) -> int:
    """How many video frames PyAV decodes from an in-memory MP4 (e.g. init segment + one
    fragment). Raises ``av.error.FFmpegError`` (a subclass of ``av.FFmpegError``) when it
    cannot open it."""

    with av.open(io.BytesIO(data), format="mp4") as container:
        return sum(1 for packet in container.demux(video=0) for _ in packet.decode())


# ------------------------------------------------------------------ surgery on fMP4 streams


def fragment_spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The end of the init segment and ``(offset, size)`` of each fragment (``moof`` through
    ``mdat``) of an fMP4 stream, found by the library's own scanner. Anything after the last
    fragment (ffmpeg appends an ``mfra``) is not a fragment."""
    from meetstream_live import Fmp4Scanner, FragmentComplete, InitSegment

    scanner = Fmp4Scanner()
    events = [*scanner.feed(data), *scanner.eof()]
    (init,) = [e for e in events if isinstance(e, InitSegment)][:1]
    spans = [(e.offset, e.size) for e in events if isinstance(e, FragmentComplete)]
    return init.offset + init.size, spans


def rebuild(data: bytes, order: list[int]) -> bytes:
    """The init segment, then the fragments of ``data`` in ``order`` (indexes; leave one out
    to remove it, swap two to reorder them). The trailing ``mfra`` is dropped."""
    init_end, spans = fragment_spans(data)
    return data[:init_end] + b"".join(
        data[spans[i][0] : spans[i][0] + spans[i][1]] for i in order
    )


def frames_in_fragments(data: bytes, indexes: list[int]) -> int:
    """Video frames PyAV decodes from the init segment plus the fragments ``indexes``."""
    return decodable_frames(rebuild(data, indexes))


def make_resolution_change(
    directory: Path, *, first: tuple[int, int] = (320, 240), second: tuple[int, int] = (480, 272),
    duration_s: float = 1.0,
) -> tuple[Media, Media, bytes]:
    """Two encodes at different sizes, and one stream that is the first then the second
    (each with its own ``ftyp`` + ``moov``): what a bot sends when the resolution changes
    and the encoder restarts."""
    directory.mkdir(parents=True, exist_ok=True)
    a = make_fmp4(directory / f"res-{first[0]}x{first[1]}.mp4", duration_s=duration_s, size=first)
    b = make_fmp4(
        directory / f"res-{second[0]}x{second[1]}.mp4", duration_s=duration_s, size=second
    )
    joined = rebuild(a.data, list(range(len(fragment_spans(a.data)[1]))))
    joined += rebuild(b.data, list(range(len(fragment_spans(b.data)[1]))))
    return a, b, joined
