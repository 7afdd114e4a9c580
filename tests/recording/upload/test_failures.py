"""A storage that fails never costs the meeting: the fallback target takes over from a
primary that keeps failing (its abandoned upload aborted once it answers again); a stalled or
stopped storage never makes a pong or the local recording wait (issue 13 item 6)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from media import Media
from services import S3Server, s3_server

from meetstream_live import BotClosed, PongReceived, ServerConfig
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.asyncio import AsyncioBot, serve
from meetstream_live.adapters.recording import FinishedRecording, Recorder
from meetstream_live.adapters.recording.upload import RetryPolicy, Storage, Target
from meetstream_live.adapters.recording.upload.resume import resume_journals

from .common import (
    body,
    end_stream,
    journal_records,
    media_files,
    objects,
    open_stream,
    send,
    sink_for,
    until,
    uploader,
    uploads,
)


def client_of(server: S3Server, **config: Any) -> Any:
    return server.client(request_checksum_calculation="when_required",
                         response_checksum_validation="when_required", **config)


def test_the_fallback_takes_over_and_the_abandoned_upload_is_aborted(
    clip20: Media, tmp_path: Path
) -> None:
    with s3_server() as primary, s3_server() as fallback:
        primary.create_bucket("main")
        fallback.create_bucket("spare")
        fast = RetryPolicy(attempts=1)
        targets = [Storage(Target("main", "meet"), client_of(primary, connect_timeout=1),
                           policy=fast),
                   Storage(Target("spare", "meet"), client_of(fallback), policy=fast)]
        up = uploader(*targets, failover_after=0.5)
        recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)])
        data = clip20.data
        handler = open_stream(recorder, "bot-fo")
        send(handler, data, 0, 7_000_000)
        until(lambda: journal_records(tmp_path) and any(
            r["op"] == "part" for r in journal_records(tmp_path)), what="a part on the primary")
        primary.stop(kill=True)
        send(handler, data, 7_000_000, len(data))
        end_stream(handler)
        recorder.close()

        (key,) = [k for k in objects(client_of(fallback), "spare") if k.endswith(".mp4")]
        assert body(client_of(fallback), "spare", key) == data
        ops = [r["op"] for r in journal_records(tmp_path)]
        assert ops.index("abandon") < ops.index("switch") < ops.index("complete")
        assert "aborted" not in ops  # the primary was down to the end
        assert up.snapshot()["up"] == {"s3://main/meet": 0, "s3://spare/meet": 1}

        # The primary answers again: the next start aborts what was abandoned there.
        primary.start()
        assert len(uploads(client_of(primary), "main")) == 1
        again = uploader(Storage(Target("main", "meet"), client_of(primary), policy=fast),
                         Storage(Target("spare", "meet"), client_of(fallback), policy=fast))
        again.start()
        assert resume_journals(tmp_path, again) == 1
        assert again.wait(20, all_done=True)
        again.close(1)
        assert uploads(client_of(primary), "main") == []
        assert "aborted" in [r["op"] for r in journal_records(tmp_path)]
        assert objects(client_of(primary), "main") == {}


@contextmanager
def stalled_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and reads requests but never answers (a
    storage hung behind a load balancer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(False)
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("storage_state", ["stalled", "stopped"])
def test_pongs_and_the_recording_never_wait_for_the_storage(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path, storage_state: str
) -> None:
    """Uploads hang (a storage that never answers: each request waits for its 2 s timeout)
    or fail (the storage stopped) for the whole meeting: every ping is answered at once and
    the local recording is final as soon as the stream ends."""
    import boto3
    from botocore.config import Config

    with stalled_endpoint() as stalled:
        endpoint = stalled if storage_state == "stalled" else s3.endpoint_url
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
            config=Config(connect_timeout=1, read_timeout=2,
                          retries={"total_max_attempts": 1},
                          request_checksum_calculation="when_required"))
        up = uploader(Storage(Target(bucket, "meet"), client,
                              policy=RetryPolicy(attempts=3, base=0.2, cap=1.0)),
                      threads=2)
        finished: list[FinishedRecording] = []
        recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up, drain_timeout=0.2)],
                            on_finish=finished.append)
        if storage_state == "stopped":
            s3.stop()
        try:
            round_trips, pings, ended = asyncio.run(meeting(recorder, clip20.data))
            assert until(lambda: finished, timeout=5, what="the recording finalized")
            final_after = time.monotonic() - ended
            # The uploads were in trouble meanwhile (each hung for seconds, or failed).
            assert up.snapshot()["failures"] or any(job.busy for job in up.jobs())
        finally:
            if storage_state == "stopped":
                s3.start()
        recorder.close()
    assert len(round_trips) == pings >= 30
    assert max(round_trips) < 500, sorted(round_trips)[-5:]
    assert final_after < 2.0
    (media,) = media_files(tmp_path)
    assert media.read_bytes() == clip20.data
    assert objects(s3.client(), bucket) == {}


async def meeting(recorder: Recorder, data: bytes) -> tuple[list[float], int, float]:
    """One bot streams ``data`` in about 4 s (five times real time: parts are due while it
    goes on) with a ping every 0.1 s; returns the pong round trips, the pings sent, and when
    the stream ended."""
    options = ServerOptions(config=ServerConfig())
    round_trips: list[float] = []
    async with serve(recorder, "127.0.0.1", 0, options) as server:
        bot = await AsyncioBot.connect(f"ws://127.0.0.1:{server.port}/")
        await bot.send_start("bot-pong")

        async def read() -> BotClosed:
            while True:
                event = await bot.next_event()
                if isinstance(event, PongReceived) and event.round_trip_ms is not None:
                    round_trips.append(event.round_trip_ms)
                elif isinstance(event, BotClosed):
                    return event

        reader = asyncio.create_task(read())
        pings = 0
        step = 64 * 1024
        for index, offset in enumerate(range(0, len(data), step)):
            await bot.send_chunk(data[offset:offset + step])
            if index % 6 == 0:
                await bot.send_ping(pings, time.time_ns() // 1_000_000)
                pings += 1
            await asyncio.sleep(0.015)
        await asyncio.sleep(0.3)
        await bot.send_end(20.0)
        ended = time.monotonic()
        await bot.start_close()
        closed = await asyncio.wait_for(reader, 10)
        assert closed.code == 1000
    return round_trips, pings, ended
