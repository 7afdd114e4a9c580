"""The ``meetstream-live`` command: ``serve`` (as a real process, crash included), ``simulate``,
``check`` (against our receiver and against deliberately wrong ones) and ``create-bot``."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from media import Media, decodable_frames, probe
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.server import ServerConnection as WSServerConnection
from websockets.sync.server import serve as ws_serve

from meetstream_live import Fmp4Scanner, FragmentComplete
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.asyncio import AsyncioBot, AsyncioServer
from meetstream_live.adapters.cli import main, parse_duration
from meetstream_live.adapters.cli.sample import sample_bytes, sample_path
from meetstream_live.adapters.recording.hooks import HookRunner, Journal
from meetstream_live.adapters.recording.recorder import FinishedRecording, Recorder

# ------------------------------------------------------------------------ helpers


@dataclass
class Receiver:
    url: str
    root: Path
    finished: list[FinishedRecording] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[FinishedRecording]:
        deadline = time.monotonic() + timeout
        while len(self.finished) < count:
            assert time.monotonic() < deadline, f"{len(self.finished)} of {count} recordings"
            time.sleep(0.01)
        return self.finished


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """Our receiver (asyncio server + recorder) on its own loop in a thread, so that tests can
    call ``main()``, which runs ``asyncio.run`` itself."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    root = tmp_path / "recordings"

    async def run() -> None:
        recorder = Recorder(root, on_finish=lambda r: box["receiver"].finished.append(r))
        server = AsyncioServer(recorder, ServerOptions(drain_timeout=1.0))
        await server.start("127.0.0.1", 0)
        box["receiver"] = Receiver(f"ws://127.0.0.1:{server.port}/", root)
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop = asyncio.Event()
        ready.set()
        await stop.wait()
        await server.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["receiver"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def bad_receiver(mode: str) -> Callable[[WSServerConnection], None]:
    """A receiver built on the websockets library that gets one thing wrong (or nothing)."""

    def handler(ws: WSServerConnection) -> None:
        for message in ws:
            if not isinstance(message, str):
                continue
            msg = json.loads(message)
            if msg.get("type") != "video_latency_ping" or mode == "no_pong":
                continue
            pong = {
                "type": "video_latency_pong",
                "seq": msg["seq"] + (1 if mode == "wrong_seq" else 0),
                "sent_at_ms": msg["sent_at_ms"],
                "server_received_at_ms": int(time.time() * 1000)
                - (3_600_000 if mode == "wrong_clock" else 0),
                "bot_id": msg.get("bot_id"),
            }
            ws.send(json.dumps(pong))

    return handler


@contextlib.contextmanager
def websockets_receiver(mode: str) -> Iterator[str]:
    # The websockets default max_size (1 MiB) closes with 1009 on the 16 MiB message.
    max_size = 2**20 if mode == "small_max_size" else None
    with ws_serve(bad_receiver(mode), "127.0.0.1", 0, max_size=max_size) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        finally:
            server.shutdown()
            thread.join(10)


def results(out: str) -> dict[str, str]:
    """``check`` output: item name -> PASS/FAIL/SKIP."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"^(PASS|FAIL|SKIP)  (.+?)\s{2,}", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


# ------------------------------------------------------------------------ small pieces


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("90s", 90.0), ("1.5m", 90.0), ("10min", 600.0), ("2h", 7200.0),
     ("250ms", 0.25), (" 5 S ", 5.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1s", "5d", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_help_explains_every_option_and_hides_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEETSTREAM_LIVE_TOKEN", "very-secret-token")
    for command in ("serve", "simulate", "check", "create-bot"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "very-secret-token" not in out
    for option in ("--rotate-every", "--on-finish", "--adapter", "$WS_PORT", "--realtime",
                   "--pong-timeout", "--idle", "--api-base", "--log-format"):
        assert option in out


def test_bundled_sample_is_small_and_fragmented() -> None:
    data = sample_bytes()
    assert sample_path().name == "sample.mp4"
    assert len(data) <= 300 * 1024
    scanner = Fmp4Scanner()
    events = [*scanner.feed(data), *scanner.eof()]
    assert sum(isinstance(e, FragmentComplete) for e in events) >= 3
    assert scanner.last_complete_fragment_end == len(data)
    assert probe(sample_path()).video_frames == 150


def test_serve_refuses_an_unwritable_output_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["serve", "--output", str(blocker / "sub"), "--port", "0"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "http://example.com/"]) == 2
    assert "not a WebSocket URL" in capsys.readouterr().err
    assert main(["check", "ws://127.0.0.1:1/", "--file", "/nonexistent.mp4"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_on_finish_hook_gets_both_paths(tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(
        "import pathlib, sys\n"
        "pathlib.Path(sys.argv[1]).write_text('\\n'.join(sys.argv[2:]))\n"
    )
    out = tmp_path / "with space.txt"
    command = f"'{sys.executable}' '{script}' '{out}'"
    journal = Journal(tmp_path, ("command",))
    runner = HookRunner(journal, command=command)
    recording = FinishedRecording(tmp_path / "a b.mp4", tmp_path / "a b.json", {})
    journal.add(recording)
    runner.run_due()
    assert out.read_text().splitlines() == [str(recording.path), str(recording.sidecar_path)]
    assert journal.entries() == []  # done: out of the journal


# ------------------------------------------------------------------------ simulate


def test_simulate_many_bots(
    receiver: Receiver, fmp4_small: Media, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", receiver.url, "--file", str(fmp4_small.path), "--bots", "3",
            "--chunk-size", "5k", "--ping-interval", "20ms"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "bots 3/3 connected, 3 done" in captured.err  # the progress line
    assert re.search(r"pong round trip: count \d+, p50 [\d.]+ ms, p99 [\d.]+ ms", captured.out)
    assert "unanswered pings: 0, unmatched pongs: 0" in captured.out
    recordings = receiver.wait_for(3)
    assert sorted(r.sidecar["bot_id"] for r in recordings) == ["sim-bot-1", "sim-bot-2",
                                                               "sim-bot-3"]
    for recording in recordings:
        assert recording.path.read_bytes() == fmp4_small.data
        assert recording.sidecar["clean"] is True


def test_simulate_realtime_paces_by_media_time(
    receiver: Receiver, fmp4_small: Media, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    argv = ["simulate", receiver.url, "--file", str(fmp4_small.path), "--realtime", "--quiet",
            "--ping-interval", "0.5s"]
    assert main(argv) == 0
    elapsed = time.monotonic() - began
    assert fmp4_small.duration_s - 0.1 <= elapsed < fmp4_small.duration_s + 3
    (recording,) = receiver.wait_for(1)
    assert recording.path.read_bytes() == fmp4_small.data
    assert recording.sidecar["pings"] >= 4


def test_simulate_fails_when_pongs_never_come(capsys: pytest.CaptureFixture[str]) -> None:
    with websockets_receiver("no_pong") as url:
        code = main(["simulate", url, "--quiet", "--pong-timeout", "0.3s"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "pong round trip: no pongs" in out


def test_simulate_fails_when_nobody_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "ws://127.0.0.1:1/", "--quiet", "--timeout", "2s"]) == 1
    assert "connect:" in capsys.readouterr().out


# ------------------------------------------------------------------------ check


def test_check_passes_against_our_receiver(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", receiver.url, "--idle", "0.3s", "--pong-timeout", "5s"]) == 0
    found = results(capsys.readouterr().out)
    assert found == {
        "tls": "SKIP", "handshake": "PASS", "start accepted": "PASS", "binary flowing": "PASS",
        "16 MiB message": "PASS", "idle": "PASS", "pongs": "PASS", "end": "PASS",
        "clean close": "PASS",
    }
    (recording,) = receiver.wait_for(1)
    assert recording.sidecar["bot_id"] == "check-bot"
    assert recording.sidecar["clean"] is True
    # The sample, then the 16 MiB `free` box: still one valid, playable fMP4.
    assert recording.path.read_bytes().startswith(sample_bytes())
    assert recording.sidecar["bytes"] == len(sample_bytes()) + 16 * 1024 * 1024
    assert recording.sidecar["warnings"] == []


def test_check_passes_against_a_correct_websockets_receiver(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with websockets_receiver("correct") as url:
        assert main(["check", url]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mode", "failing"),
    [
        ("wrong_seq", {"pongs"}),
        ("wrong_clock", {"pongs"}),
        ("no_pong", {"start accepted", "binary flowing", "16 MiB message", "pongs"}),
        ("small_max_size", {"16 MiB message", "end", "clean close"}),
    ],
)
def test_check_fails_against_wrong_receivers(
    mode: str, failing: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with websockets_receiver(mode) as url:
        assert main(["check", url, "--pong-timeout", "0.3s", "--timeout", "1s"]) == 1
    out = capsys.readouterr().out
    found = results(out)
    assert {name for name, status in found.items() if status == "FAIL"} == failing, out
    if mode == "wrong_seq":
        assert "seq 2 (sent 1)" in out
    if mode == "wrong_clock":
        assert "-3600.0 s from local time" in out
    if mode == "small_max_size":
        assert "closed with 1009" in out


# ------------------------------------------------------------------------ create-bot


@dataclass
class FakeAPI:
    url: str
    requests: list[tuple[str, dict[str, str], bytes]]
    answer: list[tuple[int, bytes]]


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI("", [], [(201, b'{"bot_id": "bot-abc", "status": "joining"}')])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            api.requests.append((self.path, dict(self.headers.items()), body))
            status, answer = api.answer[0]
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_create_bot(
    fake_api: FakeAPI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEETSTREAM_API_KEY", "key-123")
    argv = ["create-bot", "https://meet.google.com/abc-defg-hij", "--websocket-url",
            "wss://rx.example.com/video", "--api-base", fake_api.url + "/"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "bot-abc"
    assert "warning" not in captured.err
    ((path, headers, body),) = fake_api.requests
    assert path == "/api/bots"
    assert headers["Authorization"] == "Bearer key-123"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "meeting_link": "https://meet.google.com/abc-defg-hij",
        "video_required": True,
        "live_video_required": {"websocket_url": "wss://rx.example.com/video"},
    }


def test_create_bot_errors(
    fake_api: FakeAPI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["create-bot", "https://meet.google.com/abc", "--api-base", fake_api.url]
    monkeypatch.delenv("MEETSTREAM_API_KEY", raising=False)
    assert main([*base, "--websocket-url", "wss://x.example/"]) == 2
    assert "MEETSTREAM_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("MEETSTREAM_API_KEY", "k")
    assert main([*base, "--websocket-url", "https://x.example/"]) == 2
    assert "not a WebSocket URL" in capsys.readouterr().err
    # ws:// works but is warned about.
    assert main([*base, "--websocket-url", "ws://x.example/"]) == 0
    assert "warning: ws:// is unencrypted" in capsys.readouterr().err
    fake_api.answer[0] = (401, b'{"detail": "bad key"}')
    assert main([*base, "--websocket-url", "wss://x.example/"]) == 1
    assert "401" in capsys.readouterr().err
    assert main([*base, "--websocket-url", "wss://x.example/", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["video_required"] is True
    assert len(fake_api.requests) == 2  # the ws:// one and the refused one


# ------------------------------------------------------------------------ serve, as a process


class ServeProcess:
    """``python -m meetstream_live.adapters.cli serve`` with its log in a file."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", "0",
             "--drain-timeout", "2s", *args],
            stdout=self.file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on wss?://[^:]+:(\d+)", self.text())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"serve did not start:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(15)
        finally:
            if self.proc.poll() is None:  # pragma: no cover - only when stop timed out
                self.proc.kill()
                self.proc.wait(5)
            self.file.close()
        return code


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type") or "", body


def fragment_ends(data: bytes) -> list[int]:
    scanner = Fmp4Scanner()
    return [e.offset + e.size for e in scanner.feed(data) if isinstance(e, FragmentComplete)]


async def test_serve_crash_recovery_end_to_end(fmp4_medium: Media, tmp_path: Path) -> None:
    output = tmp_path / "rec"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import pathlib, sys\n"
        "pathlib.Path(sys.argv[1] + '.hooked').write_text('\\n'.join(sys.argv[1:]))\n"
    )
    server = ServeProcess(tmp_path / "log1", "--output", str(output), "--token", "s3cret")
    ends = fragment_ends(fmp4_medium.data)
    cut = ends[3] + (ends[4] - ends[3]) // 2  # half of the fifth fragment

    bot = await AsyncioBot.connect(
        f"ws://127.0.0.1:{server.port}/", headers=((b"Authorization", b"Bearer s3cret"),),
        timeout=5,
    )
    try:
        await bot.send_start("crash-bot", codec="h264")
        await bot.send_chunk(fmp4_medium.data[:cut])
        part = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the fourth fragment is on disk
            parts = list(output.rglob("*.mp4.part"))
            if parts and parts[0].stat().st_size >= ends[3]:
                part = parts[0]
                break
            await asyncio.sleep(0.01)
        assert part is not None, server.text()
    finally:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        bot.abort()
    assert part.exists()
    assert "s3cret" not in server.text()

    again = ServeProcess(
        tmp_path / "log2", "--output", str(output), "--log-format", "json",
        "--on-finish", f"'{sys.executable}' '{hook}'",
    )
    try:
        status, content_type, body = http_get(again.port, "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        status, content_type, body = http_get(again.port, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "meetstream_live_websocket_connections_active" in names
    finally:
        assert again.stop() == 0
    recovered = part.with_name(part.name.removesuffix(".part"))
    assert not part.exists()
    data = recovered.read_bytes()
    assert data == fmp4_medium.data[: ends[3]]
    assert decodable_frames(data) == decodable_frames(fmp4_medium.data[: ends[3]]) > 0
    doc = json.loads(recovered.with_suffix(".json").read_text())
    assert doc["recovered"] is True
    assert doc["bot_id"] == "crash-bot"
    assert doc["fragments"] == 4
    assert doc["start_message"]["codec"] == "h264"
    hooked = Path(str(recovered) + ".hooked")
    assert hooked.read_text().splitlines() == [str(recovered), str(recovered.with_suffix(".json"))]
    lines = [json.loads(line) for line in again.text().splitlines() if line.strip()]
    assert any("recovered" in line["message"] for line in lines)
    assert {line["level"] for line in lines} <= {"info", "warning"}


@pytest.mark.parametrize("adapter", ["asyncio", "uvloop", "sync", "trio"])
def test_serve_records_a_playable_copy_on_every_adapter(
    adapter: str, tmp_path: Path, fmp4_small: Media
) -> None:
    """`simulate` into `serve --adapter X`: the recording is the source, byte for byte, and
    decodes to the same frames and duration."""
    output = tmp_path / "rec"
    server = ServeProcess(tmp_path / "log", "--output", str(output), "--adapter", adapter)
    try:
        code = main(["simulate", f"ws://127.0.0.1:{server.port}/", "--file",
                     str(fmp4_small.path), "--quiet"])
    finally:
        assert server.stop() == 0, server.text()
    assert code == 0
    (recording,) = output.rglob("*.mp4")
    assert recording.read_bytes() == fmp4_small.data
    decoded = probe(recording)
    assert decoded.video_frames == fmp4_small.video_frames
    assert decoded.duration_s == pytest.approx(fmp4_small.duration_s, abs=0.05)
    text = server.text()
    assert "recording start: bot sim-bot, speaker -, from 127.0.0.1:" in text
    assert re.search(r"recording end: bot sim-bot, \S+\.mp4, stream_end, \d+ bytes", text)


def test_module_runs_with_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meetstream_live.adapters.cli", "--version"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("meetstream-live ")


def test_serve_and_check_over_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "s.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server = ServeProcess(
        tmp_path / "log", "--output", str(tmp_path / "rec"), "--tls-cert", str(tmp_path / "s.pem")
    )
    url = f"wss://127.0.0.1:{server.port}/"
    try:
        verified = main(["check", url, "--cafile", str(tmp_path / "ca.pem")])
        verified_out = capsys.readouterr().out
        unverified = main(["check", url, "--timeout", "2s"])
        unverified_out = capsys.readouterr().out
    finally:
        assert server.stop() == 0
    assert verified == 0, verified_out
    assert results(verified_out)["tls"] == "PASS"
    assert unverified == 1
    assert results(unverified_out)["tls"] == "FAIL"
    assert "CERTIFICATE_VERIFY_FAILED" in unverified_out
    assert "listening on wss://" in server.text()


# ------------------------------------------------------------------------ metrics


def test_metrics_exposition_parses_and_counts() -> None:
    from meetstream_live import (
        Accepted,
        Disconnected,
        HTTPRejected,
        HTTPRequest,
        LatencyPing,
        MediaChunk,
        ProtocolWarning,
        WarningKind,
    )
    from meetstream_live.adapters.recording.metrics import CONTENT_TYPE, Metrics

    metrics = Metrics()
    for event in [
        HTTPRejected(401, "missing or wrong token"),
        HTTPRejected(401, "missing or wrong token"),
        HTTPRejected(503, "too many connections"),
        Accepted("/", "", ()),
        MediaChunk(b"x" * 1000, 0),
        LatencyPing(1, 1_000, 1_040, "b"),  # 40 ms
        LatencyPing(2, 2_000, 1_990, "b"),  # the bot's clock is ahead: -10 ms
        LatencyPing(3, None, 3_000, "b"),
        ProtocolWarning(WarningKind.INVALID_JSON, 'a "quoted"\nmessage'),
        Disconnected(1006, "", False),
    ]:
        metrics.observe(event)
    metrics.recording_warnings.inc(label='odd "kind"\\')
    text = metrics.render()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("meetstream_live_http_rejections_total", (("status", "401"),))] == 2
    assert samples[("meetstream_live_http_rejections_total", (("status", "503"),))] == 1
    assert samples[("meetstream_live_websocket_connections_active", ())] == 0
    assert samples[("meetstream_live_websocket_disconnects_total", (("code", "1006"),))] == 1
    assert samples[("meetstream_live_media_received_bytes_total", ())] == 1000
    assert samples[("meetstream_live_latency_pings_total", ())] == 3
    latency = "meetstream_live_ping_one_way_latency_seconds"
    assert samples[(f"{latency}_count", ())] == 2
    assert samples[(f"{latency}_sum", ())] == pytest.approx(0.03)
    assert samples[(f"{latency}_bucket", (("le", "0.0"),))] == 1
    assert samples[(f"{latency}_bucket", (("le", "0.05"),))] == 2
    assert samples[(f"{latency}_bucket", (("le", "+Inf"),))] == 2
    kinds = {"kind": "invalid_json"}
    assert samples[("meetstream_live_protocol_warnings_total", tuple(kinds.items()))] == 1
    odd = (("kind", 'odd "kind"\\'),)
    assert samples[("meetstream_live_recording_warnings_total", odd)] == 1
    assert samples[("meetstream_live_errors_total", (("kind", "disk"),))] == 0
    assert samples[("meetstream_live_recordings_finished_total", (("end", "unclean"),))] == 0

    def request(method: str, path: str) -> HTTPRequest:
        return HTTPRequest(method, path, path, "", ())

    assert metrics.http_handler(request("GET", "/healthz"))[:2] == (200, b"ok\n")
    answer = metrics.http_handler(request("GET", "/metrics"))
    assert (answer.status, answer.content_type) == (200, CONTENT_TYPE)
    assert metrics.http_handler(request("HEAD", "/metrics")).body == b""
    assert metrics.http_handler(request("POST", "/metrics")).status == 405
    assert metrics.http_handler(request("GET", "/other")).status == 404
