"""Record every stream to disk: one fMP4 file and one JSON sidecar per stream (or per part).

``Recorder(output_dir)`` is a handler factory (pass it to any server adapter); each accepted
connection gets a :class:`RecordingHandler`. The recorder is made of:

* the stream model (:mod:`.stream`, :mod:`.sessions`, :mod:`.handler`): parts, rotation,
  reconnects, supersede; no I/O, on the event loop;
* its sinks (:mod:`.sinks`): the file sink (:mod:`.filesink`, :mod:`.finalize`) writes every
  file in threads of its own; hooks and ``on_finish`` follow it (:mod:`.hooks`).

Files land at::

    <output>/<bot_id>/[<speaker>/]<UTC start>[_<n>].mp4      the stream, byte for byte
    <output>/<bot_id>/[<speaker>/]<UTC start>[_<n>].json     what happened (the sidecar)

See ``docs/recording.md``. This module keeps the names the recorder had before it was split.
"""

from __future__ import annotations

from .filesink import DEFAULT_BUFFER_SIZE, FileSink
from .handler import RecordingHandler
from .hooks import FinishCallback
from .meter import fragment_seconds
from .names import safe_name
from .recovery import recover
from .sessions import Recorder
from .sidecar import FinishedRecording

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "FileSink",
    "FinishCallback",
    "FinishedRecording",
    "Recorder",
    "RecordingHandler",
    "fragment_seconds",
    "recover",
    "safe_name",
]
