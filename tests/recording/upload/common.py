"""Helpers of the upload tests: a stream through the recorder's handler, the bucket's view,
and a boto3 client that fails where it is told to (the storage's refusals, injected)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder, RecordingHandler
from meetstream_live.adapters.recording.upload import (
    RetryPolicy,
    Storage,
    Target,
    UploadConfig,
    Uploader,
    UploadSink,
)
from meetstream_live.adapters.recording.upload.s3 import make_client

CHUNK = 64 * 1024
#: Quick tries for the tests (the defaults wait seconds).
FAST = RetryPolicy(attempts=2, base=0.01, cap=0.05)


def config(*targets: Target, **fields: Any) -> UploadConfig:
    fields.setdefault("retry", FAST)
    fields.setdefault("backoff_base", 0.05)
    fields.setdefault("backoff_cap", 0.5)
    fields.setdefault("timeout", 5.0)
    return UploadConfig(list(targets), **fields)


def uploader(*storages: Storage, metrics: Any = None, **fields: Any) -> Uploader:
    return Uploader(config(*(s.target for s in storages), **fields), storages,
                    metrics=metrics)


def storage(bucket: str, prefix: str = "meet", client: Any = None, **policy: Any) -> Storage:
    return Storage(Target(bucket, prefix), client or make_client(timeout=5.0),
                   policy=RetryPolicy(**policy) if policy else FAST)


def open_stream(recorder: Recorder, bot_id: str = "bot-1", **fields: Any) -> RecordingHandler:
    handler = recorder(ConnectionInfo("127.0.0.1:5000", "/", "", (), False))
    raw = {"type": "video_stream_start", "bot_id": bot_id, **fields}
    handler.on_start(StreamStarted(bot_id=bot_id, raw=raw, **fields))
    return handler


def send(handler: RecordingHandler, data: bytes, start: int, end: int,
         pause: float = 0.0) -> None:
    for offset in range(start, end, CHUNK):
        handler.on_chunk(MediaChunk(data[offset:min(offset + CHUNK, end)], offset))
        if pause:
            time.sleep(pause)


def end_stream(handler: RecordingHandler, seconds: float = 20.0) -> None:
    handler.on_end(StreamEnded(seconds))
    handler.on_disconnect(Disconnected(1000, "", True))


def record(recorder: Recorder, data: bytes, bot_id: str = "bot-1") -> RecordingHandler:
    handler = open_stream(recorder, bot_id)
    send(handler, data, 0, len(data))
    end_stream(handler)
    return handler


def until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def objects(client: Any, bucket: str) -> dict[str, int]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: item["Size"] for item in listed}


def body(client: Any, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return found


def media_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.mp4"))


def journal_records(root: Path) -> list[dict[str, Any]]:
    import json

    found = list(root.rglob("*.upload.jsonl"))
    if not found:
        return []
    (path,) = found
    return [json.loads(line) for line in path.read_text().splitlines()]


class FlakyClient:
    """A real boto3 client whose calls fail as scripted: ``fail(method, exc, times)`` makes
    the next ``times`` calls of ``method`` raise ``exc`` (made by a callable: a fresh one
    each time) before reaching the server; ``after=True`` makes the call reach the server
    first (its answer is lost: a timeout after the fact)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.meta = real.meta
        self.script: dict[str, list[tuple[Callable[[], Exception], bool]]] = {}
        self.calls: dict[str, int] = {}
        self.broken: Callable[[], Exception] | None = None

    def fail(self, method: str, make: Callable[[], Exception], times: int = 1,
             *, after: bool = False) -> None:
        self.script.setdefault(method, []).extend([(make, after)] * times)

    def __getattr__(self, method: str) -> Any:
        real = getattr(self.real, method)

        def call(**params: Any) -> Any:
            self.calls[method] = self.calls.get(method, 0) + 1
            if self.broken is not None:
                raise self.broken()
            queued = self.script.get(method)
            if queued:
                make, after = queued.pop(0)
                if after:
                    real(**params)
                raise make()
            return real(**params)

        return call


def client_error(code: str, status: int, operation: str = "UploadPart") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def sink_for(root: Path, up: Uploader, **fields: Any) -> UploadSink:
    return UploadSink(root, uploader=up, drain_timeout=fields.pop("drain_timeout", 30.0),
                      **fields)
