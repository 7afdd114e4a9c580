"""Prometheus metrics without a dependency: counters, gauges and histograms, rendered in the text
exposition format 0.0.4, plus the ``/healthz`` and ``/metrics`` answers.

:class:`Metrics` is fed from two places:

* :meth:`Metrics.observe` is the server's ``ServerOptions.observer``: it is called on the event
  loop with every core event of every connection, so it only bumps numbers.
* the recorder (:class:`~.sessions.Recorder`, its file sink and its other sinks) reports what
  only it knows (streams open and finished, bytes written, disk errors, recording warnings)
  from its threads; :meth:`Metrics.watch_sinks` adds each sink's backlog, lag, errors and
  drops, read when ``/metrics`` is rendered.

Every update takes one lock; rendering takes it once and copies. Names say what they measure:
the latency histogram is the bot's clock to ours (``server_received_at_ms - sent_at_ms``, so it
includes any clock skew between the two machines), not a round trip.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

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
)
from meetstream_live.adapters import HTTPAnswer

if TYPE_CHECKING:
    from .sinks import SinkStats

__all__ = ["CONTENT_TYPE", "HTTP_PATHS", "Counter", "Gauge", "Histogram", "Metrics"]

#: The content type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The paths :meth:`Metrics.http_handler` serves; put them in ``ServerConfig.http_paths``.
HTTP_PATHS = frozenset({"/healthz", "/metrics"})

#: One-way latency buckets, in seconds: 1 ms to 1 min, plus the negative values clock skew makes.
LATENCY_BUCKETS = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

Labels = tuple[tuple[str, str], ...]
#: One value of a watched metric: its labels and the number.
Sample = tuple[dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name = name
        self.help = help_text
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class Counter(_Metric):
    """A monotonic count, optionally split by one label (``name_total{label="..."}``)."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        lock: threading.Lock,
        label: str | None = None,
        initial: Iterable[str] = (),
    ) -> None:
        super().__init__(name, help_text, lock)
        self.label = label
        self._values: dict[str, float] = dict.fromkeys(initial, 0.0)
        if label is None:
            self._values[""] = 0.0

    def inc(self, amount: float = 1.0, label: str = "") -> None:
        with self._lock:
            self._values[label] = self._values.get(label, 0.0) + amount

    def value(self, label: str = "") -> float:
        with self._lock:
            return self._values.get(label, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for label_value, value in sorted(self._values.items()):
            labels: Labels = () if self.label is None else ((self.label, label_value),)
            lines.append(f"{self.name}_total{_labels(labels)} {_number(value)}")
        return lines


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value -= amount

    def value(self) -> float:
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_number(self._value)}"]


class Histogram(_Metric):
    """Cumulative buckets, a sum and a count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, lock)
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break
            else:
                self._counts[-1] += 1
            self._sum += value
            self._count += 1

    def count(self) -> int:
        with self._lock:
            return self._count

    def render(self) -> list[str]:
        lines = self.header()
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self._counts, strict=True):
            cumulative += count
            le = "+Inf" if math.isinf(bound) else repr(float(bound))  # as prometheus_client
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"{self.name}_sum {_number(self._sum)}")
        lines.append(f"{self.name}_count {self._count}")
        return lines


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


class Metrics:
    """The receiver's metrics. Pass :meth:`observe` as ``ServerOptions.observer`` and
    :meth:`http_handler` as ``ServerOptions.http_handler`` (with :data:`HTTP_PATHS` in
    ``ServerConfig.http_paths``), and the object itself to the recorder."""

    def __init__(self, prefix: str = "meetstream_live") -> None:
        lock = threading.Lock()
        self._lock = lock
        self.prefix = prefix
        p = prefix
        self.connections_active = Gauge(
            f"{p}_websocket_connections_active", "Open WebSocket connections from bots.", lock
        )
        self.connections = Counter(
            f"{p}_websocket_connections", "WebSocket connections accepted.", lock
        )
        self.disconnects = Counter(
            f"{p}_websocket_disconnects",
            "WebSocket connections over, by close code (1006: no close frame).",
            lock,
            label="code",
        )
        self.http_rejections = Counter(
            f"{p}_http_rejections",
            "Requests refused before any WebSocket, by HTTP status.",
            lock,
            label="status",
        )
        self.streams_started = Counter(
            f"{p}_streams_started", "video_stream_start messages received.", lock
        )
        self.streams_ended = Counter(
            f"{p}_stream_end_messages", "video_stream_end messages received.", lock
        )
        self.media_bytes = Counter(
            f"{p}_media_received_bytes", "Bytes of fMP4 media received from bots.", lock
        )
        self.pings = Counter(f"{p}_latency_pings", "video_latency_ping messages answered.", lock)
        self.ping_latency = Histogram(
            f"{p}_ping_one_way_latency_seconds",
            "Receive time here minus the ping's sent_at_ms (bot clock): network delay plus "
            "clock skew; negative when the bot's clock is ahead.",
            lock,
            LATENCY_BUCKETS,
        )
        self.protocol_warnings = Counter(
            f"{p}_protocol_warnings",
            "Tolerated protocol problems, by kind.",
            lock,
            label="kind",
        )
        # Reported by the recorder.
        self.streams_active = Gauge(f"{p}_recordings_active", "Recordings being written.", lock)
        self.streams_finished = Counter(
            f"{p}_recordings_finished",
            "Recordings finalized, by end (clean: video_stream_end; unclean: disconnect).",
            lock,
            label="end",
            initial=("clean", "unclean"),
        )
        self.recorded_bytes = Counter(
            f"{p}_recorded_bytes", "Bytes of media written to recordings.", lock
        )
        self.recording_warnings = Counter(
            f"{p}_recording_warnings",
            "Problems found in recorded streams, by kind.",
            lock,
            label="kind",
        )
        self.errors = Counter(
            f"{p}_errors",
            "Failures, by kind (disk: file I/O; handler: any other handler exception).",
            lock,
            label="kind",
            initial=("disk", "handler"),
        )
        # Completeness of the recordings (issue 7), reported by the recorder.
        self.verdicts = Counter(
            f"{p}_recording_verdicts",
            "Recordings (parts) finalized, by verdict (complete, gaps, truncated).",
            lock,
            label="verdict",
            initial=("complete", "gaps", "truncated"),
        )
        self.dropped_fragments = Counter(
            f"{p}_recording_dropped_fragments",
            "Fragments missing from recordings (gaps in the mfhd sequence numbers).",
            lock,
        )
        self.timeline_gaps = Counter(
            f"{p}_recording_timeline_gap_seconds",
            "Media time missing from recordings (tfdt jumps), by track handler.",
            lock,
            label="track",
        )
        self.reconnects = Counter(
            f"{p}_recording_reconnects",
            "Streams that came back within the reconnect grace window, by outcome "
            "(appended to the same part, or a new part).",
            lock,
            label="outcome",
            initial=("appended", "new_part"),
        )
        self.recording_lost = Counter(
            f"{p}_recording_losses",
            "What recordings lost, by kind (superseded: streams replaced by a newer "
            "connection; superseded_bytes, disk_bytes: bytes not written; disk_full: streams "
            "stopped by a full disk).",
            lock,
            label="kind",
        )
        self.disk_low = Gauge(
            f"{p}_disk_low",
            "1 while free space is below the low watermark and recordings are not written.",
            lock,
        )
        self.hooks = Counter(
            f"{p}_hook_runs",
            "Post-processing hook runs, by outcome (ok, failed: retried later).",
            lock,
            label="outcome",
            initial=("ok", "failed"),
        )
        self.hooks_pending = Gauge(
            f"{p}_hooks_pending", "Journaled hook runs not done yet.", lock
        )
        # Issue 13: every write can fail.
        self.disk_errors = Counter(
            f"{p}_disk_errors",
            "Failed file operations of the recorder, by errno (ENOSPC, EDQUOT, EIO, EROFS...).",
            lock,
            label="errno",
        )
        self.disk_error_sites = Counter(
            f"{p}_disk_error_sites",
            "Failed file operations of the recorder, by where (media_write, fsync, rename, "
            "sidecar, manifest, journal, open, truncate, retention...).",
            lock,
            label="site",
        )
        self.finalize_pending = Gauge(
            f"{p}_finalize_pending",
            "Parts whose finalizing waits for the disk (retried; recover() finishes them "
            "at the next start otherwise).",
            lock,
        )
        self._sink_stats: list[Callable[[], list[SinkStats]]] = []
        self._watched: list[tuple[str, str, str, Callable[[], Iterable[Sample]]]] = []
        self._all: tuple[_Metric, ...] = (
            self.connections_active,
            self.connections,
            self.disconnects,
            self.http_rejections,
            self.streams_started,
            self.streams_ended,
            self.media_bytes,
            self.pings,
            self.ping_latency,
            self.protocol_warnings,
            self.streams_active,
            self.streams_finished,
            self.recorded_bytes,
            self.recording_warnings,
            self.errors,
            self.verdicts,
            self.dropped_fragments,
            self.timeline_gaps,
            self.reconnects,
            self.recording_lost,
            self.disk_low,
            self.hooks,
            self.hooks_pending,
            self.disk_errors,
            self.disk_error_sites,
            self.finalize_pending,
        )

    def disk_error(self, exc: BaseException, site: str) -> None:
        """One failed file operation: ``errors{kind="disk"}``, by errno and by site."""
        from .durable import errno_name

        self.errors.inc(label="disk")
        self.disk_errors.inc(label=errno_name(exc))
        self.disk_error_sites.inc(label=site)

    def watch_sinks(self, stats: Callable[[], list[SinkStats]]) -> None:
        """Render these sinks' numbers too (``meetstream_live_sink_*{sink="..."}``)."""
        self._sink_stats.append(stats)

    def watch(self, name: str, kind: str, help_text: str,
              values: Callable[[], Iterable[Sample]]) -> None:
        """A metric whose values are read at each scrape (a feature's gauges and counters:
        upload lag, outbox size): ``values()`` yields ``(labels, value)`` pairs. ``name`` is
        the full name without the prefix (a counter's ends in ``_total``)."""
        self._watched.append((f"{self.prefix}_{name}", kind, help_text, values))

    def _render_watched(self) -> list[str]:
        lines: list[str] = []
        for name, kind, help_text, values in self._watched:
            base = name.removesuffix("_total") if kind == "counter" else name
            lines += [f"# HELP {base} {help_text}", f"# TYPE {base} {kind}"]
            try:
                rows = list(values())
            except Exception as exc:  # a feature's numbers never break the scrape
                lines.append(f"# {base}: unavailable ({type(exc).__name__})")
                continue
            for labels, value in rows:
                lines.append(f"{name}{_labels(tuple(labels.items()))} {_number(value)}")
        return lines

    def _render_sinks(self) -> list[str]:
        rows = [row for source in self._sink_stats for row in source()]
        if not rows:
            return []
        p = self.prefix
        lines: list[str] = []
        for field, kind, help_text in _SINK_FIELDS:
            name = f"{p}_sink_{field}" + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {p}_sink_{field} {help_text}", f"# TYPE {p}_sink_{field} {kind}"]
            for row in rows:
                labels = _labels((("sink", row.name), ("when_full", row.when_full)))
                lines.append(f"{name}{labels} {_number(getattr(row, field))}")
        return lines

    # ------------------------------------------------------------------ feeding

    def observe(self, event: Event) -> None:
        """``ServerOptions.observer``: called on the loop with every core event. Cheap."""
        if isinstance(event, MediaChunk):
            self.media_bytes.inc(len(event.data))
        elif isinstance(event, LatencyPing):
            self.pings.inc()
            if event.sent_at_ms is not None:
                self.ping_latency.observe((event.received_at_ms - event.sent_at_ms) / 1000)
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

    def render(self) -> str:
        """The whole exposition, in the text format 0.0.4."""
        with self._lock:
            lines = [line for metric in self._all for line in metric.render()]
        lines += self._render_sinks()  # outside the lock: the sinks take their own
        lines += self._render_watched()
        return "\n".join(lines) + "\n"

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
