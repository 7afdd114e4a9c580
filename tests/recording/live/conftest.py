"""Media for the live tests: fragments shorter than a keyframe interval."""

from __future__ import annotations

import subprocess

import pytest
from media import Media, ffmpeg_exe, make_fmp4, probe


@pytest.fixture(scope="session")
def fmp4_subgop(media_dir: object) -> Media:
    """8 s, a keyframe every 2 s, a fragment every 0.5 s (so three fragments in four start on
    a non-keyframe, as a bot that fragments by time sends): 16 fragments."""
    from pathlib import Path

    root = Path(str(media_dir))
    source = make_fmp4(root / "gop2s.mp4", duration_s=8.0, keyframe_interval_s=2.0)
    path = root / "subgop.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(source.path), "-c", "copy",
                    "-movflags", "frag_keyframe+empty_moov+default_base_moof",
                    "-frag_duration", "500000", "-f", "mp4", str(path)], check=True)
    p = probe(path)
    return Media(path, path.read_bytes(), p.video_frames, p.duration_s, p.width, p.height,
                 p.fps, p.audio_frames, p.audio_sample_rate)
