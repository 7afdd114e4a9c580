"""``python -m benchmarks core|flat|many|ceiling|all [--quick] [--out FILE]`` and
``python -m benchmarks report FILE...`` (writes docs/benchmarks.md and docs/img/bench_*.png)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ._common import ALL_SERVERS, ROOT, log, machine

PARTS = ("ceiling", "core", "flat", "many")


def _run_part(name: str, args: argparse.Namespace) -> dict[str, Any]:
    reps = args.reps
    servers = args.servers.split(",") if args.servers else None
    t0 = time.perf_counter()
    if name == "core":
        from . import core

        result = core.run(args.quick, reps)
    elif name == "flat":
        from .flat import time_flat

        result = time_flat(servers, args.quick, reps, args.tmpdir)
    elif name == "many":
        from .many import time_many

        ks = tuple(int(k) for k in args.k.split(",")) if args.k else None
        result = time_many(servers, args.quick, reps, args.tmpdir, ks, args.duration,
                           args.payload)
    else:
        from . import ceiling

        result = ceiling.run(args.quick, reps, args.tmpdir)
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of meetstream-live. Parts: core (sans-IO MB/s vs bare wsproto "
        "and websockets, fMP4 scanner), flat (one bot flat out, per server), many (K bots at "
        "4 Mbit/s, per server), ceiling (raw TCP sink, disk write); all = every part. Then "
        "'report FILE...' writes docs/benchmarks.md and the plots.",
    )
    parser.add_argument("part", choices=(*PARTS, "all", "report"))
    parser.add_argument("files", nargs="*", help="report: result files to read")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (smaller sizes, fewer K, 4 s windows) to validate")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs per figure, alternated between servers (median taken)")
    parser.add_argument("--out", help="write the JSON results here (default: stdout)")
    parser.add_argument("--servers", help="comma-separated subset of: "
                        + ",".join(s.name for s in ALL_SERVERS))
    parser.add_argument("--k", help="many: comma-separated K values instead of the default")
    parser.add_argument("--duration", type=float, help="many: seconds of load per run")
    parser.add_argument("--payload", choices=("fmp4", "random", "flood"), default="fmp4",
                        help="many: what the bots send (real fMP4, random bytes, a box flood)")
    parser.add_argument("--tmpdir", help="where servers record (default: the system temp "
                        "dir; e.g. /dev/shm for tmpfs)")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="report: docs directory")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    if args.part == "report":
        from .report import write_report

        if not args.files:
            parser.error("report needs result files")
        write_report([Path(f) for f in args.files], Path(args.docs))
        return 0

    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    document: dict[str, Any] = {
        "machine": machine(), "command": command, "quick": args.quick, "reps": args.reps,
        "parts": {},
    }
    for name in PARTS if args.part == "all" else (args.part,):
        log(f"== {name}")
        document["parts"][name] = _run_part(name, args)
        if args.out:  # keep what is done if a later part fails
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(document, indent=1))
    if not args.out:
        json.dump(document, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
