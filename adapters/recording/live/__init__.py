"""Watch a meeting while it is recorded (``docs/live.md``): an index of the live streams kept
from what the file sink stores (:mod:`.registry`), their HLS playlists (:mod:`.hls`), the
``/live/`` HTTP answers and pages (:mod:`.web`, :mod:`.page`), and the WebSocket relay
(:mod:`.relay`)."""

from .codecs import codecs_of
from .hls import playlist
from .registry import LivePart, LiveRegistry, LiveStream, Segment
from .web import LiveWeb, parse_range

__all__ = [
    "LivePart",
    "LiveRegistry",
    "LiveStream",
    "LiveWeb",
    "Segment",
    "codecs_of",
    "parse_range",
    "playlist",
]
