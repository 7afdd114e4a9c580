"""Draw docs/img/recording-timeline.svg, the README's picture: a real recording's timeline.

The bundled sample is recorded through the real :class:`Recorder` (a fixed clock, pings every
second with a measured latency, a clean end), then the file is read back with the fMP4 scanner
and drawn with its sidecar: one bar per fragment along the media time (its height the
fragment's size, dark when it starts with a keyframe), the pings under it, and what the
sidecar says. ``tests/docs/test_timeline_picture.py`` draws it again and compares.

Usage::

    python docs/make_timeline.py           # rewrite docs/img/recording-timeline.svg
"""

from __future__ import annotations

import json
import sys
import tempfile
from html import escape
from pathlib import Path

from meetstream_live import (
    Disconnected,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    LatencyPing,
    MediaChunk,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.cli.sample import sample_bytes
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.meter import fragment_seconds

OUT = Path(__file__).resolve().parent / "img" / "recording-timeline.svg"
T0 = 1_735_812_000_000  # 2025-01-02T10:00:00Z
W, H, LEFT, RIGHT = 900, 265, 60, 40
LATENCIES = (42, 38, 55, 47, 61, 44)


DROP_AFTER = 3  # fragments sent before the connection drops (then the bot reconnects)


def _spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The init segment's end and each fragment's (offset, size)."""
    init_end, spans = 0, []
    for event in Fmp4Scanner().feed(data):
        if isinstance(event, InitSegment):
            init_end = event.offset + event.size
        elif isinstance(event, FragmentComplete):
            spans.append((event.offset, event.size))
    return init_end, spans


def record(directory: Path) -> tuple[bytes, dict[str, object]]:
    """The sample through the recorder, as a bot would send it, with a dropped connection
    and a reconnect within the grace window (appended); the file and its sidecar."""
    now = [T0]
    recorder = Recorder(directory, clock=lambda: now[0], reconnect_grace=30)
    data = sample_bytes()
    init_end, spans = _spans(data)
    start = StreamStarted(bot_id="bot-7", speaker_name="Alice",
                          raw={"type": "video_stream_start", "bot_id": "bot-7"})
    pings = iter(LATENCIES)

    def connection(payload: bytes, fragments: int, *, last: bool) -> None:
        handler = recorder(ConnectionInfo("('203.0.113.7', 53211)", "/", "", (), False))
        handler.on_start(start)
        handler.on_chunk(MediaChunk(payload[:init_end], 0))
        offset = init_end
        for n in range(fragments):
            size = spans[n][1]
            handler.on_chunk(MediaChunk(payload[offset: offset + size], offset))
            offset += size
            now[0] += 1000
            latency = next(pings)
            handler.on_ping(LatencyPing(n, now[0] - latency, now[0], "bot-7"))
        if last:
            handler.on_end(StreamEnded(6.0))
            handler.on_disconnect(Disconnected(1000, "", True))
        else:
            handler.on_disconnect(Disconnected(1006, "", False))
            recorder.flush()
            now[0] += 2100  # the bot is back 2.1 s later

    connection(data, DROP_AFTER, last=False)
    rest = data[:init_end] + b"".join(data[o: o + n] for o, n in spans[DROP_AFTER:])
    _, rest_spans = _spans(rest)
    spans[:] = rest_spans
    connection(rest, len(rest_spans), last=True)
    recorder.close()
    (media,) = directory.rglob("*.mp4")
    return media.read_bytes(), json.loads(media.with_suffix(".json").read_text())


def fragments(data: bytes) -> list[tuple[float, float, int, bool]]:
    """(start, seconds, size, keyframe) of each fragment, in media time."""
    scanner = Fmp4Scanner()
    tracks: tuple[object, ...] = ()
    out: list[tuple[float, float, int, bool]] = []
    at = 0.0
    for event in scanner.feed(data):
        if isinstance(event, InitSegment):
            tracks = event.tracks
        elif isinstance(event, FragmentComplete):
            seconds = fragment_seconds(tracks, event)  # type: ignore[arg-type]
            video = next((t for t in tracks if getattr(t, "handler", "") == "vide"), None)
            run = next((r for r in event.tracks
                        if video is not None and r.track_id == getattr(video, "track_id", 0)),
                       None)
            out.append((at, seconds, event.size, bool(run and run.starts_with_sync)))
            at += seconds
    return out


def draw(data: bytes, sidecar: dict[str, object]) -> str:
    parts = fragments(data)
    total = sum(seconds for _, seconds, _, _ in parts) or 1.0
    biggest = max(size for _, _, size, _ in parts)
    scale = (W - LEFT - RIGHT) / total

    def x(t: float) -> float:
        return LEFT + t * scale

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="#ffffff"/>']
    title = (f"{sidecar['bot_id']} / {sidecar['speaker_name']}: {sidecar['file']}, "
             f"{sidecar['media_duration_seconds']:.1f} s, {sidecar['fragments']} fragments, "
             f"{sidecar['bytes']:,} bytes, verdict {sidecar['verdict']}")
    svg.append(f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">'
               f"{escape(title)}</text>")
    base = 170
    svg.append(f'<text x="8" y="{base - 40}">bytes</text>')
    for start, seconds, size, key in parts:
        height = max(2.0, 85 * size / biggest)
        svg.append(f'<rect x="{x(start):.1f}" y="{base - height:.1f}" '
                   f'width="{max(1.0, seconds * scale - 1):.1f}" height="{height:.1f}" '
                   f'fill="{"#1f4e79" if key else "#7fa7cf"}"/>')
        if key:
            svg.append(f'<text x="{x(start) + 1:.1f}" y="{base + 14}" fill="#1f4e79">K</text>')
    svg.append(f'<line x1="{LEFT}" y1="{base}" x2="{W - RIGHT}" y2="{base}" stroke="#333"/>')
    for second in range(int(total) + 1):
        svg.append(f'<text x="{x(second) - 4:.1f}" y="{base + 30}" fill="#555">{second}s</text>')
    pings = 222
    svg.append(f'<text x="8" y="{pings + 4}">pings</text>')
    for n, latency in enumerate(LATENCIES):
        at = x((n + 1) * total / len(LATENCIES))
        svg.append(f'<circle cx="{at:.1f}" cy="{pings}" r="4" fill="#c55a11"/>')
        svg.append(f'<text x="{at - 14:.1f}" y="{pings + 20}" fill="#c55a11">{latency} ms</text>')
    latency_ms = sidecar.get("latency_ms") or {}
    reconnects = sidecar.get("reconnects") or []
    if reconnects:
        at = x(sum(seconds for _, seconds, _, _ in parts[:DROP_AFTER]))
        first: dict[str, object] = reconnects[0]  # type: ignore[index]
        svg.append(f'<line x1="{at:.1f}" y1="58" x2="{at:.1f}" y2="{base + 18}" '
                   f'stroke="#c00000" stroke-dasharray="5,4" stroke-width="2"/>')
        gap = float(first.get("after_ms", 0)) / 1000  # type: ignore[arg-type]
        text = (f"connection lost ({first.get('previous_close_code')}), the bot back "
                f"{gap:.1f} s later: the same file goes on")
        svg.append(f'<text x="{at - 6:.1f}" y="70" fill="#c00000" text-anchor="end">'
                   f"{escape(text)}</text>")
    legend = (f"dark: a fragment that starts with a keyframe (K); pings {sidecar['pings']}, "
              f"latency min/median/max {latency_ms.get('min', 0):.0f}/"  # type: ignore[union-attr]
              f"{latency_ms.get('median', 0):.0f}/{latency_ms.get('max', 0):.0f} ms; "  # type: ignore[union-attr]
              f"{sidecar['connections']} connections; ended by {sidecar['end_reason']}")
    svg.append(f'<text x="{LEFT}" y="42" fill="#555">{escape(legend)}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def make() -> str:
    with tempfile.TemporaryDirectory() as directory:
        data, sidecar = record(Path(directory))
    return draw(data, sidecar)


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(make(), encoding="utf-8")
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
