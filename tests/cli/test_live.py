"""``serve``'s live view as operators run it (on by default): while a bot streams, ``/live/``
lists it, its playlist names the file being written and the relay sends the header, the init
segment and fragments; every ``/live/`` path and the relay's upgrade want the token (the bots'
token, or ``--viewer-token``); ``--live off`` serves none of it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from media import Media
from websockets.sync.client import connect

from meetstream_live.adapters.sync import SyncBot

from .test_serve import serving

CHUNK = 32 * 1024


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Bot(threading.Thread):
    """Streams ``data`` (paced: ``pause`` seconds between chunks), then ends; ``half`` is set
    once half of it is sent."""

    def __init__(self, port: int, bot_id: str, data: bytes, token: str, pause: float) -> None:
        super().__init__(daemon=True)
        self.url = f"ws://127.0.0.1:{port}/?token={token}"
        self.bot_id, self.data, self.pause = bot_id, data, pause
        self.half = threading.Event()
        self.code: int | None = None
        self.started = 0.0  # time.monotonic() at the first chunk

    def run(self) -> None:
        bot = SyncBot.connect(self.url)
        bot.send_start(self.bot_id)
        self.started = time.monotonic()
        for i in range(0, len(self.data), CHUNK):
            bot.send_chunk(self.data[i:i + CHUNK])
            if i >= len(self.data) // 2:
                self.half.set()
            time.sleep(self.pause)
        bot.send_end(6.0)
        self.code = bot.close().code


def test_the_live_view_while_a_bot_streams(tmp_path: Path, fmp4_medium: Media) -> None:
    argv = ("--port", "0", "--output", str(tmp_path / "rec"), "--token", "bots",
            "--viewer-token", "watch")
    with serving(tmp_path, *argv) as (port, log):
        base = f"http://127.0.0.1:{port}/live"
        bot = Bot(port, "live-1", fmp4_medium.data, "bots", 0.05)
        got: list[bytes | str] = []
        with connect(f"ws://127.0.0.1:{port}/live/live-1/ws?token=watch",
                     open_timeout=5) as ws:
            bot.start()
            assert bot.half.wait(30)
            status, body = get(f"{base}/streams.json?token=watch")
            assert status == 200
            (listed,) = json.loads(body)["streams"]
            assert listed["bot_id"] == "live-1" and listed["state"] == "live"
            status, body = get(f"{base}/live-1/index.m3u8?token=watch")
            assert status == 200 and b"#EXT-X-MAP" in body and b"#EXT-X-ENDLIST" not in body
            assert get(f"{base}/live-1/index.m3u8")[0] == 401
            assert get(f"{base}/live-1/index.m3u8?token=bots")[0] == 401
            for message in ws:
                got.append(message)
        bot.join(30)
        assert bot.code == 1000
        status, body = get(f"{base}/live-1/index.m3u8?token=watch")
        assert status == 200 and b"#EXT-X-ENDLIST" in body
        assert "live view on /live/ (token required)" in log.read_text()
    header = json.loads(got[0])
    assert header["type"] == "header" and header["codecs"].startswith("avc1.")
    assert got[1] == fmp4_medium.data[:len(got[1])]  # the init segment
    assert got[-1] == json.dumps({"type": "end"})
    assert sum(1 for m in got if isinstance(m, bytes)) >= 5


def test_the_relay_refuses_a_viewer_without_the_token(tmp_path: Path) -> None:
    argv = ("--port", "0", "--output", str(tmp_path / "rec"), "--token", "bots")
    with serving(tmp_path, *argv) as (port, _log):
        with pytest.raises(Exception, match="401"), connect(
                f"ws://127.0.0.1:{port}/live/x/ws", open_timeout=5):
            pass
        # Without --viewer-token, the bots' token lets a viewer in.
        assert get(f"http://127.0.0.1:{port}/live/?token=bots")[0] == 200


def test_live_off_serves_none_of_it(tmp_path: Path) -> None:
    argv = ("--port", "0", "--output", str(tmp_path / "rec"), "--live", "off")
    with serving(tmp_path, *argv) as (port, log):
        # No /live/ route: the path is the bots' as any other (426: upgrade to stream).
        for path in ("/live/", "/live/streams.json", "/live/_static/hls.min.js"):
            status, body = get(f"http://127.0.0.1:{port}{path}")
            assert status == 426 and b"Live streams" not in body and b"Hls" not in body
    assert "live view on" not in log.read_text()
