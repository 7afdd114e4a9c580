"""``serve``'s live view (on by default; ``--live off`` turns it off): every stream being
recorded can be watched on the bots' port, as HLS from the recording itself, on a page, and
through a WebSocket relay. See ``docs/live.md``."""

from __future__ import annotations

import ipaddress
import logging

from .features import Feature, ServeContext
from .options import Option, Settings, boolean, duration, positive_int, text

__all__ = ["LIVE", "LiveFeature"]

log = logging.getLogger("meetstream_live.cli")


def _origin(value: str) -> str:
    value = value.strip()
    if value != "*" and not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an origin (https://host[:port]) nor *")
    return value.rstrip("/")


OPTIONS: tuple[Option, ...] = (
    Option("live", boolean, True,
           "watch the streams while they are recorded, under /live/ on the bots' port: HLS "
           "playlists of the files being written, a page, a WebSocket relay (off: none of it)",
           metavar="on|off", shown_default="on"),
    Option("viewer_token", text, None,
           "the token /live/ asks for (?token=... or 'Authorization: Bearer ...'; never "
           "logged); default: the same as --token", secret=True),
    Option("live_cors", _origin, [],
           "let pages of this origin read /live/ answers (CORS); * for any", multiple=True,
           metavar="ORIGIN"),
    Option("live_keep", duration, 600.0,
           "how long an ended stream stays listed, its playlist then a recording",
           metavar="DURATION", shown_default="10m"),
    Option("live_viewer_buffer", positive_int, 4 * 1024 * 1024,
           "bytes a relay viewer may have waiting; a viewer behind by more is skipped to the "
           "next keyframe", metavar="BYTES", shown_default="4 MiB"),
)


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LiveFeature(Feature):
    """``serve --live on``: the live registry after the file sink, ``/live/`` routes, the
    relay's viewer paths."""

    name = "live"
    options = OPTIONS

    def enabled(self, settings: Settings) -> bool:
        return bool(settings.get("live", True))

    def configure(self, context: ServeContext) -> None:
        from meetstream_live.adapters.recording.live import LiveRegistry, LiveWeb
        from meetstream_live.adapters.recording.live.relay import VIEWER_PATHS, LiveRelay

        settings = context.settings
        if settings.get("workers", 1) > 1:
            log.warning("--live is off with --workers %d: each process knows only its own "
                        "streams (see docs/live.md)", settings.workers,
                        extra={"event": "live_off"})
            return
        token = settings.get("viewer_token") or settings.get("token")
        if token is None and not _loopback(settings.get("host", "127.0.0.1")):
            log.warning("/live/ is open to anyone who reaches %s: give --token or "
                        "--viewer-token", settings.host, extra={"event": "live_open"})
        registry = LiveRegistry(keep_ended=settings.live_keep)
        relay = LiveRelay(viewer_buffer=settings.live_viewer_buffer)
        context.sinks += [registry, relay]
        context.http_routes["/live/"] = LiveWeb(registry, token=token,
                                                cors=settings.live_cors,
                                                relay_stats=relay.stats)
        context.viewer_paths += list(VIEWER_PATHS)
        context.viewer_factory = relay.viewer
        context.closers.append(relay.close)
        log.info("live view on /live/%s", " (token required)" if token else "",
                 extra={"event": "live_on"})


LIVE = LiveFeature()
