"""docs/upload.md must not lie: its options table is the options' own, its Python example
runs (against the test S3 server) and uploads what it records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from media import Media
from services import S3Server

from meetstream_live.adapters.cli.options import OptionSet
from meetstream_live.adapters.cli.upload import OPTIONS

from .common import body, objects, record

DOC = Path(__file__).resolve().parents[3] / "docs" / "upload.md"


def test_the_options_table_is_current() -> None:
    text = DOC.read_text()
    assert OptionSet(OPTIONS).markdown("serve").strip() in text


def test_the_python_example_runs(
    fmp4_medium: Media, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "<!-- the block below is run by tests/recording/upload/test_docs.py -->"
    block = DOC.read_text().split(marker, 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S)
    assert code is not None
    s3.create_bucket("recordings")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code.group(1), str(DOC), "exec"), scope)
    recorder = scope["recorder"]
    record(recorder, fmp4_medium.data, "doc-bot")  # type: ignore[arg-type]
    recorder.close()  # type: ignore[attr-defined]
    (key,) = [k for k in objects(s3.client(), "recordings") if k.endswith(".mp4")]
    assert key.startswith("meetings/doc-bot/")
    assert body(s3.client(), "recordings", key) == fmp4_medium.data
