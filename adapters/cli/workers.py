"""``serve --workers N``: one port, N processes. The parent recovers the output directory,
holds its lock and the port, forks N workers that each bind the port with SO_REUSEPORT and
serve, forwards SIGINT/SIGTERM to them, runs the hooks they journal and the retention, and
waits. Every process publishes its metrics to a shared directory, and the worker a scrape
reaches answers with their sum (``recording/metrics_share.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from meetstream_live.adapters.recording.hooks import Journal
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.recovery import recover
from meetstream_live.adapters.recording.sidecar import FinishedRecording

from .options import Settings, UsageError

__all__ = ["claim_port", "serve_workers"]

log = logging.getLogger("meetstream_live.cli")

#: What the parent's recovery finished, for worker 1 (inherited by the fork): its bus
#: publishes the parts a crash cut off (``serve --nats``).
RECOVERED: list[FinishedRecording] = []


def claim_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """The port the workers will share, checked free: a plain bind (no SO_REUSEPORT) fails
    when any receiver, ours or not, holds it, so a second ``serve --workers`` on a port
    already served refuses to start instead of sharing it. For port 0, one free port is
    reserved (bound with SO_REUSEPORT, not listening) and returned with its socket."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    probe = socket.socket(family, kind, proto)
    try:
        if port == 0:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(address[:2] if family == socket.AF_INET else address)
    except OSError as exc:
        probe.close()
        raise UsageError(
            f"--port ($MEETSTREAM_LIVE_PORT): {host}:{port} is already in use "
            f"({exc.strerror or exc}): another receiver serves it"
        ) from None
    if port == 0:
        return probe.getsockname()[1], probe
    probe.close()
    return port, None


def serve_workers(settings: Settings, environ: Mapping[str, str], output: Path) -> int:
    from .serve import adapter_run, hook_config, hook_runner, retention, serve, tls_context

    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        raise UsageError("--workers needs SO_REUSEPORT and fork (Linux, macOS)")
    adapter_run(settings.adapter)  # fail here, once, if it is not installed
    tls_context(settings.tls_cert, settings.tls_key)
    metrics = Metrics()
    metrics.watch_disk(output)
    metrics.set_info(adapter=settings.adapter)
    names = hook_config(settings).names()
    journal = Journal(output, names)
    RECOVERED[:] = recover(output, metrics=metrics, journal=journal if names else None,
                           index=settings.index)  # worker 1 inherits it (the bus republishes)
    keeper = retention(settings, output, metrics, journal)
    if keeper is not None:
        keeper.run_once()  # the thread starts after the fork (no thread is forked)
    bound, reserved = claim_port(settings.host, settings.port)
    # Where every process's metrics meet: tmpfs when there is one (written every second).
    shm = Path("/dev/shm")
    share = Path(tempfile.mkdtemp(prefix="meetstream-live-metrics-",
                                  dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    settings.values["port"] = bound
    children: dict[int, int] = {}
    for number in range(1, settings.workers + 1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker (covered in a subprocess)
            code = 1
            try:
                if reserved is not None:
                    reserved.close()
                code = serve(settings, environ, worker=number, share=share)
            except UsageError as exc:
                log.error("%s", exc)
                code = 2
            except BaseException as exc:
                log.exception("worker %d failed: %r", number, exc)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = number

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    metrics.share_with(share, 0)
    if keeper is not None:
        keeper.start(run_now=False)
    runner = hook_runner(settings, journal, metrics) if names else None
    if runner is not None:
        runner.start()
    code = 0
    try:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.2)
                if journal.added is not None:
                    journal.added()  # look for entries the workers journaled
                continue
            number = children.pop(pid)
            exit_code = os.waitstatus_to_exitcode(status)
            if exit_code != 0:
                log.error("worker %d (pid %d) exited with %d", number, pid, exit_code)
                code = max(code, 1 if exit_code < 0 else exit_code)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if reserved is not None:
            reserved.close()
        if runner is not None:
            runner.close()
        if keeper is not None:
            keeper.close()
        if metrics.share is not None:
            metrics.share.close()
        shutil.rmtree(share, ignore_errors=True)
    log.info("stopped (%d workers)", settings.workers)
    return code
