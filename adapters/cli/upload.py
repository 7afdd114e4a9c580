"""Object storage for ``serve`` (``--upload s3://BUCKET/PREFIX``), the ``meetstream-live
upload DIR|FILE...`` command, and ``verify s3://...``. See ``docs/upload.md``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meetstream_live.adapters.recording.upload.keys import (
    DEFAULT_KEY_TEMPLATE,
    KeyTemplate,
    Target,
    parse_target,
)

from .features import Feature, ServeContext
from .options import (
    Option,
    OptionSet,
    Settings,
    UsageError,
    boolean,
    command_settings,
    disk_size,
    duration,
    positive_int,
)

__all__ = ["UPLOAD", "UploadFeature", "add_upload_command", "upload_command", "verify_url"]

log = logging.getLogger("meetstream_live.cli")

MIN_PART = 5 * 1024 * 1024


def part_size(value: str) -> int:
    """A part size: at least 5 MiB (S3's minimum), at most 5 GiB."""
    size = disk_size(value)
    if size < MIN_PART:
        raise ValueError(f"{value!r} is below 5 MiB, the smallest part S3 takes")
    if size > 5 << 30:
        raise ValueError(f"{value!r} is above 5 GiB, the largest part S3 takes")
    return size


def key_template(value: str) -> KeyTemplate:
    return KeyTemplate(value)


OPTIONS: tuple[Option, ...] = (
    Option("upload", parse_target, [],
           "upload each recording to this bucket while it is recorded (S3 multipart; "
           "credentials, region and endpoint from the standard AWS environment and config "
           "files: AWS_ENDPOINT_URL_S3 for MinIO, SeaweedFS, R2). Given twice, the second is "
           "the fallback when the first keeps failing",
           multiple=True, metavar="s3://BUCKET/PREFIX", group="upload"),
    Option("upload_part_size", part_size, MIN_PART,
           "bytes per uploaded part, cut at fragment boundaries: the bucket trails the live "
           "edge by about one part (at least 5m, S3's minimum)", metavar="SIZE",
           shown_default="5m", group="upload"),
    Option("keep_local", boolean, True,
           "keep each recording on local disk once the bucket has it in full and checked "
           "(false: remove it then)", metavar="BOOL", group="upload"),
    Option("upload_key", key_template, KeyTemplate(DEFAULT_KEY_TEMPLATE),
           "object key template; fields {prefix} {bot_id} {speaker} {start} {part} {path} "
           "(the path below --output, without .mp4: the default with --path-template is "
           "{prefix}/{path}.mp4)",
           metavar="TEMPLATE", shown_default=DEFAULT_KEY_TEMPLATE, group="upload"),
    Option("upload_threads", positive_int, 4, "threads uploading parts", metavar="N",
           group="upload"),
    Option("upload_timeout", duration, 30.0,
           "per request: how long an answer may take (connecting: at most 5s of it)",
           metavar="DURATION", group="upload"),
    Option("upload_failover_after", duration, 60.0,
           "go on with the next --upload target when a target has failed every request for "
           "this long", metavar="DURATION", group="upload"),
    Option("upload_drain_timeout", duration, 30.0,
           "at shutdown, how long the uploads due may go on (the rest resumes at the next "
           "start)", metavar="DURATION", group="upload"),
)


#: The key template when ``--path-template`` lays the recordings out (and ``--upload-key``
#: is not given): the bucket mirrors the output directory whatever its layout.
MIRROR_KEY_TEMPLATE = "{prefix}/{path}.mp4"


def _config(settings: Settings) -> Any:
    from meetstream_live.adapters.recording.upload.uploader import UploadConfig

    template = settings.upload_key
    if settings.get("path_template") and settings.sources.get("upload_key") == "default":
        template = KeyTemplate(MIRROR_KEY_TEMPLATE)
    return UploadConfig(
        targets=list(settings.upload), key_template=template,
        part_size=settings.upload_part_size, keep_local=settings.keep_local,
        threads=settings.upload_threads, timeout=settings.upload_timeout,
        failover_after=settings.upload_failover_after,
    )


def _require_boto3() -> None:
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise UsageError("--upload needs boto3: pip install 'meetstream-live[upload]'") from None


def make_uploader(settings: Settings, metrics: Any = None) -> Any:
    """The uploader the settings describe (``UsageError`` when the SDK is missing or its
    configuration is wrong)."""
    _require_boto3()
    from botocore.exceptions import BotoCoreError

    from meetstream_live.adapters.recording.upload.uploader import Uploader

    try:
        return Uploader(_config(settings), metrics=metrics)
    except (BotoCoreError, ValueError) as exc:
        raise UsageError(f"--upload: the AWS configuration is not usable: {exc}") from None


def check_targets(sink_or_uploader: Any) -> None:
    """Every target reachable with our credentials, its bucket there and writable: or a
    :class:`UsageError` that says which and why. A storage that does not answer now is only
    a warning (the recordings wait on disk until it does)."""
    from meetstream_live.adapters.recording.upload.s3 import S3Error
    from meetstream_live.adapters.recording.upload.sink import PROBE_KEY

    uploader = getattr(sink_or_uploader, "uploader", sink_or_uploader)
    for storage in uploader.storages:
        target: Target = storage.target
        endpoint = storage.client.meta.endpoint_url
        probe = f"{target.prefix}/{PROBE_KEY}" if target.prefix else PROBE_KEY
        try:
            storage.check(probe)
        except S3Error as error:
            where = f"--upload {target.url} (endpoint {endpoint})"
            if error.kind == "auth":
                raise UsageError(
                    f"{where}: the storage refused our credentials or this bucket to them "
                    f"({error.code}: {error.message or error.kind}); check AWS_ACCESS_KEY_ID, "
                    f"AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE, and that they "
                    f"may write under {target.url}") from None
            if error.kind == "no_bucket":
                raise UsageError(f"{where}: there is no bucket {target.bucket!r} (create it, "
                                 f"with an AbortIncompleteMultipartUpload lifecycle rule: see "
                                 f"docs/upload.md)") from None
            if error.kind in ("client", "invalid"):
                raise UsageError(f"{where}: {error}") from None
            log.warning("%s: does not answer now (%s): recordings are kept on disk and "
                        "uploaded once it does", where, error)


class UploadFeature(Feature):
    """``serve --upload``: the upload sink after the file sink."""

    name = "upload"
    options = OPTIONS

    def enabled(self, settings: Settings) -> bool:
        return bool(settings.get("upload"))

    def configure(self, context: ServeContext) -> None:
        from meetstream_live.adapters.recording.upload.sink import UploadSink

        settings = context.settings
        if len(settings.upload) > 2:
            log.warning("--upload given %d times: the third and later are fallbacks of the "
                        "fallback", len(settings.upload))
        uploader = make_uploader(settings, context.metrics)
        # With --workers each worker uploads its own recordings; worker 1 (or the single
        # process) also resumes what an earlier run left.
        sink = UploadSink(context.output, uploader=uploader, resume=context.worker <= 1,
                          drain_timeout=settings.upload_drain_timeout)
        check_targets(sink)
        context.sinks.append(sink)
        log.info("uploading to %s (parts of %d bytes%s)",
                 ", then ".join(t.url for t in settings.upload), settings.upload_part_size,
                 "" if settings.keep_local else ", local copies removed once uploaded")


UPLOAD = UploadFeature()


# ---------------------------------------------------------------------------- upload DIR...


def add_upload_command(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    parser = commands.add_parser(
        "upload", help="upload recordings made earlier to S3-compatible storage",
        formatter_class=formatter,
        description="Upload each finished recording (<stem>.mp4 with its .json sidecar) in "
        "each DIR (searched) or FILE to the --upload target, as serve --upload does: in "
        "parts, journaled in <stem>.upload.jsonl beside it, so that running it again goes on "
        "where it stopped; recordings the journal says are uploaded are skipped. Exits 0 when "
        "every recording is in the bucket, 1 otherwise, 2 on a wrong configuration. Do not run "
        "it on the output directory of a running receiver (it refuses).",
    )
    parser.add_argument("paths", nargs="+", metavar="DIR|FILE", help="recordings")
    parser.add_argument("--config", metavar="FILE", help="a TOML file of settings, as for "
                        "serve (its [upload] table or top level)")
    parser.add_argument("--max-wait", default="0", metavar="DURATION",
                        help="give up after this long (the journal resumes it next time); "
                        "0: wait until done")
    OptionSet(OPTIONS[:-1]).add_to(parser)


def upload_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from meetstream_live.adapters.recording.upload.resume import find_recordings, job_for

    from .logs import setup_logging
    from .serve import lock_output

    settings = command_settings(OptionSet(OPTIONS[:-1]), args, environ, section="upload")
    if not settings.upload:
        raise UsageError("upload: give --upload s3://BUCKET/PREFIX ($MEETSTREAM_LIVE_UPLOAD)")
    try:
        max_wait = duration(args.max_wait) if args.max_wait.strip() not in ("0", "") else None
    except ValueError as exc:
        raise UsageError(f"--max-wait: {exc}") from None
    setup_logging("text", "warning")
    uploader = make_uploader(settings)
    check_targets(uploader)
    locks: list[int] = []
    try:
        for item in args.paths:
            if Path(item).is_dir():
                locks.append(lock_output(Path(item)))
        try:
            found = list(find_recordings(args.paths))
        except FileNotFoundError as exc:
            raise UsageError(f"no such file or directory: {exc}") from None
        jobs = []
        skipped = 0
        for media, root in found:
            job = job_for(media, root, uploader)
            if job is None:
                skipped += 1
                continue
            uploader.add(str(media), job)
            jobs.append(job)
        print(f"{len(jobs)} recording(s) to upload, {skipped} already uploaded", flush=True)
        uploader.start()
        uploader.wait(max_wait, all_done=True)
        uploader.close(0)
    finally:
        for fd in locks:
            os.close(fd)
    failed = 0
    for job in jobs:
        state = job.state
        if state.complete is not None:
            print(f"{job.path}: s3://{state.bucket}/{state.key} ({state.complete['size']} bytes)")
        else:
            failed += 1
            why = state.gave_up or job.last_error or "not finished"
            print(f"{job.path}: NOT uploaded: {why}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- verify s3://


def verify_url(url: str, as_json: bool) -> int:
    """``meetstream-live verify s3://BUCKET/KEY`` (one object) or ``s3://BUCKET/PREFIX/``
    (every ``.mp4`` under it): each downloaded to a temporary file and verified."""
    from meetstream_live.adapters.recording.meter import COMPLETE
    from meetstream_live.adapters.recording.upload.s3 import S3Error, Storage, make_client
    from meetstream_live.adapters.recording.verify import format_report, verify_file

    _require_boto3()
    try:
        target = parse_target(url)
    except ValueError as exc:
        raise UsageError(f"verify: {exc}") from None
    storage = Storage(Target(target.bucket), make_client())
    status = 0
    try:
        keys = ([target.prefix] if target.prefix.endswith(".mp4")
                else [k for k in storage.keys(target.prefix) if k.endswith(".mp4")])
    except S3Error as error:
        print(f"{url}: cannot list: {error}", file=sys.stderr)
        return 2
    if not keys:
        print(f"{url}: no .mp4 object", file=sys.stderr)
        return 2
    for key in keys:
        name = f"s3://{target.bucket}/{key}"
        with tempfile.NamedTemporaryFile(prefix="verify-", suffix=".mp4") as tmp:
            try:
                storage.download(key, tmp)
                tmp.flush()
            except S3Error as error:
                print(f"{name}: cannot read: {error}", file=sys.stderr)
                status = 2
                continue
            report = verify_file(tmp.name)
        if as_json:
            print(json.dumps({"file": name, "size": report.size, "verdict": report.verdict,
                              "plain_mp4": report.plain_mp4, "parts": report.parts}))
        else:
            print(format_report(report).replace(tmp.name, name, 1))
        if report.verdict != COMPLETE and status == 0:
            status = 1
    with contextlib.suppress(Exception):
        storage.client.close()
    return status
