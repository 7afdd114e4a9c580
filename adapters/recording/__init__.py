"""The application: what happens to a stream once it is received.

* :mod:`.sessions`, :mod:`.stream`, :mod:`.handler` — :class:`Recorder`, the handler factory,
  and the stream model: parts, rotation, reconnects (no I/O: on the event loop)
* :mod:`.sinks` — the fan-out point: every stream's events to any number of sinks
* :mod:`.filesink`, :mod:`.finalize`, :mod:`.partfiles` — the file sink: every local file
* :mod:`.recovery` — :func:`recover`, finishing what a crash left behind
* :mod:`.meter`, :mod:`.verify` — completeness of fMP4 streams and files
* :mod:`.sidecar`, :mod:`.names`, :mod:`.durable`, :mod:`.states` — formats, names, file I/O,
  the state tables
* :mod:`.hooks`, :mod:`.diskguard`, :mod:`.metrics`, :mod:`.mp4index`, :mod:`.remux`

Nothing in the transports (:mod:`meetstream_live.adapters.asyncio` and its siblings) imports
this package; it imports them.
"""

from __future__ import annotations

from .filesink import FileSink
from .handler import RecordingHandler
from .recovery import recover
from .sessions import Recorder
from .sidecar import FinishedRecording

__all__ = ["FileSink", "FinishedRecording", "Recorder", "RecordingHandler", "recover"]
