"""What ``/metrics`` shows of the recorder: each sink's numbers, disk errors by errno and by
site, parsed by the Prometheus client's own parser."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from media import Media
from prometheus_client.parser import text_string_to_metric_families

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.metrics import Metrics

from .faults import FaultyDisk


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render())
        for s in family.samples
    }


def test_sinks_and_disk_errors_in_metrics(fmp4_small: Media, tmp_path: Path) -> None:
    metrics = Metrics()
    disk = FaultyDisk()
    recorder = Recorder(tmp_path, metrics=metrics, disk=disk, on_finish=lambda r: None)
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(StreamStarted(bot_id="b", raw={"type": "video_stream_start"}))
    data = fmp4_small.data
    handler.on_chunk(MediaChunk(data[:100_000], 0))
    assert recorder.flush()
    disk.fail("media_write", errno.EIO)
    handler.on_chunk(MediaChunk(data[100_000:], 100_000))
    handler.on_end(StreamEnded(2.0))
    assert recorder.flush()
    disk.heal()
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    got = samples(metrics)
    file = (("sink", "file"), ("when_full", "block"))
    callback = (("sink", "on_finish"), ("when_full", "drop"))
    assert got[("meetstream_live_sink_parts_total", file)] == 1
    assert got[("meetstream_live_sink_handled_events_total", file)] >= 8  # opened, chunks...
    assert got[("meetstream_live_sink_backlog_bytes", file)] == 0
    assert got[("meetstream_live_sink_errors_total", file)] == 0  # disk errors are not its
    assert got[("meetstream_live_sink_handled_events_total", callback)] == 1
    assert got[("meetstream_live_disk_errors_total", (("errno", "EIO"),))] == 1
    assert got[("meetstream_live_disk_error_sites_total", (("site", "media_write"),))] == 1
    assert got[("meetstream_live_errors_total", (("kind", "disk"),))] == 1
    assert got[("meetstream_live_finalize_pending", ())] == 0
    assert got[("meetstream_live_recording_lost_bytes_total", (("reason", "disk"),))] > 0


def test_build_info_free_disk_process_and_connection_durations(tmp_path: Path) -> None:
    import time

    from meetstream_live import Accepted
    from meetstream_live.adapters import Handler

    metrics = Metrics()
    metrics.set_info(adapter="asyncio", unmasker="numpy")
    metrics.watch_disk(tmp_path)
    handler = metrics.track(lambda info: Handler())(ConnectionInfo("p", "/", "", (), False))
    metrics.observe(Accepted("/", "", ()))
    handler.dispatch([MediaChunk(b"x", 0)])
    time.sleep(0.05)
    handler.dispatch([Disconnected(1000, "", True)])
    got = samples(metrics)
    (build,) = [labels for name, labels in got if name == "meetstream_live_build_info"]
    assert dict(build)["adapter"] == "asyncio" and dict(build)["version"]
    assert got[("meetstream_live_disk_free_bytes", ())] > 0
    assert got[("meetstream_live_disk_size_bytes", ())] >= got[
        ("meetstream_live_disk_free_bytes", ())]
    duration = "meetstream_live_websocket_connection_duration_seconds"
    assert got[(f"{duration}_count", ())] == 1 and got[(f"{duration}_sum", ())] >= 0.05
    assert got[("process_resident_memory_bytes", ())] > 0
    assert not [name for name, _ in got if name.endswith("_created")]


def test_names_follow_the_conventions() -> None:
    """A counter ends in _total and nothing else does; a unit is the name's last word."""
    for name, kind, _labels, help_text in Metrics().catalogue():
        assert name.endswith("_total") == (kind == "counter"), name
        base = name.removesuffix("_total")
        for unit in ("bytes", "seconds"):
            if f"_{unit}_" in base:
                raise AssertionError(f"{name}: the unit {unit} is not last")
        assert help_text.endswith((".", ")")), name


def test_a_broken_watched_metric_leaves_the_scrape_whole() -> None:
    metrics = Metrics()

    def broken() -> list[tuple[dict[str, str], float]]:
        raise RuntimeError("gone")

    metrics.watch("thing_total", "counter", "A thing.", broken)
    metrics.watch("other_bytes", "gauge", "Other.", lambda: [({"k": "v"}, 3.0)])
    got = samples(metrics)
    assert got[("meetstream_live_other_bytes", (("k", "v"),))] == 3
    assert not [name for name, _ in got if name.startswith("meetstream_live_thing")]
    with pytest.raises(ValueError, match="kind"):
        metrics.watch("x", "summary", "X.", list)
    with pytest.raises(ValueError, match="already"):
        metrics.watch("other_bytes", "gauge", "Other.", list)


def test_the_old_losses_go_to_one_unit_each() -> None:
    metrics = Metrics()
    metrics.recording_lost.inc(label="superseded")
    metrics.recording_lost.inc(500, label="superseded_bytes")
    metrics.recording_lost.inc(7, label="disk_bytes")
    metrics.recording_lost.inc(2, label="disk_fragments")
    got = samples(metrics)
    assert got[("meetstream_live_recording_lost_streams_total", (("reason", "superseded"),))] == 1
    assert got[("meetstream_live_recording_lost_bytes_total", (("reason", "superseded"),))] == 500
    assert got[("meetstream_live_recording_lost_bytes_total", (("reason", "disk"),))] == 7
    assert got[("meetstream_live_recording_lost_fragments_total", (("reason", "disk"),))] == 2
    assert metrics.recording_lost.value("disk_bytes") == 7
