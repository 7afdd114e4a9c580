"""Fixtures of the upload tests: a 20 s clip large enough for several 5 MiB parts, and one
SeaweedFS S3 server per test module (each test takes a bucket of its own)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media, make_fmp4
from services import S3Server, require_module, s3_server

_buckets = itertools.count(1)


@pytest.fixture(scope="session")
def clip20(media_dir: Path) -> Media:
    """20 s of 1280x720 H.264 + AAC, a fragment a second: about 16.7 MB, so 3 parts of
    5 MiB (fragment boundaries put them at 5.8 MB) and a last one."""
    return make_fmp4(media_dir / "clip20.mp4", duration_s=20.0, size=(1280, 720),
                     keyframe_interval_s=1.0)


@pytest.fixture(scope="module")
def s3_module() -> Iterator[S3Server]:
    require_module("boto3")
    with s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_module: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The module's server, with the standard AWS variables pointing at it."""
    for name, value in s3_module.env().items():
        monkeypatch.setenv(name, value)
    return s3_module


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.create_bucket(f"rec{next(_buckets)}")
