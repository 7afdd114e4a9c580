"""Shared pytest configuration and fixtures.

Layout (add new shared fixtures in the section they belong to; keep test-specific fixtures in
their test module):

* **Hypothesis profiles**: ``dev`` (default, quick) and ``ci`` (more examples). Select one with
  the ``HYPOTHESIS_PROFILE`` environment variable, e.g. ``HYPOTHESIS_PROFILE=ci pytest``.
* **Media**: real fragmented MP4 files (H.264 + AAC) encoded by ffmpeg once per test session
  (see :mod:`tests.media`), e.g. ``fmp4_small`` and ``fmp4_medium``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Make the helper modules next to this file (``media``) importable from test modules as plain
# top-level modules, whether pytest runs in rootdir or importlib mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media import Media, make_fmp4

# ------------------------------------------------------------------------ hypothesis profiles

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# ------------------------------------------------------------------------------------- media


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session directory where the generated media files are cached."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def fmp4_small(media_dir: Path) -> Media:
    """~2 s fMP4, 320x240 at 25 fps, a keyframe (so a fragment) every 0.48 s, AAC 44.1 kHz
    mono. About 215 kB, 5 fragments."""
    return make_fmp4(media_dir / "small.mp4", duration_s=2.0)


@pytest.fixture(scope="session")
def fmp4_medium(media_dir: Path) -> Media:
    """~6 s fMP4, same settings as ``fmp4_small``. About 13 fragments."""
    return make_fmp4(media_dir / "medium.mp4", duration_s=6.0)
