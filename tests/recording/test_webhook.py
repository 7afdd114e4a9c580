"""Webhooks: a redirect is not a delivery (issue 17 bug 1), only 307/308 are followed and
with the body, anything but 2xx is a failure that stays journaled, and the POST is signed
(the docs' verification snippet is run against it)."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meetstream_live.adapters.recording import FinishedRecording
from meetstream_live.adapters.recording.hooks import HookConfig, HookRunner, Journal
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookError,
    post,
    sign,
    verify,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recording.md"


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver: ``/hook`` answers with ``status`` (and ``Location: /landing`` for a
    3xx); ``/landing`` takes anything with 200. Every request is kept."""

    status = 200
    requests: list[tuple[str, str, dict[str, str], bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def _any(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.requests.append((self.command, self.path, headers, body))
        status = self.server.status if self.path == "/hook" else 200
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/landing")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def journaled(tmp_path: Path, url: str) -> tuple[Journal, Path]:
    media = tmp_path / "rec.mp4"
    media.write_bytes(b"media")
    sidecar = tmp_path / "rec.json"
    sidecar.write_text(json.dumps({"file": "rec.mp4", "bot_id": "b", "ended_at_ms": 1}))
    journal = Journal(tmp_path, HookConfig(webhook=url).names())
    entry = journal.add(FinishedRecording(media, sidecar, json.loads(sidecar.read_text())))
    assert entry is not None
    return journal, sidecar


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_redirected_webhook_is_not_delivered(
    receiver: Receiver, tmp_path: Path, status: int
) -> None:
    """Bug 1: urllib turned the redirected POST into a body-less GET that got 200; the hook
    was counted ok and its entry deleted. (Checked failing without the fix: with the
    default opener this test sees a GET /landing and an empty journal.)"""
    receiver.status = status
    journal, _ = journaled(tmp_path, f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    metrics = Metrics()
    runner = HookRunner(journal, HookConfig(webhook=journal_url(receiver)), metrics=metrics)
    runner.run_due()
    assert [(m, p) for m, p, _, _ in receiver.requests] == [("POST", "/hook")]  # no GET
    (entry,) = journal.entries()  # still journaled: retried
    kept = json.loads(entry.read_text())
    assert kept["pending"] == ["webhook"] and kept["attempts"] == 1
    assert f"HTTP {status} redirect to" in kept["last_error"]
    assert metrics.hooks.value(("webhook", "failed")) == 1
    assert metrics.hooks.value(("webhook", "ok")) == 0


def journal_url(receiver: Receiver) -> str:
    return f"http://127.0.0.1:{receiver.server_address[1]}/hook"


@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_are_followed_with_the_body(
    receiver: Receiver, tmp_path: Path, status: int
) -> None:
    receiver.status = status
    journal, sidecar = journaled(tmp_path, journal_url(receiver))
    HookRunner(journal, HookConfig(webhook=journal_url(receiver))).run_due()
    (first, second) = receiver.requests
    assert (first[0], first[1], second[0], second[1]) == ("POST", "/hook", "POST", "/landing")
    assert second[3] == sidecar.read_bytes()
    assert not journal.entries()


@pytest.mark.parametrize("status", [202, 204])
def test_any_2xx_is_a_delivery(receiver: Receiver, tmp_path: Path, status: int) -> None:
    receiver.status = status
    assert post(journal_url(receiver), b"{}", timeout=5) == status


@pytest.mark.parametrize("status", [304, 400, 404, 500, 503])
def test_anything_else_is_a_failure(receiver: Receiver, status: int) -> None:
    receiver.status = status
    with pytest.raises(WebhookError, match=f"HTTP {status}"):
        post(journal_url(receiver), b"{}", timeout=5)


def test_the_post_is_signed_and_the_documented_check_accepts_it(
    receiver: Receiver, tmp_path: Path
) -> None:
    journal, sidecar = journaled(tmp_path, journal_url(receiver))
    config = HookConfig(webhook=journal_url(receiver), webhook_secret="s3cret")
    HookRunner(journal, config).run_due()
    ((method, _, headers, body),) = receiver.requests
    assert method == "POST" and body == sidecar.read_bytes()
    assert headers["x-meetstream-event"] == "recording.finished"
    assert headers["x-meetstream-delivery"]  # the entry's id: the same on every attempt
    stamp = int(headers[TIMESTAMP_HEADER.lower()])
    assert headers[SIGNATURE_HEADER.lower()] == sign("s3cret", stamp, body)
    assert verify("s3cret", headers, body, now=stamp + 10)
    assert not verify("other", headers, body, now=stamp)
    assert not verify("s3cret", headers, body + b" ", now=stamp)
    assert not verify("s3cret", headers, body, now=stamp + 301)  # a replay, too late
    # The receiver-side snippet in docs/recording.md, as written there.
    (snippet,) = re.findall(r"<!-- webhook-verify -->\n```python\n(.*?)```", DOCS.read_text(),
                            re.DOTALL)
    namespace: dict[str, object] = {}
    exec(compile(snippet, "docs/recording.md", "exec"), namespace)
    check = namespace["verified"]
    assert callable(check)
    assert check(b"s3cret", headers, body, now=stamp + 10)
    assert not check(b"s3cret", headers, body.replace(b"rec", b"REC"), now=stamp)
    assert not check(b"s3cret", headers, body, now=stamp - 600)


def test_no_secret_no_signature(receiver: Receiver) -> None:
    post(journal_url(receiver), b"{}", timeout=5)
    ((_, _, headers, _),) = receiver.requests
    assert SIGNATURE_HEADER.lower() not in headers and TIMESTAMP_HEADER.lower() in headers
