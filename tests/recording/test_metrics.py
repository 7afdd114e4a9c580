"""What ``/metrics`` shows of the recorder: each sink's numbers, disk errors by errno and by
site, parsed by the Prometheus client's own parser."""

from __future__ import annotations

import errno
from pathlib import Path

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
