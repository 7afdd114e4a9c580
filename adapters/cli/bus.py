"""The message bus for ``serve`` (``--nats nats://HOST:4222``) and the ``meetstream-live
consume`` command that rebuilds a recording from it. See ``docs/bus.md``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .features import Feature, ServeContext
from .options import (
    Option,
    OptionSet,
    Settings,
    UsageError,
    boolean,
    command_settings,
    disk_size,
    duration,
    positive_int,
)

__all__ = ["BUS", "BusFeature", "add_consume_command", "consume_command", "nats_url"]

log = logging.getLogger("meetstream_live.cli")

SCHEMES = ("nats://", "tls://")


def nats_url(value: str) -> str:
    """``nats://[user:password@]HOST[:PORT]`` or ``tls://...``; several comma-separated."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("an empty URL")
    for url in urls:
        if not url.startswith(SCHEMES) or len(url.split("://", 1)[1]) == 0:
            raise ValueError(f"{url!r} is not a nats://HOST:PORT (or tls://) URL")
    return ",".join(urls)


def existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value!r}")
    return value


#: Options shared by ``serve`` and ``consume`` (how to reach the server).
CONNECT: tuple[Option, ...] = (
    Option("nats", nats_url, None,
           "publish every stream to NATS JetStream: events as JSON on "
           "meetstream.{bot_id}.{speaker}.events, whole fMP4 fragments on ...media "
           "(credentials in the URL, --nats-creds or --nats-ca for TLS; see docs/bus.md)",
           metavar="nats://HOST:4222", secret=True, group="bus"),
    Option("nats_creds", existing_file, None, "a NATS .creds file (JWT and nkey seed)",
           metavar="FILE", group="bus"),
    Option("nats_ca", existing_file, None, "trust these CA certificates for tls:// (PEM)",
           metavar="FILE", group="bus"),
)

OPTIONS: tuple[Option, ...] = (
    *CONNECT,
    Option("nats_max_age", duration, 24 * 3600.0,
           "when the streams are created (absent): how long JetStream keeps messages",
           metavar="DURATION", shown_default="24h", group="bus"),
    Option("nats_max_bytes", disk_size, 10 * 1024**3,
           "when the stream is created (absent): the most bytes of events and media it keeps "
           "(the oldest go first)", metavar="SIZE", shown_default="10g", group="bus"),
    Option("nats_replicas", positive_int, 1,
           "when the streams are created (absent): replicas (3 in a cluster)", metavar="N",
           group="bus"),
    Option("nats_max_pending", disk_size, 64 * 1024**2,
           "bytes kept in memory for the bus while NATS is slow or away; beyond, they go to "
           "the outbox on disk", metavar="SIZE", shown_default="64m", group="bus"),
    Option("nats_outbox_size", disk_size, 1024**3,
           "the most bytes of the outbox (OUTPUT/.bus-outbox/): what NATS has not taken, "
           "republished in order with the same message IDs when it is back, and at the next "
           "start; beyond, new messages are dropped and counted (the recording is never "
           "affected). 0: no outbox", metavar="SIZE", shown_default="1g", group="bus"),
    Option("nats_pongs", boolean, True, "publish each pong's latency as an event",
           metavar="BOOL", group="bus"),
    Option("nats_leases", boolean, True,
           "keep a lease per stream in JetStream's key-value store (MEETSTREAM_SESSIONS), so "
           "that a bot's reconnect landing on another receiver of a fleet continues its "
           "session as the next part (needs --reconnect-grace above 0)", metavar="BOOL",
           group="bus"),
    Option("nats_drain_timeout", duration, 10.0,
           "at shutdown, how long what is queued for the bus may take", metavar="DURATION",
           group="bus"),
)


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise UsageError("--nats needs nats-py: pip install 'meetstream-live[nats]'") from None


#: Under the output directory: the bus's outbox, one directory per process (``w0``: a single
#: process, ``w1``... the workers of ``--workers``).
OUTBOX = ".bus-outbox"


def bus_config(settings: Settings, outbox: Path | None = None) -> Any:
    from meetstream_live.adapters.recording.bus import BusConfig, StreamLimits

    limits = StreamLimits(max_age=settings.get("nats_max_age", 24 * 3600.0),
                          max_bytes=settings.get("nats_max_bytes", 10 * 1024**3),
                          replicas=settings.get("nats_replicas", 1))
    return BusConfig(settings.nats, creds=settings.get("nats_creds"),
                     ca_file=settings.get("nats_ca"), limits=limits,
                     max_pending_bytes=settings.get("nats_max_pending", 64 * 1024**2),
                     outbox_dir=str(outbox) if outbox is not None else None,
                     outbox_max_bytes=settings.get("nats_outbox_size", 1024**3))


Sample = tuple[dict[str, str], float]


def watch(metrics: Any, publisher: Any) -> None:
    """``meetstream_live_bus_*`` in ``/metrics``."""

    def one(name: str) -> Callable[[], Iterator[Sample]]:
        def values() -> Iterator[Sample]:
            yield {}, float(publisher.stats()[name])
        return values

    for name, kind, text in (
        ("connected", "gauge", "1 while connected to NATS."),
        ("lag_seconds", "gauge", "Age of the oldest message not acknowledged by JetStream."),
        ("pending_messages", "gauge", "Messages waiting for the bus (backlog)."),
        ("pending_bytes", "gauge", "Bytes waiting for the bus (backlog)."),
        ("outbox_messages", "gauge", "Of the messages waiting, those in the outbox on disk."),
        ("outbox_bytes", "gauge", "Of the bytes waiting, those in the outbox on disk."),
    ):
        metrics.watch(f"bus_{name}", kind, text, one(name))
    for name, text in (
        ("published_messages", "Messages JetStream acknowledged."),
        ("published_bytes", "Payload bytes JetStream acknowledged."),
        ("duplicates", "Republished messages JetStream had already (Nats-Msg-Id)."),
        ("failures", "Failed publish attempts (each retried)."),
        ("dropped_messages", "Messages not published: over --nats-max-pending, or at close."),
        ("dropped_bytes", "Payload bytes of the dropped messages."),
        ("split_messages", "Messages over the server's max_payload, sent in pieces."),
        ("spilled_messages", "Messages written to the outbox (NATS slow or away)."),
    ):
        metrics.watch(f"bus_{name}_total", "counter", text, one(name))


class BusFeature(Feature):
    """``serve --nats``: the bus sink after the file sink."""

    name = "bus"
    options = OPTIONS

    def enabled(self, settings: Settings) -> bool:
        return bool(settings.get("nats"))

    def configure(self, context: ServeContext) -> None:
        _require_nats()
        from meetstream_live.adapters.recording.bus import BusError, BusSink, Publisher

        settings = context.settings
        outbox = (context.output / OUTBOX / f"w{context.worker}"
                  if settings.nats_outbox_size > 0 else None)
        publisher = Publisher(bus_config(settings, outbox))
        try:
            publisher.start()  # connected, streams there: or the start stops here
        except BusError as exc:
            raise UsageError(f"--nats: {exc}") from None
        sink = BusSink(publisher, pongs=settings.nats_pongs,
                       drain_timeout=settings.nats_drain_timeout)
        if context.metrics is not None:
            watch(context.metrics, publisher)
        context.sinks.append(sink)
        if context.recovered:  # what a crash cut off the bus: published whole again
            from meetstream_live.adapters.recording.bus.recovered import Republisher

            republisher = Republisher(publisher, context.recovered)
            sink.before_close.append(republisher.stop)
            republisher.start()
        log.info("publishing every stream to %s", publisher.where())
        grace = settings.get("reconnect_grace") or 0.0
        if settings.nats_leases and grace > 0:
            self._leases(context, publisher, grace)

    @staticmethod
    def _leases(context: ServeContext, publisher: Any, grace: float) -> None:
        """A lease per stream in JetStream's key-value store: a reconnect that lands here
        continues the session another receiver of the fleet began."""
        from meetstream_live.adapters.recording.bus.lease import Leases, LeaseSink
        from meetstream_live.adapters.recording.partfiles import NO_SESSION, Continued

        leases = Leases(publisher, grace=grace)
        sink = LeaseSink(leases)
        try:
            leases.start()  # the bucket there: or the start stops here
        except Exception as exc:
            raise UsageError(f"--nats: the session leases ({exc})") from None

        def continue_from(key: tuple[str, str]) -> Continued | None:
            answered, lease = leases.read(*key)
            if not answered:
                return None
            if lease is None:
                return NO_SESSION
            if lease.node == leases.node:
                return None
            return Continued(lease.session_ms, lease.part + 1, lease.connections,
                             stale=leases.stale(lease))

        context.sinks.append(sink)
        context.continue_from = continue_from


BUS = BusFeature()


# ---------------------------------------------------------------------------- consume


def add_consume_command(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = commands.add_parser(
        "consume", help="rebuild a recording from the NATS JetStream bus",
        formatter_class=formatter,
        description="Read one stream's media from the bus that serve --nats publishes to and "
        "write one part's recording to -o, byte for byte the receiver's local file (without "
        "--index). The first part the bus still has, or --part N. Exits 0 when the part is "
        "complete on the bus, 1 when it is not (still live without --wait, or messages aged "
        "out), 2 when there is no such stream or part, or no server.",
    )
    parser.add_argument("url", metavar="nats://HOST:4222", help="the NATS server(s)")
    parser.add_argument("--bot", required=True, metavar="BOT_ID", help="the bot")
    parser.add_argument("--speaker", default=None, metavar="ID",
                        help="the speaker (per-speaker streams)")
    parser.add_argument("--part", type=int, default=None, metavar="N", help="the part number")
    parser.add_argument("--session", type=int, default=None, metavar="MS",
                        help="the session (its start, ms since the epoch: Meetstream-Session)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.mp4")
    parser.add_argument("--wait", action="store_true",
                        help="follow a part still being recorded until it ends")
    parser.add_argument("--config", metavar="FILE", help="a TOML file ([consume] table)")
    OptionSet(CONNECT[1:]).add_to(parser)


def consume_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _require_nats()
    from meetstream_live.adapters.recording.bus import BusConfig, BusError, rebuild
    from meetstream_live.adapters.recording.bus.publisher import connect_once

    try:
        url = nats_url(args.url)
    except ValueError as exc:
        raise UsageError(f"consume: {exc}") from None
    settings = command_settings(OptionSet(CONNECT[1:]), args, environ, section="consume")
    config = BusConfig(url, creds=settings.nats_creds, ca_file=settings.nats_ca)
    output = Path(args.output)

    async def run() -> Any:
        try:
            nc = await connect_once(config)
        except BusError as exc:
            raise UsageError(f"consume: {exc}") from None
        try:
            with open(output, "w+b") as out:
                return await rebuild(nc.jetstream(), args.bot, args.speaker, out,
                                     part=args.part, session=args.session, wait=args.wait)
        finally:
            await nc.close()

    result = asyncio.run(run())
    if result is None:
        output.unlink(missing_ok=True)
        print(f"consume: no part of bot {args.bot!r}"
              f"{'' if args.speaker is None else f' speaker {args.speaker!r}'} on the bus"
              f"{'' if args.part is None else f' numbered {args.part}'}", file=sys.stderr)
        return 2
    state = "complete" if result.complete else "INCOMPLETE"
    print(f"{output}: part {result.part} of session {result.session}: {result.size} bytes, "
          f"{result.fragments} fragment(s), {state}"
          f"{'' if result.verdict is None else f' (receiver: {result.verdict})'}")
    return 0 if result.complete else 1
