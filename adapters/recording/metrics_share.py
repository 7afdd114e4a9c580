"""``/metrics`` with ``serve --workers N``: one answer for the whole receiver, whichever worker
the kernel hands the scrape to.

Every process (the workers, and the parent, which runs the hooks and the retention) writes
its own exposition to ``<directory>/<worker>-<pid>.prom`` (a temporary file, then a rename:
a reader sees a whole one) every :attr:`Share.interval` seconds, at the end, and just
before it answers a scrape. The worker that answers reads every file and sums them:

* counters and histograms: the sum over every process that ever published, the ones that
  exited included (their last numbers stay), so each counter is monotonic across scrapes,
  whichever worker answers (each file only ever moves forward, and none disappears while
  the receiver runs);
* gauges: the sum over the processes alive now (open connections, backlogs), except the
  ones that say one thing about one machine, which take the largest value (:data:`MAX`:
  free disk, the low-disk flag, lags, build info);
* ``process_*`` and ``python_*`` (the process collector's, per process): not summed but
  labelled ``worker`` (``0`` for the parent), alive processes only.

This is "the parent serving the sum" without a hop through the parent: any worker can
answer because every process's numbers are on a shared tmpfs-like directory. It does what
``prometheus_client``'s multiprocess mode does for its own metric objects, for everything
the registry holds (the hand-counted media, the sinks, the features' watched metrics, the
process collector), which that mode cannot collect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["MAX", "Share", "merge"]

log = logging.getLogger("meetstream_live.metrics")

#: Gauges (family names without the prefix) merged by their largest value, not summed.
MAX = re.compile(r"(^|_)(disk_low|disk_free_bytes|disk_size_bytes|build_info|"
                 r"lag_seconds|python_info)$")
#: Families labelled by process instead of summed.
PER_PROCESS = re.compile(r"^(process_|python_gc_)")

_FILE = re.compile(r"^(\d+)-(\d+)\.prom$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Share:
    """This process's part in the sum (see the module)."""

    interval = 1.0

    def __init__(self, metrics: Metrics, directory: Path, worker: int) -> None:
        self.metrics = metrics
        self.directory = directory
        self.worker = worker
        self.path = directory / f"{worker}-{os.getpid()}.prom"
        self._lock = threading.Lock()  # one writer at a time: the file never goes backwards
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.publish()
        self._thread = threading.Thread(target=self._loop, name="metrics-share", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.publish()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def publish(self) -> None:
        with self._lock:
            text = self.metrics.collect_own()
            temporary = self.path.with_suffix(".tmp")
            try:
                temporary.write_bytes(text)
                os.replace(temporary, self.path)
            except OSError as exc:
                log.warning("cannot publish metrics to %s: %s", self.path, exc)

    def render(self) -> str:
        self.publish()
        texts: list[tuple[int, bool, str]] = []
        for path in sorted(self.directory.glob("*.prom")):
            match = _FILE.match(path.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                texts.append((int(match.group(1)), _alive(int(match.group(2))),
                              path.read_text("utf-8")))
        return merge(texts).decode("utf-8")


def merge(texts: list[tuple[int, bool, str]]) -> bytes:
    """The sum of several processes' expositions: ``(worker, alive, text)`` each."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, alive, text in texts:
        for family in text_string_to_metric_families(text):
            kind = family.type
            per_process = bool(PER_PROCESS.match(family.name))
            gauge = kind in ("gauge", "info", "stateset", "unknown")
            if (gauge or per_process) and not alive:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, kind)
                values[family.name] = {}
            into = values[family.name]
            largest = gauge and bool(MAX.search(family.name))
            for sample in family.samples:
                labels = dict(sample.labels)
                if per_process:
                    labels["worker"] = str(worker)
                key = (sample.name, tuple(sorted(labels.items())))
                if key in into and largest:
                    into[key] = max(into[key], sample.value)
                else:
                    into[key] = into.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, pairs), value in values[name].items():
            family.add_sample(sample_name, dict(pairs), value)
    return generate_latest(_Families(list(families.values())))


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
