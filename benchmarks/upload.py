"""Object storage: how far the bucket trails the live edge, and what uploading costs.

``python -m benchmarks.upload [--k 100,300] [--duration 40] [--reps 1] [--out FILE]`` runs,
for each K, ``serve`` twice against the same load (K bots x 4 Mbit/s, 32 KiB chunks, a ping a
second: the harness of part 3, ``benchmarks/many.py``): once without uploads, once with
``--upload`` to a local SeaweedFS (the tests' ``weed mini``, ``tests/services``). Per run:
the pong round trips, bytes lost, the receiver's CPU (with uploads: during the load, and until
the last recording is in the bucket) and the storage server's CPU, and from the upload
journals, per part:

* **behind live**: when the part was in the bucket minus when its first byte was on disk:
  how old the oldest byte the bucket lacked was, just before the part landed (the bucket
  trails the live edge by one part by design: 5 MiB is 10.5 s at 4 Mbit/s);
* **after ready**: when the part was in the bucket minus when its last fragment was on disk
  (the upload's own delay);
* **to complete**: from the end of a recording (its sidecar's ``ended_at_ms``) to its
  object being complete in the bucket.

``--moov`` measures instead the choice after ``--index`` (finalize patches the ``moov`` in
the first part): uploading that part again vs. uploading the whole final file again, for
recordings of a few sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import (
    BITRATE_BPS,
    KIB,
    ROOT,
    RunningServer,
    ServerSpec,
    cpu_seconds,
    log,
    percentile,
    run_loadgen,
    write_result,
)

MIB = 1024 * 1024


def _services() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import services

    return services


@dataclass(frozen=True)
class UploadingServer(ServerSpec):
    """``serve --adapter asyncio``, with ``--upload URL`` and the storage's environment."""

    upload: str = ""
    environment: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()

    def command(self, port: int, output: Path) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(port, output)
        if self.upload:
            argv += ["--upload", self.upload, *self.extra]
        env.update(dict(self.environment))
        return argv, env


def journal_numbers(output: Path) -> dict[str, Any]:
    """Per-part lags and per-recording completion delays from the upload journals."""
    behind: list[float] = []
    ready: list[float] = []
    complete: list[float] = []
    recordings = done = 0
    for path in output.rglob("*.upload.jsonl"):
        recordings += 1
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        parts = [r for r in records if r["op"] == "part"]
        final = next((r for r in records if r["op"] == "complete"), None)
        for part in parts[:-1] if final is not None else parts:  # the last: after the end
            if part.get("first_ms") and part.get("ready_ms"):
                behind.append((part["at_ms"] - part["first_ms"]) / 1000)
                ready.append((part["at_ms"] - part["ready_ms"]) / 1000)
        if final is not None:
            done += 1
            sidecar = path.with_name(path.name.replace(".upload.jsonl", ".json"))
            try:
                ended = json.loads(sidecar.read_text())["ended_at_ms"]
            except (OSError, ValueError, KeyError):
                continue
            complete.append((final["at_ms"] - ended) / 1000)

    def summary(values: list[float]) -> dict[str, float]:
        return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
                "max": max(values, default=float("nan"))}

    return {"recordings": recordings, "complete": done, "behind_live_s": summary(behind),
            "after_ready_s": summary(ready), "to_complete_s": summary(complete)}


def run_one(k: int, seconds: float, rep: int, upload: str, env: dict[str, str],
            weed_pid: int | None, tmp_root: str | None,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = UploadingServer(f"ours-asyncio{'-upload' if upload else ''}", "ours", "asyncio",
                           upload=upload, environment=tuple(env.items()), extra=extra)
    args = {"mode": "many", "bots": k, "chunk": 32 * KIB, "rate_bps": BITRATE_BPS,
            "duration": seconds, "ping_interval": 1.0, "seed": 1000 * k + rep,
            "id_prefix": f"k{k}r{rep}{'u' if upload else 'n'}b"}
    with RunningServer(spec, tmp_root) as server:
        cpu0 = cpu_seconds(server.pid)
        weed0 = cpu_seconds(weed_pid) if weed_pid else 0.0
        t0 = time.perf_counter()
        result = run_loadgen({**args, "host": "127.0.0.1", "port": server.port}, seconds + 600)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        weed = (cpu_seconds(weed_pid) - weed0) if weed_pid else 0.0
        expected: dict[str, int] = result.pop("expected")
        got = server.wait_recorded(expected, timeout=60.0)
        drain = 0.0
        numbers: dict[str, Any] = {}
        if upload:
            began = time.perf_counter()
            deadline = began + 600
            while time.perf_counter() < deadline:
                numbers = journal_numbers(server.output)
                if numbers["complete"] >= len(expected):
                    break
                time.sleep(0.5)
            drain = time.perf_counter() - began
            numbers = journal_numbers(server.output)
        cpu_all = cpu_seconds(server.pid) - cpu0
        weed_all = (cpu_seconds(weed_pid) - weed0) if weed_pid else 0.0
        total = time.perf_counter() - t0
        row = {
            "k": k, "rep": rep, "upload": bool(upload), "duration": seconds,
            "offered_mbps": result["offered_mbps"], "achieved_mbps": result["achieved_mbps"],
            "rtt_p50_ms": result["rtt_ms"]["p50"], "rtt_p99_ms": result["rtt_ms"]["p99"],
            "pongs_missing": result["pings"] - result["pongs"],
            "bytes_lost": sum(max(0, n - got.get(b, 0)) for b, n in expected.items()),
            "server_cpu_pct": 100.0 * cpu / wall,
            "server_cpu_pct_until_uploaded": 100.0 * cpu_all / total,
            "weed_cpu_pct": 100.0 * weed / wall,
            "weed_cpu_pct_until_uploaded": 100.0 * weed_all / total,
            "drain_s": drain, **numbers,
        }
        row["server_peak_rss_mib"] = server.stop()
    return row


def renice(pid: int, value: int) -> None:
    """Every thread of ``pid`` (Linux: niceness is per thread; new ones inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), value)


def time_upload(ks: tuple[int, ...], seconds: float, reps: int, tmp_root: str | None,
                extra: tuple[str, ...] = (), local: bool = True,
                nice: int = 0) -> dict[str, Any]:
    """For each K a fresh storage server (its data in ``$TMPDIR``), then per rep the run
    without uploads and the run with them, alternated."""
    services = _services()
    rows: list[dict[str, Any]] = []
    for k in ks:
        with services.s3_server() as s3:
            env = s3.env()
            pid = s3._proc.pid if s3._proc is not None else None
            if nice and pid is not None:
                renice(pid, nice)
            for rep in range(reps):
                bucket = s3.create_bucket(f"bench-k{k}-r{rep}")
                for upload in ("", f"s3://{bucket}/meet") if local else (f"s3://{bucket}/m",):
                    row = run_one(k, seconds, rep, upload, env, pid, tmp_root, extra)
                    row["serve_args"] = list(extra) if upload else []
                    rows.append(row)
                    log(f"upload K={k} rep {rep + 1} {'upload' if upload else 'local '}"
                        f"{' ' + ' '.join(extra) if upload and extra else ''}: "
                        f"{row['achieved_mbps']:.1f}/{row['offered_mbps']:.1f} MB/s, pong p50 "
                        f"{row['rtt_p50_ms']:.1f} p99 {row['rtt_p99_ms']:.1f} ms, lost "
                        f"{row['bytes_lost']}, serve cpu {row['server_cpu_pct']:.0f} % (until "
                        f"uploaded {row['server_cpu_pct_until_uploaded']:.0f} %), weed "
                        f"{row['weed_cpu_pct']:.0f} %"
                        + (f", behind live p50 {row['behind_live_s']['p50']:.1f} s p99 "
                           f"{row['behind_live_s']['p99']:.1f} s, after ready p50 "
                           f"{row['after_ready_s']['p50']:.2f} s p99 "
                           f"{row['after_ready_s']['p99']:.2f} s, complete "
                           f"{row['complete']}/{row['recordings']} p99 "
                           f"{row['to_complete_s']['p99']:.1f} s after the end"
                           if upload else ""))
    return {"rows": rows}


def pump(rate_mbps: float, seconds: float, threads: int = 4) -> None:
    """Upload ``rate_mbps`` MB/s of 5 MiB parts to the storage of the environment for
    ``seconds`` (the control run: the same upload traffic from another process)."""
    import threading

    from meetstream_live.adapters.recording.upload.keys import Target
    from meetstream_live.adapters.recording.upload.s3 import Storage, crc32_b64, make_client

    storage = Storage(Target(os.environ["PUMP_BUCKET"]), make_client(pool=threads + 2))
    data = os.urandom(5 * MIB)
    crc = crc32_b64(data)
    interval = len(data) / (rate_mbps * 1e6)
    end = time.monotonic() + seconds
    lock = threading.Lock()
    due = [time.monotonic()]

    def work(n: int) -> None:
        key = f"pump-{n}.bin"
        upload_id = storage.create(key, "application/octet-stream")
        number = 0
        while time.monotonic() < end:
            with lock:
                at = due[0]
                due[0] += interval
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            number += 1
            storage.upload_part(key, upload_id, number, data, crc)
        storage.abort(key, upload_id)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def time_control(ks: tuple[int, ...], seconds: float, reps: int,
                 tmp_root: str | None) -> dict[str, Any]:
    """The receiver without uploads while another process uploads as much to the same
    storage: what the storage server and the traffic cost the box, not the receiver."""
    import subprocess

    services = _services()
    rows: list[dict[str, Any]] = []
    for k in ks:
        with services.s3_server() as s3:
            pid = s3._proc.pid if s3._proc is not None else None
            for rep in range(reps):
                bucket = s3.create_bucket(f"control-k{k}-r{rep}")
                env = {**os.environ, **s3.env(), "PUMP_BUCKET": bucket}
                rate = k * BITRATE_BPS / 8 / 1e6
                pumping = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.upload", "--pump", str(rate),
                     "--duration", str(seconds + 10)], env=env, cwd=ROOT)
                try:
                    row = run_one(k, seconds, rep, "", {}, pid, tmp_root)
                finally:
                    pumping.wait(120)
                row["control"] = True
                rows.append(row)
                log(f"control K={k} rep {rep + 1} (no uploads, {rate:.0f} MB/s pumped to the "
                    f"same storage by another process): pong p50 {row['rtt_p50_ms']:.1f} p99 "
                    f"{row['rtt_p99_ms']:.1f} ms, lost {row['bytes_lost']}, serve cpu "
                    f"{row['server_cpu_pct']:.0f} %, weed {row['weed_cpu_pct']:.0f} %")
    return {"rows": rows}


# ---------------------------------------------------------------------------- the moov


def time_moov(sizes_mib: tuple[int, ...], reps: int) -> dict[str, Any]:
    """After ``--index``: part 1 uploaded again vs. the whole final file again."""
    services = _services()
    from meetstream_live.adapters.recording.upload.keys import Target
    from meetstream_live.adapters.recording.upload.s3 import (
        Storage,
        crc32_b64,
        make_client,
    )

    rows = []
    with services.s3_server() as s3:
        os.environ.update(s3.env())
        bucket = s3.create_bucket("moov")
        storage = Storage(Target(bucket), make_client(timeout=120))
        for size in sizes_mib:
            data = os.urandom(size * MIB)
            parts = [data[i:i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
            for rep in range(reps):
                key = f"s{size}-{rep}.mp4"
                upload_id = storage.create(key, "video/mp4")
                etags = [storage.upload_part(key, upload_id, n, p, crc32_b64(p))[0]
                         for n, p in enumerate(parts, 1)]
                t0 = time.perf_counter()  # part 1 again, then Complete
                etags[0] = storage.upload_part(key, upload_id, 1, parts[0],
                                               crc32_b64(parts[0]))[0]
                storage.complete(key, upload_id, [(n, e, crc32_b64(p)) for n, (e, p)
                                                  in enumerate(zip(etags, parts, strict=True), 1)])
                again = time.perf_counter() - t0
                t0 = time.perf_counter()  # everything from the final file
                upload_id = storage.create(key + ".full", "video/mp4")
                full = [storage.upload_part(key + ".full", upload_id, n, p, crc32_b64(p))[0]
                        for n, p in enumerate(parts, 1)]
                storage.complete(key + ".full", upload_id,
                                 [(n, e, crc32_b64(p)) for n, (e, p)
                                  in enumerate(zip(full, parts, strict=True), 1)])
                whole = time.perf_counter() - t0
                rows.append({"size_mib": size, "rep": rep, "part_again_s": again,
                             "whole_again_s": whole})
                log(f"moov {size} MiB: part 1 again {again * 1000:.0f} ms, the whole file "
                    f"again {whole * 1000:.0f} ms")
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", default="100,300", help="bots per run, comma-separated")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--tmpdir", help="where the receivers record (the storage keeps its "
                        "data in $TMPDIR: TMPDIR=/dev/shm for both on tmpfs)")
    parser.add_argument("--serve-args", default="", help="more serve options for the runs "
                        "with uploads, e.g. '--upload-threads 2'")
    parser.add_argument("--no-local", action="store_true",
                        help="only the runs with uploads")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the storage server at this niceness (it shares the "
                        "receiver's cores here; a real one is elsewhere)")
    parser.add_argument("--moov", action="store_true",
                        help="measure the choice after --index instead")
    parser.add_argument("--sizes", default="50,200,800", help="--moov: MiB per recording")
    parser.add_argument("--control", action="store_true",
                        help="instead: the receiver without uploads while another process "
                        "uploads as much to the same storage")
    parser.add_argument("--pump", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the JSON results here (default: stdout)")
    args = parser.parse_args(argv)
    if args.pump is not None:
        pump(args.pump, args.duration)
        return 0
    if args.control:
        result = time_control(tuple(int(k) for k in args.k.split(",")), args.duration,
                              args.reps, args.tmpdir)
    elif args.moov:
        result = time_moov(tuple(int(s) for s in args.sizes.split(",")), args.reps)
    else:
        result = time_upload(tuple(int(k) for k in args.k.split(",")), args.duration,
                             args.reps, args.tmpdir, tuple(args.serve_args.split()),
                             local=not args.no_local, nice=args.nice)
    write_result("benchmarks.upload", argv, result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
