"""The ``meetstream-live`` command: ``serve``, ``verify``, ``recover``, ``upload``, ``simulate``,
``check`` and ``create-bot``.

Run ``meetstream-live COMMAND --help`` (or ``python -m meetstream_live.adapters.cli``) for the
options of each command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from meetstream_live import __version__, parse_ws_url
from meetstream_live.adapters.recording.recovery import recover

from .logs import setup_logging
from .options import Settings, UsageError, command_settings, duration
from .serve import lock_output, serve, serve_options

__all__ = ["UsageError", "build_parser", "main", "parse_duration"]

log = logging.getLogger("meetstream_live.cli")

PROG = "meetstream-live"
DEFAULT_API_BASE = "https://api.meetstream.ai"



#: ``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` or plain seconds -> seconds.
parse_duration = duration


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


# ---------------------------------------------------------------------------- config


def _config(settings: Settings, *, as_json: bool) -> int:
    """``meetstream-live config``: the effective settings of serve, secrets masked."""
    values = settings.masked()
    if as_json:
        print(json.dumps({name: {"value": value, "from": settings.sources[name]}
                          for name, value in values.items()}, indent=2, default=str))
        return 0
    width = max(len(name) for name in values)
    for name, value in values.items():
        shown = "-" if value is None else value
        print(f"{name:<{width}}  {shown!s:<30}  ({settings.sources[name]})")
    return 0


# ---------------------------------------------------------------------------- verify, recover


def _verify(args: argparse.Namespace) -> int:
    from meetstream_live.adapters.recording.meter import COMPLETE
    from meetstream_live.adapters.recording.verify import format_report, verify_file

    status = 0
    for name in args.files:
        if name.startswith("s3://"):
            from .upload import verify_url

            code = verify_url(name, args.json)
            status = code if code == 2 or status == 0 else status
            continue
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
    setup_logging("text", "warning")
    lock = lock_output(directory)  # never while a receiver writes there
    try:
        done = recover(directory, index=args.index)
    finally:
        os.close(lock)
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
    from .check import check, format_check

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
        "OUTPUT/<bot_id>/[<speaker>/]<UTC start>.mp4 (or --path-template) with a .json "
        "sidecar (see docs/recording.md). Unfinished .part files left by a crash are "
        "recovered first. GET /healthz (liveness), GET /readyz (readiness: 503 and why) and "
        "GET /metrics (Prometheus) are served on the same port. Stop with SIGINT or SIGTERM: "
        "streams get --drain-timeout to finish (after --shutdown-delay). Every option also comes "
        "from its environment variable or from the config file (flags > environment > file "
        "> defaults; see docs/config.md). " + DURATIONS,
    )
    serve.add_argument("--config", metavar="FILE",
                       help="a TOML (or JSON) file of settings, keys as the options' names "
                       "with underscores, at the top level or in a [serve] table "
                       "($MEETSTREAM_LIVE_CONFIG)")
    serve_options().add_to(serve)

    cfg = commands.add_parser(
        "config", help="print the effective configuration of serve (secrets masked)",
        formatter_class=_Help,
        description="Resolve serve's options as 'serve' would (flags > environment > config "
        "file > defaults) and print each with its value and where it came from; secrets "
        "(--token, credentials) are masked. Exits 2 on a bad value, as serve would.",
    )
    cfg.add_argument("--config", metavar="FILE", help="the config file, as for serve")
    cfg.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    serve_options().add_to(cfg)

    ver = commands.add_parser(
        "verify", help="report the completeness of fMP4/MP4 files", formatter_class=_Help,
        description="Scan each FILE (fragmented or plain MP4) and print its completeness: "
        "fragments, dropped fragments (mfhd sequence gaps), timeline gaps per track (tfdt), "
        "a torn tail, and a verdict: complete, gaps or truncated. Exits 0 when every file is "
        "complete, 1 otherwise (2 if a file cannot be read). A FILE may be s3://BUCKET/KEY "
        "(or s3://BUCKET/PREFIX/: every .mp4 under it), read with the AWS configuration "
        "as for --upload.",
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

    from .upload import add_upload_command

    add_upload_command(commands, _Help)

    from .bus import add_consume_command

    add_consume_command(commands, _Help)

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
            return serve(command_settings(serve_options(), args, environ, section="serve"),
                         environ)
        if args.command == "config":
            return _config(command_settings(serve_options(), args, environ, section="serve"),
                           as_json=args.json)
        if args.command == "verify":
            return _verify(args)
        if args.command == "recover":
            return _recover(args)
        if args.command == "upload":
            from .upload import upload_command

            return upload_command(args, environ)
        if args.command == "consume":
            from .bus import consume_command

            return consume_command(args, environ)
        if args.command in ("simulate", "check"):
            args.token = args.token or environ.get("MEETSTREAM_LIVE_TOKEN") or None
            return _simulate(args) if args.command == "simulate" else _check(args)
        return _create_bot(args, environ)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

