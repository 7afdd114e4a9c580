"""The live page in a real browser (Debian's Chromium, headless, driven by Playwright) while a
bot streams real fMP4 into ``serve`` at its real rate: with hls.js and with the WebSocket relay
(MSE), the ``<video>``'s ``currentTime`` advances and frames are decoded (screenshots in
``test-artifacts/live/``); after the stream ended the same HLS page plays the recording from
its start."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from media import Media, make_fmp4
from services import artifacts_dir, browser

from .test_live import CHUNK, Bot
from .test_serve import serving

SECONDS = 14.0


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Media:
    """14 s, a keyframe (so a fragment, an HLS segment) every second."""
    return make_fmp4(Path(str(media_dir)) / "live-14s.mp4", duration_s=SECONDS,
                     keyframe_interval_s=1.0)


def playing(page: Any, timeout: float = 30.0) -> tuple[float, float, int]:
    """Wait until the video plays: (currentTime then, currentTime 1.5 s later, frames)."""
    try:
        page.wait_for_function(
            "() => { const v = document.getElementById('video');"
            " return v.currentTime > 0.3 && v.readyState >= 2; }", timeout=timeout * 1000)
    except Exception as exc:
        state = page.evaluate(
            "(() => { const v = document.getElementById('video'); return {status:"
            " document.getElementById('status').textContent, state: window.liveState,"
            " time: v.currentTime, ready: v.readyState, error: v.error && v.error.message,"
            " buffered: v.buffered.length ? [v.buffered.start(0), v.buffered.end(0)] : []};"
            " })()")
        raise AssertionError(f"{page.url}: the video does not play: {state}") from exc
    first = float(page.evaluate("document.getElementById('video').currentTime"))
    time.sleep(1.5)
    later = float(page.evaluate("document.getElementById('video').currentTime"))
    frames = int(page.evaluate(
        "(() => { const v = document.getElementById('video');"
        " const q = v.getVideoPlaybackQuality();"
        " return Math.max(q.totalVideoFrames, window.liveState.frames); })()"))
    return first, later, frames


def test_the_page_plays_live_and_then_the_recording(tmp_path: Path, clip: Media) -> None:
    out = artifacts_dir("live")
    argv = ("--port", "0", "--output", str(tmp_path / "rec"), "--token", "bots",
            "--viewer-token", "watch")
    chunks = -(-len(clip.data) // CHUNK)
    with serving(tmp_path, *argv) as (port, _log), browser() as b:
        page_url = f"http://127.0.0.1:{port}/live/live-page/?token=watch"
        bot = Bot(port, "live-page", clip.data, "bots", SECONDS / chunks)
        hls = b.new_page(viewport={"width": 480, "height": 400})
        hls.goto(page_url)  # before the stream: the page waits for it
        bot.start()
        ws = b.new_page(viewport={"width": 480, "height": 400})
        ws.goto(page_url + "&mode=ws")
        behind: dict[str, float] = {}
        first, later, frames = playing(hls)
        # The media the bot has sent (at its real rate) minus what the page shows.
        behind["hls"] = time.monotonic() - bot.started - later
        assert later > first and frames > 0, (first, later, frames)
        assert bot.is_alive()  # live: the bot is still streaming
        hls.screenshot(path=str(out / "hls-live.png"))
        first, later, frames = playing(ws)
        behind["ws"] = time.monotonic() - bot.started - later
        assert later > first and frames > 0, (first, later, frames)
        assert "live (avc1." in ws.inner_text("#status")
        ws.screenshot(path=str(out / "ws-live.png"))
        bot.join(SECONDS + 30)
        assert bot.code == 1000
        ended = b.new_page(viewport={"width": 480, "height": 400})
        ended.goto(page_url)
        first, later, frames = playing(ended)
        assert first < SECONDS / 2 and later > first and frames > 0, (first, later)
        ended.wait_for_function(
            "() => document.getElementById('status').textContent.includes('recording')",
            timeout=10_000)
        duration = float(ended.evaluate("document.getElementById('video').duration"))
        assert abs(duration - SECONDS) < 1.5, duration
        ended.screenshot(path=str(out / "hls-recording.png"))
    # How far behind the bot each mode plays (docs/live.md quotes it), kept with the pictures.
    (out / "latency.json").write_text(json.dumps(
        {mode: round(seconds, 2) for mode, seconds in behind.items()}) + "\n")
    print(f"live view behind the bot: {behind}")
