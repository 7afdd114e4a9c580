"""Uploads that go on after a restart, from the journal: the receiver SIGKILLed in the middle
of an upload (a real ``serve --upload`` process), parts the storage lists twice (SeaweedFS),
a local file that changed or is gone, a journal torn by the crash."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from media import Media
from services import S3Server

from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.upload.resume import resume_journals
from meetstream_live.adapters.recording.upload.s3 import make_client

from .common import (
    FlakyClient,
    body,
    client_error,
    end_stream,
    journal_records,
    media_files,
    objects,
    open_stream,
    send,
    sink_for,
    storage,
    until,
    uploader,
    uploads,
)

LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)/")


@contextmanager
def serving(
    output: Path, env: dict[str, str], *argv: str
) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    log_path = output.parent / f"serve-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", "0",
             "--output", str(output), "--log-level", "info", *argv],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        try:
            found = until(lambda: (proc.poll() is None and LISTENING.findall(log_path.read_text()))
                          or proc.poll() is not None, timeout=30, what="serve listening")
            assert proc.poll() is None, log_path.read_text()
            yield int(found[0]), proc, log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def interrupted(records: list[dict[str, Any]]) -> bool:
    return any(r["op"] == "part" for r in records)


def test_receiver_sigkilled_mid_upload_resumes_from_the_journal(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    output = tmp_path / "rec"
    data = clip20.data

    async def half_then_wait(port: int) -> AsyncioBot:
        bot = await AsyncioBot.connect(f"ws://127.0.0.1:{port}/")
        await bot.send_start("bot-kill")
        for offset in range(0, 13_000_000, 64 * 1024):
            await bot.send_chunk(data[offset:min(offset + 64 * 1024, 13_000_000)])
        return bot

    with serving(output, s3.env(), "--upload", f"s3://{bucket}/meet") as (port, proc, log):
        loop = asyncio.new_event_loop()
        try:
            bot = loop.run_until_complete(half_then_wait(port))
            # Killed once the journal says the bucket has at least a part.
            until(lambda: list(output.rglob("*.upload.jsonl"))
                  and interrupted(journal_records(output)), what="a journaled part")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            bot.abort()
        finally:
            loop.close()
    before = journal_records(output)
    (upload_id,) = [r["upload_id"] for r in before if r["op"] == "create"]
    done_before = [r["n"] for r in before if r["op"] == "part"]
    assert done_before and not any(r["op"] == "complete" for r in before)
    assert list(output.rglob("*.mp4.part"))  # the crash left the recording unfinished

    # The receiver comes back: recover() finishes the file, the journal resumes the upload.
    with serving(output, s3.env(), "--upload", f"s3://{bucket}/meet") as (_, _, log):
        client = s3.client()
        until(lambda: [k for k in objects(client, bucket) if k.endswith(".json")], timeout=30,
              what="the object and its sidecar")
    (media,) = media_files(output)
    recovered = media.read_bytes()
    assert recovered == data[: len(recovered)] and len(recovered) >= 12_000_000
    (key,) = [k for k in objects(client, bucket) if k.endswith(".mp4")]
    assert body(client, bucket, key) == recovered
    after = journal_records(output)
    assert [r["upload_id"] for r in after if r["op"] == "create"] == [upload_id]
    numbers = [r["n"] for r in after if r["op"] == "part"]
    assert numbers == list(range(1, len(numbers) + 1))  # none uploaded twice
    assert numbers[: len(done_before)] == done_before
    assert not any(r["op"] in ("keep", "restart") for r in after)
    assert uploads(client, bucket) == []
    assert "resuming 1 upload(s)" in log.read_text()


def partial(clip20: Media, bucket: str, root: Path, parts: int = 2) -> FlakyClient:
    """A recording whose upload stopped after ``parts`` parts (the storage then refused
    everything): the journal and the open upload are left as a crash would leave them."""
    flaky = FlakyClient(make_client(timeout=5.0))
    up = uploader(storage(bucket, client=flaky))
    recorder = Recorder(root, sinks=[sink_for(root, up, drain_timeout=0.3)])
    handler = open_stream(recorder, "bot-resume")
    send(handler, clip20.data, 0, len(clip20.data))
    until(lambda: sum(r["op"] == "part" for r in journal_records(root)) >= parts,
          what=f"{parts} parts")
    flaky.broken = lambda: client_error("ServiceUnavailable", 503)
    end_stream(handler)
    recorder.close()
    records = journal_records(root)
    assert not any(r["op"] == "complete" for r in records)
    return flaky


def resume(root: Path, bucket: str) -> Any:
    up = uploader(storage(bucket))
    up.start()
    assert resume_journals(root, up) == 1
    assert up.wait(30, all_done=True)
    up.close(1)
    return up


def test_a_part_the_storage_lists_twice(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """SeaweedFS lists every upload of a part number (in no fixed order) and Complete takes
    the bytes of the ETag it is given: a journaled part among the entries is there."""
    partial(clip20, bucket, tmp_path)
    client = s3.client()
    (upload,) = uploads(client, bucket)
    client.upload_part(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"],
                       PartNumber=1, Body=b"x" * (5 * 1024 * 1024))  # other bytes, later
    listed = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    assert [p["PartNumber"] for p in listed["Parts"]][:2] == [1, 1]

    resume(tmp_path, bucket)
    (media,) = media_files(tmp_path)
    (key,) = [k for k in objects(client, bucket) if k.endswith(".mp4")]
    assert body(client, bucket, key) == media.read_bytes() == clip20.data
    assert not any(r["op"] == "keep" for r in journal_records(tmp_path))


def test_a_journaled_part_the_storage_does_not_list(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """S3 keeps only the last upload of a part number: a journaled ETag it does not list
    (someone uploaded that number again) means the part is uploaded again, and the rest."""
    partial(clip20, bucket, tmp_path)
    (path,) = tmp_path.rglob("*.upload.jsonl")
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    index = next(i for i, r in enumerate(records) if r["op"] == "part" and r["n"] == 2)
    records[index]["etag"] = '"00000000000000000000000000000000"'
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    resume(tmp_path, bucket)
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == clip20.data
    assert {"op": "keep", "upto": 1} in journal_records(tmp_path)


def test_a_local_file_that_changed_since_the_parts_went_up(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """What the bucket has must be the file: a part whose bytes differ now (a power loss
    lost what the page cache held) is uploaded again, from there on."""
    partial(clip20, bucket, tmp_path)
    (media,) = media_files(tmp_path)
    records = journal_records(tmp_path)
    second = next(r for r in records if r["op"] == "part" and r["n"] == 2)
    with open(media, "r+b") as f:
        f.seek(second["start"] + 1000)
        f.write(b"\0" * 100)
    resume(tmp_path, bucket)
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == media.read_bytes() != clip20.data
    assert {"op": "keep", "upto": 1} in journal_records(tmp_path)


def test_a_recording_deleted_before_its_upload_finished(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    partial(clip20, bucket, tmp_path)
    (media,) = media_files(tmp_path)
    media.unlink()
    media.with_suffix(".json").unlink()
    up = resume(tmp_path, bucket)
    assert uploads(s3.client(), bucket) == []  # the abandoned upload is aborted
    assert not list(tmp_path.rglob("*.upload.jsonl"))
    assert up.snapshot()["counts"][("gave_up", f"s3://{bucket}/meet")] == 1


def test_a_journal_torn_by_the_crash(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    partial(clip20, bucket, tmp_path, parts=1)
    (path,) = tmp_path.rglob("*.upload.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"op":"part","n":9,"sta')  # the crash hit in the middle of an append
    resume(tmp_path, bucket)
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == clip20.data
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn record was cut before appending


@pytest.mark.parametrize("keep_local", [True, False])
def test_nothing_to_resume_once_done(
    fmp4_medium: Media, s3: S3Server, bucket: str, tmp_path: Path, keep_local: bool
) -> None:
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, uploader(storage(bucket),
                                                                     keep_local=keep_local))])
    handler = open_stream(recorder)
    send(handler, fmp4_medium.data, 0, len(fmp4_medium.data))
    end_stream(handler)
    recorder.close()
    up = uploader(storage(bucket))
    assert resume_journals(tmp_path, up) == 0
