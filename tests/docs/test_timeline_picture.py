"""The README's picture (docs/img/recording-timeline.svg) is a real recording drawn by
docs/make_timeline.py: drawn again, it is the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_picture_is_what_the_script_draws() -> None:
    spec = importlib.util.spec_from_file_location("make_timeline", ROOT / "docs" /
                                                  "make_timeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    drawn = module.make()
    assert drawn == (ROOT / "docs" / "img" / "recording-timeline.svg").read_text(), (
        "stale: run python docs/make_timeline.py")
    assert "verdict complete" in drawn and "2 connections" in drawn
    assert "recording-timeline.svg" in (ROOT / "README.md").read_text()
