"""Retention that keeps running: by age, total size and free space, each recording with every
file derived from it, session manifests once their parts are gone, empty folders; never a
recording being written or one whose hooks are pending."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from meetstream_live.adapters.recording.diskguard import (
    EMPTY_DIR_AGE,
    DiskGuard,
    Retention,
    apply_retention,
)
from meetstream_live.adapters.recording.hooks import Journal
from meetstream_live.adapters.recording.metrics import Metrics

DAY = 86400.0


def recording(directory: Path, stem: str, age_days: float, size: int = 1000,
              derived: tuple[str, ...] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    media = directory / f"{stem}.mp4"
    media.write_bytes(b"x" * size)
    (directory / f"{stem}.json").write_text(json.dumps({"file": media.name, "verdict": "ok"}))
    for suffix in derived:
        (directory / f"{stem}{suffix}").write_bytes(b"d" * 10)
    moment = time.time() - age_days * DAY
    os.utime(media, (moment, moment))
    return media


def age_dirs(root: Path, seconds: float) -> None:
    moment = time.time() - seconds
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(directory, (moment, moment))


def test_a_recording_goes_with_every_derivative_its_manifest_and_empty_folders(
    tmp_path: Path,
) -> None:
    session = tmp_path / "bot" / "alice" / "2025" / "01" / "02"
    recording(session, "100000", 30, derived=(".remux.mp4", ".upload.jsonl",
                                              ".keyframes.jsonl"))
    recording(session, "100000_part002", 30)
    (session / "100000.session.json").write_text("{}")
    kept = recording(tmp_path / "bot" / "bob", "20250101T000000Z", 1)
    (kept.parent / "20250101T000000Z_part002.mp4.part").write_bytes(b"live")
    (kept.parent / "20250101T000000Z.session.json").write_text("{}")
    age_dirs(tmp_path, EMPTY_DIR_AGE + 60)
    doomed = sum(p.stat().st_size for p in session.iterdir() if "session" not in p.name)
    metrics = Metrics()
    deleted = apply_retention(tmp_path, keep_days=7, metrics=metrics)
    assert sorted(p.name for p in deleted) == ["100000.mp4", "100000_part002.mp4"]
    assert not (tmp_path / "bot" / "alice").exists()  # every folder it left empty
    assert sorted(p.name for p in (tmp_path / "bot" / "bob").iterdir()) == [
        "20250101T000000Z.json", "20250101T000000Z.mp4", "20250101T000000Z.session.json",
        "20250101T000000Z_part002.mp4.part",
    ]
    assert metrics.retention_deleted.value("age") == 2
    assert metrics.retention_deleted_bytes.value() == doomed


def test_a_fresh_empty_folder_stays(tmp_path: Path) -> None:
    """A directory the recorder has just made (its file comes next) is not removed."""
    (tmp_path / "new-bot").mkdir()
    (tmp_path / "old-bot").mkdir()
    age_dirs(tmp_path / "old-bot", EMPTY_DIR_AGE + 60)
    apply_retention(tmp_path, keep_days=7)
    assert (tmp_path / "new-bot").is_dir() and not (tmp_path / "old-bot").exists()


def test_by_free_space_the_oldest_go_until_there_is_room(tmp_path: Path) -> None:
    for n in range(5):
        recording(tmp_path / "bot", f"r{n}", 5 - n, size=1000)
    free = 500
    deleted = apply_retention(tmp_path, keep_free_bytes=2600, free=lambda: free)
    # Each one gives back its media and sidecar (~1030 bytes): three make room.
    assert [p.name for p in deleted] == ["r0.mp4", "r1.mp4", "r2.mp4"]


def test_pending_hooks_and_protected_recordings_are_kept(tmp_path: Path) -> None:
    from meetstream_live.adapters.recording import FinishedRecording

    pending = recording(tmp_path / "bot", "pending", 30)
    claimed = recording(tmp_path / "bot", "claimed", 30)
    recording(tmp_path / "bot", "gone", 30)
    journal = Journal(tmp_path, ("command",))
    journal.add(FinishedRecording(pending, pending.with_suffix(".json"), {"ended_at_ms": 1}))
    retention = Retention(tmp_path, keep_days=1, journal=journal)
    retention.protect.append(lambda media: media.name == "claimed.mp4")
    assert [p.name for p in retention.run_once()] == ["gone.mp4"]
    assert pending.exists() and claimed.exists()


def test_retention_keeps_running_and_the_guard_wakes_it(tmp_path: Path) -> None:
    retention = Retention(tmp_path, keep_days=7, interval=3600)
    retention.start()  # one run at start, nothing to do yet
    try:
        assert retention.runs == 1
        media = recording(tmp_path / "bot", "later", 30)
        free = [10**9]
        guard = DiskGuard(tmp_path, low_bytes=1000, free=lambda: free[0])
        guard.on_low = retention.wake
        assert not guard.check()
        free[0] = 10
        assert guard.check() and guard.is_low
        deadline = time.monotonic() + 10
        while media.exists():
            assert time.monotonic() < deadline, "the wake-up did not run the retention"
            time.sleep(0.01)
    finally:
        retention.close()
    assert retention.runs == 2


def test_retention_runs_on_its_interval(tmp_path: Path) -> None:
    retention = Retention(tmp_path, max_total_bytes=0, interval=0.05)
    retention.start()
    try:
        media = recording(tmp_path / "bot", "r", 0)
        deadline = time.monotonic() + 10
        while media.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        retention.close()
