"""The receiver's Prometheus metrics, on ``prometheus_client``, and the ``/metrics`` and
``/healthz`` answers.

:class:`Metrics` is fed from three places:

* :meth:`Metrics.observe` is the server's ``ServerOptions.observer``: it is called on the event
  loop with every core event of every connection, so it only bumps numbers. The media
  chunks (the only events that come by the thousand per second) are counted by hand, under
  one lock (:class:`_MediaCounts`: measured 0.6 us a chunk against 1.7 us for
  ``prometheus_client``'s counter and histogram, ``benchmarks/metrics.py`` and
  ``docs/benchmarks.md``); everything else is ``prometheus_client``'s.
* the recorder (:class:`~.sessions.Recorder`, its file sink and its other sinks) reports what
  only it knows (streams open and finished, bytes written, disk errors, recording warnings)
  from its threads; :meth:`Metrics.watch_sinks` adds each sink's backlog, lag, errors and
  drops, and :meth:`Metrics.watch` a feature's own numbers, read at each scrape.
* :meth:`Metrics.track` wraps the handler factory to time connections; :meth:`watch_disk`
  reads the free space at each scrape; :meth:`set_info` labels ``meetstream_live_build_info``.

The exposition is ``prometheus_client``'s (text format 0.0.4), with its process and Python
collectors. With ``serve --workers N`` every worker (and the parent, which runs the hooks)
publishes its numbers to a shared directory and whichever worker a scrape reaches answers
with their sum (:mod:`.metrics_share`), so counters stay monotonic whichever worker
answers. Every metric, its type, labels and unit: ``docs/metrics.md`` (checked against
:meth:`Metrics.describe` by the tests).
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CollectorRegistry, GCCollector, Info, PlatformCollector
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge
from prometheus_client import Histogram as _PHistogram
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from meetstream_live import (
    Accepted,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    __version__,
)
from meetstream_live.adapters import Handler, HandlerFactory, HTTPAnswer

if TYPE_CHECKING:
    from .metrics_share import Share
    from .sinks import SinkStats

__all__ = [
    "CHUNK_BUCKETS",
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "HTTP_PATHS",
    "LAG_BUCKETS",
    "LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "Metrics",
]

log = logging.getLogger("meetstream_live.metrics")

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The paths :meth:`Metrics.http_handler` serves; put them in ``ServerConfig.http_paths``.
HTTP_PATHS = frozenset({"/healthz", "/metrics"})

#: One-way latency buckets, in seconds: 5 ms to 1 min, and 0 for the negative values clock
#: skew makes.
LATENCY_BUCKETS = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: How late the event loop ran its timer, in seconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Connection lifetimes, in seconds: 1 s to 8 h.
DURATION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
#: Media chunk sizes, in bytes: 1 KiB to 4 MiB.
CHUNK_BUCKETS = tuple(float(1 << n) for n in range(10, 23, 2))

Label = str | tuple[str, ...]
#: One value of a watched metric: its labels and the number.
Sample = tuple[dict[str, str], float]


def _values(label: Label) -> tuple[str, ...]:
    return label if isinstance(label, tuple) else (label,)


class _Wrapped:
    """A ``prometheus_client`` metric with the recorder's call style: ``inc(label=...)``,
    ``value(label)`` (a label is a string, or a tuple for several label names)."""

    def __init__(self, metric: Any, labels: Sequence[str]) -> None:
        self.metric = metric
        self.labels = tuple(labels)
        self.name: str = metric._name  # the family name (a counter's without _total)

    def _child(self, label: Label) -> Any:
        return self.metric.labels(*_values(label)) if self.labels else self.metric

    def _sum(self, suffix: str, label: Label | None, match: dict[str, str]) -> float:
        wanted = dict(match)
        if label is not None and self.labels:
            wanted.update(zip(self.labels, _values(label), strict=False))
        total = 0.0
        for family in self.metric.collect():
            for sample in family.samples:
                if sample.name != self.name + suffix:
                    continue
                if all(sample.labels.get(k) == v for k, v in wanted.items()):
                    total += sample.value
        return total


class Counter(_Wrapped):
    """A monotonic count, optionally split by labels (``name_total{label="..."}``)."""

    def __init__(self, registry: CollectorRegistry, name: str, help_text: str,
                 labels: Sequence[str] = (), initial: Iterable[Label] = ()) -> None:
        super().__init__(_PCounter(name, help_text, labels, registry=registry), labels)
        for value in initial:
            self._child(value)

    def inc(self, amount: float = 1.0, label: Label = "") -> None:
        self._child(label).inc(amount)

    def value(self, label: Label | None = None, **match: str) -> float:
        """The count (of one label value, or the sum of those matching ``match``)."""
        return self._sum("_total", label, match)


class Gauge(_Wrapped):
    """A value that goes up and down."""

    def __init__(self, registry: CollectorRegistry, name: str, help_text: str) -> None:
        super().__init__(_PGauge(name, help_text, registry=registry), ())

    def inc(self, amount: float = 1.0) -> None:
        self.metric.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self.metric.dec(amount)

    def set(self, value: float) -> None:
        self.metric.set(value)

    def value(self) -> float:
        return self._sum("", None, {})


class Histogram(_Wrapped):
    """Cumulative buckets, a sum and a count."""

    def __init__(self, registry: CollectorRegistry, name: str, help_text: str,
                 buckets: Sequence[float]) -> None:
        super().__init__(_PHistogram(name, help_text, buckets=buckets, registry=registry), ())

    def observe(self, value: float) -> None:
        self.metric.observe(value)

    def count(self) -> int:
        return int(self._sum("_count", None, {}))


class _Losses:
    """``recording_losses`` of old, one unit per metric now: the recorder's
    ``recording_lost.inc(amount, label=kind)`` goes to the streams, bytes or fragments
    counter by its kind (``superseded``, ``disk_full``: streams; ``superseded_bytes``,
    ``disk_bytes``: bytes; ``disk_fragments``: fragments)."""

    KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "superseded": ("streams", "superseded"),
        "disk_full": ("streams", "disk_full"),
        "superseded_bytes": ("bytes", "superseded"),
        "disk_bytes": ("bytes", "disk"),
        "disk_fragments": ("fragments", "disk"),
    }

    def __init__(self, streams: Counter, bytes_: Counter, fragments: Counter) -> None:
        self.counters = {"streams": streams, "bytes": bytes_, "fragments": fragments}

    def inc(self, amount: float = 1.0, label: str = "") -> None:
        unit, reason = self.KINDS.get(label, ("streams", label))
        self.counters[unit].inc(amount, label=reason)

    def value(self, label: str = "") -> float:
        unit, reason = self.KINDS.get(label, ("streams", label))
        return self.counters[unit].value(reason)


class _MediaCounts:
    """The hot path, by hand: bytes and a size histogram of every media chunk, under one
    lock (the observer runs on the loop, or in each connection's thread with ``sync``)."""

    __slots__ = ("bounds", "buckets", "count", "lock", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0
        self.lock = threading.Lock()

    def add(self, size: int) -> None:
        index = bisect.bisect_left(self.bounds, size)
        with self.lock:
            self.total += size
            self.count += 1
            self.buckets[index] += 1

    def snapshot(self) -> tuple[int, int, list[int]]:
        with self.lock:
            return self.total, self.count, list(self.buckets)


#: What ``/metrics`` shows of each sink (a :class:`~.sinks.SinkStats` field, its kind, help).
_SINK_FIELDS = (
    ("backlog_bytes", "gauge", "Media bytes queued for the sink or being handled."),
    ("backlog_events", "gauge", "Events queued for the sink or being handled."),
    ("lag_seconds", "gauge", "Age of the oldest event the sink has not handled yet."),
    ("handled_events", "counter", "Events the sink handled."),
    ("errors", "counter", "Failures of the sink (exceptions from its handle())."),
    ("dropped_events", "counter", "Events dropped for the sink (queue full, part failed)."),
    ("dropped_bytes", "counter", "Media bytes in the dropped events."),
    ("failed_parts", "counter", "Parts the sink gave up after repeated failures."),
    ("parts", "counter", "Parts the sink has seen."),
)

_KINDS = ("counter", "gauge")


class _Timed(Handler):
    """A handler that times its connection (:meth:`Metrics.track`): one call more per batch,
    nothing per event."""

    __slots__ = ("_done", "_inner", "_metrics", "_started")

    def __init__(self, inner: Handler, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._started = time.monotonic()
        self._done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _ended(self, events: Any) -> None:
        if (not self._done and isinstance(events, (list, tuple)) and events
                and type(events[-1]) is Disconnected):
            self._done = True
            self._metrics.connection_duration.observe(time.monotonic() - self._started)

    def dispatch_inline(self, events: list[Event]) -> bool:
        done = self._inner.dispatch_inline(events)
        if done:
            self._ended(events)
        return done

    def dispatch(self, events: Iterable[Event]) -> None:
        try:
            self._inner.dispatch(events)
        finally:
            self._ended(events)


class Metrics:
    """The receiver's metrics. Pass :meth:`observe` as ``ServerOptions.observer`` and
    :meth:`http_handler` as ``ServerOptions.http_handler`` (with :data:`HTTP_PATHS` in
    ``ServerConfig.http_paths``), and the object itself to the recorder. Each object has a
    registry of its own (``self.registry``), so that several can live in one process."""

    def __init__(self, prefix: str = "meetstream_live", *, process: bool = True) -> None:
        self.prefix = p = prefix
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.connections_active = Gauge(
            r, f"{p}_websocket_connections_active",
            "Open WebSocket connections (bots, and viewers of the live view).")
        self.connections = Counter(
            r, f"{p}_websocket_connections", "WebSocket connections accepted.")
        self.disconnects = Counter(
            r, f"{p}_websocket_disconnects",
            "WebSocket connections over, by close code (1006: no close frame).", ("code",))
        self.connection_duration = Histogram(
            r, f"{p}_websocket_connection_duration_seconds",
            "How long bots' WebSocket connections lasted, from the upgrade to the end.",
            DURATION_BUCKETS)
        self.http_rejections = Counter(
            r, f"{p}_http_rejections", "Requests refused before any WebSocket, by HTTP status.",
            ("status",))
        self.streams_started = Counter(
            r, f"{p}_streams_started", "video_stream_start messages received.")
        self.streams_ended = Counter(
            r, f"{p}_stream_end_messages", "video_stream_end messages received.")
        self.pings = Counter(r, f"{p}_latency_pings", "video_latency_ping messages answered.")
        self.ping_latency = Histogram(
            r, f"{p}_ping_one_way_latency_seconds",
            "Receive time here minus the ping's sent_at_ms (bot clock): network delay plus "
            "clock skew; negative when the bot's clock is ahead.", LATENCY_BUCKETS)
        self.loop_lag = Histogram(
            r, f"{p}_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.1 s: the longest a ping read "
            "then waited for its pong (the server's share of the latency a bot measures).",
            LAG_BUCKETS)
        self.protocol_warnings = Counter(
            r, f"{p}_protocol_warnings", "Tolerated protocol problems, by kind.", ("kind",))
        # Reported by the recorder.
        self.streams_active = Gauge(r, f"{p}_recordings_active", "Recordings being written.")
        self.streams_finished = Counter(
            r, f"{p}_recordings_finished",
            "Recordings finalized, by end (clean: video_stream_end; unclean: disconnect).",
            ("end",), initial=("clean", "unclean"))
        self.recorded_bytes = Counter(
            r, f"{p}_recorded_bytes", "Bytes of media written to recordings.")
        self.recording_warnings = Counter(
            r, f"{p}_recording_warnings", "Problems found in recorded streams, by kind.",
            ("kind",))
        self.errors = Counter(
            r, f"{p}_errors",
            "Failures, by kind (disk: file I/O; handler: any other handler exception).",
            ("kind",), initial=("disk", "handler"))
        self.verdicts = Counter(
            r, f"{p}_recording_verdicts",
            "Recordings (parts) finalized, by verdict (complete, gaps, truncated).",
            ("verdict",), initial=("complete", "gaps", "truncated"))
        self.dropped_fragments = Counter(
            r, f"{p}_recording_dropped_fragments",
            "Fragments missing from recordings (gaps in the mfhd sequence numbers).")
        self.timeline_gaps = Counter(
            r, f"{p}_recording_timeline_gap_seconds",
            "Media time missing from recordings (tfdt jumps), by track handler.", ("track",))
        self.reconnects = Counter(
            r, f"{p}_recording_reconnects",
            "Streams that came back within the reconnect grace window, by outcome "
            "(appended to the same part, or a new part).",
            ("outcome",), initial=("appended", "new_part"))
        self.lost_streams = Counter(
            r, f"{p}_recording_lost_streams",
            "Streams that lost data, by reason (superseded: replaced by a newer connection; "
            "disk_full: met a full disk).", ("reason",), initial=("superseded", "disk_full"))
        self.lost_bytes = Counter(
            r, f"{p}_recording_lost_bytes",
            "Media bytes received and not in a recording, by reason (superseded: sent by a "
            "replaced connection; disk: the disk did not take them).",
            ("reason",), initial=("superseded", "disk"))
        self.lost_fragments = Counter(
            r, f"{p}_recording_lost_fragments",
            "Fragments received and not in a recording, by reason (disk).", ("reason",),
            initial=("disk",))
        self.recording_lost = _Losses(self.lost_streams, self.lost_bytes, self.lost_fragments)
        self.disk_low = Gauge(
            r, f"{p}_disk_low",
            "1 while free space is below the low watermark and recordings are not written.")
        self.hooks = Counter(
            r, f"{p}_hook_runs",
            "Hook runs, by hook (remux, command, webhook, on_start, webhook_start) and outcome "
            "(ok, failed: retried later unless dead-lettered).", ("hook", "outcome"))
        self.hooks_pending = Gauge(
            r, f"{p}_hooks_pending", "Journaled hook runs not done yet.")
        self.hooks_dead = Counter(
            r, f"{p}_hooks_dead_lettered",
            "Hooks given up after their last attempt (the entry is in OUTPUT/.hooks/dead/), "
            "by hook.", ("hook",))
        self.retention_deleted = Counter(
            r, f"{p}_retention_deleted_recordings",
            "Recordings deleted by retention, by reason (age, total_size, free_space).",
            ("reason",), initial=("age", "total_size", "free_space"))
        self.retention_deleted_bytes = Counter(
            r, f"{p}_retention_deleted_bytes",
            "Bytes deleted by retention (recordings, sidecars and their derivatives).")
        self.disk_errors = Counter(
            r, f"{p}_disk_errors",
            "Failed file operations of the recorder, by errno (ENOSPC, EDQUOT, EIO, EROFS...).",
            ("errno",))
        self.disk_error_sites = Counter(
            r, f"{p}_disk_error_sites",
            "Failed file operations of the recorder, by where (media_write, fsync, rename, "
            "sidecar, manifest, journal, open, truncate, retention...).", ("site",))
        self.finalize_pending = Gauge(
            r, f"{p}_finalize_pending",
            "Parts whose finalizing waits for the disk (retried; recover() finishes them "
            "at the next start otherwise).")
        self.build = Info(f"{p}_build", "The running receiver: version, Python, options.",
                          registry=r)
        self._info: dict[str, str] = {
            "version": __version__,
            "python": ".".join(map(str, sys.version_info[:3])),
            "implementation": sys.implementation.name,
        }
        self.build.info(self._info)
        self._media = _MediaCounts(CHUNK_BUCKETS)
        self._sink_stats: list[Callable[[], list[SinkStats]]] = []
        self._watched: list[tuple[str, str, str, Callable[[], Iterable[Sample]]]] = []
        self._disk: Path | None = None
        self._unavailable: set[str] = set()
        self.share: Share | None = None
        r.register(_Collected(self))
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # ------------------------------------------------------------------ recorder API

    @property
    def media_bytes(self) -> _MediaBytes:
        """``media_received_bytes_total`` (counted by hand: the hot path)."""
        return _MediaBytes(self._media)

    def disk_error(self, exc: BaseException, site: str) -> None:
        """One failed file operation: ``errors{kind="disk"}``, by errno and by site."""
        from .durable import errno_name

        self.errors.inc(label="disk")
        self.disk_errors.inc(label=errno_name(exc))
        self.disk_error_sites.inc(label=site)

    def set_info(self, **labels: str) -> None:
        """More labels on ``meetstream_live_build_info`` (``adapter``, ``unmasker``...)."""
        self._info.update(labels)
        self.build.info(self._info)

    def watch_sinks(self, stats: Callable[[], list[SinkStats]]) -> None:
        """Render these sinks' numbers too (``meetstream_live_sink_*{sink="..."}``)."""
        self._sink_stats.append(stats)

    def watch(self, name: str, kind: str, help_text: str,
              values: Callable[[], Iterable[Sample]]) -> None:
        """A metric whose values are read at each scrape (a feature's gauges and counters:
        upload lag, outbox size): ``values()`` yields ``(labels, value)`` pairs. ``name`` is
        the full name without the prefix (a counter's ends in ``_total``)."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
        full = f"{self.prefix}_{name}"
        if any(watched[0] == full for watched in self._watched):
            raise ValueError(f"{full} is watched already")
        self._watched.append((full, kind, help_text, values))

    def watch_disk(self, path: str | os.PathLike[str]) -> None:
        """``disk_free_bytes`` and ``disk_size_bytes`` of the filesystem of ``path``, read
        at each scrape."""
        self._disk = Path(path)

    def share_with(self, directory: str | os.PathLike[str], worker: int) -> Share:
        """Publish this process's numbers to ``directory`` and answer ``/metrics`` with the
        sum of every process's there (``serve --workers``: see :mod:`.metrics_share`);
        ``worker`` is 0 for the parent. Call ``share.close()`` at the end."""
        from .metrics_share import Share

        self.share = Share(self, Path(directory), worker)
        self.share.start()
        return self.share

    def track(self, factory: HandlerFactory) -> HandlerFactory:
        """``factory``, with each connection timed
        (``websocket_connection_duration_seconds``)."""

        def timed(info: Any) -> Handler:
            return _Timed(factory(info), self)

        return timed

    # ------------------------------------------------------------------ feeding

    def observe(self, event: Event) -> None:
        """``ServerOptions.observer``: called on the loop with every core event. Cheap."""
        kind = type(event)
        if kind is MediaChunk:
            self._media.add(len(event.data))  # type: ignore[attr-defined]
        elif kind is LatencyPing:
            self.pings.inc()
            sent = event.sent_at_ms  # type: ignore[attr-defined]
            if sent is not None:
                self.ping_latency.observe(
                    (event.received_at_ms - sent) / 1000)  # type: ignore[attr-defined]
        elif isinstance(event, ProtocolWarning):
            self.protocol_warnings.inc(label=event.kind.value)
        elif isinstance(event, StreamStarted):
            self.streams_started.inc()
        elif isinstance(event, StreamEnded):
            self.streams_ended.inc()
        elif isinstance(event, Accepted):
            self.connections.inc()
            self.connections_active.inc()
        elif isinstance(event, Disconnected):
            self.connections_active.dec()
            self.disconnects.inc(label=str(event.code))
        elif isinstance(event, HTTPRejected):
            self.http_rejections.inc(label=str(event.status))

    # ------------------------------------------------------------------ output

    def collect_own(self) -> bytes:
        """This process's exposition alone."""
        return generate_latest(_WithoutCreated(self.registry))

    def render(self) -> str:
        """The whole exposition, in the text format 0.0.4 (with ``--workers``: the sum of
        every process's, see :mod:`.metrics_share`)."""
        share = self.share
        if share is not None:
            return share.render()
        return self.collect_own().decode("utf-8")

    def describe(self) -> Iterator[tuple[str, str, str, tuple[str, ...]]]:
        """``(name, type, help, labels)`` of every family this object renders now, for the
        docs (watched metrics and sinks included once they are there)."""
        for family in _WithoutCreated(self.registry).collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            name = name + ("_info" if family.type == "info" else "")
            labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
            yield name, family.type, family.documentation, tuple(labels)

    def catalogue(self) -> list[tuple[str, str, tuple[str, ...], str]]:
        """``(name, type, labels, help)`` of every metric this object can render (the
        sinks' and the watched ones included, whether they have values yet or not; not the
        process collector's), by name: what ``docs/metrics.md`` is made of."""
        p = self.prefix
        found: list[tuple[str, str, tuple[str, ...], str]] = []
        for value in vars(self).values():
            if isinstance(value, _Wrapped):
                metric = value.metric
                kind = str(metric._type)
                name = value.name + ("_total" if kind == "counter" else "")
                found.append((name, kind, tuple(metric._labelnames), str(metric._documentation)))
        found.append((f"{p}_build_info", "gauge", tuple(self._info), self.build._documentation))
        found.append((f"{p}_media_received_bytes_total", "counter", (),
                      "Bytes of fMP4 media received from bots."))
        found.append((f"{p}_media_chunk_size_bytes", "histogram", (),
                      next(f.documentation for f in self._families()
                           if f.name == f"{p}_media_chunk_size_bytes")))
        found.append((f"{p}_disk_free_bytes", "gauge", (),
                      "Free space for the receiver on the output directory's filesystem."))
        found.append((f"{p}_disk_size_bytes", "gauge", (),
                      "Size of the output directory's filesystem."))
        for field, kind, help_text in _SINK_FIELDS:
            found.append((f"{p}_sink_{field}" + ("_total" if kind == "counter" else ""), kind,
                          ("sink", "when_full"), help_text))
        for name, kind, help_text, _values in self._watched:
            found.append((name, kind, (), help_text))
        return sorted(found)

    def http_handler(self, request: HTTPRequest) -> HTTPAnswer:
        """``ServerOptions.http_handler``: ``GET /healthz`` and ``GET /metrics``."""
        if request.method not in ("GET", "HEAD"):
            return HTTPAnswer(405, b"method not allowed\n")
        head = request.method == "HEAD"
        if request.path == "/healthz":
            return HTTPAnswer(200, b"" if head else b"ok\n")
        if request.path == "/metrics":
            body = b"" if head else self.render().encode("utf-8")
            return HTTPAnswer(200, body, CONTENT_TYPE)
        return HTTPAnswer(404, b"not found\n")

    # ------------------------------------------------------------------ collecting

    def _families(self) -> Iterator[Metric]:
        """What ``prometheus_client``'s metrics do not hold: the hand-counted media, the
        sinks, the watched metrics, the disk."""
        p = self.prefix
        total, count, buckets = self._media.snapshot()
        media = Metric(f"{p}_media_received_bytes", "Bytes of fMP4 media received from bots.",
                       "counter")
        media.add_sample(f"{p}_media_received_bytes_total", {}, float(total))
        yield media
        chunks = Metric(
            f"{p}_media_chunk_size_bytes",
            "Size of the media chunks the server delivered: the whole binary messages of one "
            "read joined, or a piece of a large message (the core does not keep message "
            "boundaries; text messages are bounded by --max-text-size).", "histogram")
        cumulative = 0
        for bound, n in zip((*self._media.bounds, float("inf")), buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            chunks.add_sample(f"{p}_media_chunk_size_bytes_bucket", {"le": le}, cumulative)
        chunks.add_sample(f"{p}_media_chunk_size_bytes_sum", {}, float(total))
        chunks.add_sample(f"{p}_media_chunk_size_bytes_count", {}, float(count))
        yield chunks
        if self._disk is not None:
            yield from self._disk_families()
        yield from self._sink_families()
        yield from self._watched_families()

    def _disk_families(self) -> Iterator[Metric]:
        assert self._disk is not None
        try:
            stat = os.statvfs(self._disk)
        except (OSError, AttributeError):
            return
        p = self.prefix
        for name, value, text in (
            ("disk_free_bytes", stat.f_bavail * stat.f_frsize,
             "Free space for the receiver on the output directory's filesystem."),
            ("disk_size_bytes", stat.f_blocks * stat.f_frsize,
             "Size of the output directory's filesystem."),
        ):
            family = Metric(f"{p}_{name}", text, "gauge")
            family.add_sample(f"{p}_{name}", {}, float(value))
            yield family

    def _sink_families(self) -> Iterator[Metric]:
        rows = [row for source in self._sink_stats for row in source()]
        if not rows:
            return
        p = self.prefix
        for field, kind, help_text in _SINK_FIELDS:
            family = Metric(f"{p}_sink_{field}", help_text, kind)
            sample = f"{p}_sink_{field}" + ("_total" if kind == "counter" else "")
            for row in rows:
                family.add_sample(sample, {"sink": row.name, "when_full": row.when_full},
                                  float(getattr(row, field)))
            yield family

    def _watched_families(self) -> Iterator[Metric]:
        for name, kind, help_text, values in self._watched:
            base = name.removesuffix("_total") if kind == "counter" else name
            try:
                rows = list(values())
            except Exception as exc:  # a feature's numbers never break the scrape
                if name not in self._unavailable:
                    self._unavailable.add(name)
                    log.warning("metric %s unavailable: %r", name, exc)
                continue
            family = Metric(base, help_text, kind)
            for labels, value in rows:
                family.add_sample(name, dict(labels), float(value))
            yield family


class _MediaBytes:
    """``metrics.media_bytes``: the hand-counted total, in the recorder's call style."""

    def __init__(self, counts: _MediaCounts) -> None:
        self._counts = counts

    def inc(self, amount: float = 1.0, label: str = "") -> None:
        with self._counts.lock:
            self._counts.total += int(amount)

    def value(self, label: str = "") -> float:
        return float(self._counts.snapshot()[0])


class _Collected:
    """The collector of :meth:`Metrics._families` in the object's registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics._families()


class _WithoutCreated:
    """A registry's families without ``prometheus_client``'s ``*_created`` samples (a
    scrape of the 0.0.4 text format shows them as gauges, and summed across workers they
    would mean nothing)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family
