"""Every stream on NATS JetStream while it is recorded (``serve --nats``), and the asyncio
helpers that read it back (``meetstream-live consume``): see ``docs/bus.md``.

:mod:`.subjects` (names, headers, limits) has no dependency; the publisher and the consumer
need the ``nats`` extra (``nats-py``), imported when they run.
"""

from .consumer import Joiner, MediaMessage, Rebuilt, follow, parse, rebuild
from .publisher import BusConfig, BusError, Outgoing, Publisher
from .sink import BusSink
from .subjects import (
    EVENTS_STREAM,
    INIT_STREAM,
    StreamKey,
    StreamLimits,
    decode_token,
    encode_token,
    media_subject,
)

__all__ = [
    "EVENTS_STREAM",
    "INIT_STREAM",
    "BusConfig",
    "BusError",
    "BusSink",
    "Joiner",
    "MediaMessage",
    "Outgoing",
    "Publisher",
    "Rebuilt",
    "StreamKey",
    "StreamLimits",
    "decode_token",
    "encode_token",
    "follow",
    "media_subject",
    "parse",
    "rebuild",
]
