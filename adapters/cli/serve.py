"""``meetstream-live serve``: its options, and the receiver they make: the recorder (with its
file sink, hooks, disk guard, retention), the features (``features.py``), ``/healthz``,
``/readyz`` (``health.py``) and ``/metrics``, on the adapter chosen, in one process or
``--workers N`` (``workers.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from meetstream_live import ServerConfig, unmask_backend
from meetstream_live.adapters import HandlerFactory, HTTPAnswer, ServerOptions, tune_allocator
from meetstream_live.adapters._system import JOINED_BYTES_TUNED
from meetstream_live.adapters.recording.diskguard import DiskGuard, Retention
from meetstream_live.adapters.recording.hooks import (
    HookConfig,
    HookRunner,
    HookSink,
    Journal,
    StartHookSink,
)
from meetstream_live.adapters.recording.metrics import HTTP_PATHS, Metrics
from meetstream_live.adapters.recording.partfiles import PathTemplate
from meetstream_live.adapters.recording.recorder import Recorder
from meetstream_live.adapters.recording.recovery import recover, resumable_sessions
from meetstream_live.adapters.recording.sinks import Sink

from .features import ServeContext, load_features
from .health import HEALTH_PATHS, Health, ShutdownDelay, start_lag_probe
from .logs import log_level, setup_logging
from .options import (
    Option,
    OptionSet,
    Settings,
    UsageError,
    boolean,
    choice,
    command_line,
    disk_size,
    duration,
    http_url,
    never_or_duration,
    port,
    positive_int,
    text,
    url_path,
)

__all__ = ["LOCK_FILE", "SERVE_OPTIONS", "hook_config", "lock_output", "retention", "serve",
           "serve_options"]

log = logging.getLogger("meetstream_live.cli")

ADAPTERS = ("asyncio", "uvloop", "sync", "trio")


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise ValueError(f"not a number of days: {value!r}") from None
    if days <= 0:
        raise ValueError(f"must be positive: {value}")
    return days


def _file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return value


def _template(value: str) -> str:
    PathTemplate(value)  # raises ValueError with what is wrong
    return value


def _events(value: str) -> tuple[str, ...]:
    events = tuple(dict.fromkeys(e.strip().lower() for e in value.split(",") if e.strip()))
    wrong = [e for e in events if e not in ("start", "finish")]
    if wrong or not events:
        raise ValueError(f"{value!r}: events are start and finish (example: start,finish)")
    return events


_events.__doc__ = "start, finish, or start,finish"


def _trusted(value: str) -> str:
    from .proxy import trusted_list

    return trusted_list(value)


NET, REC, HOOKS, DISK, LOGS = "network", "recording", "hooks", "disk", "logging"

#: The options of ``serve`` itself (the features add theirs).
SERVE_OPTIONS: tuple[Option, ...] = (
    Option("host", text, "127.0.0.1", "address to listen on (0.0.0.0: every interface)",
           aliases=("WS_HOST",), group=NET),
    Option("port", port, 9876, "port to listen on; 0 for any free port",
           aliases=("WS_PORT",), group=NET),
    Option("adapter", choice(*ADAPTERS), "asyncio",
           "I/O stack: asyncio, uvloop, sync (a thread per connection) or trio", group=NET),
    Option("path", url_path, None,
           "accept WebSocket upgrades only on this path, e.g. /video (default: any path)",
           group=NET),
    Option("tls_cert", _file, None, "certificate chain (PEM) to serve wss:// directly",
           metavar="FILE", group=NET),
    Option("tls_key", _file, None, "private key (PEM) of --tls-cert, if not in it",
           metavar="FILE", group=NET),
    Option("token", text, None,
           "require ?token=... or 'Authorization: Bearer ...' with this value (never logged)",
           secret=True, group=NET),
    Option("max_connections", positive_int, 2000,
           "above this many connections, upgrades get 503", group=NET),
    Option("workers", positive_int, 1,
           "processes sharing the port (SO_REUSEPORT, Linux; every adapter): the kernel "
           "spreads connections over them. Each has its own --max-connections. A bot that "
           "reconnects may land on another worker: its stream then goes on in a new part",
           group=NET),
    Option("handshake_timeout", duration, 10.0, "time allowed for the HTTP upgrade request",
           metavar="DURATION", group=NET),
    Option("idle_timeout", never_or_duration, 300.0,
           "close (1001) a bot silent for this long; 0 for never", metavar="DURATION",
           group=NET),
    Option("drain_timeout", duration, 30.0,
           "on SIGINT/SIGTERM, how long streams may go on before they are closed (1001)",
           metavar="DURATION", group=NET),
    Option("shutdown_delay", duration, 0.0,
           "on SIGTERM, first answer /readyz with 503 (draining) this long while serving as "
           "usual, so that load balancers stop sending bots; then drain", metavar="DURATION",
           shown_default="0s", group=NET),
    Option("proxy_headers", boolean, False,
           "take the client's address from Forwarded / X-Forwarded-For when the connection "
           "comes from a trusted proxy (--forwarded-allow-ips): sidecars, hooks and logs "
           "show the real client", flag=True, group=NET),
    Option("forwarded_allow_ips", _trusted, "127.0.0.1,::1",
           "the proxies trusted for --proxy-headers: addresses or networks, comma-separated "
           "(10.0.0.0/8,::1), or * for any", metavar="IPS", group=NET),
    Option("output", text, "./recordings", "where recordings go; must be writable",
           aliases=("OUTPUT_DIR",), flags=("--output-dir",), metavar="DIR", group=REC),
    Option("rotate_every", duration, None,
           "cut recordings into pieces of this much media (e.g. 10m) at fragment boundaries: "
           "<stem>_part001.mp4, <stem>_part002.mp4..., each playable alone",
           metavar="DURATION", group=REC),
    Option("reconnect_grace", never_or_duration, 90.0,
           "keep a stream's part open this long after its connection drops, for the same "
           "bot_id + speaker to reconnect and continue it; 0 to finalize at once",
           metavar="DURATION", group=REC),
    Option("path_template", _template, None,
           "where each recording goes below --output, e.g. "
           "'{bot_id}/{speaker}/{start:%Y/%m/%d}/{start:%H%M%S}.mp4' (fields: bot_id, speaker, "
           "speaker_id, speaker_name, start; empty folders are left out; collisions and "
           "pieces numbered as usual); default: {bot_id}/{speaker}/<UTC start>.mp4",
           metavar="TEMPLATE", group=REC),
    Option("index", boolean, False,
           "on finalize, write the real duration into the moov and append an mfra index "
           "(the file is then no longer the stream byte for byte)", flag=True, group=REC),
    Option("on_finish", command_line, None,
           "for each finished recording run CMD MP4 JSON (split like a shell would, run "
           "without one), the recording's data in MEETSTREAM_* variables; journaled first "
           "under OUTPUT/.hooks/ and retried with backoff", metavar="CMD", group=HOOKS),
    Option("on_finish_timeout", duration, 600.0,
           "how long an --on-finish (or --on-start) command may run; longer is a failure "
           "(the command is killed)", metavar="DURATION", group=HOOKS),
    Option("on_start", command_line, None,
           "when a recording's file begins, run CMD once with the recording's data in "
           "MEETSTREAM_* variables (not journaled, not retried)", metavar="CMD", group=HOOKS),
    Option("webhook", http_url, None,
           "POST each finished recording's sidecar JSON to URL (journaled and retried like "
           "--on-finish until a 2xx answer; redirects other than 307/308 are failures)",
           metavar="URL", group=HOOKS),
    Option("webhook_secret", text, None,
           "sign each webhook: X-MeetStream-Signature is sha256= and the HMAC-SHA256 of "
           "'<X-MeetStream-Timestamp>.<body>' with this secret", secret=True, group=HOOKS),
    Option("webhook_events", _events, ("finish",),
           "what the webhook is told of: finish (the sidecar, journaled), start (once per "
           "recording, not journaled), or start,finish", metavar="EVENTS",
           shown_default="finish", group=HOOKS),
    Option("webhook_timeout", duration, 30.0, "HTTP timeout of each webhook POST",
           metavar="DURATION", group=HOOKS),
    Option("hook_attempts", positive_int, 10,
           "attempts of a failing --on-finish/--webhook (backoff 1 s doubling to 10 min, "
           "with jitter) before its journal entry goes to OUTPUT/.hooks/dead/", group=HOOKS),
    Option("remux", choice("mp4"), None,
           "after each recording, also write <stem>.remux.mp4: a plain MP4 with the moov "
           "first (faststart), stream copy; needs PyAV (the 'media' extra)", group=HOOKS),
    Option("disk_low", disk_size, 100 << 20,
           "below this much free space, stop writing (connections and pings go on; losses "
           "are recorded); refuse to start below it; 0 to disable", metavar="SIZE",
           shown_default="100m", group=DISK),
    Option("disk_high", disk_size, None,
           "resume writing above this much free space (default: 2 x --disk-low)",
           metavar="SIZE", group=DISK),
    Option("keep_days", _days, None,
           "delete finished recordings (and everything derived from them) older than this; "
           "at start and every --retention-interval", metavar="DAYS", group=DISK),
    Option("max_total_size", disk_size, None,
           "delete the oldest finished recordings above this total", metavar="SIZE",
           group=DISK),
    Option("keep_free", disk_size, None,
           "delete the oldest finished recordings while less than this is free (also as "
           "soon as the disk guard stops writing)", metavar="SIZE", group=DISK),
    Option("retention_interval", duration, 300.0,
           "how often retention (--keep-days, --max-total-size, --keep-free) runs",
           metavar="DURATION", group=DISK),
    Option("log_format", choice("text", "json"), "text",
           "log lines (stderr) as text or one JSON object each, the data as fields",
           group=LOGS),
    Option("log_level", log_level, "info", "log level (any case)", group=LOGS),
    Option("log_config", _file, None,
           "a logging.config.dictConfig file (JSON, or YAML with PyYAML) instead of "
           "--log-format; --log-level still applies when given", metavar="FILE", group=LOGS),
)


def serve_options() -> OptionSet:
    """``serve``'s options and every feature's."""
    options = OptionSet(SERVE_OPTIONS)
    for feature in load_features():
        for option in feature.options:
            if option.group == "options":
                option = Option(**{**vars(option), "group": feature.name})
            options.add(option)
    return options


# ---------------------------------------------------------------------------- checks


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"--output ($MEETSTREAM_LIVE_OUTPUT): {str(directory)!r} is not writable: "
            f"{exc.strerror or exc}"
        ) from None


def adapter_run(name: str) -> Callable[..., None]:
    """The blocking ``run(factory, host, port, options, *, on_ready=None, reuse_port=False)``
    of an adapter."""
    hints = {
        "uvloop": "pip install 'meetstream-live[uvloop]'",
        "trio": "pip install 'meetstream-live[trio]'",
    }
    module: ModuleType
    try:
        if name == "uvloop":
            import uvloop  # noqa: F401

            from meetstream_live.adapters import asyncio as asyncio_adapter

            def run_uvloop(*args: Any, **kwargs: Any) -> None:
                asyncio_adapter.run(*args, use_uvloop=True, **kwargs)

            return run_uvloop
        if name == "trio":
            import trio  # noqa: F401
        module = __import__(f"meetstream_live.adapters.{name}", fromlist=["run"])
    except ImportError as exc:
        hint = hints.get(name, "")
        raise UsageError(
            f"--adapter: the {name} adapter is not available: {exc}"
            + (f" ({hint})" if hint else "")
        ) from None
    run: Callable[..., None] = module.run
    return run


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise UsageError("--tls-key ($MEETSTREAM_LIVE_TLS_KEY) needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        pair = f"{cert} and {key}" if key else cert
        raise UsageError(
            f"--tls-cert/--tls-key: {pair}: not a certificate and its private key ({exc.reason})"
        ) from None
    except OSError as exc:
        raise UsageError(f"--tls-cert/--tls-key: cannot read {exc.filename or cert}: "
                         f"{exc.strerror or exc}") from None
    return context


def disk_guard(settings: Settings, output: Path, metrics: Metrics) -> DiskGuard | None:
    """The free-space guard; refuses to start below the low watermark."""
    if not settings.disk_low:
        return None
    if settings.disk_high is not None and settings.disk_high < settings.disk_low:
        raise UsageError("--disk-high ($MEETSTREAM_LIVE_DISK_HIGH) must be >= --disk-low")
    guard = DiskGuard(output, low_bytes=settings.disk_low, high_bytes=settings.disk_high,
                      metrics=metrics)
    if guard.check():
        raise UsageError(
            f"only {guard.last_free} bytes free under {str(output)!r}, below --disk-low "
            f"({settings.disk_low}): free some space or lower --disk-low"
        )
    return guard


def require_remux() -> None:
    from meetstream_live.adapters.recording.remux import RemuxUnavailable, require

    try:
        require()
    except RemuxUnavailable as exc:
        raise UsageError(f"--remux: {exc}") from None


LOCK_FILE = ".meetstream-live.lock"


def lock_output(directory: Path) -> int:
    """Take the output directory for this process (an exclusive ``flock`` on its lock file,
    held for the process's life and shared by the ``--workers`` children, which inherit it);
    a second receiver (or ``recover``) on the same directory refuses to start: it would take
    the first one's live ``.part`` files for a crash's and corrupt them. Returns the lock's
    file descriptor (closing it releases the lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here
        log.warning("no file locking on this platform: do not run two receivers on %s",
                    directory)
        return os.open(os.devnull, os.O_RDONLY)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise UsageError(
            f"--output ($MEETSTREAM_LIVE_OUTPUT): {str(directory)!r} is in use by another "
            f"receiver (pid {holder}); two receivers on one output directory corrupt each "
            f"other's recordings: give each its own --output"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


# ---------------------------------------------------------------------------- serving


def hook_config(settings: Settings) -> HookConfig:
    """The hooks the settings ask for."""
    return HookConfig(
        command=settings.on_finish, webhook=settings.webhook, remux=settings.remux,
        on_start=settings.on_start, webhook_secret=settings.webhook_secret,
        webhook_events=tuple(settings.webhook_events),
        command_timeout=settings.on_finish_timeout, webhook_timeout=settings.webhook_timeout,
    )


def hook_runner(settings: Settings, journal: Journal, metrics: Metrics) -> HookRunner:
    return HookRunner(journal, hook_config(settings), metrics=metrics,
                      max_attempts=settings.hook_attempts)


def retention(settings: Settings, output: Path, metrics: Metrics,
              journal: Journal) -> Retention | None:
    """The retention the settings ask for (``None``: none); started by the caller."""
    keeper = Retention(output, keep_days=settings.keep_days,
                       max_total_bytes=settings.max_total_size,
                       keep_free_bytes=settings.keep_free, interval=settings.retention_interval,
                       metrics=metrics, journal=journal)
    return keeper if keeper.active else None


def _http_handler(context: ServeContext, health: Health) -> Callable[[Any], HTTPAnswer]:
    """``/healthz``, ``/readyz`` and ``/metrics``, then the features' routes (exact paths,
    then prefixes)."""
    metrics = context.metrics
    routes = dict(context.http_routes)

    def handle(request: Any) -> HTTPAnswer:
        if request.path in HEALTH_PATHS:
            return health.answer(request)
        if request.path in HTTP_PATHS:
            answer: HTTPAnswer = metrics.http_handler(request)
            return answer
        route = routes.get(request.path)
        if route is None:
            prefix = max((p for p in routes if p.endswith("/") and request.path.startswith(p)),
                         key=len, default=None)
            route = routes.get(prefix) if prefix is not None else None
        if route is None:
            return HTTPAnswer(404, b"not found\n")
        return route(request)

    return handle


def _check_platform(settings: Settings) -> None:
    if settings.shutdown_delay and not hasattr(signal, "pthread_kill"):
        raise UsageError("--shutdown-delay ($MEETSTREAM_LIVE_SHUTDOWN_DELAY) needs POSIX "
                         "signals (Linux, macOS)")


def serve(settings: Settings, environ: Mapping[str, str], *, worker: int = 0,
          share: Path | None = None) -> int:
    """Run the receiver the settings describe (``worker``: in a ``--workers`` child, with
    ``share``: the directory the processes' metrics are summed in)."""
    output = Path(settings.output)
    check_writable(output)
    if not worker:  # the workers share their parent's lock
        lock_output(output)  # held until the process exits
    run = adapter_run(settings.adapter)
    context_tls = tls_context(settings.tls_cert, settings.tls_key)
    if settings.remux is not None:
        require_remux()
    _check_platform(settings)
    token = settings.token
    setup_logging(settings.log_format, settings.log_level, settings.log_config,
                  level_given=settings.sources.get("log_level", "default") != "default")
    if settings.workers > 1 and not worker:
        from .workers import serve_workers

        return serve_workers(settings, environ, output)
    metrics = Metrics()
    metrics.watch_disk(output)
    metrics.set_info(adapter=settings.adapter)
    if share is not None:
        metrics.share_with(share, worker)
    guard = disk_guard(settings, output, metrics)
    hooks = hook_config(settings)
    names = hooks.names()
    journal = Journal(output, names)
    # With --workers, the parent process runs the hooks the workers journal, and retention.
    runner = hook_runner(settings, journal, metrics) if names and not worker else None
    if runner is not None:
        runner.start()  # runs what a previous run journaled and did not finish
    keeper = retention(settings, output, metrics, journal) if not worker else None
    recorder: Recorder | None = None
    context = ServeContext(settings, output.resolve(), metrics, worker=worker)
    health = Health(metrics, max_connections=settings.max_connections, guard=guard,
                    checks=context.readiness, worker=worker)
    try:
        if not worker:  # with --workers, the parent recovered before starting them
            context.recovered = recover(output, metrics=metrics,
                                        journal=journal if names else None,
                                        index=settings.index)
        elif worker == 1:  # worker 1 publishes what the parent recovered (the bus)
            from .workers import RECOVERED

            context.recovered = list(RECOVERED)
        if not worker and keeper is not None:
            keeper.start()  # a run now, then every --retention-interval
            if guard is not None:
                guard.on_low = keeper.wake
        # This process is ours: tune glibc's malloc for big blocks (before the features start
        # threads: their arenas are capped too), then deliver one chunk per read (see
        # tune_allocator; elsewhere the core's default keeps chunks small).
        tuned = tune_allocator()
        for feature in load_features():
            if feature.enabled(settings):
                feature.configure(context)
        prefixes = tuple(p for p in context.http_routes if p.endswith("/"))
        exact = frozenset(p for p in context.http_routes if not p.endswith("/"))
        config = ServerConfig(
            path=settings.path,
            token=token,
            http_paths=HTTP_PATHS | HEALTH_PATHS | exact,
            http_prefixes=prefixes,
            viewer_paths=tuple(context.viewer_paths),
            viewer_token=settings.get("viewer_token"),
            handshake_timeout_ms=int(settings.handshake_timeout * 1000),
            idle_timeout_ms=(
                None if settings.idle_timeout is None else int(settings.idle_timeout * 1000)
            ),
            max_joined_bytes=JOINED_BYTES_TUNED if tuned else ServerConfig().max_joined_bytes,
        )
        options = ServerOptions(
            config=config,
            max_connections=settings.max_connections,
            ssl=context_tls,
            drain_timeout=settings.drain_timeout,
            http_handler=_http_handler(context, health),
            observer=metrics.observe,
            viewer_factory=context.viewer_factory,
        )
        sinks: list[Sink] = [HookSink(runner)] if runner is not None else []
        if hooks.starts():
            sinks.append(StartHookSink(hooks, metrics))
        grace = settings.reconnect_grace or 0.0
        recorder = Recorder(
            output, rotate_every=settings.rotate_every, metrics=metrics,
            reconnect_grace=grace, index=settings.index,
            disk_guard=guard, journal=journal if names else None,
            sinks=sinks + context.sinks, path_template=settings.path_template,
            # What the recovery just closed: bots reconnecting continue their sessions.
            resumable=resumable_sessions(output, within=grace),
            continue_from=context.continue_from,
        )
        factory: HandlerFactory = metrics.track(recorder)
        if settings.proxy_headers:
            from .proxy import TrustedProxies, proxied

            factory = proxied(factory, TrustedProxies(settings.forwarded_allow_ips))
        scheme = "wss" if context_tls is not None else "ws"
        host = settings.host

        def ready(bound: int) -> None:
            shown = f"[{host}]" if ":" in host else host
            backend = unmask_backend()
            metrics.set_info(unmasker=backend)
            start_lag_probe(metrics)
            if settings.shutdown_delay:
                ShutdownDelay(health, settings.shutdown_delay).install()
            log.info(
                "listening on %s://%s:%d%s (adapter %s, unmasking with %s, recording to %s%s%s)",
                scheme, shown, bound, settings.path or "/", settings.adapter, backend,
                output.resolve(),
                ", token required" if token else "",
                f", worker {worker}/{settings.workers} pid {os.getpid()}" if worker else "",
                extra={"event": "listening", "port": bound, "worker": worker},
            )
            if backend != "numpy":
                log.warning("numpy is not importable here: unmasking runs in pure Python, "
                            "several times slower (pip install numpy)")

        try:
            run(factory, host, settings.port, options, on_ready=ready, reuse_port=bool(worker))
        except OSError as exc:
            log.error("cannot serve on %s:%d: %s", host, settings.port, exc.strerror or exc)
            return 1
    finally:
        if recorder is not None:
            recorder.close()  # parts still waiting for a reconnect are finalized now
        for close in reversed(context.closers):
            with contextlib.suppress(Exception):
                close()
        if keeper is not None:
            keeper.close()
        if runner is not None:
            runner.close()
        if metrics.share is not None:
            metrics.share.close()
    log.info("stopped")
    return 0
