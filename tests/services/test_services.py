"""Smoke tests of the real outside components in ``tests/services`` (README.md there): each one
is started on loopback ports and does one real operation. A component that is not installed
skips its test with the reason (``-ra`` prints it); with ``CI=true`` that is a failure."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from media import Media

from services import (
    artifacts_dir,
    backend_server,
    browser,
    haproxy,
    nats_server,
    require_module,
    s3_server,
)

MiB = 1 << 20


# ------------------------------------------------------------------------------------- S3


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_s3_put_get_and_multipart() -> None:
    require_module("boto3")
    from botocore.exceptions import ClientError

    with s3_server() as s3:
        client = s3.client()
        bucket = s3.create_bucket("recordings")
        client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello")
        assert client.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello"

        # Two parts, CRC32-checksummed: a 5 MiB one (the S3 minimum for all but the last)
        # and a short last one; ListParts shows them with their ETags before Complete.
        key = "bot/speaker/start.mp4"
        parts_data = [bytes(range(256)) * (5 * MiB // 256), b"tail" * 1000]
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")
        upload_id = upload["UploadId"]
        parts = []
        for number, data in enumerate(parts_data, start=1):
            resp = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                ChecksumAlgorithm="CRC32",
            )  # fmt: skip
            assert resp["ETag"].strip('"') == hashlib.md5(data).hexdigest()
            assert resp["ChecksumCRC32"] == _crc32(data)
            parts.append(
                {"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32": resp["ChecksumCRC32"]}
            )
        listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
            (p["PartNumber"], p["ETag"], len(d)) for p, d in zip(parts, parts_data, strict=True)
        ]
        uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        assert [u["UploadId"] for u in uploads] == [upload_id]
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == b"".join(parts_data)

        # What makes it S3-like enough for the upload tests: a too-small first part fails at
        # Complete, and wrong credentials are refused.
        small = client.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
        small_parts = []
        for number in (1, 2):
            etag = client.upload_part(
                Bucket=bucket, Key="small", UploadId=small, PartNumber=number, Body=b"x" * 100
            )["ETag"]
            small_parts.append({"PartNumber": number, "ETag": etag})
        with pytest.raises(ClientError) as too_small:
            client.complete_multipart_upload(
                Bucket=bucket, Key="small", UploadId=small, MultipartUpload={"Parts": small_parts}
            )
        assert too_small.value.response["Error"]["Code"] == "EntityTooSmall"
        client.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
        with pytest.raises(ClientError) as denied:
            s3.client(secret_key="not-the-secret").list_objects_v2(Bucket=bucket)
        assert denied.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_s3_restart_keeps_data() -> None:
    """For "storage killed mid-meeting": SIGKILL, start again on the same port, and both the
    object and the unfinished multipart upload (ListParts) are still there."""
    require_module("boto3")
    with s3_server() as s3:
        client = s3.client()
        bucket = s3.create_bucket("restart")
        client.put_object(Bucket=bucket, Key="kept", Body=b"kept")
        upload_id = client.create_multipart_upload(Bucket=bucket, Key="open")["UploadId"]
        client.upload_part(
            Bucket=bucket, Key="open", UploadId=upload_id, PartNumber=1, Body=b"p" * (5 * MiB)
        )
        port = s3.port
        s3.stop(kill=True)
        assert not s3.running()
        s3.start()
        assert s3.port == port
        assert client.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"kept"
        listed = client.list_parts(Bucket=bucket, Key="open", UploadId=upload_id)["Parts"]
        assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB)]


# ----------------------------------------------------------------------------------- NATS


async def test_nats_jetstream_publish_fetch() -> None:
    nats = require_module("nats")
    from nats.errors import MaxPayloadError

    with nats_server(max_payload=64 * 1024) as ns:
        nc = await nats.connect(ns.url)
        try:
            assert nc.max_payload == 64 * 1024
            js = nc.jetstream()
            await js.add_stream(name="MEETSTREAM", subjects=["meetstream.>"])
            subject = "meetstream.bot1._.media"
            ack = await js.publish(subject, b"fragment-1", headers={"Nats-Msg-Id": "bot1:1"})
            again = await js.publish(subject, b"fragment-1", headers={"Nats-Msg-Id": "bot1:1"})
            assert (ack.seq, again.duplicate) == (1, True)  # deduplicated by message ID
            with pytest.raises(MaxPayloadError):
                await js.publish(subject, b"x" * (64 * 1024 + 1))
            sub = await js.pull_subscribe("meetstream.bot1.>", durable="worker")
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.data == b"fragment-1"
            assert msg.headers == {"Nats-Msg-Id": "bot1:1"}
            await msg.ack()
        finally:
            await nc.close()

        # Down, then back on the same port with the same store: the message is still there.
        ns.stop()
        ns.start()
        nc = await nats.connect(ns.url)
        try:
            info = await nc.jetstream().stream_info("MEETSTREAM")
            assert info.state.messages == 1
        finally:
            await nc.close()


# -------------------------------------------------------------------------------- HAProxy


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
    return body.decode()


@pytest.mark.parametrize(
    ("hash_on", "path"),
    [("path", "/v1/streams/{bot}?token=t{n}"), ("param:bot", "/?bot={bot}&n={n}")],
)
def test_haproxy_consistent_hash_routing(hash_on: str, path: str) -> None:
    with ExitStack() as stack:
        backends = {name: stack.enter_context(backend_server(name)) for name in ("r1", "r2", "r3")}
        lb = stack.enter_context(
            haproxy({name: b.address for name, b in backends.items()}, hash_on=hash_on)
        )
        bots = [f"bot-{i}" for i in range(24)]
        first = {bot: _get(lb.url + path.format(bot=bot, n=0)) for bot in bots}
        assert len(set(first.values())) >= 2, first  # spread over the backends
        for n in (1, 2):  # the same bot lands on the same backend, whatever else changes
            assert {bot: _get(lb.url + path.format(bot=bot, n=n)) for bot in bots} == first

        victim = Counter(first.values()).most_common(1)[0][0]
        backends[victim].close()  # killed: health checks take it out
        lb.wait_state(victim, "DOWN")
        after = {bot: _get(lb.url + path.format(bot=bot, n=3)) for bot in bots}
        moved = {bot for bot in bots if after[bot] != first[bot]}
        assert moved == {bot for bot in bots if first[bot] == victim}  # only its bots moved
        assert victim not in after.values()

        # /healthz answering 503 (a draining receiver) takes a backend out too.
        survivor = next(name for name in backends if name != victim)
        backends[survivor].health_status = 503
        lb.wait_state(survivor, "DOWN")
        backends[survivor].health_status = 200
        lb.wait_state(survivor, "UP")
        assert {bot: _get(lb.url + path.format(bot=bot, n=4)) for bot in bots} == after


# -------------------------------------------------------------------------------- browser


@contextmanager
def _static_server(directory: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _avc1_codec(data: bytes) -> str:
    """The RFC 6381 codec string of the first ``avcC`` box: ``avc1.PPCCLL``."""
    at = data.index(b"avcC") + 4
    return "avc1." + data[at + 1 : at + 4].hex()


PAGE = """<!doctype html><meta charset=utf-8><title>smoke</title>
<style>body{margin:0;background:#000}video{width:320px;height:240px}</style>
<video id=v muted playsinline></video>"""

# Plays a source (a URL, or an MSE feed of a whole fMP4 file), then reports how far it got
# and whether a decoded frame has pixels (drawn into a canvas: a test pattern has many colors).
PLAY_JS = """async ([src, mime]) => {
  const v = document.getElementById('v');
  let error = null;
  v.onerror = () => { error = v.error && v.error.message; };
  if (mime) {
    const ms = new MediaSource();
    v.src = URL.createObjectURL(ms);
    await new Promise(r => ms.addEventListener('sourceopen', r, {once: true}));
    const sb = ms.addSourceBuffer(mime);
    sb.appendBuffer(await (await fetch(src)).arrayBuffer());
    await new Promise(r => sb.addEventListener('updateend', r, {once: true}));
    ms.endOfStream();
  } else {
    v.src = src;
  }
  await v.play();
  const start = v.currentTime;
  await new Promise(r => setTimeout(r, 700));
  v.pause();
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  const colors = new Set();
  for (let i = 0; i < px.length; i += 4 * 97) colors.add((px[i] << 16) | (px[i+1] << 8) | px[i+2]);
  return {start, end: v.currentTime, width: v.videoWidth, height: v.videoHeight,
          frames: v.getVideoPlaybackQuality().totalVideoFrames, colors: colors.size, error};
}"""

CODECS = [
    'video/mp4; codecs="avc1.42E01E"',
    'video/mp4; codecs="avc1.4D401F"',
    'video/mp4; codecs="avc1.64001F"',
    'video/mp4; codecs="avc1.64001F, mp4a.40.2"',
    'audio/mp4; codecs="mp4a.40.2"',
    'video/mp4; codecs="hvc1.1.6.L93.B0"',
    'video/mp4; codecs="av01.0.04M.08"',
    'video/mp4; codecs="vp09.00.10.08"',
    'video/webm; codecs="vp9, opus"',
    'video/webm; codecs="vp8, vorbis"',
]


def test_browser_plays_h264(fmp4_small: Media, tmp_path: Path) -> None:
    """Debian's Chromium plays the project's H.264 + AAC fMP4 in a <video> element, both as a
    file and fed through Media Source Extensions (the live preview's path)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    (site / "clip.mp4").write_bytes(fmp4_small.data)
    codec = _avc1_codec(fmp4_small.data)
    out = artifacts_dir("services")
    with browser() as b, _static_server(site) as base:
        page = b.new_page(viewport={"width": 320, "height": 240})
        page.goto(f"{base}/index.html")
        support = page.evaluate(
            "(ts) => ts.map(t => [t, MediaSource.isTypeSupported(t),"
            " document.createElement('video').canPlayType(t)])",
            CODECS,
        )
        (out / "chromium-codecs.json").write_text(
            json.dumps({"chromium": b.version, "types": support}, indent=2) + "\n"
        )
        mse_type = f'video/mp4; codecs="{codec}, mp4a.40.2"'
        assert page.evaluate("(t) => MediaSource.isTypeSupported(t)", mse_type), mse_type

        for mode, mime in (("file", None), ("mse", mse_type)):
            result = page.evaluate(PLAY_JS, ["/clip.mp4", mime])
            assert result["error"] is None, (mode, result)
            assert result["end"] - result["start"] > 0.3, (mode, result)  # currentTime advances
            assert (result["width"], result["height"]) == (fmp4_small.width, fmp4_small.height)
            assert result["frames"] > 0 and result["colors"] > 8, (mode, result)  # decoded
            shot = out / f"h264-{mode}.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
        page.close()
