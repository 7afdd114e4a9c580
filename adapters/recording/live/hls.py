"""The HLS playlist of a live stream (RFC 8216, version 7, fragmented MP4).

An *event* playlist (``#EXT-X-PLAYLIST-TYPE:EVENT``): segments are only ever appended, so a
player may seek back to the stream's start while it is live, and once the stream ends the
playlist gets ``#EXT-X-ENDLIST`` and the same URL is a seekable recording. Each part of the
stream (rotation, a new init segment) is its own file: its segments follow an
``#EXT-X-DISCONTINUITY`` and an ``#EXT-X-MAP`` of its own init segment. Media segments are byte
ranges (``#EXT-X-BYTERANGE``) of the part's file, ``{part}.mp4`` next to the playlist.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from .registry import TARGET_SECONDS, LiveStream

__all__ = ["playlist"]


def _date(ms: float) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def playlist(stream: LiveStream, query: str = "") -> str:
    """The playlist of ``stream`` (a snapshot). ``query`` (``"?token=..."`` or ``""``) is
    appended to every URI, so a player that was given a token in the URL keeps showing it."""
    longest = max((s.seconds for p in stream.parts for s in p.segments), default=0.0)
    target = max(math.ceil(TARGET_SECONDS), math.ceil(longest - 0.001))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    first = True
    for part in stream.parts:
        if part.init is None or not part.segments:
            continue
        uri = f"{part.number}.mp4{query}"
        if not first:
            lines.append("#EXT-X-DISCONTINUITY")
        first = False
        offset, size = part.init
        lines.append(f'#EXT-X-MAP:URI="{uri}",BYTERANGE="{size}@{offset}"')
        elapsed = 0.0
        for i, segment in enumerate(part.segments):
            if segment.gap and i:
                lines.append("#EXT-X-DISCONTINUITY")
            if i == 0:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date(part.started_ms + elapsed)}")
            lines.append(f"#EXTINF:{segment.seconds:.3f},")
            lines.append(f"#EXT-X-BYTERANGE:{segment.size}@{segment.offset}")
            lines.append(uri)
            elapsed += segment.seconds * 1000
    if stream.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
