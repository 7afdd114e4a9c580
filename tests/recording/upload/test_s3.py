"""The boto3 layer: every failure sorted into its kind, bounded tries with full jitter, and
the requests against a real S3 server (SeaweedFS): checksums checked by the storage, a part
number listed twice, the start-up check."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from botocore import exceptions as bx
from services import S3Server

from meetstream_live.adapters.recording.upload.keys import Target
from meetstream_live.adapters.recording.upload.s3 import (
    RetryPolicy,
    S3Error,
    Storage,
    classify,
    composite_crc32,
    crc32_b64,
    make_client,
)

from .common import client_error

MiB = 1 << 20


@pytest.mark.parametrize(("exc", "kind", "retryable"), [
    (client_error("AccessDenied", 403), "auth", False),
    (client_error("SignatureDoesNotMatch", 403), "auth", False),
    (client_error("InvalidAccessKeyId", 403), "auth", False),
    (client_error("403", 403, "HeadBucket"), "auth", False),
    (client_error("NoSuchBucket", 404), "no_bucket", False),
    (client_error("404", 404, "HeadBucket"), "no_bucket", False),
    (client_error("NoSuchUpload", 404), "no_upload", False),
    (client_error("SlowDown", 503), "throttled", True),
    (client_error("ThrottlingException", 400), "throttled", True),
    (client_error("TooManyRequests", 429), "throttled", True),
    (client_error("InternalError", 500), "server", True),
    (client_error("RequestTimeout", 400), "timeout", True),
    (client_error("BadDigest", 400), "digest", True),
    (client_error("InvalidPart", 400), "invalid", False),
    (client_error("EntityTooSmall", 400), "invalid", False),
    (client_error("NoSuchKey", 404, "HeadObject"), "client", False),
    (bx.ReadTimeoutError(endpoint_url="http://x"), "timeout", True),
    (bx.ConnectTimeoutError(endpoint_url="http://x"), "timeout", True),
    (bx.EndpointConnectionError(endpoint_url="http://x"), "network", True),
    (bx.ConnectionClosedError(endpoint_url="http://x"), "network", True),
    (bx.NoCredentialsError(), "auth", False),
])
def test_kinds(exc: Exception, kind: str, retryable: bool) -> None:
    error = classify(exc, getattr(exc, "operation_name", "Op"))
    assert (error.kind, error.retryable) == (kind, retryable)


def test_a_bug_is_not_a_storage_failure() -> None:
    with pytest.raises(KeyError):
        classify(KeyError("x"), "Op")


def test_full_jitter_stays_under_its_cap() -> None:
    policy = RetryPolicy(attempts=5, base=0.1, cap=1.0)
    rng = random.Random(7)
    for attempt in range(1, 8):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        ceiling = min(1.0, 0.1 * 2 ** attempt)
        assert min(delays) >= 0 and max(delays) < ceiling
        assert max(delays) > ceiling / 2  # spread over the range, not a fixed step


class Scripted:
    """The method ``op`` of a client: raises the scripted exceptions, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def op(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"ok": True}


def observed(storage: Storage) -> list[tuple[str, str | None]]:
    seen: list[tuple[str, str | None]] = []
    storage.observe = lambda target, op, error: seen.append((op, error and error.kind))
    return seen


def test_retryable_failures_are_tried_again() -> None:
    client = Scripted(client_error("SlowDown", 503), bx.ReadTimeoutError(endpoint_url="x"))
    storage = Storage(Target("b"), client, policy=RetryPolicy(3, 0.001, 0.002))
    seen = observed(storage)
    assert storage.call("Op", "op") == {"ok": True}
    assert client.calls == 3
    assert seen == [("Op", "throttled"), ("Op", "timeout"), ("Op", None)]


def test_tries_are_bounded() -> None:
    client = Scripted(*[client_error("InternalError", 500)] * 5)
    storage = Storage(Target("b"), client, policy=RetryPolicy(3, 0.001, 0.002))
    with pytest.raises(S3Error) as caught:
        storage.call("Op", "op")
    assert caught.value.kind == "server" and client.calls == 3


def test_a_refusal_is_not_tried_again() -> None:
    client = Scripted(client_error("AccessDenied", 403))
    storage = Storage(Target("b"), client, policy=RetryPolicy(5, 0.001, 0.002))
    with pytest.raises(S3Error, match="auth"):
        storage.call("Op", "op")
    assert client.calls == 1


def test_stopping_cuts_the_pause() -> None:
    client = Scripted(*[client_error("SlowDown", 503)] * 3)
    stop = threading.Event()
    storage = Storage(Target("b"), client, policy=RetryPolicy(3, 30.0, 60.0), stop=stop,
                      rng=random.Random(1))
    threading.Timer(0.1, stop.set).start()
    began = time.monotonic()
    with pytest.raises(S3Error):
        storage.call("Op", "op")
    assert time.monotonic() - began < 2


def test_the_composite_checksum_is_the_storages(s3: S3Server, bucket: str) -> None:
    storage = Storage(Target(bucket), make_client())
    parts = [b"a" * (5 * MiB), b"b" * 1000]
    upload_id = storage.create("k.mp4", "video/mp4")
    done = []
    for number, data in enumerate(parts, 1):
        etag, echo = storage.upload_part("k.mp4", upload_id, number, data, crc32_b64(data))
        assert echo == crc32_b64(data)
        done.append((number, etag, crc32_b64(data)))
    etag, checksum = storage.complete("k.mp4", upload_id, done)
    assert checksum == composite_crc32(crc for _, _, crc in done)
    assert storage.head("k.mp4") == (5 * MiB + 1000, etag, checksum)


def test_a_wrong_checksum_is_refused_by_the_storage(s3: S3Server, bucket: str) -> None:
    storage = Storage(Target(bucket), make_client(), policy=RetryPolicy(attempts=1))
    upload_id = storage.create("k.mp4", "video/mp4")
    with pytest.raises(S3Error) as caught:
        storage.upload_part("k.mp4", upload_id, 1, b"data", crc32_b64(b"other"))
    assert caught.value.kind == "digest"


def test_a_part_number_listed_twice_counts_once(s3: S3Server, bucket: str) -> None:
    storage = Storage(Target(bucket), make_client())
    upload_id = storage.create("k.mp4", "video/mp4")
    first, _ = storage.upload_part("k.mp4", upload_id, 1, b"old" * 100, crc32_b64(b"old" * 100))
    second, _ = storage.upload_part("k.mp4", upload_id, 1, b"new" * 50, crc32_b64(b"new" * 50))
    assert first != second
    raw = s3.client().list_parts(Bucket=bucket, Key="k.mp4", UploadId=upload_id)["Parts"]
    assert [p["PartNumber"] for p in raw] == [1, 1]  # SeaweedFS: both, in no fixed order
    listed = storage.list_parts("k.mp4", upload_id)
    assert sorted(listed[1]) == sorted([(first, 300), (second, 150)])
    storage.abort("k.mp4", upload_id)
    storage.abort("k.mp4", upload_id)  # gone already: fine
    with pytest.raises(S3Error) as caught:
        storage.list_parts("k.mp4", upload_id)
    assert caught.value.kind == "no_upload"


def test_the_check(s3: S3Server, bucket: str) -> None:
    Storage(Target(bucket, "p"), make_client()).check("p/.probe")
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(S3Error) as missing:
        Storage(Target("no-such-bucket"), make_client()).check(".probe")
    assert missing.value.kind == "no_bucket"
    wrong = s3.client(secret_key="wrong")
    with pytest.raises(S3Error) as refused:
        Storage(Target(bucket), wrong).check(".probe")
    assert refused.value.kind == "auth" and refused.value.code == "SignatureDoesNotMatch"
    reader = s3.client(access_key=s3.readonly_access_key, secret_key=s3.readonly_secret_key)
    with pytest.raises(S3Error) as read_only:
        Storage(Target(bucket), reader).check(".probe")
    assert read_only.value.kind == "auth" and read_only.value.code == "AccessDenied"
