"""The bundled sample stream: 6 s of fragmented MP4 (H.264 320x180 at 25 fps, AAC mono 44.1 kHz,
one ``moof`` + ``mdat`` per second, about 230 KB), what ``meetstream-live simulate`` and
``check`` send when no ``--file`` is given.

It was made with the ffmpeg of ``imageio-ffmpeg``::

    ffmpeg -f lavfi -i testsrc2=size=320x180:rate=25
      -f lavfi -i sine=frequency=440:sample_rate=44100 -t 6
      -c:v libx264 -preset veryfast -profile:v baseline -pix_fmt yuv420p -b:v 250k
      -maxrate 300k -bufsize 300k -g 25 -keyint_min 25 -sc_threshold 0 -threads 1
      -c:a aac -b:a 48k -ac 1
      -movflags +frag_keyframe+empty_moov+default_base_moof+skip_trailer
      -fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1 -f mp4 sample.mp4
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["sample_bytes", "sample_path"]

_NAME = "sample.mp4"


def sample_path() -> Path:
    """Where the sample is on disk; ``FileNotFoundError`` when the install lacks it."""
    # resolve(): in a strict editable install this module is a link into the checkout.
    here = Path(__file__).resolve().parent / "data" / _NAME
    if here.is_file():
        return here
    packaged = resources.files(__package__ or "meetstream_live.adapters.cli") / "data" / _NAME
    if isinstance(packaged, Path) and packaged.is_file():
        return packaged
    raise FileNotFoundError(f"the bundled {_NAME} is missing from this installation")


def sample_bytes() -> bytes:
    """The sample's bytes."""
    return sample_path().read_bytes()
