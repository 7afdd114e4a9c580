"""Webhook delivery: one HTTP POST, signed, that counts as delivered only on a 2xx answer.

* **Redirects are not followed**, except 307 and 308, which by definition repeat the same
  method with the same body (to an ``http(s)`` URL, at most :data:`MAX_REDIRECTS` times). A
  301, 302 or 303 is a failure: urllib would turn the POST into a body-less GET, the receiver
  would answer it 200, and the sidecar would never have been delivered (issue 17, bug 1).
* **Anything but 2xx is a failure** (the caller retries): an HTTP error, a redirect not
  followed, an informational or odd status, a connection error, a timeout.
* **Signed** when a secret is given: ``X-MeetStream-Signature: sha256=<hex>``, the
  HMAC-SHA256 of ``<timestamp>.<body>`` with the shared secret, where ``<timestamp>`` is
  the ``X-MeetStream-Timestamp`` header (Unix seconds, the time of this attempt). A receiver
  checks both (see :func:`verify` and ``docs/recording.md``): the signature proves the body
  came from us, the timestamp bounds replays.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import IO, Any
from urllib.parse import urlsplit

from meetstream_live import __version__

__all__ = [
    "EVENT_HEADER",
    "ID_HEADER",
    "MAX_REDIRECTS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookError",
    "post",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-MeetStream-Signature"
TIMESTAMP_HEADER = "X-MeetStream-Timestamp"
#: ``recording.started`` or ``recording.finished``.
EVENT_HEADER = "X-MeetStream-Event"
#: The same for every attempt of one delivery: receivers deduplicate on it.
ID_HEADER = "X-MeetStream-Delivery"
#: 307/308 redirects followed for one POST.
MAX_REDIRECTS = 5


class WebhookError(RuntimeError):
    """The POST was not delivered (the message says why: an HTTP status, a redirect...)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-MeetStream-Signature`` value: ``sha256=`` + HMAC-SHA256 of
    ``b"<timestamp>." + body`` keyed with ``secret`` (UTF-8)."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body,
                      hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, *,
           tolerance: float = 300.0, now: float | None = None) -> bool:
    """A receiver's check of one delivery (the reference for ``docs/recording.md``'s
    snippet): the signature matches and the timestamp is within ``tolerance`` seconds."""
    lowered = {name.lower(): value for name, value in headers.items()}
    stamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit():
        return False
    moment = time.time() if now is None else now
    if abs(moment - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), given)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows 307/308 only, with the method and the body; everything else is not followed
    (urllib then raises ``HTTPError`` with the 3xx status: a failure)."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: Message, newurl: str,
    ) -> urllib.request.Request | None:
        if code not in (307, 308) or urlsplit(newurl).scheme not in ("http", "https"):
            return None
        return urllib.request.Request(newurl, data=req.data, method=req.get_method(),
                                      headers=dict(req.headers))


_OPENER = urllib.request.build_opener(_Redirects)


def post(
    url: str, body: bytes, *, timeout: float, secret: str | None = None,
    event: str = "recording.finished", delivery: str | None = None,
    now: float | None = None,
) -> int:
    """POST ``body`` (JSON) to ``url``; returns the 2xx status, raises :class:`WebhookError`
    (or ``OSError`` for the network) for anything else."""
    stamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"meetstream-live/{__version__}",
        EVENT_HEADER: event,
        TIMESTAMP_HEADER: str(stamp),
    }
    if delivery is not None:
        headers[ID_HEADER] = delivery
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        response: Any = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        where = exc.headers.get("Location") if 300 <= exc.code < 400 else None
        exc.close()
        if where is not None:
            raise WebhookError(f"HTTP {exc.code} redirect to {where} (not followed: only "
                               f"307/308 keep the POST and its body)") from None
        raise WebhookError(f"HTTP {exc.code}") from None
    with response:
        status = int(response.status)
        response.read(65536)
    if not 200 <= status < 300:
        raise WebhookError(f"HTTP {status}")
    return status
