"""docs/cli.md, docs/config.md and docs/metrics.md are made from the code: made again here,
they must be what is in docs/ (regenerate with ``python -m
meetstream_live.adapters.cli.reference docs``), and every metric a real receiver renders is
in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from media import Media
from prometheus_client.parser import text_string_to_metric_families

from meetstream_live import Accepted, Disconnected, LatencyPing, MediaChunk, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.cli.reference import PAGES, render
from meetstream_live.adapters.cli.serve import serve_options
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.metrics import Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs"
HINT = "stale: run `python -m meetstream_live.adapters.cli.reference docs` and commit"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_page_is_what_the_code_makes(name: str) -> None:
    assert render(name) == (DOCS / name).read_text(encoding="utf-8"), f"docs/{name} is {HINT}"


def test_every_option_flag_variable_and_key_is_in_config_md() -> None:
    text = (DOCS / "config.md").read_text()
    for option in serve_options().options:
        for needle in (f"`{option.option}`", *(f"`{v}`" for v in option.env),
                       f"`{option.name}`"):
            assert needle in text, needle


def test_every_metric_a_receiver_renders_is_in_metrics_md(
    fmp4_small: Media, tmp_path: Path
) -> None:
    metrics = Metrics()
    metrics.watch_disk(tmp_path)
    recorder = Recorder(tmp_path, metrics=metrics)
    handler = metrics.track(recorder)(ConnectionInfo("peer", "/", "", (), False))
    for event in (Accepted("/", "", ()), StreamStarted(bot_id="b", raw={}),
                  MediaChunk(fmp4_small.data, 0), LatencyPing(1, 1, 2, "b"),
                  Disconnected(1000, "", False)):
        metrics.observe(event)
        if not isinstance(event, Accepted):
            handler.dispatch([event])
    recorder.close()
    rendered = {family.name + ("_total" if family.type == "counter" else "")
                for family in text_string_to_metric_families(metrics.render())}
    documented = set(re.findall(r"`((?:meetstream_live|process|python)_[a-z_]+)`",
                                (DOCS / "metrics.md").read_text()))
    assert rendered - documented == set()
    catalogued = {name for name, *_ in metrics.catalogue()}
    assert {n for n in rendered if n.startswith("meetstream_live_")} <= catalogued
    assert catalogued <= documented
