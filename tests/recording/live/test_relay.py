"""The WebSocket relay: a viewer gets a JSON header whose codecs come from the init segment, the
init segment, then fragments from the latest keyframe on, decodable as they come; a viewer that
does not read is skipped forward to the next keyframe (counted, bounded), and never holds up
the recording; over a real server on every socket adapter."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
from conformance.servers import running_server
from media import Media, fragment_spans
from websockets.sync.client import connect

from meetstream_live import Disconnected, MediaChunk, ServerConfig, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo, ServerOptions
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.live import LiveRegistry, codecs_of
from meetstream_live.adapters.recording.live.relay import VIEWER_PATHS, LiveRelay, RelayViewer
from meetstream_live.adapters.sync import SyncBot


def frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def expected_codecs(media: Media) -> str:
    """From PyAV's view of the file: the avcC's profile, compatibility and level bytes."""
    with av.open(str(media.path)) as container:
        extradata = container.streams.video[0].codec_context.extradata
        assert extradata is not None
        video = "avc1." + extradata[1:4].hex()
        audio = container.streams.audio[0].codec_context.profile
    assert audio == "LC"
    return f"{video},mp4a.40.2"


def test_codecs_come_from_avcc_and_esds(fmp4_small: Media) -> None:
    init_end, _ = fragment_spans(fmp4_small.data)
    assert ",".join(codecs_of(fmp4_small.data[:init_end])) == expected_codecs(fmp4_small)
    assert codecs_of(b"") == [] and codecs_of(b"\0\0\0\x08moov\xff\xff") == []


class Info:
    """A viewer connection without a socket: it records wakes and the close."""

    def __init__(self, path: str) -> None:
        self.wakes = 0
        self.closed: tuple[int, str] | None = None
        self.info = ConnectionInfo("127.0.0.1:1", path, "", (), False,
                                   close=self._close, wake=self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    def _close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@contextmanager
def recording(tmp_path: Path, relay: LiveRelay, bot_id: str = "bot-r") -> Iterator[
        tuple[Recorder, object]]:
    recorder = Recorder(tmp_path / "rec", sinks=[LiveRegistry(), relay])
    handler = recorder(ConnectionInfo("127.0.0.1:2", "/", "", (), False))
    handler.on_start(StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start"}))
    try:
        yield recorder, handler
    finally:
        recorder.close()


def feed(handler: object, data: bytes, start: int, end: int) -> None:
    for offset in range(start, end, 16384):
        handler.on_chunk(MediaChunk(data[offset:min(offset + 16384, end)], offset))  # type: ignore[attr-defined]


def drain(viewer: RelayViewer) -> list[bytes | str]:
    out: list[bytes | str] = []
    while True:
        got = viewer.pull()
        if not got:
            return out
        out += got


def test_a_viewer_that_joins_mid_stream_starts_at_the_latest_keyframe(
        tmp_path: Path, fmp4_medium: Media) -> None:
    data = fmp4_medium.data
    init_end, spans = fragment_spans(data)
    relay = LiveRelay()
    with recording(tmp_path, relay) as (recorder, handler):
        feed(handler, data, 0, spans[5][0] + spans[5][1])  # six fragments
        assert recorder.flush(10)
        conn = Info("/live/bot-r/ws")
        viewer = relay.viewer(conn.info)
        relay._pool.submit(lambda: None).result()  # the catch-up ran
        header, init, *fragments = drain(viewer)
        assert isinstance(header, str)
        doc = json.loads(header)
        assert doc["type"] == "header" and doc["bot_id"] == "bot-r" and doc["part"] == 1
        assert doc["codecs"] == expected_codecs(fmp4_medium)
        assert doc["mime"] == f'video/mp4; codecs="{doc["codecs"]}"'
        assert init == data[:init_end]
        # Every fragment of this file starts on a keyframe: the latest one only.
        assert fragments == [data[spans[5][0]:spans[5][0] + spans[5][1]]]
        feed(handler, data, spans[6][0], len(data))
        handler.on_end(StreamEnded(6.0))
        handler.on_disconnect(Disconnected(1000, "", True))
        assert recorder.flush(10)
        rest = drain(viewer)
        assert rest[-1] == json.dumps({"type": "end"})
        live = [m for m in rest[:-1] if isinstance(m, bytes)]
        end = spans[-1][0] + spans[-1][1]  # (ffmpeg's mfra after it is no fragment)
        assert b"".join(live) == data[spans[6][0]:end]
        assert frames(init + b"".join(fragments) + b"".join(live)) == frames(
            data[:init_end] + data[spans[5][0]:end])
        assert viewer.pull() == [] and conn.closed == (1000, "stream ended")
        assert viewer.skips == 0


def test_a_viewer_that_does_not_read_is_skipped_to_a_keyframe_and_stays_bounded(
        tmp_path: Path, fmp4_subgop: Media) -> None:
    data = fmp4_subgop.data
    init_end, spans = fragment_spans(data)
    keyframes = {data[start:start + size] for i, (start, size) in enumerate(spans) if i % 4 == 0}
    limit = 120_000
    relay = LiveRelay(viewer_buffer=limit)
    with recording(tmp_path, relay) as (recorder, handler):
        conn = Info("/live/bot-r/ws")
        viewer = relay.viewer(conn.info)  # before the stream: it waits for it
        highest = 0
        got: list[bytes | str] = []
        for i, (start, size) in enumerate([(0, init_end), *spans]):
            feed(handler, data, start, start + size)
            assert recorder.flush(10)
            highest = max(highest, viewer.waiting_bytes)
            if i % 3 == 2:  # a viewer that reads now and then, slower than the stream
                got += drain(viewer)
        handler.on_end(StreamEnded(8.0))
        handler.on_disconnect(Disconnected(1000, "", True))
        assert recorder.flush(10)
        got += drain(viewer)
    assert highest <= limit + max(size for _, size in spans)
    (final,) = (tmp_path / "rec").rglob("*.mp4")
    end = spans[-1][0] + spans[-1][1]
    assert final.read_bytes() == data[:end]  # the recording never waited for the viewer
    assert viewer.skips >= 2 and viewer.skipped_fragments >= 2
    assert relay.stats()["bot-r/"]["skips"] == viewer.skips
    texts = [json.loads(m) for m in got if isinstance(m, str)]
    assert texts[0]["type"] == "header" and texts[-1] == {"type": "end"}
    assert {"type": "skipped", "skips": viewer.skips} in texts
    init = got[1]
    assert isinstance(init, bytes) and init == data[:init_end]
    # After each skip, what comes starts on a keyframe fragment and decodes from its start.
    runs: list[list[bytes]] = [[]]
    for message in got[2:]:
        if isinstance(message, str):
            runs.append([])
        else:
            runs[-1].append(message)
    runs = [run for run in runs if run]
    assert len(runs) >= 2
    for run in runs:
        assert run[0] in keyframes
        with av.open(io.BytesIO(init + b"".join(run))) as container:
            decoded = list(container.decode(container.streams.video[0]))
        assert decoded and decoded[0].key_frame


def test_fragments_are_read_once_for_many_viewers(tmp_path: Path, fmp4_small: Media) -> None:
    data = fmp4_small.data
    relay = LiveRelay()
    with recording(tmp_path, relay) as (recorder, handler):
        viewers = [relay.viewer(Info("/live/bot-r/ws").info) for _ in range(20)]
        feed(handler, data, 0, len(data))
        assert recorder.flush(10)
        got = [drain(v) for v in viewers]
    firsts = [m[2] for m in got]
    assert all(m is firsts[0] for m in firsts)  # one bytes object, shared
    assert all(m[1:] == got[0][1:] for m in got)


@pytest.mark.parametrize("adapter", ["asyncio", "sync", "trio"])
def test_the_relay_over_a_real_server(tmp_path: Path, fmp4_small: Media, adapter: str) -> None:
    relay = LiveRelay()
    recorder = Recorder(tmp_path / "rec", sinks=[relay])
    options = ServerOptions(
        config=ServerConfig(token="bots", viewer_token="watch", viewer_paths=VIEWER_PATHS),
        viewer_factory=relay.viewer,
    )
    got: list[bytes | str] = []
    try:
        with running_server(adapter, recorder, options) as port, connect(
                f"ws://127.0.0.1:{port}/live/bot-s/alice/ws?token=watch",
                open_timeout=5) as ws:
                done = threading.Event()

                def watch() -> None:
                    try:
                        for message in ws:
                            got.append(message)
                    finally:
                        done.set()

                threading.Thread(target=watch, daemon=True).start()
                bot = SyncBot.connect(f"ws://127.0.0.1:{port}/?token=bots")
                bot.send_start("bot-s", speaker_id="alice")
                for i in range(0, len(fmp4_small.data), 16384):
                    bot.send_chunk(fmp4_small.data[i:i + 16384])
                bot.send_end(2.0)
                assert bot.close().code == 1000
                assert done.wait(20)
                assert ws.close_code == 1000
    finally:
        recorder.close()
    header, init, *rest = got
    assert json.loads(header)["codecs"] == expected_codecs(fmp4_small)
    assert rest[-1] == json.dumps({"type": "end"})
    body = b"".join(m for m in rest if isinstance(m, bytes))
    assert isinstance(init, bytes)
    _, spans = fragment_spans(fmp4_small.data)
    assert init + body == fmp4_small.data[:spans[-1][0] + spans[-1][1]]
    assert frames(init + body) == fmp4_small.video_frames
