"""Issue 13 end to end, on a real small filesystem: two bots stream ~25 MB each through the
asyncio server into a 24 MiB tmpfs, with a free-space guard like ``serve --disk-low 4m``.

Both connections stay open until the bots close them (1000), every ping is answered, the
guard stops writing before the disk is full (no ``ENOSPC`` is ever met), and both sidecars
are final and consistent with their files. Needs root (to mount the tmpfs): skipped
otherwise, and failed instead when ``CI`` is set (CI must run it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from media import decodable_frames, ffmpeg_exe, fragment_spans

from meetstream_live import BotClosed, PongReceived
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.asyncio import AsyncioBot, serve
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.diskguard import DiskGuard
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.verify import verify_file

MIB = 1024 * 1024
CHUNK = 64 * 1024


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, mounted for the test and unmounted after it."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _cannot("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _cannot(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def big_media(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """~25 MB of real fMP4: noisy H.264 at 16 Mbit/s (a fragment per 0.48 s) and AAC."""
    path = tmp_path_factory.mktemp("big") / "big.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=12",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=12",
         "-vf", "noise=alls=60:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-g", "12", "-keyint_min", "12", "-sc_threshold", "0",
         "-bf", "0", "-b:v", "16M", "-maxrate", "16M", "-bufsize", "8M",
         "-c:a", "aac", "-b:a", "64k", "-ac", "1",
         "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4", str(path)],
        check=True,
    )
    data = path.read_bytes()
    assert len(data) > 20 * MIB
    return data


async def bot(port: int, bot_id: str, data: bytes) -> dict[str, Any]:
    client = await AsyncioBot.connect(f"ws://127.0.0.1:{port}/", timeout=10)
    pongs: list[PongReceived] = []

    async def read() -> BotClosed:
        while True:
            event = await client.next_event()
            if isinstance(event, PongReceived):
                pongs.append(event)
            elif isinstance(event, BotClosed):
                return event

    reader = asyncio.create_task(read())
    await client.send_start(bot_id)
    pings = 0
    for n, offset in enumerate(range(0, len(data), CHUNK)):
        assert not reader.done(), f"{bot_id}: closed by the receiver: {reader.result()}"
        await client.send_chunk(data[offset : offset + CHUNK])
        if n % 8 == 0:
            pings += 1
            await client.send_ping(pings)
    await client.send_end(12.0)
    while len(pongs) < pings and not reader.done():  # every ping answered, before we close
        await asyncio.sleep(0.01)
    await client.start_close(1000)
    closed = await asyncio.wait_for(reader, 30)
    return {"pings": pings, "pongs": pongs, "closed": closed}


@pytest.mark.parametrize("guarded", [True, False], ids=["guard", "no-guard"])
def test_two_bots_on_a_small_disk(small_disk: Path, big_media: bytes, guarded: bool) -> None:
    """With the guard (``--disk-low 4m``) writing stops before the disk is full; without it
    (``--disk-low 0``) the writes meet ENOSPC: the outcome for the bots is the same."""
    metrics = Metrics()
    guard = DiskGuard(small_disk, low_bytes=4 * MIB, interval=0.5, metrics=metrics)
    recorder = Recorder(small_disk, metrics=metrics, disk_guard=guard if guarded else None)

    async def main() -> list[dict[str, Any]]:
        async with serve(recorder, "127.0.0.1", 0, ServerOptions(observer=metrics.observe)) as s:
            return list(await asyncio.wait_for(asyncio.gather(
                bot(s.port, "bot-a", big_media), bot(s.port, "bot-b", big_media)), 120))

    try:
        results = asyncio.run(main())
    finally:
        recorder.close()
    for result in results:
        assert result["closed"].code == 1000, result["closed"]  # closed by the bot, not 1011
        assert len(result["pongs"]) == result["pings"]  # every ping answered
        assert all(p.matched for p in result["pongs"])
    if guarded:  # the guard stopped the writing before the disk was full
        assert metrics.disk_errors.value("ENOSPC") == 0 and metrics.errors.value("disk") == 0
        assert metrics.disk_low.value() == 1
    else:
        assert metrics.disk_errors.value("ENOSPC") >= 1
    assert not list(small_disk.rglob("*.part")) and not list(small_disk.rglob("*.tmp"))
    init_end, spans = fragment_spans(big_media)
    boundaries = {init_end, *(a + b for a, b in spans)}
    lost = frames = 0
    for bot_id in ("bot-a", "bot-b"):
        (media,) = (small_disk / bot_id).glob("*.mp4")
        doc = json.loads(media.with_suffix(".json").read_text())
        body = media.read_bytes()
        assert doc["bytes"] == len(body) and doc["received_bytes"] == len(big_media)
        assert doc["bytes"] + doc["lost_bytes"] == doc["received_bytes"]
        reason = "disk_low" if guarded else "ENOSPC"
        assert doc["lost_bytes"] > 0 and doc["holes"][0]["reason"] == reason
        assert ("disk_low" if guarded else "disk_full") in [w["kind"] for w in doc["warnings"]]
        assert len(body) in boundaries and big_media.startswith(body)  # cut at a fragment
        assert verify_file(media).verdict == "complete"  # what is in the file is whole
        # Which bot the space went to is a race: one of them may have kept its init segment
        # only (it plays nothing, and its sidecar says so); between them they kept frames.
        frames += decodable_frames(body)
        assert doc["verdict"] == "truncated" and doc["end_reason"] == "stream_end"
        lost += doc["lost_bytes"]
        manifest = json.loads(next((small_disk / bot_id).glob("*.session.json")).read_text())
        assert manifest["state"] == "finished"
    assert frames > 0
    kept = 2 * len(big_media) - lost
    assert kept <= 24 * MIB - (4 * MIB if guarded else 0)  # the guard kept its watermark
