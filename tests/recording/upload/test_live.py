"""Recordings uploaded while they are recorded, against a real S3 server (SeaweedFS): the
object byte for byte the local file and decodable, parts in the bucket before the stream
ends, the moov part uploaded again after ``--index``, the storage killed and restarted in the
middle of a meeting, refusals (throttling, 5xx, 403) retried, a Complete whose answer was
lost, an upload aborted behind our back, ``--keep-local false``."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from media import Media, fragment_spans, probe
from services import S3Server, s3_server

from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.upload import MIN_PART_SIZE
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
    record,
    send,
    sink_for,
    storage,
    until,
    uploader,
    uploads,
)


def listed_parts(client: Any, bucket: str) -> list[dict[str, Any]]:
    found = uploads(client, bucket)
    if not found:
        return []
    (upload,) = found
    parts: list[dict[str, Any]] = client.list_parts(
        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
    return parts


def check_parts(records: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """The journal's parts: numbered 1..N once each, contiguous from byte 0 to ``size``, each
    but the last at least 5 MiB. Returns them."""
    parts = [r for r in records if r["op"] == "part"]
    assert [p["n"] for p in parts] == list(range(1, len(parts) + 1))
    assert parts[0]["start"] == 0 and parts[-1]["end"] == size
    for before, after in itertools.pairwise(parts):
        assert before["end"] == after["start"]
        assert before["end"] - before["start"] >= MIN_PART_SIZE
    return parts


def test_uploaded_while_recording_byte_for_byte(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    metrics = Metrics()
    up = uploader(storage(bucket), metrics=metrics)
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)], metrics=metrics)
    client = s3.client()
    data = clip20.data
    handler = open_stream(recorder, "bot-live", speaker_name="Ada Lovelace")

    send(handler, data, 0, 13_000_000)
    # While the stream goes on: two parts in the bucket, nothing complete yet, the bucket
    # behind by less than a part.
    parts = until(lambda: len(listed_parts(client, bucket)) >= 2 and listed_parts(client, bucket),
                  what="two parts in the bucket")
    assert all(p["Size"] >= MIN_PART_SIZE for p in parts)
    assert objects(client, bucket) == {}
    assert up.snapshot()["lag_bytes"] < 13_000_000 - 2 * MIN_PART_SIZE
    assert "meetstream_live_upload_lag_bytes" in metrics.render()

    send(handler, data, 13_000_000, len(data))
    end_stream(handler)
    recorder.close()

    (media,) = media_files(tmp_path)
    assert media.read_bytes() == data
    key = f"meet/bot-live/Ada Lovelace/{media.stem}.mp4"
    got = body(client, bucket, key)
    assert got == data
    copy = tmp_path / "from-bucket.mp4"
    copy.write_bytes(got)
    decoded = probe(copy)
    assert decoded.video_frames == clip20.video_frames
    assert decoded.audio_frames == clip20.audio_frames

    names = objects(client, bucket)
    assert set(names) == {key, key[:-4] + ".json", key.rsplit("/", 1)[0] + "/"
                          + f"{media.stem}.session.json"}
    assert body(client, bucket, key[:-4] + ".json") == media.with_suffix(".json").read_bytes()
    assert json.loads(body(client, bucket, key.rsplit("/", 1)[0] + f"/{media.stem}.session.json"))[
        "state"] == "finished"
    assert uploads(client, bucket) == []

    records = journal_records(tmp_path)
    parts = check_parts(records, len(data))
    assert len(parts) == 3
    _, spans = fragment_spans(data)  # each part but the last ends where a fragment does
    assert {p["end"] for p in parts[:-1]} <= {offset + size for offset, size in spans}
    (complete,) = [r for r in records if r["op"] == "complete"]
    assert complete["size"] == len(data) and complete["parts"] == 3
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == complete["crc32"]
    text = metrics.render()
    assert f'meetstream_live_upload_parts_total{{target="s3://{bucket}/meet"}} 3' in text
    assert "meetstream_live_upload_lag_bytes 0" in text
    assert (f'meetstream_live_upload_events_total{{event="completed",target="s3://{bucket}/meet"}}'
            f" 1") in text
    assert 'meetstream_live_sink_handled_events_total{sink="upload"' in text


def test_index_uploads_the_moov_part_again(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    up = uploader(storage(bucket))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)], index=True)
    record(recorder, clip20.data)
    recorder.close()
    (media,) = media_files(tmp_path)
    final = media.read_bytes()
    assert final != clip20.data  # durations patched, mfra appended
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == final
    records = journal_records(tmp_path)
    numbers = [r["n"] for r in records if r["op"] == "part"]
    assert numbers.count(1) == 2 and numbers.count(2) == 1  # part 1 again, only it
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(final)
    assert probe(copy).duration_s == pytest.approx(clip20.duration_s, abs=0.1)


def test_small_recording_is_one_put(fmp4_medium: Media, s3: S3Server, bucket: str,
                                    tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, uploader(storage(bucket)))])
    record(recorder, fmp4_medium.data, "small")
    recorder.close()
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == fmp4_medium.data
    ops = [r["op"] for r in journal_records(tmp_path)]
    assert ops == ["begin", "complete", "sidecar", "manifest"]


def test_storage_killed_mid_meeting_nothing_lost_nothing_twice(
    clip20: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_server() as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        bucket = s3.create_bucket("crash")
        metrics = Metrics()
        up = uploader(storage(bucket), metrics=metrics)
        recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)], metrics=metrics)
        data = clip20.data
        handler = open_stream(recorder, "bot-crash")
        send(handler, data, 0, 7_000_000)
        until(lambda: listed_parts(s3.client(), bucket), what="a first part")

        s3.stop(kill=True)  # the storage crashes in the middle of the meeting
        send(handler, data, 7_000_000, 15_000_000)
        until(lambda: up.snapshot()["failures"], what="failed requests")
        snapshot = up.snapshot()
        assert snapshot["lag_bytes"] >= 15_000_000 - 2 * MIN_PART_SIZE
        assert snapshot["parts_pending"] >= 1
        assert 'kind="network"' in metrics.render()
        facts = recorder.files.facts(handler.stream.part.part)  # type: ignore[union-attr]
        assert facts is not None and facts.lost_bytes == 0  # the recording never waited

        s3.start()
        send(handler, data, 15_000_000, len(data))
        end_stream(handler)
        recorder.close()

        (media,) = media_files(tmp_path)
        (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
        assert body(s3.client(), bucket, key) == media.read_bytes() == data
        check_parts(journal_records(tmp_path), len(data))
        assert uploads(s3.client(), bucket) == []  # no upload left behind


def test_throttling_5xx_and_403_are_retried(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    flaky = FlakyClient(make_client(timeout=5.0))
    flaky.fail("upload_part", lambda: client_error("SlowDown", 503), 3)
    flaky.fail("upload_part", lambda: client_error("InternalError", 500), 2)
    flaky.fail("create_multipart_upload", lambda: client_error("AccessDenied", 403), 2)
    up = uploader(storage(bucket, client=flaky))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)])
    record(recorder, clip20.data)
    recorder.close()
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == clip20.data
    failures = up.snapshot()["failures"]
    url = f"s3://{bucket}/meet"
    assert failures == {(url, "throttled"): 3, (url, "server"): 2, (url, "auth"): 2}
    check_parts(journal_records(tmp_path), len(clip20.data))


def test_a_complete_whose_answer_was_lost(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Complete reached the storage, its answer did not reach us: the retry finds the
    upload gone (NoSuchUpload, as S3 may answer; SeaweedFS answers a second Complete with
    success, so that answer is injected) and the object there, whole: it is complete, not
    uploaded again."""
    from botocore.exceptions import ReadTimeoutError

    flaky = FlakyClient(make_client(timeout=5.0))
    flaky.fail("complete_multipart_upload",
               lambda: ReadTimeoutError(endpoint_url="http://storage"), after=True)
    flaky.fail("complete_multipart_upload", lambda: client_error("NoSuchUpload", 404))
    up = uploader(storage(bucket, client=flaky))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)])
    record(recorder, clip20.data)
    recorder.close()
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == clip20.data
    ops = [r["op"] for r in journal_records(tmp_path)]
    assert "restart" not in ops and ops.count("complete") == 1
    assert flaky.calls["complete_multipart_upload"] == 2


def test_an_upload_aborted_behind_our_back_starts_again(
    clip20: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    up = uploader(storage(bucket))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)])
    client = s3.client()
    handler = open_stream(recorder)
    send(handler, clip20.data, 0, 7_000_000)
    until(lambda: listed_parts(client, bucket), what="a first part")
    (upload,) = uploads(client, bucket)
    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    send(handler, clip20.data, 7_000_000, len(clip20.data))
    end_stream(handler)
    recorder.close()
    (key,) = [k for k in objects(client, bucket) if k.endswith(".mp4")]
    assert body(client, bucket, key) == clip20.data
    ops = [r["op"] for r in journal_records(tmp_path)]
    assert ops.count("restart") == 1 and ops.count("create") == 2


def test_keep_local_false_removes_what_the_bucket_has(
    fmp4_medium: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    up = uploader(storage(bucket), keep_local=False)
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)])
    record(recorder, fmp4_medium.data)
    recorder.close()
    assert media_files(tmp_path) == []
    assert not list(tmp_path.rglob("*.upload.jsonl"))
    assert list(tmp_path.rglob("*.session.json"))  # the manifest stays (small)
    (key,) = [k for k in objects(s3.client(), bucket) if k.endswith(".mp4")]
    assert body(s3.client(), bucket, key) == fmp4_medium.data
    assert up.snapshot()["counts"][("removed_local", f"s3://{bucket}/meet")] == 1


def test_close_leaves_what_the_storage_refuses_to_the_journal(
    fmp4_medium: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A storage that refuses everything: the recording is finished locally at once, the
    close waits at most its drain timeout, and the journal holds the work for later."""
    flaky = FlakyClient(make_client(timeout=5.0))
    flaky.broken = lambda: client_error("ServiceUnavailable", 503, "PutObject")
    up = uploader(storage(bucket, client=flaky))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up, drain_timeout=0.5)])
    record(recorder, fmp4_medium.data)
    began = time.monotonic()
    recorder.close()
    assert time.monotonic() - began < 5
    (media,) = media_files(tmp_path)
    assert media.read_bytes() == fmp4_medium.data
    assert [r["op"] for r in journal_records(tmp_path)] == ["begin"]
    assert objects(s3.client(), bucket) == {}


def test_the_bucket_mirrors_a_path_template(
    fmp4_medium: Media, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    from meetstream_live.adapters.recording.upload import KeyTemplate

    up = uploader(storage(bucket), key_template=KeyTemplate("{prefix}/{path}.mp4"))
    recorder = Recorder(tmp_path, sinks=[sink_for(tmp_path, up)],
                        path_template="{bot_id}/{start:%Y}/{start:%H%M%S}.mp4")
    record(recorder, fmp4_medium.data, "bot-layout")
    recorder.close()
    (media,) = media_files(tmp_path)
    relative = media.relative_to(tmp_path).as_posix()
    assert relative.count("/") == 2
    assert body(s3.client(), bucket, f"meet/{relative}") == fmp4_medium.data
