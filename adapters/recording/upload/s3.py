"""The thin layer over boto3: one S3 client per target, every request with its timeouts, a
bounded number of tries with exponential backoff and full jitter, and every failure sorted
into a *kind* the uploader acts on.

========== ================================================ ========= =====================
kind        what the storage said                            retried   the uploader
========== ================================================ ========= =====================
auth        403 (AccessDenied, SignatureDoesNotMatch,        no        backs off; may fail
            InvalidAccessKeyId, ExpiredToken), no                      over; at start: exit
            credentials at all                                         2
no_bucket   NoSuchBucket, HeadBucket 404                     no        same
no_upload   NoSuchUpload                                     no        starts the upload
                                                                       again
throttled   SlowDown, 503, 429, Throttling...                yes       backs off
server      other 5xx                                        yes       backs off
timeout     connect or read timeout, RequestTimeout          yes       backs off
network     connection refused, reset, closed                yes       backs off
digest      BadDigest, InvalidDigest, SHA256 mismatch        yes       (the body is resent)
invalid     InvalidPart, InvalidPartOrder, EntityTooSmall    no        resyncs with ListParts
client      any other 4xx                                    no        backs off
========== ================================================ ========= =====================

botocore's own retries are off (``total_max_attempts=1``) so that every try is ours, counted
and visible; botocore's automatic checksums are off too (``when_required``): we send our own
CRC32 of each body (``x-amz-checksum-crc32``), which the server checks (``BadDigest``).
Standard AWS configuration only: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``...) and the config files.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .keys import Target

__all__ = [
    "RETRYABLE",
    "RetryPolicy",
    "S3Error",
    "Storage",
    "b64_crc",
    "classify",
    "composite_crc32",
    "crc32_b64",
    "make_client",
]

#: The kinds of failure worth another try at once (after a backoff).
RETRYABLE = frozenset({"throttled", "server", "timeout", "network", "digest"})
#: What a failed request may be: see the module.
KINDS = ("auth", "no_bucket", "no_upload", "throttled", "server", "timeout", "network",
         "digest", "invalid", "client", "stopped")

_AUTH = frozenset({"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId",
                   "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
                   "InvalidSecurity", "403", "Forbidden"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                        "RequestLimitExceeded", "ServiceUnavailable", "503", "429",
                        "RequestThrottled", "ProvisionedThroughputExceededException"})
_DIGEST = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch",
                     "XAmzContentChecksumMismatch"})
_INVALID = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "EntityTooLarge",
                      "MalformedXML", "InvalidArgument"})


class S3Error(Exception):
    """A request that failed (after its tries): ``kind`` (see the module), the storage's
    ``code`` and HTTP ``status`` when it answered."""

    def __init__(self, kind: str, operation: str, code: str = "", status: int | None = None,
                 message: str = "") -> None:
        super().__init__(f"{operation}: {kind}"
                         + (f" ({code}{f', HTTP {status}' if status else ''})" if code else "")
                         + (f": {message}" if message else ""))
        self.kind = kind
        self.operation = operation
        self.code = code
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


def classify(exc: BaseException, operation: str) -> S3Error:
    """A boto3/botocore exception as an :class:`S3Error`."""
    if isinstance(exc, S3Error):
        return exc
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", ""))
        if code in _AUTH or status == 403:
            kind = "auth"
        elif code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
            kind = "no_bucket"
        elif code == "NoSuchUpload":
            kind = "no_upload"
        elif code in _THROTTLED or status in (429, 503):
            kind = "throttled"
        elif code in _DIGEST:
            kind = "digest"
        elif code == "RequestTimeout":
            kind = "timeout"
        elif status is not None and status >= 500:
            kind = "server"
        elif code in _INVALID:
            kind = "invalid"
        else:
            kind = "client"
        return S3Error(kind, operation, code, status, message)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return S3Error("auth", operation, "NoCredentials", None, str(exc))
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError)):
        return S3Error("timeout", operation, type(exc).__name__, None, str(exc))
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                        bx.ConnectionError, bx.HTTPClientError, ConnectionError)):
        return S3Error("network", operation, type(exc).__name__, None, str(exc))
    if isinstance(exc, bx.BotoCoreError):
        return S3Error("client", operation, type(exc).__name__, None, str(exc))
    raise exc


@dataclass(frozen=True)
class RetryPolicy:
    """Tries of one request: ``attempts`` in all; before try ``i`` (from 1) a pause drawn
    uniformly from ``[0, min(cap, base * 2**i))`` ("full jitter": many uploaders that failed
    together do not come back together)."""

    attempts: int = 3
    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** attempt)))


def crc32_b64(data: bytes | memoryview) -> str:
    """The CRC32 of ``data`` as S3 writes it (4 bytes big-endian, base64)."""
    return b64_crc(zlib.crc32(data))


def b64_crc(crc: int) -> str:
    """A CRC32 value as S3 writes it."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def composite_crc32(parts: Iterable[str]) -> str:
    """A multipart object's CRC32 as S3 computes it: the CRC32 of the parts' CRC32s,
    ``-N``."""
    raw = [base64.b64decode(value) for value in parts]
    return f"{crc32_b64(b''.join(raw))}-{len(raw)}"


def make_client(*, timeout: float = 30.0, pool: int = 10) -> Any:
    """A boto3 S3 client from the standard AWS configuration, with our timeouts, no retries
    of botocore's own and no automatic checksums (see the module)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=min(timeout, 5.0),
        read_timeout=timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=pool,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", config=config)


Observer = Callable[[str, str, "S3Error | None"], None]


class Storage:
    """One target's requests. Thread-safe (one boto3 client, which is)."""

    def __init__(
        self,
        target: Target,
        client: Any,
        *,
        policy: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
        observe: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.bucket = target.bucket
        self.client = client
        self.policy = policy
        self.rng = rng or random.Random()
        self.stop = stop or threading.Event()
        self.observe = observe
        self.clock = clock
        self._rng_lock = threading.Lock()

    # ------------------------------------------------------------------ the retry loop

    def call(self, operation: str, method: str, attempts: int | None = None,
             **params: Any) -> Any:
        """``client.<method>(Bucket=..., **params)`` with the retry policy; raises
        :class:`S3Error` after the last try (or at once when not retryable)."""
        tries = attempts or self.policy.attempts
        fn = getattr(self.client, method)
        for attempt in range(1, tries + 1):
            try:
                answer = fn(Bucket=self.bucket, **params)
            except Exception as exc:
                error = classify(exc, operation)
                if self.observe is not None:
                    self.observe(self.target.url, operation, error)
                if not error.retryable or attempt == tries or self.stop.is_set():
                    raise error from None
                with self._rng_lock:
                    pause = self.policy.delay(attempt, self.rng)
                if self.stop.wait(pause):
                    raise error from None
                continue
            if self.observe is not None:
                self.observe(self.target.url, operation, None)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ requests

    def check(self, probe_key: str) -> None:
        """That the bucket exists and takes writes: HeadBucket, then a multipart upload
        created and aborted at ``probe_key`` (nothing is left behind). Raises
        :class:`S3Error`: ``auth`` or ``no_bucket`` for a wrong configuration."""
        try:
            self.call("HeadBucket", "head_bucket", attempts=2)
        except S3Error as error:
            if error.kind == "auth" and error.code == "403":
                # HeadBucket's answer has no body: ask again where the answer says why.
                self.call("ListObjectsV2", "list_objects_v2", attempts=1,
                          Prefix=probe_key, MaxKeys=1)
            raise
        upload_id = self.create(probe_key, "application/octet-stream", attempts=2)
        self.abort(probe_key, upload_id)

    def create(self, key: str, content_type: str, attempts: int | None = None) -> str:
        answer = self.call("CreateMultipartUpload", "create_multipart_upload", attempts,
                           Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32")
        return str(answer["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes,
                    crc: str) -> tuple[str, str | None]:
        """One part; returns its ETag and the CRC32 the storage computed (if it says)."""
        answer = self.call("UploadPart", "upload_part", Key=key, UploadId=upload_id,
                           PartNumber=number, Body=body, ChecksumCRC32=crc)
        return str(answer["ETag"]), answer.get("ChecksumCRC32")

    def list_parts(self, key: str, upload_id: str) -> dict[int, list[tuple[str, int]]]:
        """``{number: [(etag, size), ...]}``: S3 lists the last upload of each part number;
        SeaweedFS lists every upload of it, in no fixed order (measured: either first), and
        Complete takes the bytes of whichever ETag it is given, so a journaled part counts as
        there when its ETag and size are among the entries."""
        found: dict[int, list[tuple[str, int]]] = {}
        marker = 0
        while True:
            answer = self.call("ListParts", "list_parts", Key=key, UploadId=upload_id,
                               PartNumberMarker=marker, MaxParts=1000)
            parts = answer.get("Parts", [])
            for part in parts:
                found.setdefault(int(part["PartNumber"]), []).append(
                    (str(part["ETag"]), int(part["Size"])))
            if not answer.get("IsTruncated") or not parts:
                return found
            following = int(answer.get("NextPartNumberMarker") or parts[-1]["PartNumber"])
            if following <= marker:
                return found
            marker = following

    def complete(self, key: str, upload_id: str,
                 parts: Iterable[tuple[int, str, str]]) -> tuple[str, str | None]:
        """Complete with ``(number, etag, crc32)`` in order; returns the object's ETag and
        checksum (``...-N``, if the storage says)."""
        answer = self.call(
            "CompleteMultipartUpload", "complete_multipart_upload", Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag, "ChecksumCRC32": crc}
                                       for n, etag, crc in parts]},
        )
        return str(answer.get("ETag", "")), answer.get("ChecksumCRC32")

    def abort(self, key: str, upload_id: str) -> None:
        """Abort an upload; one that is gone already counts as aborted."""
        try:
            self.call("AbortMultipartUpload", "abort_multipart_upload", Key=key,
                      UploadId=upload_id)
        except S3Error as error:
            if error.kind != "no_upload":
                raise

    def put(self, key: str, body: bytes, crc: str, content_type: str) -> str:
        answer = self.call("PutObject", "put_object", Key=key, Body=body, ChecksumCRC32=crc,
                           ContentType=content_type)
        return str(answer.get("ETag", ""))

    def head(self, key: str) -> tuple[int, str, str | None]:
        """``(size, etag, crc32)`` of an object (``client`` kind 404 when absent)."""
        answer = self.call("HeadObject", "head_object", Key=key, ChecksumMode="ENABLED")
        return int(answer["ContentLength"]), str(answer.get("ETag", "")), \
            answer.get("ChecksumCRC32")

    def download(self, key: str, out: IO[bytes], chunk: int = 1 << 20) -> int:
        """Copy an object into ``out``; returns its size."""
        answer = self.call("GetObject", "get_object", Key=key)
        body = answer["Body"]
        size = 0
        try:
            for piece in iter(lambda: body.read(chunk), b""):
                out.write(piece)
                size += len(piece)
        finally:
            body.close()
        return size

    def keys(self, prefix: str) -> Iterator[str]:
        """The keys under ``prefix``."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            answer = self.call("ListObjectsV2", "list_objects_v2", None, Prefix=prefix, **extra)
            for item in answer.get("Contents", []):
                yield str(item["Key"])
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return
