"""A sink: beside each recording, a keyframe index (``<stem>.keyframes.jsonl``: one line per
fragment that starts with a keyframe, with its byte range in the file and its media time), for
a player or a thumbnailer that seeks without scanning the file.

It follows the file, so it takes the file sink's events: ``FragmentStored`` (file offsets: the
file may lack what a full disk refused) and ``PartFinalized`` (the file is final).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from meetstream_live.adapters.recording.sinks import (
    Dropped,
    FragmentStored,
    Part,
    PartFinalized,
    Sink,
    SinkEvent,
)


class KeyframeIndex(Sink):
    name = "keyframe-index"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (FragmentStored, PartFinalized, Dropped)
    when_full: ClassVar[Literal["block", "drop"]] = "drop"  # an index is not worth a pause
    runs: ClassVar[Literal["thread", "inline"]] = "thread"  # it writes a file

    def __init__(self) -> None:
        self.rows: dict[int, list[dict[str, Any]]] = {}  # part id -> its keyframes so far
        self.seconds: dict[int, float] = {}

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        rows = self.rows.setdefault(part.id, [])
        for event in events:
            if isinstance(event, FragmentStored) and event.fragment is not None:
                at = self.seconds.get(part.id, 0.0)
                self.seconds[part.id] = at + event.seconds
                if event.keyframe:
                    rows.append({"offset": event.file_offset, "size": event.size, "at": at})
            elif isinstance(event, Dropped):  # events lost: what is indexed is still true
                rows.append({"dropped_events": event.events})
            elif isinstance(event, PartFinalized):
                path = event.recording.path.with_suffix(".keyframes.jsonl")
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))
                del self.rows[part.id]
                self.seconds.pop(part.id, None)
