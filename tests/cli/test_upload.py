"""The command line of object storage: ``serve --upload`` options and its start-up check
(wrong credentials, a missing bucket: exit 2 before any bot can connect), ``meetstream-live
upload DIR|FILE...`` (resumable, skips what is uploaded) and ``verify s3://...``."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media
from services import S3Server, require_module, s3_server

from meetstream_live.adapters.cli import main
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.upload.journal import UploadJournal, journal_path

_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def s3_module() -> Iterator[S3Server]:
    require_module("boto3")
    with s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_module: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_module.env().items():
        monkeypatch.setenv(name, value)
    return s3_module


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.create_bucket(f"cli{next(_buckets)}")


def recorded(root: Path, data: bytes, bot_id: str = "bot-cli") -> Path:
    """A recording made without uploads."""
    from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
    from meetstream_live.adapters import ConnectionInfo

    recorder = Recorder(root)
    handler = recorder(ConnectionInfo("127.0.0.1:1", "/", "", (), False))
    handler.on_start(StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start"}))
    for offset in range(0, len(data), 65536):
        handler.on_chunk(MediaChunk(data[offset:offset + 65536], offset))
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    (media,) = root.rglob("*.mp4")
    return media


@pytest.mark.parametrize(("argv", "message"), [
    (["--upload", "http://bucket/x"], "--upload ($MEETSTREAM_LIVE_UPLOAD): 'http://bucket/x' is "
                                      "not an s3://BUCKET/PREFIX URL"),
    (["--upload", "s3://b1/x", "--upload-part-size", "4m"], "below 5 MiB"),
    (["--upload", "s3://b1/x", "--upload-key", "{prefix}/{room}.mp4"], "unknown field(s) room"),
    (["--upload", "s3://b1/x", "--keep-local", "maybe"], "--keep-local"),
])
def test_bad_options_exit_2(argv: list[str], message: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--output", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_config_lists_the_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--upload", "s3://b1/meet", "--upload", "s3://b2"]) == 0
    out = capsys.readouterr().out
    assert "[s3://b1/meet, s3://b2]" in out
    assert "{prefix}/{bot_id}/{speaker}/{start}.mp4" in out


def serve_exit(tmp_path: Path, env: dict[str, str], *argv: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", "0",
         "--output", str(tmp_path / "out"), *argv],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )
    return done.returncode, done.stderr


def test_serve_refuses_wrong_credentials_before_listening(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    code, err = serve_exit(tmp_path, {**s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"},
                           "--upload", f"s3://{bucket}/meet")
    assert code == 2, err
    assert f"--upload s3://{bucket}/meet (endpoint {s3.endpoint_url})" in err
    assert "SignatureDoesNotMatch" in err and "AWS_SECRET_ACCESS_KEY" in err
    assert "listening" not in err


def test_serve_refuses_a_read_only_identity(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    env = {**s3.env(), "AWS_ACCESS_KEY_ID": s3.readonly_access_key,
           "AWS_SECRET_ACCESS_KEY": s3.readonly_secret_key}
    code, err = serve_exit(tmp_path, env, "--upload", f"s3://{bucket}/meet")
    assert code == 2 and "AccessDenied" in err and "may write" in err, err


def test_serve_refuses_a_missing_bucket(s3: S3Server, tmp_path: Path) -> None:
    code, err = serve_exit(tmp_path, s3.env(), "--upload", "s3://no-such-bucket/meet")
    assert code == 2, err
    assert "there is no bucket 'no-such-bucket'" in err and "lifecycle" in err
    assert "listening" not in err


def test_upload_command_uploads_and_then_skips(
    fmp4_medium: Media, s3: S3Server, bucket: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    media = recorded(tmp_path, fmp4_medium.data)
    assert main(["upload", str(tmp_path), "--upload", f"s3://{bucket}/old"]) == 0
    out = capsys.readouterr().out
    key = f"old/bot-cli/{media.name}"
    assert f"{media}: s3://{bucket}/{key} ({len(fmp4_medium.data)} bytes)" in out
    client = s3.client()
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == fmp4_medium.data
    assert main(["upload", str(tmp_path), "--upload", f"s3://{bucket}/old"]) == 0
    assert "0 recording(s) to upload, 1 already uploaded" in capsys.readouterr().out

    assert main(["verify", f"s3://{bucket}/old/"]) == 0
    assert f"s3://{bucket}/{key}: COMPLETE" in capsys.readouterr().out
    client.put_object(Bucket=bucket, Key="old/cut.mp4", Body=fmp4_medium.data[:-5000])
    assert main(["verify", "--json", f"s3://{bucket}/old/cut.mp4"]) == 1
    assert '"verdict": "truncated"' in capsys.readouterr().out
    assert main(["verify", f"s3://{bucket}/nothing/"]) == 2


class OnePartThenDown:
    """A client that uploads one part, then finds the storage gone."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.parts = 0

    def __getattr__(self, name: str) -> object:
        method = getattr(self.real, name)

        def call(**params: object) -> object:
            from botocore.exceptions import EndpointConnectionError

            if name == "upload_part":
                self.parts += 1
                if self.parts > 1:
                    raise EndpointConnectionError(endpoint_url="http://storage")
            return method(**params)

        return call


def test_upload_command_goes_on_where_it_stopped(
    media_dir: Path, s3: S3Server, bucket: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from media import make_fmp4

    from meetstream_live.adapters.recording.upload import (
        RetryPolicy,
        Storage,
        Target,
        UploadConfig,
        Uploader,
    )
    from meetstream_live.adapters.recording.upload.resume import job_for
    from meetstream_live.adapters.recording.upload.s3 import make_client

    clip = make_fmp4(media_dir / "cli-clip.mp4", duration_s=15.0, size=(1280, 720),
                     keyframe_interval_s=1.0)
    media = recorded(tmp_path, clip.data)
    assert len(clip.data) > 2 * 5 * 1024 * 1024
    # An earlier run got one part up, then the storage went away.
    target = Target(bucket, "x")
    first = Uploader(UploadConfig([target], retry=RetryPolicy(attempts=1)),
                     [Storage(target, OnePartThenDown(make_client()))])
    job = job_for(media, tmp_path, first)
    assert job is not None
    first.add("it", job)
    first.start()
    deadline = time.monotonic() + 20
    while not job.state.parts and time.monotonic() < deadline:
        time.sleep(0.02)
    first.close(0.2)
    before = UploadJournal.load(journal_path(media)).state
    assert list(before.parts) == [1] and before.complete is None

    assert main(["upload", str(tmp_path), "--upload", f"s3://{bucket}/x"]) == 0
    after = UploadJournal.load(journal_path(media)).state
    assert after.upload_id == before.upload_id and after.parts[1] == before.parts[1]
    assert after.complete is not None and after.complete["size"] == len(clip.data)
    key = f"x/bot-cli/{media.name}"
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == clip.data
    capsys.readouterr()


def test_upload_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upload", str(tmp_path)]) == 2
    assert "give --upload" in capsys.readouterr().err


def test_a_path_template_makes_the_bucket_mirror_it() -> None:
    from meetstream_live.adapters.cli.serve import serve_options
    from meetstream_live.adapters.cli.upload import _config

    layout = "{bot_id}/{start:%Y/%m}/{start:%H%M%S}.mp4"
    settings = serve_options().resolve({"upload": ["s3://b1/x"], "path_template": layout}, {})
    assert str(_config(settings).key_template) == "{prefix}/{path}.mp4"
    chosen = serve_options().resolve({"upload": ["s3://b1/x"], "path_template": layout,
                                      "upload_key": "{prefix}/{bot_id}/{start}.mp4"}, {})
    assert str(_config(chosen).key_template) == "{prefix}/{bot_id}/{start}.mp4"
    plain = serve_options().resolve({"upload": ["s3://b1/x"]}, {})
    assert str(_config(plain).key_template) == "{prefix}/{bot_id}/{speaker}/{start}.mp4"
