"""The ``meetstream-live`` command: ``serve``, ``verify``, ``recover``, ``simulate``, ``check``
and ``create-bot``.

Run ``meetstream-live COMMAND --help`` (or ``python -m meetstream_live.adapters.cli``) for the
options of each command.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from meetstream_live import ServerConfig, __version__, parse_ws_url, unmask_backend
from meetstream_live.adapters import HandlerFactory, ServerOptions, tune_allocator
from meetstream_live.adapters._common import JOINED_BYTES_TUNED
from meetstream_live.adapters.recording.diskguard import DiskGuard, apply_retention
from meetstream_live.adapters.recording.hooks import HookConfig, HookRunner, HookSink, Journal
from meetstream_live.adapters.recording.metrics import HTTP_PATHS, Metrics
from meetstream_live.adapters.recording.recorder import Recorder
from meetstream_live.adapters.recording.recovery import recover
from meetstream_live.adapters.recording.sidecar import FinishedRecording

__all__ = ["main", "parse_duration"]

log = logging.getLogger("meetstream_live.cli")

PROG = "meetstream-live"
DEFAULT_API_BASE = "https://api.meetstream.ai"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min|m|h)?\s*$", re.IGNORECASE)


class UsageError(Exception):
    """Bad input on the command line or in the environment: message, then exit 2."""


def parse_duration(text: str) -> float:
    """``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` or plain seconds (``"30"``) -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30, 90s, 10m, 1h, 500ms)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_duration_arg(text: str) -> float | None:
    """A duration, or ``0`` / ``none`` / ``off`` for "never"."""
    if text.strip().lower() in ("0", "none", "off", "never"):
        return None
    return _duration_arg(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _size(text: str) -> int:
    units = {"": 1, "k": 1024, "kib": 1024, "m": 1024 * 1024, "mib": 1024 * 1024}
    match = re.match(r"^\s*(\d+)\s*([a-z]*)\s*$", text, re.IGNORECASE)
    if match is None or match.group(2).lower() not in units or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 64k, 1m)")
    return int(match.group(1)) * units[match.group(2).lower()]


# ---------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# ---------------------------------------------------------------------------- serve


class FinishHooks:
    """Runs ``--on-finish`` for each finalized recording, in worker threads, without a shell:
    ``shlex.split(command) + [mp4, json]``."""

    def __init__(self, command: str, workers: int = 4) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise UsageError("--on-finish: empty command")
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "on-finish")

    def __call__(self, recording: FinishedRecording) -> None:
        self._pool.submit(self._run, [*self.argv, str(recording.path), str(recording.sidecar_path)])

    def _run(self, argv: list[str]) -> None:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
        except OSError as exc:
            log.error("--on-finish could not run %r: %s", argv[0], exc)
            return
        if done.returncode != 0:
            log.warning("--on-finish exited with %d for %s", done.returncode, argv[-2])

    def close(self) -> None:
        """Wait for the hooks still running."""
        self._pool.shutdown(wait=True)


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"output directory {str(directory)!r} is not writable: {exc.strerror or exc}"
        ) from None


def _adapter_run(name: str) -> Callable[..., None]:
    """The blocking ``run(factory, host, port, options, *, on_ready=None)`` of an adapter."""
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
            f"the {name} adapter is not available: {exc}" + (f" ({hint})" if hint else "")
        ) from None
    run: Callable[..., None] = module.run
    return run


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate/key: {exc}") from None
    return context


def _disk_size(text: str) -> int:
    """``500m``, ``2g``, ``1.5GiB``, ``10737418240``... -> bytes."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    match = re.match(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500m, 2g, 1t)")
    return int(float(match.group(1)) * units[match.group(2).lower()])


def _disk_guard(args: argparse.Namespace, output: Path, metrics: Metrics) -> DiskGuard | None:
    """The free-space guard of ``serve``; refuses to start below the low watermark."""
    if not args.disk_low:
        return None
    guard = DiskGuard(output, low_bytes=args.disk_low, high_bytes=args.disk_high,
                      metrics=metrics)
    if guard.check():
        raise UsageError(
            f"only {guard.last_free} bytes free under {str(output)!r}, below --disk-low "
            f"({args.disk_low}): free some space or lower --disk-low"
        )
    return guard


def _require_remux() -> None:
    from meetstream_live.adapters.recording.remux import RemuxUnavailable, require

    try:
        require()
    except RemuxUnavailable as exc:
        raise UsageError(str(exc)) from None


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    output = Path(args.output)
    _check_writable(output)
    run = _adapter_run(args.adapter)
    context = _tls_context(args.tls_cert, args.tls_key)
    if args.remux is not None:
        _require_remux()
    token = args.token or environ.get("MEETSTREAM_LIVE_TOKEN") or None
    _setup_logging(args.log_format, args.log_level)
    worker: int = getattr(args, "worker", 0)  # set in the processes of --workers
    if args.workers > 1 and not worker:
        return _serve_workers(args, environ, output)
    metrics = Metrics()
    guard = _disk_guard(args, output, metrics)
    hooks = HookConfig(command=args.on_finish, webhook=args.webhook, remux=args.remux)
    names = hooks.names()
    journal = Journal(output, names)
    try:
        # With --workers, the parent process runs the hooks the workers journal.
        runner = HookRunner(journal, hooks, metrics=metrics) if names and not worker else None
    except ValueError:
        raise UsageError("--on-finish: empty command") from None
    if runner is not None:
        runner.start()  # runs what a previous run journaled and did not finish
    recorder: Recorder | None = None

    try:
        if not worker:  # with --workers, the parent recovered before starting them
            recover(output, metrics=metrics, journal=journal if names else None,
                    index=args.index)
            if args.keep_days is not None or args.max_total_size is not None:
                apply_retention(output, keep_days=args.keep_days,
                                max_total_bytes=args.max_total_size, metrics=metrics)
        # This process is ours: tune glibc's malloc for big blocks, then deliver one chunk per
        # read (see tune_allocator; elsewhere the core's default keeps chunks small).
        tuned = tune_allocator()
        config = ServerConfig(
            path=args.path,
            token=token,
            http_paths=HTTP_PATHS,
            handshake_timeout_ms=int(args.handshake_timeout * 1000),
            idle_timeout_ms=None if args.idle_timeout is None else int(args.idle_timeout * 1000),
            max_joined_bytes=JOINED_BYTES_TUNED if tuned else ServerConfig().max_joined_bytes,
        )
        options = ServerOptions(
            config=config,
            max_connections=args.max_connections,
            ssl=context,
            drain_timeout=args.drain_timeout,
            http_handler=metrics.http_handler,
            observer=metrics.observe,
        )
        # The sinks after the file: the hooks (journaled by the file sink before each part
        # is committed; run by the runner, woken by each finished part).
        recorder = Recorder(
            output, rotate_every=args.rotate_every, metrics=metrics,
            reconnect_grace=args.reconnect_grace or 0.0, index=args.index, disk_guard=guard,
            journal=journal if names else None,
            sinks=[HookSink(runner)] if names else [],
        )
        factory: HandlerFactory = recorder
        scheme = "wss" if context is not None else "ws"
        host = args.host

        def ready(port: int) -> None:
            shown = f"[{host}]" if ":" in host else host
            log.info(
                "listening on %s://%s:%d%s (adapter %s, unmasking with %s, recording to %s%s%s)",
                scheme, shown, port, args.path or "/", args.adapter, unmask_backend(),
                output.resolve(),
                ", token required" if token else "",
                f", worker {worker}/{args.workers} pid {os.getpid()}" if worker else "",
            )

        try:
            if worker:
                run(factory, host, args.port, options, on_ready=ready, reuse_port=True)
            else:
                run(factory, host, args.port, options, on_ready=ready)
        except OSError as exc:
            log.error("cannot serve on %s:%d: %s", host, args.port, exc.strerror or exc)
            return 1
    finally:
        if recorder is not None:
            recorder.close()  # parts still waiting for a reconnect are finalized now
        if runner is not None:
            runner.close()
    log.info("stopped")
    return 0


def _serve_workers(args: argparse.Namespace, environ: Mapping[str, str], output: Path) -> int:
    """``serve --workers N``: recover once, then fork N workers that each bind the port with
    SO_REUSEPORT and serve; forward SIGINT/SIGTERM to them, run the hooks they journal, wait.
    """
    import signal
    import socket
    import time

    if args.adapter not in ("asyncio", "uvloop"):
        raise UsageError("--workers needs --adapter asyncio or uvloop")
    if not hasattr(socket, "SO_REUSEPORT") or not hasattr(os, "fork"):
        raise UsageError("--workers needs SO_REUSEPORT and fork (Linux)")
    _adapter_run(args.adapter)  # fail here, once, if it is not installed
    _tls_context(args.tls_cert, args.tls_key)
    metrics = Metrics()
    hooks = HookConfig(command=args.on_finish, webhook=args.webhook, remux=args.remux)
    names = hooks.names()
    journal = Journal(output, names)
    recover(output, metrics=metrics, journal=journal if names else None, index=args.index)
    if args.keep_days is not None or args.max_total_size is not None:
        apply_retention(output, keep_days=args.keep_days, max_total_bytes=args.max_total_size,
                        metrics=metrics)
    reserved: socket.socket | None = None
    if args.port == 0:
        # One free port for all: bound (not listening, so it takes no connections) with
        # SO_REUSEPORT, for the workers to bind too.
        family, kind, proto, _name, address = socket.getaddrinfo(
            args.host, 0, type=socket.SOCK_STREAM
        )[0]
        reserved = socket.socket(family, kind, proto)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
        args.port = reserved.getsockname()[1]
    children: dict[int, int] = {}
    for number in range(1, args.workers + 1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker (covered in a subprocess)
            code = 1
            try:
                if reserved is not None:
                    reserved.close()
                args.worker = number
                code = _serve(args, environ)
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
    try:
        runner = HookRunner(journal, hooks, metrics=metrics) if names else None
    except ValueError:
        forward(signal.SIGTERM, None)
        runner = None
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
    log.info("stopped (%d workers)", args.workers)
    return code


# ---------------------------------------------------------------------------- verify, recover


def _verify(args: argparse.Namespace) -> int:
    from meetstream_live.adapters.recording.meter import COMPLETE
    from meetstream_live.adapters.recording.verify import format_report, verify_file

    status = 0
    for name in args.files:
        try:
            report = verify_file(name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(json.dumps({"file": str(report.path), "size": report.size,
                              "verdict": report.verdict, "plain_mp4": report.plain_mp4,
                              "parts": report.parts}))
        else:
            print(format_report(report))
        if report.verdict != COMPLETE and status == 0:
            status = 1
    return status


def _recover(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"not a directory: {args.directory!r}")
    _setup_logging("text", "warning")
    done = recover(directory, index=args.index)
    for recording in done:
        doc = recording.sidecar
        print(f"{recording.path}: recovered, {doc['bytes']} bytes, {doc['fragments']} "
              f"fragments, cut {doc.get('recovered_cut_bytes', 0)} bytes")
    print(f"{len(done)} recording(s) recovered")
    return 0


# ---------------------------------------------------------------------------- simulate, check


def _load_plan(path: str | None) -> Any:
    from .sample import sample_bytes
    from .simulate import plan_media

    if path is None:
        try:
            return plan_media(sample_bytes())
        except FileNotFoundError as exc:
            raise UsageError(f"{exc}: pass --file") from None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    return plan_media(data)


def _check_url(url: str) -> str:
    try:
        parse_ws_url(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return url


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import format_simulation, simulate

    url = _check_url(args.url)
    plan = _load_plan(args.file)
    result = asyncio.run(
        simulate(
            url,
            plan,
            bots=args.bots,
            bot_id=args.bot_id,
            chunk_size=args.chunk_size,
            realtime=args.realtime,
            ping_interval=args.ping_interval,
            pong_timeout=args.pong_timeout,
            cafile=args.cafile,
            token=args.token,
            progress=None if args.quiet else sys.stderr,
            timeout=args.timeout,
            chaos=args.chaos or (),
            seed=args.seed,
        )
    )
    print(format_simulation(result))
    return 0 if result.ok else 1


def _check(args: argparse.Namespace) -> int:
    from .simulate import check, format_check

    url = _check_url(args.url)
    if not url.startswith("wss://"):
        print("note: ws:// is unencrypted; MeetStream production needs wss://", file=sys.stderr)
    plan = _load_plan(args.file)
    items = asyncio.run(
        check(
            url,
            plan,
            bot_id=args.bot_id,
            chunk_size=args.chunk_size,
            pong_timeout=args.pong_timeout,
            idle=args.idle,
            max_skew=args.max_clock_skew,
            cafile=args.cafile,
            token=args.token,
            timeout=args.timeout,
            report=lambda item: print(format_check(item), flush=True),
        )
    )
    failed = [item.name for item in items if item.ok is False]
    print(f"{'FAIL' if failed else 'PASS'}: {len(items) - len(failed)}/{len(items)} items "
          f"passed or skipped" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------------------- create-bot


def _create_bot(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = _check_url(args.websocket_url)
    if url.startswith("ws://"):
        print("warning: ws:// is unencrypted; use wss:// in production", file=sys.stderr)
    if not args.meeting_link.startswith(("https://", "http://")):
        raise UsageError(f"meeting_link must be an http(s) URL: {args.meeting_link!r}")
    payload = {
        "meeting_link": args.meeting_link,
        "video_required": True,
        "live_video_required": {"websocket_url": url},
    }
    if args.dry_run:
        print(json.dumps(payload, indent=2))
        return 0
    key = environ.get("MEETSTREAM_API_KEY")
    if not key:
        raise UsageError("set MEETSTREAM_API_KEY to your MeetStream API key")
    endpoint = args.api_base.rstrip("/") + "/api/bots"
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(payload).encode("utf-8"),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"meetstream-live/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace").strip()
        print(f"error: {endpoint} answered {exc.code} {exc.reason}: {text[:2000]}",
              file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"error: cannot reach {endpoint}: {reason}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    bot_id = answer.get("bot_id") if isinstance(answer, dict) else None
    if not isinstance(bot_id, (str, int)) or isinstance(bot_id, bool):
        print(f"error: no bot_id in the answer: {body[:2000].decode('utf-8', 'replace')}",
              file=sys.stderr)
        return 1
    print(bot_id)
    return 0


# ---------------------------------------------------------------------------- parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ones that mean "not set"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


DURATIONS = "DURATION is seconds (30) or with a unit: 500ms, 90s, 10m, 1h."


def _duration(
    parser: argparse.ArgumentParser, name: str, default: str | None, text: str,
    *, never: bool = False,
) -> None:
    parser.add_argument(
        name, type=_optional_duration_arg if never else _duration_arg, default=default,
        metavar="DURATION", help=text,
    )


def _bot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the receiver's WebSocket URL (ws://... or wss://...)")
    parser.add_argument("--file", help="fMP4 file to stream (default: the bundled 6 s sample)")
    parser.add_argument(
        "--token", help="sent as 'Authorization: Bearer TOKEN'; default $MEETSTREAM_LIVE_TOKEN"
    )
    parser.add_argument(
        "--cafile", help="extra CA certificates (PEM) to trust for wss:// (self-signed setups)"
    )
    _duration(parser, "--timeout", "10s", "connect and close timeout")
    _duration(parser, "--pong-timeout", "5s", "how long to wait for each pong")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults come from ``environ`` (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    parser = _Parser(
        prog=PROG,
        description="Receive, record, simulate and check MeetStream live video over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="receive streams and record them to disk", formatter_class=_Help,
        description="Receive MeetStream live video and record each stream to "
        "OUTPUT/<bot_id>/[<speaker>/]<UTC start>.mp4 with a .json sidecar (see "
        "docs/recording.md). Unfinished .part files left by a crash are recovered first. "
        "GET /healthz and GET /metrics (Prometheus) are served on the same port. Stop with "
        "SIGINT or SIGTERM: streams get --drain-timeout to finish. " + DURATIONS,
    )
    serve.add_argument("--host", default=env.get("WS_HOST", "127.0.0.1"),
                       help="address to listen on ($WS_HOST)")
    serve.add_argument("--port", type=int, default=env.get("WS_PORT", "9876"),
                       help="port to listen on, 0 for any free port ($WS_PORT)")
    serve.add_argument("--output", "--output-dir", dest="output",
                       default=env.get("OUTPUT_DIR", "./recordings"),
                       help="where recordings go; must be writable ($OUTPUT_DIR)")
    serve.add_argument("--adapter", choices=("asyncio", "uvloop", "sync", "trio"),
                       default="asyncio",
                       help="I/O stack: uvloop and trio need their extras installed")
    serve.add_argument("--path",
                       help="accept WebSocket upgrades only on this path, e.g. /video "
                       "(default: any path)")
    serve.add_argument("--tls-cert", help="certificate chain (PEM) to serve wss:// directly")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert, if not in it")
    serve.add_argument("--token",
                       help="require ?token=... or 'Authorization: Bearer ...' with this "
                       "value; default $MEETSTREAM_LIVE_TOKEN (never logged)")
    serve.add_argument("--max-connections", type=_positive_int, default=2000,
                       help="above this many connections, upgrades get 503")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="processes sharing the port (SO_REUSEPORT, Linux; asyncio and "
                       "uvloop adapters): the kernel spreads connections over them. Each "
                       "has its own --max-connections, and GET /metrics shows the worker "
                       "that answers it. A bot that reconnects may land on another worker: "
                       "its stream then goes on in a new part")
    _duration(serve, "--handshake-timeout", "10s", "time allowed for the HTTP upgrade request")
    _duration(serve, "--idle-timeout", "300s",
              "close (1001) a bot silent for this long; 0 for never", never=True)
    _duration(serve, "--drain-timeout", "30s",
              "on SIGINT/SIGTERM, how long streams may go on before they are closed (1001)")
    _duration(serve, "--rotate-every", None,
              "cut recordings into pieces of this much media (e.g. 10m) at fragment "
              "boundaries: <stem>_part001.mp4, <stem>_part002.mp4..., each playable alone")
    serve.add_argument("--on-finish", metavar="CMD",
                       help="for each finished recording run CMD MP4 JSON (split like a shell "
                       "would, run without one; off the event loop); journaled first under "
                       "OUTPUT/.hooks/ and retried with backoff until it exits 0, across "
                       "restarts too")
    serve.add_argument("--webhook", metavar="URL",
                       help="POST each finished recording's sidecar JSON to URL (journaled and "
                       "retried like --on-finish until a 2xx answer)")
    serve.add_argument("--remux", choices=("mp4",), default=None,
                       help="after each recording is finished, also write <stem>.remux.mp4: a "
                       "plain (non-fragmented) MP4 with the moov first (faststart), stream "
                       "copy, no re-encoding; journaled like the hooks and run before them. "
                       "Needs PyAV (the 'media' extra)")
    _duration(serve, "--reconnect-grace", "90s",
              "keep a stream's part open this long after its connection drops, for the same "
              "bot_id + speaker to reconnect and continue it; 0 to finalize at once",
              never=True)
    serve.add_argument("--index", action="store_true",
                       help="on finalize, write the real duration into the moov and append an "
                       "mfra index (the file is then no longer the stream byte for byte)")
    serve.add_argument("--disk-low", type=_disk_size, default="100m", metavar="SIZE",
                       help="below this much free space, stop writing (connections and pings "
                       "go on; losses are recorded); refuse to start below it; 0 to disable")
    serve.add_argument("--disk-high", type=_disk_size, default=None, metavar="SIZE",
                       help="resume writing above this much free space (default: 2 x "
                       "--disk-low)")
    serve.add_argument("--keep-days", type=float, default=None, metavar="DAYS",
                       help="at start, delete finished recordings older than this")
    serve.add_argument("--max-total-size", type=_disk_size, default=None, metavar="SIZE",
                       help="at start, delete the oldest finished recordings above this total")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="log lines (stderr) as text or one JSON object each")
    serve.add_argument("--log-level", default="info",
                       choices=("debug", "info", "warning", "error"), help="log level")

    ver = commands.add_parser(
        "verify", help="report the completeness of fMP4/MP4 files", formatter_class=_Help,
        description="Scan each FILE (fragmented or plain MP4) and print its completeness: "
        "fragments, dropped fragments (mfhd sequence gaps), timeline gaps per track (tfdt), "
        "a torn tail, and a verdict: complete, gaps or truncated. Exits 0 when every file is "
        "complete, 1 otherwise (2 if a file cannot be read).",
    )
    ver.add_argument("files", nargs="+", metavar="FILE", help="files to check")
    ver.add_argument("--json", action="store_true", help="one JSON report per line")

    rec = commands.add_parser(
        "recover", help="finish the .part files a crash left behind", formatter_class=_Help,
        description="Under DIR, cut each unfinished .mp4.part back to its last complete "
        "fragment, rename it and write its sidecar (end_reason crash, verdict truncated), and "
        "close the session manifests left open (state recovered), as 'serve' does at start. "
        "Run it only while no receiver writes to DIR.",
    )
    rec.add_argument("directory", metavar="DIR", help="the recordings directory")
    rec.add_argument("--index", action="store_true",
                     help="also write durations and an mfra index into the recovered files")

    sim = commands.add_parser(
        "simulate", help="play MeetStream bots against a receiver", formatter_class=_Help,
        description="Stream a real fMP4 file to a receiver as N MeetStream bots at once "
        "(start, binary chunks, pings, end, close 1000), show progress on stderr and report "
        "the pong round trips. Exits 1 if a bot failed or a ping went unanswered. "
        + DURATIONS,
    )
    _bot_options(sim)
    sim.add_argument("--bots", type=_positive_int, default=1, help="bots at once")
    sim.add_argument("--bot-id", default="sim-bot", help="bot_id (suffixed -1, -2... for N>1)")
    sim.add_argument("--chunk-size", type=_size, default="32k",
                     help="bytes per binary message (65536, 64k, 1m)")
    sim.add_argument("--realtime", action="store_true",
                     help="pace by media time (each fragment when its media is complete) "
                     "instead of as fast as possible")
    _duration(sim, "--ping-interval", "1s", "time between latency pings")
    from .simulate import CHAOS

    sim.add_argument("--chaos", action="append", choices=sorted(CHAOS), metavar="FAULT",
                     help="play a fault (repeat to combine): "
                     + "; ".join(f"{name}: {text}" for name, text in CHAOS.items()))
    sim.add_argument("--seed", type=int, default=0,
                     help="seed of the random choices --chaos makes (same seed, same run)")
    sim.add_argument("--quiet", action="store_true", help="no progress on stderr")

    chk = commands.add_parser(
        "check", help="run the protocol checklist against a receiver", formatter_class=_Help,
        description="Check any receiver against the protocol's quick-test checklist: TLS "
        "(wss://), handshake, start accepted, binary flowing, a correct pong for every ping, "
        "a 16 MiB binary message (sent as an fMP4 'free' box), an optional idle gap, end, "
        "clean close (1000). Prints PASS/FAIL/SKIP per item; exits 0 only if none failed. "
        + DURATIONS,
    )
    _bot_options(chk)
    chk.add_argument("--bot-id", default="check-bot", help="bot_id to announce")
    chk.add_argument("--chunk-size", type=_size, default="64k",
                     help="bytes per binary message (65536, 64k, 1m)")
    _duration(chk, "--idle", None, "also stay silent this long (e.g. 90s), then ping")
    _duration(chk, "--max-clock-skew", "10m",
              "how far server_received_at_ms may be from local time and before sent_at_ms")

    bot = commands.add_parser(
        "create-bot", help="ask the MeetStream API for a bot that streams to your receiver",
        formatter_class=_Help,
        description="POST {api-base}/api/bots with meeting_link, video_required=true and "
        "live_video_required.websocket_url, authorized by $MEETSTREAM_API_KEY. Prints the new "
        "bot_id. Live video works with Google Meet and Microsoft Teams only.",
    )
    bot.add_argument("meeting_link", help="Google Meet or Microsoft Teams meeting URL")
    bot.add_argument("--websocket-url", required=True,
                     help="your receiver's public URL (wss://... in production)")
    bot.add_argument("--api-base", default=env.get("MEETSTREAM_API_BASE", DEFAULT_API_BASE),
                     help="MeetStream API base URL ($MEETSTREAM_API_BASE)")
    _duration(bot, "--timeout", "30s", "HTTP timeout")
    bot.add_argument("--dry-run", action="store_true", help="print the payload, send nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    environ = os.environ
    # numpy (the core's unmasker, when installed) starts OpenBLAS's thread pool as it loads:
    # a thread per core, spinning for a moment. We never use BLAS; on a small machine those
    # threads only compete with the event loop. Set here, before anything imports numpy, and
    # only as a default: a value the user set wins.
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        parser = build_parser(environ)
        args = parser.parse_args(argv)
        if args.command == "serve":
            return _serve(args, environ)
        if args.command == "verify":
            return _verify(args)
        if args.command == "recover":
            return _recover(args)
        if args.command in ("simulate", "check"):
            args.token = args.token or environ.get("MEETSTREAM_LIVE_TOKEN") or None
            return _simulate(args) if args.command == "simulate" else _check(args)
        return _create_bot(args, environ)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

