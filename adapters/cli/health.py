"""``/healthz``, ``/readyz`` and the shutdown delay of ``serve``.

* ``GET /healthz`` is liveness: 200 as long as the process answers (a JSON body with the
  version, pid, worker and uptime). Restart the receiver when it stops answering.
* ``GET /readyz`` is readiness: 200 when every check passes, else 503, with a JSON body that
  says which failed and why: ``draining`` (a SIGTERM came, see below), ``connections``
  (this process has ``--max-connections`` connections: new upgrades get 503), ``disk``
  (the disk guard stopped writing: below ``--disk-low``), and every feature's check
  (``ServeContext.readiness``: a bucket that cannot be reached, a bus that is down...). Take
  the receiver out of the load balancer while it says 503.
* ``--shutdown-delay DURATION``: on SIGTERM, ``/readyz`` answers 503 (``draining``) for that
  long while everything else goes on (streams, new connections, pings), so that a load
  balancer or Kubernetes stops sending bots first; then the drain starts as on SIGINT (new
  upgrades refused, ``--drain-timeout`` for the streams to end, 1001 for the rest). A second
  SIGTERM cuts the delay short; SIGINT (Ctrl-C) drains at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from meetstream_live import __version__
from meetstream_live.adapters import HTTPAnswer

__all__ = ["HEALTH_PATHS", "Health", "ShutdownDelay", "start_lag_probe"]

log = logging.getLogger("meetstream_live.cli")

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
JSON = "application/json"

Check = Callable[[], tuple[bool, str]]


class Health:
    """The two answers; ``checks`` are the features' (``ServeContext.readiness``)."""

    def __init__(
        self,
        metrics: Any,
        *,
        max_connections: int,
        guard: Any = None,
        checks: Sequence[Check] = (),
        worker: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.max_connections = max_connections
        self.guard = guard
        self.checks = checks
        self.worker = worker
        self.draining = False
        self._clock = clock
        self._started = clock()

    def liveness(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "pid": os.getpid(),
                "worker": self.worker, "uptime_seconds": round(self._clock() - self._started, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        checks["draining"] = (
            {"ok": False, "why": "shutting down: the drain starts after --shutdown-delay"}
            if self.draining else {"ok": True})
        active = int(self.metrics.connections_active.value())
        checks["connections"] = {"ok": active < self.max_connections, "active": active,
                                 "limit": self.max_connections}
        if not checks["connections"]["ok"]:
            checks["connections"]["why"] = "at --max-connections: new upgrades get 503"
        if self.guard is not None:
            low = bool(self.guard.is_low)
            checks["disk"] = {"ok": not low, "free_bytes": self.guard.last_free,
                              "low_bytes": self.guard.low_bytes}
            if low:
                checks["disk"]["why"] = "free space below --disk-low: recordings not written"
        for number, check in enumerate(self.checks):
            name = getattr(check, "__name__", "") or f"check_{number}"
            if name in checks or name == "<lambda>":
                name = f"{name.strip('<>')}_{number}"
            try:
                ok, why = check()
            except Exception as exc:  # a broken check is a failed one, never a 500
                ok, why = False, f"the check failed: {exc!r}"
            checks[name] = {"ok": bool(ok), **({"why": why} if why else {})}
        ready = all(entry["ok"] for entry in checks.values())
        return ready, {"ready": ready, "worker": self.worker,
                       "failing": [name for name, entry in checks.items() if not entry["ok"]],
                       "checks": checks}

    def answer(self, request: Any) -> HTTPAnswer:
        if request.method not in ("GET", "HEAD"):
            return HTTPAnswer(405, b"method not allowed\n")
        if request.path == "/healthz":
            status, document = 200, self.liveness()
        else:
            ready, document = self.readiness()
            status = 200 if ready else 503
        body = b"" if request.method == "HEAD" else (json.dumps(document) + "\n").encode()
        return HTTPAnswer(status, body, JSON, headers=((b"cache-control", b"no-store"),))


class ShutdownDelay:
    """``--shutdown-delay``: installed once the server is up (``on_ready``), it takes SIGTERM
    from the adapter: ``health.draining`` at once, then, after ``delay`` seconds (or a
    second SIGTERM), SIGINT to the main thread, which the adapter drains on as it would on
    SIGTERM. On asyncio and uvloop through the loop's signal handlers, elsewhere through
    :func:`signal.signal` (``on_ready`` runs in the main thread)."""

    def __init__(self, health: Health, delay: float) -> None:
        self.health = health
        self.delay = delay
        self._fired = threading.Event()
        self._timer: threading.Thread | None = None

    def install(self) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            signal.signal(signal.SIGTERM, lambda signum, frame: self.terminate())
        else:
            loop.add_signal_handler(signal.SIGTERM, self.terminate)

    def terminate(self) -> None:
        if self._timer is not None:  # the second one: now
            self._fired.set()
            return
        self.health.draining = True
        log.info("SIGTERM: /readyz says draining; the drain starts in %.1f s (SIGTERM again: "
                 "now)", self.delay, extra={"event": "shutdown_delay"})
        self._timer = threading.Thread(target=self._later, name="shutdown-delay", daemon=True)
        self._timer.start()

    def _later(self) -> None:
        self._fired.wait(self.delay)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def start_lag_probe(metrics: Any, interval: float = 0.1) -> bool:
    """Measure how late the running event loop (asyncio, uvloop or trio) runs a timer, into
    ``metrics.loop_lag``; call it on the loop (``on_ready``). False where there is no loop
    (the sync adapter: a thread per connection)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        def tick(due: float) -> None:
            now = loop.time()
            metrics.loop_lag.observe(max(0.0, now - due))
            loop.call_at(now + interval, tick, now + interval)

        loop.call_later(interval, tick, loop.time() + interval)
        return True
    try:
        import trio
        trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        return False

    async def probe() -> None:
        while True:
            due = trio.current_time() + interval
            await trio.sleep_until(due)
            metrics.loop_lag.observe(max(0.0, trio.current_time() - due))

    trio.lowlevel.spawn_system_task(probe)
    return True
