"""The receiver killed under load (SIGKILL, 200 bots streaming) and started again: every
``.part`` is recovered to its last complete fragment with a sidecar, every hook runs exactly
once, and each bot's reconnect continues its session as part 2 of the same session.

``meetstream-live serve`` runs as operators run it (a subprocess, ``--on-finish``, the reconnect
grace); the bots are two processes of 100 (``_restart_bots.py``) that reconnect as MeetStream
bots do when the receiver goes away.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from media import decodable_frames

from meetstream_live.adapters.cli.sample import sample_bytes

PROCESSES = 2
BOTS_PER_PROCESS = 100
BOTS = Path(__file__).with_name("_restart_bots.py")
LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)/")
HOOK = """import sys
with open(sys.argv[1], "a") as log:
    log.write(sys.argv[2] + "\\n")
"""


@contextmanager
def receiver(out: Path, log_path: Path, port: int, hook: str) -> Iterator[
        tuple[int, subprocess.Popen[bytes]]]:
    """``serve`` in a subprocess; yields its port and process (SIGTERM at the end, if alive)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", str(port),
             "--output", str(out), "--reconnect-grace", "60", "--on-finish", hook,
             "--max-connections", "1000"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = LISTENING.findall(log_path.read_text("utf-8", "replace"))
            if len(found) > 0 and (port == 0 or int(found[-1]) == port):
                break
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        else:
            raise AssertionError(log_path.read_text())
        yield int(found[-1]), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_killed_under_load_and_restarted(tmp_path: Path) -> None:
    media = sample_bytes()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(media)
    out, log_path, finished = tmp_path / "out", tmp_path / "serve.log", tmp_path / "hooks.log"
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    hook = f"{sys.executable} {script} {finished}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    with receiver(out, log_path, 0, hook) as (port, first):
        bots = [subprocess.Popen(
            [sys.executable, str(BOTS), f"ws://127.0.0.1:{port}/", str(clip),
             str(BOTS_PER_PROCESS), f"p{n}", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        ) for n in range(PROCESSES)]
        for bot in bots:
            assert bot.stdout is not None
            assert bot.stdout.readline() == b"streaming\n", bot.stderr
        deadline = time.monotonic() + 20
        while (len(list(out.rglob("*.mp4.part"))) < PROCESSES * BOTS_PER_PROCESS
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert len(list(out.rglob("*.mp4.part"))) == PROCESSES * BOTS_PER_PROCESS
        time.sleep(0.5)  # every bot mid-stream, its files written to
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    time.sleep(0.3)  # the bots see it go and start retrying

    with receiver(out, log_path, port, hook):
        results = []
        for bot in bots:
            stdout, stderr = bot.communicate(timeout=120)
            assert bot.returncode == 0, stderr.decode()
            results += [json.loads(line) for line in stdout.decode().splitlines() if line]
        deadline = time.monotonic() + 60  # the hooks run in the background: let them
        while time.monotonic() < deadline and list((out / ".hooks").glob("*.json")):
            time.sleep(0.1)
    text = log_path.read_text("utf-8", "replace")
    assert "Traceback" not in text, text

    # Every bot reconnected once and its second connection had every ping answered.
    assert len(results) == PROCESSES * BOTS_PER_PROCESS
    for result in results:
        assert result.get("connections") == 2, result
        assert result["pongs"] == result["pings"] > 0, result

    # No .part left; one session per bot, of two parts: the crashed one, the continuation.
    assert not list(out.rglob("*.part")), sorted(out.rglob("*.part"))[:5]
    manifests = [json.loads(p.read_text()) for p in out.rglob("*.session.json")]
    assert sorted(m["bot_id"] for m in manifests) == sorted(r["bot_id"] for r in results)
    for manifest in manifests:
        first_part, second_part = manifest["parts"]
        assert first_part["state"] == "recovered" and first_part["end_reason"] == "crash"
        assert second_part["started_by"] == "reconnect"
        assert second_part["verdict"] == "complete", manifest
    recordings = sorted(out.rglob("*.mp4"))
    assert len(recordings) == 2 * PROCESSES * BOTS_PER_PROCESS
    for path in recordings:
        sidecar = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
        if sidecar["part"] == 2:
            assert data == media, path
        else:  # cut at the last complete fragment: a prefix of what was sent
            assert sidecar["recovered"] is True and sidecar["end"] == "crash"
            assert media.startswith(data) and sidecar["bytes"] == len(data) > 0, path
    for path in recordings[:: len(recordings) // 8]:  # a sample of them play
        assert decodable_frames(path.read_bytes()) > 0, path

    # Every recording's hook ran, once; nothing is left in the journal.
    assert not list((out / ".hooks").rglob("*.json"))
    runs = Counter(finished.read_text().splitlines())
    assert runs == Counter(str(p) for p in recordings), (
        [p for p, n in runs.items() if n != 1], len(runs), len(recordings))
