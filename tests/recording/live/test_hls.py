"""Live HLS from the recording, against a real server: a bot streams real fMP4, the playlist
names byte ranges of the file being written (each segment from a keyframe fragment), PyAV
decodes what the playlist's URLs give while the stream is live and after it ended; Range
answers follow RFC 9110 (206, 416), the token is required, CORS when asked, and no path
reaches the disk."""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from conformance.servers import running_server
from media import Media

from meetstream_live import ServerConfig
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.live import LiveRegistry, LiveWeb
from meetstream_live.adapters.sync import SyncBot

TOKEN = "s3cret-viewer"


@dataclass
class Live:
    port: int
    registry: LiveRegistry
    output: Path

    def url(self, path: str, token: str | None = TOKEN) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}{path}" + (f"{sep}token={token}" if token else "")


@contextmanager
def live_server(tmp_path: Path, adapter: str = "asyncio", cors: tuple[str, ...] = (),
                token: str | None = TOKEN) -> Iterator[Live]:
    registry = LiveRegistry()
    recorder = Recorder(tmp_path / "rec", sinks=[registry])
    options = ServerOptions(
        config=ServerConfig(token="bots", viewer_token=token, http_prefixes=("/live/",)),
        http_handler=LiveWeb(registry, token=token, cors=cors),
    )
    try:
        with running_server(adapter, recorder, options) as port:
            yield Live(port, registry, tmp_path / "rec")
    finally:
        recorder.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_for(predicate: object, what: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


RANGE = re.compile(r"#EXT-X-BYTERANGE:(\d+)@(\d+)\n(\S+)")
MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)",BYTERANGE="(\d+)@(\d+)"')


def fetch_playlist_media(live: Live, base: str, text: str) -> tuple[bytes, list[bytes]]:
    """The init segment and every media segment the playlist names, each fetched by its
    byte range (206), as a player does."""
    uri, size, offset = MAP.findall(text)[0]
    pieces = []
    for length, start, segment_uri in [(size, offset, uri), *RANGE.findall(text)]:
        first, n = int(start), int(length)
        status, headers, body = get(f"{base}{segment_uri}",
                                    {"Range": f"bytes={first}-{first + n - 1}"})
        assert status == 206, (status, body[:100])
        assert headers["Content-Range"].startswith(f"bytes {first}-{first + n - 1}/")
        assert headers["Content-Type"] == "video/mp4"
        assert len(body) == n
        pieces.append(body)
    return pieces[0], pieces[1:]


def decoded_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream))


def test_a_stream_is_watched_while_recorded_then_the_same_url_is_the_recording(
        tmp_path: Path, fmp4_medium: Media) -> None:
    data = fmp4_medium.data
    with live_server(tmp_path) as live:
        bot = SyncBot.connect(f"ws://127.0.0.1:{live.port}/?token=bots")
        bot.send_start("bot-1")
        half = len(data) * 2 // 3
        for i in range(0, half, 16384):
            bot.send_chunk(data[i:min(i + 16384, half)])
        playlist_url = live.url("/live/bot-1/index.m3u8")

        def segments() -> int:
            status, _, body = get(playlist_url)
            return body.count(b"#EXTINF") if status == 200 else 0

        wait_for(lambda: segments() >= 1, "a first segment while live")
        status, headers, body = get(playlist_url)
        text = body.decode()
        assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
        assert headers["Cache-Control"] == "no-cache"
        assert "#EXT-X-VERSION:7" in text and "#EXT-X-PLAYLIST-TYPE:EVENT" in text
        assert "#EXT-X-ENDLIST" not in text
        assert "#EXT-X-PROGRAM-DATE-TIME:" in text
        assert f"1.mp4?token={TOKEN}" in text  # the token shown is carried into the URIs
        init, media = fetch_playlist_media(live, f"http://127.0.0.1:{live.port}/live/bot-1/",
                                           text)
        # Each segment alone after the init decodes from its first frame: it starts on a
        # keyframe fragment.
        for segment in media:
            assert decoded_frames(init + segment) > 0
        live_frames = decoded_frames(init + b"".join(media))
        assert 0 < live_frames < fmp4_medium.video_frames

        for i in range(half, len(data), 16384):
            bot.send_chunk(data[i:i + 16384])
        bot.send_end(6.0)
        assert bot.close().code == 1000
        wait_for(lambda: b"#EXT-X-ENDLIST" in get(playlist_url)[2], "the end of the stream")
        status, headers, body = get(playlist_url)
        text = body.decode()
        assert headers["Cache-Control"] == "private, max-age=60"
        init, media = fetch_playlist_media(live, f"http://127.0.0.1:{live.port}/live/bot-1/",
                                           text)
        # Every frame of the stream, from the final file the same URIs now name.
        assert decoded_frames(init + b"".join(media)) == fmp4_medium.video_frames
        durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", text)]
        assert sum(durations) == pytest.approx(fmp4_medium.duration_s, abs=0.1)
        assert all(d >= 2.0 for d in durations[:-1]), durations
        (final,) = live.output.rglob("*.mp4")
        status, _, whole = get(live.url("/live/bot-1/1.mp4"))
        assert status == 200 and whole == final.read_bytes()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, fmp4_small: Media) -> Iterator[Live]:
    """A server with one ended stream, ``bot-2`` speaker ``alice``."""
    tmp = tmp_path_factory.mktemp("live")
    with live_server(tmp, cors=("https://app.example",)) as live:
        bot = SyncBot.connect(f"ws://127.0.0.1:{live.port}/?token=bots")
        bot.send_start("bot-2", speaker_id="alice")
        bot.send_chunk(fmp4_small.data)
        bot.send_end(2.0)
        assert bot.close().code == 1000
        wait_for(lambda: (s := live.registry.get("bot-2", None)) is not None and s.ended,
                 "the stream's end")
        yield live


def test_ranges_follow_rfc_9110(recorded: Live) -> None:
    stream = recorded.registry.get("bot-2", "alice")
    assert stream is not None
    size = stream.parts[0].path.stat().st_size
    url = recorded.url("/live/bot-2/alice/1.mp4")
    whole = get(url)[2]
    assert len(whole) == size
    for header, first, last in [("bytes=0-99", 0, 99), ("bytes=100-", 100, size - 1),
                                ("bytes=-50", size - 50, size - 1),
                                (f"bytes=10-{size + 1000}", 10, size - 1)]:
        status, headers, body = get(url, {"Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert headers["Accept-Ranges"] == "bytes"
        assert body == whole[first:last + 1]
    for header in [f"bytes={size}-", "bytes=-0", f"bytes={size + 5}-{size + 10}"]:
        status, headers, _ = get(url, {"Range": header})
        assert status == 416, header
        assert headers["Content-Range"] == f"bytes */{size}"
    for header in ["items=0-5", "bytes=5-2", "bytes=0-1,5-6", "bytes=x-"]:  # ignored: 200
        status, _, body = get(url, {"Range": header})
        assert status == 200 and body == whole, header


def test_every_live_path_needs_the_viewer_token(recorded: Live) -> None:
    for path in ["/live/", "/live/streams.json", "/live/bot-2/", "/live/bot-2/index.m3u8",
                 "/live/bot-2/alice/1.mp4", "/live/_static/hls.min.js"]:
        for token in [None, "bots", "s3cret-viewe", TOKEN + "x"]:
            status, headers, body = get(recorded.url(path, token))
            assert status == 401, (path, token)
            assert headers["WWW-Authenticate"] == "Bearer"
            assert TOKEN.encode() not in body
        assert get(recorded.url(path))[0] == 200, path
        bearer = get(recorded.url(path, None), {"Authorization": f"Bearer {TOKEN}"})
        assert bearer[0] == 200, path


@pytest.mark.parametrize("path", [
    "/live/..%2F..%2Fetc/passwd/1.mp4", "/live/../../etc/passwd", "/live/%2e%2e/1.mp4",
    "/live/bot-2/..%2Falice/1.mp4", "/live/bot-2/alice/..%2F..%2F1.mp4",
    "/live/_static/..%2Fweb.py", "/live/_static/../registry.py", "/live/bot-2/alice/0.mp4",
    "/live/bot-2/alice/01.mp4", "/live/bot-2/alice/1.mp4.part", "/live/bot-2/alice/1.json",
    "/live/bot-2/%00/1.mp4", "/live/nobody/1.mp4",
])
def test_no_path_reaches_the_disk(recorded: Live, path: str) -> None:
    status, _, body = get(recorded.url(path))
    assert status in (400, 404), (path, status)
    assert b"import" not in body and b"root:" not in body


def test_cors_only_for_the_origins_given(recorded: Live) -> None:
    url = recorded.url("/live/bot-2/alice/index.m3u8")
    status, headers, _ = get(url, {"Origin": "https://app.example"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Content-Range" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = get(url, {"Origin": "https://evil.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    preflight = urllib.request.Request(url, method="OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Headers": "authorization,range"})
    with urllib.request.urlopen(preflight, timeout=10) as answer:
        assert answer.status == 204
        assert "Range" in answer.headers["Access-Control-Allow-Headers"]
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_the_list_and_the_static_files(recorded: Live) -> None:
    import json

    status, _, body = get(recorded.url("/live/streams.json"))
    (stream,) = json.loads(body)["streams"]
    assert stream["bot_id"] == "bot-2" and stream["speaker"] == "alice"
    assert stream["state"] == "ended" and stream["verdict"] == "complete so far"
    assert stream["bitrate"] > 0
    status, headers, body = get(recorded.url("/live/"))
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'href="bot-2/alice/?token=' in body
    status, headers, body = get(recorded.url("/live/_static/hls.min.js"))
    assert status == 200 and len(body) > 100_000 and headers["Content-Type"].startswith(
        "application/javascript")
    status, _, body = get(recorded.url("/live/_static/hls.js.LICENSE"))
    assert b"Apache License" in body


@pytest.mark.parametrize("adapter", ["sync", "trio"])
def test_other_adapters_serve_the_playlist(tmp_path: Path, fmp4_small: Media,
                                           adapter: str) -> None:
    with live_server(tmp_path, adapter) as live:
        bot = SyncBot.connect(f"ws://127.0.0.1:{live.port}/?token=bots")
        bot.send_start("bot-3")
        bot.send_chunk(fmp4_small.data)
        bot.send_end(2.0)
        assert bot.close().code == 1000
        url = live.url("/live/bot-3/index.m3u8")
        wait_for(lambda: b"#EXT-X-ENDLIST" in get(url)[2], "the end")
        text = get(url)[2].decode()
        init, media = fetch_playlist_media(live, f"http://127.0.0.1:{live.port}/live/bot-3/",
                                           text)
        assert decoded_frames(init + b"".join(media)) == fmp4_small.video_frames
