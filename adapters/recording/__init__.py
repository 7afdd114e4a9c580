"""The application: what happens to a stream once it is received.

* :mod:`.recorder` — :class:`Recorder`, the handler factory that records every stream
* :mod:`.recovery` — :func:`recover`, finishing what a crash left behind
* :mod:`.meter`, :mod:`.verify` — completeness of fMP4 streams and files
* :mod:`.hooks`, :mod:`.diskguard`, :mod:`.metrics`, :mod:`.mp4index`, :mod:`.remux`

Nothing in the transports (:mod:`meetstream_live.adapters.asyncio` and its siblings) imports
this package; it imports them.
"""

from __future__ import annotations

from .recorder import Recorder, RecordingHandler
from .recovery import recover
from .sidecar import FinishedRecording

__all__ = ["FinishedRecording", "Recorder", "RecordingHandler", "recover"]
