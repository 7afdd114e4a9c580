"""The soak as production runs it: the receiver (``_server.py``: a :class:`Recorder` with the
reconnect grace and a free-space guard, on every adapter, the ASGI ones under uvicorn and
hypercorn) in a process of its own, recording to a real filesystem (a tmpfs the test mounts);
the bots in processes of their own (``_soak_bots.py``) at 4 Mbit/s, with random disconnects
and reconnects and 16 MiB keyframe fragments; and in the middle, a disk-full episode (a file
takes the free space below the guard's watermark, then goes).

Checked at the end: every ping answered on every connection that was not cut; every byte a
bot sent on a connection it closed is in a recording, and on one it cut at most what it sent;
the only bytes missing are holes the disk-full episode made (reason ``disk_low`` or
``ENOSPC``, in parts that lived through it); every recording is the clip's init and whole
fragments of the clip, and a sample decode; the server's RSS and open descriptors flat
(within 10 %); no error in its log, and it stops cleanly.

``test_soak_serve_short`` runs in CI (12 bots, 12 s per adapter); ``test_soak_serve`` is the
long one (``make soak``: 200 bots for 10 minutes per adapter; ``SOAK_BOTS``,
``SOAK_SECONDS``). The recordings are checked and removed as they finish, so the disk holds
only the streams in flight.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from media import decodable_frames, ffmpeg_exe

from meetstream_live.fmp4 import Fmp4Scanner, FragmentComplete, InitSegment

from ._process import ServerProcess, env
from .conftest import is_asgi

MIB = 1024 * 1024
LOW = 8 * MIB  # the guard's watermark (serve --disk-low 8m)
BOTS = Path(__file__).with_name("_soak_bots.py")
HOLE_REASONS = {"disk_low", "ENOSPC"}


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def _encode(path: Path, *args: str) -> bytes:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args,
                    "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4",
                    str(path)], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An 8 s clip at 4 Mbit/s (a fragment a second), and one 4608x2592 lossless noise frame:
    a keyframe fragment of about 18 MB, sent as one message."""
    where = tmp_path_factory.mktemp("soak-media")
    _encode(where / "clip.mp4", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=8",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=8",
            "-vf", "noise=alls=40:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
            "-bf", "0", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "4M",
            "-c:a", "aac", "-b:a", "64k", "-ac", "1")
    big = _encode(where / "big.mp4", "-f", "lavfi", "-i",
                  "nullsrc=s=4608x2592:r=25:d=0.04,geq=lum='random(1)*255':cb=128:cr=128",
                  "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p",
                  "-g", "1")
    assert len(big) > 16 * MIB
    return where / "clip.mp4", where / "big.mp4"


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _cannot("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _cannot(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(filler: Path, out: Path) -> None:
    """Take the free space of ``out`` down to half the guard's watermark, 64 MiB at a time (the
    recordings grow meanwhile)."""
    with open(filler, "wb") as f:
        offset = 0
        while True:
            stat = os.statvfs(out)
            room = stat.f_bavail * stat.f_frsize - LOW // 2
            if room <= 0:
                return
            size = min(64 * MIB, room)
            try:
                os.posix_fallocate(f.fileno(), offset, size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
            offset += size


def pieces(data: bytes) -> tuple[bytes, set[bytes]]:
    """The init segment of ``data`` and the digests of its fragments."""
    scanner = Fmp4Scanner()
    events = [*scanner.feed(data), *scanner.eof()]
    (init,) = [e for e in events if isinstance(e, InitSegment)]
    frags = {hashlib.sha1(data[e.offset : e.offset + e.size]).digest()
             for e in events if isinstance(e, FragmentComplete)}
    return data[: init.offset + init.size], frags


def _ms(stamp: str | None) -> float:
    if stamp is None:
        return float("inf")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Checked:
    """What the checker found in the finished recordings (it removes them)."""

    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    holes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    decoded: int = 0
    scanned: int = 0


class Checker(threading.Thread):
    """Checks each recording once its sidecar is final, then removes it (the disk holds only
    what is in flight)."""

    def __init__(self, out: Path, clip: bytes, big: bytes, every: int) -> None:
        super().__init__(daemon=True)
        self.every = every  # the bytes of one recording in ``every`` are checked
        self.out, self.found = out, Checked()
        self.inits, self.frags = {}, set()  # type: ignore[var-annotated]
        for data in (clip, big):
            init, frags = pieces(data)
            self.inits[init] = True
            self.frags |= frags
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.sweep()
        self.sweep()

    def sweep(self) -> None:
        for sidecar in sorted(self.out.rglob("*.json")):
            if sidecar.name.endswith(".session.json"):
                continue
            media = sidecar.with_suffix(".mp4")
            if not media.exists():
                continue
            try:
                self.check(media, json.loads(sidecar.read_text()))
            except Exception as exc:
                self.found.problems.append(f"{media.name}: {exc!r}")
            media.unlink()
            sidecar.unlink()

    def check(self, media: Path, doc: dict[str, Any]) -> None:
        found, data = self.found, media.read_bytes()
        found.parts.append(doc)
        found.received[doc["bot_id"]] += doc["received_bytes"]
        if doc["bytes"] != len(data):
            found.problems.append(f"{media.name}: {len(data)} bytes, sidecar {doc['bytes']}")
        if doc["bytes"] + doc["lost_bytes"] != doc["received_bytes"]:
            found.problems.append(f"{media.name}: bytes + lost != received: {doc}")
        for hole in doc["holes"]:
            found.holes.append((media.name, {**hole, "started_at": doc["started_at"],
                                             "ended_at": doc["ended_at"]}))
        if not data or len(found.parts) % self.every:
            return
        found.scanned += 1
        scanner = Fmp4Scanner()
        events = [*scanner.feed(data), *scanner.eof()]
        inits = [e for e in events if isinstance(e, InitSegment)]
        if not inits or data[: inits[0].offset + inits[0].size] not in self.inits:
            found.problems.append(f"{media.name}: not the clip's init segment")
        whole = max([e.offset + e.size for e in events
                     if isinstance(e, (InitSegment, FragmentComplete))], default=0)
        for e in events:
            if (isinstance(e, FragmentComplete)
                    and hashlib.sha1(data[e.offset : e.offset + e.size]).digest()
                    not in self.frags):
                found.problems.append(f"{media.name}: a fragment that is not the clip's")
                break
        if found.scanned % 25 == 1 and doc["fragments"] > 0:  # a sample of them play
            if decodable_frames(data[:whole]) <= 0:  # up to a torn tail
                found.problems.append(f"{media.name}: does not decode")
            found.decoded += 1


def run_soak(adapter: str, clips: tuple[Path, Path], tmp_path: Path, bots: int,
             seconds: float, slack: int) -> str:
    clip, big = clips[0].read_bytes(), clips[1].read_bytes()
    size = max(256 * MIB, bots * 48 * MIB)  # tmpfs takes only what is written
    processes = max(1, min(4, bots // 50))
    with tmpfs(tmp_path / "disk", size) as out:
        log = tmp_path / "server.log"
        server = ServerProcess(adapter, out, log, "--grace", "3", "--disk-low", str(LOW),
                               "--max-connections", str(bots * 3 + 50))
        # On two cores the checker cannot read 100+ MB/s beside the receiver and the bots: in
        # a long run it checks the bytes of one recording in ten (the accounts of all).
        checker = Checker(out, clip, big, every=1 if seconds <= 60 else 10)
        checker.start()
        filler = out / "filler"
        samples: list[tuple[float, int, int]] = []
        try:
            base_rss, base_fds = server.stats()
            per = -(-bots // processes)
            began = time.monotonic()  # the bots' clock starts now too
            runs = []
            for p in range(processes):
                count = min(per, bots - p * per)
                runs.append((tmp_path / f"bots-{p}.jsonl", subprocess.Popen(
                    [sys.executable, str(BOTS), f"ws://127.0.0.1:{server.port}/", str(clips[0]),
                     str(clips[1]), str(p * per), str(count), str(seconds), "1",
                     str(tmp_path / f"bots-{p}.jsonl")],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())))
            for _, proc in runs:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"streaming\n", proc.communicate()[1]
            episode: tuple[float, float] | None = None
            least = size  # free space before the episode, at its lowest
            while any(proc.poll() is None for _, proc in runs):
                at = time.monotonic() - began
                samples.append((at, *server.stats()))
                if episode is None:
                    stat = os.statvfs(out)
                    least = min(least, stat.f_bavail * stat.f_frsize)
                if episode is None and at >= 0.4 * seconds:  # the disk fills up
                    episode = (time.time(), float("inf"))
                    fill(filler, out)
                elif episode is not None and episode[1] == float("inf") and at >= 0.6 * seconds:
                    filler.unlink()  # and the space comes back
                    episode = (episode[0], time.time())
                time.sleep(0.5)
            for _, proc in runs:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err.decode()
            time.sleep(4)  # the grace (3 s) of the last cut connections runs out
            end_rss, end_fds = server.stats()
        finally:
            code = server.stop()
            checker.stopping.set()
            checker.join(60)
        text = log.read_text(errors="replace")
        parts_left = sorted(out.rglob("*.part"))[:5]

    records = [json.loads(line) for path, _ in runs for line in path.read_text().splitlines()]
    found = checker.found
    warm = [s for s in samples if s[0] >= seconds / 4]
    warm_rss, warm_fds = (warm[0][1], warm[0][2]) if warm else (end_rss, end_fds)
    sent = sum(r["bytes"] for r in records)
    lost = sum(hole["bytes"] for _, hole in found.holes)
    report = (f"{adapter}: {bots} bots x {seconds:.0f} s: {len(records)} connections "
              f"({sum(r['cut'] for r in records)} cut, {sum(r['big'] for r in records)} with a "
              f"16 MiB keyframe), {sent / 1e6:.0f} MB sent, {len(found.parts)} recordings "
              f"({found.scanned} checked byte by byte, {found.decoded} decoded), "
              f"{len(found.holes)} holes of the disk-full episode ({lost / 1e6:.1f} MB); "
              f"server RSS {base_rss / MIB:.0f} MiB idle, "
              f"{warm_rss / MIB:.0f} after warm-up, {end_rss / MIB:.0f} at the end; descriptors "
              f"{base_fds} idle, {warm_fds} after warm-up, {end_fds} at the end; least free before "
              f"the episode {least / MIB:.0f} MiB; RSS over the run (MiB): "
              + ", ".join(f"{r / MIB:.0f}" for _, r, _ in samples[::max(1, len(samples) // 10)]))
    print(report, file=sys.stderr)
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not parts_left, parts_left
    assert not found.problems, found.problems[:10]
    errors = [r for r in records if r.get("error")]
    assert not errors, errors[:5]
    for r in records:
        if not r["cut"]:
            assert r["pongs"] == r["pings"], r
            assert r.get("close") == 1000, r
    sent_clean: dict[str, int] = defaultdict(int)
    sent_all: dict[str, int] = defaultdict(int)
    for r in records:
        sent_all[r["bot_id"]] += r["bytes"]
        if not r["cut"]:
            sent_clean[r["bot_id"]] += r["bytes"]
    for bot_id, total in sent_all.items():
        received = found.received.get(bot_id, 0)
        assert sent_clean[bot_id] <= received <= total, (bot_id, sent_clean[bot_id], received)
    assert episode is not None and episode[1] != float("inf")
    assert least > LOW, f"the disk was low before the episode ({least} bytes free)"
    for name, hole in found.holes:
        assert hole["reason"] in HOLE_REASONS, (name, hole)
        # Only in parts that lived through the episode (it began, the space came back).
        assert _ms(hole["started_at"]) <= episode[1] + 1 and (
            _ms(hole["ended_at"]) >= episode[0] - 1), (name, hole, episode)
    assert found.holes, "the disk-full episode made no hole: the test did not test it"
    assert any(r["big"] and not r["cut"] for r in records)
    assert sum(r["cut"] for r in records) > 0 and len(records) > bots  # the faults happened

    assert end_rss <= warm_rss * 1.10 + slack, report
    assert end_fds <= max(warm_fds, base_fds) * 1.10 + 2, report
    return report


def test_soak_serve_short(adapter: str, clips: tuple[Path, Path], tmp_path: Path) -> None:
    """12 bots for 12 s: the whole production soak, short (RSS with 32 MiB of slack: a few
    seconds are too short for the allocator to settle; an 18 MB message is in flight)."""
    run_soak(adapter, clips, tmp_path, 12, 12.0, 32 * MIB)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_serve(adapter: str, clips: tuple[Path, Path], tmp_path: Path) -> None:
    """``make soak``: 200 bots at 4 Mbit/s for 10 minutes per adapter."""
    bots = int(os.environ.get("SOAK_BOTS", "200"))
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    run_soak(adapter, clips, tmp_path, bots, seconds, 0)


__all__ = ["is_asgi"]
