"""``python -m benchmarks report FILE...``: docs/benchmarks.md and docs/img/bench_*.png from
the JSON results (later files override earlier ones part by part)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._common import KIB, MIB

IMG_FLAT = "img/bench_flat_throughput.png"
IMG_P99 = "img/bench_many_p99.png"
IMG_MANY = "img/bench_many_throughput.png"
#: Hand-written notes (the profile, the optimizations and their before/after ratios), kept
#: in the repository and included verbatim at the end of the generated page.
NOTES = Path(__file__).resolve().parent / "notes.md"

#: The issue's targets.
FLAT_BEST_MIN = 1.25  # best adapter's MB/s over the faster peer's, one bot flat out
FLAT_SLOWEST_MIN = 1.0  # slowest adapter's, same
MANY_K_MIN = 1000  # bots held (pong p99 < 100 ms, no loss, ratio >= 0.99)
MANY_RSS_PER_BOT_MAX = 0.3  # MB of peak RSS per bot at that K
CORE_MIN = 0.5  # ours' MB/s over the websockets sans-IO core's


def _load(files: list[Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {"parts": {}}
    for path in files:
        document = json.loads(path.read_text())
        merged.setdefault("sources", []).append(
            {"file": path.name, "command": document.get("command"),
             "parts": sorted(document.get("parts", {})), "reps": document.get("reps")})
        merged["machine"] = document.get("machine", merged.get("machine"))
        merged["quick"] = merged.get("quick", False) or document.get("quick", False)
        for name, part in document.get("parts", {}).items():
            if name == "many" and "many" in merged["parts"]:
                part = _merge_many(merged["parts"]["many"], part)
            merged["parts"][name] = part
    return merged


def _merge_many(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Rows of both runs (the newer wins for the same server and K); the best K recomputed."""
    rows = {(r["server"], r["k"]): r for r in old["rows"]}
    rows.update({(r["server"], r["k"]): r for r in new["rows"]})
    merged = {**old, **new, "rows": sorted(rows.values(), key=lambda r: (r["k"], 0))}
    merged["ks"] = sorted({r["k"] for r in merged["rows"]})
    reps = [*(old["reps"] if isinstance(old["reps"], list) else [old["reps"]]), new["reps"]]
    merged["reps"] = sorted(set(reps))
    merged["duration"] = new["duration"] if old["duration"] == new["duration"] else (
        f"{old['duration']}/{new['duration']}")
    best: dict[str, int | None] = {}
    for r in merged["rows"]:
        best.setdefault(r["server"], None)
        if r.get("holds"):
            best[r["server"]] = max(best[r["server"]] or 0, r["k"])
    merged["max_k_held"] = best
    return merged


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n // KIB} KiB"


def _plots(parts: dict[str, Any], docs: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    (docs / "img").mkdir(parents=True, exist_ok=True)
    made = []
    flat = parts.get("flat")
    if flat and flat["rows"]:
        chunks = sorted({r["chunk"] for r in flat["rows"]}, reverse=True)
        servers = list(dict.fromkeys(r["server"] for r in flat["rows"]))
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(chunks)
        for i, chunk in enumerate(chunks):
            values = [next((r["mbps"] for r in flat["rows"]
                            if r["server"] == s and r["chunk"] == chunk), 0) for s in servers]
            ax.bar([x + i * width for x in range(len(servers))], values, width,
                   label=f"{chunk // KIB} KiB chunks")
        ax.set_xticks([x + width * (len(chunks) - 1) / 2 for x in range(len(servers))])
        ax.set_xticklabels(servers, rotation=20, ha="right")
        ax.set_ylabel("MB/s (one bot, flat out)")
        ax.set_title("Throughput per server (median of runs)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(docs / IMG_FLAT, dpi=100)
        plt.close(fig)
        made.append(IMG_FLAT)
    many = parts.get("many")
    if many and many["rows"]:
        rows = [r for r in many["rows"] if not r.get("failed")]
        servers = list(dict.fromkeys(r["server"] for r in rows))
        fig, ax = plt.subplots(figsize=(8, 4))
        for s in servers:
            mine = sorted((r["k"], r["rtt_p99_ms"]) for r in rows if r["server"] == s)
            ax.plot([k for k, _ in mine], [v for _, v in mine], marker="o", label=s)
        ax.axhline(many["p99_limit_ms"], color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("K bots x 4 Mbit/s")
        ax.set_ylabel("pong round trip p99 (ms)")
        ax.set_title("Pong p99 vs K")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(docs / IMG_P99, dpi=100)
        plt.close(fig)
        made.append(IMG_P99)
        fig, ax = plt.subplots(figsize=(8, 4))
        for s in servers:
            mine = sorted((r["k"], r["achieved_mbps"]) for r in rows if r["server"] == s)
            ax.plot([k for k, _ in mine], [v for _, v in mine], marker="o", label=s)
        ks = sorted({r["k"] for r in rows})
        ax.plot(ks, [k * many["bitrate_bps"] / 8e6 for k in ks], color="grey", linestyle="--",
                label="offered")
        ax.set_xlabel("K bots x 4 Mbit/s")
        ax.set_ylabel("achieved MB/s")
        ax.set_title("Achieved vs offered throughput")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(docs / IMG_MANY, dpi=100)
        plt.close(fig)
        made.append(IMG_MANY)
    return made


def _ours(name: str) -> bool:
    return name.startswith("ours-")


def _adapter(name: str) -> bool:
    """One of our adapters in one process (not ``--workers N``)."""
    return _ours(name) and not name.rsplit("-", 1)[-1].startswith("w")


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _targets(parts: dict[str, Any]) -> list[str]:
    """The issue's targets, each against the peers measured in the same run: met or not."""
    out: list[str] = []
    rows: list[list[str]] = []
    flat = parts.get("flat")
    if flat and flat["rows"]:
        for chunk in sorted({r["chunk"] for r in flat["rows"]}, reverse=True):
            mine = [r for r in flat["rows"] if r["chunk"] == chunk]
            peers = [r for r in mine if not _ours(r["server"])]
            adapters = [r for r in mine if _adapter(r["server"])]
            if not peers or not adapters:
                continue
            peer = max(peers, key=lambda r: r["mbps"])
            best = max(adapters, key=lambda r: r["mbps"])
            slow = min(adapters, key=lambda r: r["mbps"])
            for what, r, goal in (("best adapter", best, FLAT_BEST_MIN),
                                  ("slowest adapter", slow, FLAT_SLOWEST_MIN)):
                ratio = r["mbps"] / peer["mbps"]
                rows.append([f"one bot flat out, {_size(chunk)} chunks: {what}",
                             f">= {goal:.2f}x the faster peer",
                             f"{r['server']} {_f(r['mbps'])} MB/s vs {peer['server']} "
                             f"{_f(peer['mbps'])}: **{ratio:.2f}x**", _met(ratio >= goal)])
    many = parts.get("many")
    if many and many["rows"]:
        ok_rows = [r for r in many["rows"] if not r.get("failed")]
        servers = list(dict.fromkeys(r["server"] for r in ok_rows if _ours(r["server"])))
        peer_at: dict[int, dict[str, Any]] = {
            r["k"]: r for r in ok_rows if r["server"] == "peer-websockets"}
        for name in servers:
            held = [r for r in ok_rows if r["server"] == name and r["holds"]]
            top = max(held, key=lambda r: r["k"]) if held else None
            big = [r for r in ok_rows if r["server"] == name and r["k"] >= MANY_K_MIN]
            target = min(big, key=lambda r: r["k"]) if big else None
            if target is None:
                rows.append([f"many bots: {name}", f">= {MANY_K_MIN:,} bots held, RSS <= "
                             f"{MANY_RSS_PER_BOT_MAX} MB/bot", "K >= 1,000 not run", "-"])
                continue
            per_bot = target["server_peak_rss_mib"] * MIB / 1e6 / target["k"]
            peer = peer_at.get(target["k"])
            versus = ""
            if peer:
                peer_bot = peer["server_peak_rss_mib"] * MIB / 1e6 / peer["k"]
                versus = (f"; peer-websockets p99 {_f(peer['rtt_p99_ms'], 1)} ms, "
                          f"{peer_bot:.2f} MB/bot, CPU {_f(peer['server_cpu_pct'])} % "
                          f"(ours/peer CPU {target['server_cpu_pct'] / peer['server_cpu_pct']:.2f}"
                          "x)" if peer["server_cpu_pct"] else "")
            got = (f"K={target['k']:,}: p99 {_f(target['rtt_p99_ms'], 1)} ms, lost "
                   f"{_f(target['bytes_lost'])}, {per_bot:.2f} MB/bot, CPU "
                   f"{_f(target['server_cpu_pct'])} %{versus}; highest K held "
                   f"{top['k'] if top else '-'}")
            ok = bool(target["holds"]) and per_bot <= MANY_RSS_PER_BOT_MAX
            rows.append([f"many bots: {name}", f">= {MANY_K_MIN:,} bots, p99 < "
                         f"{many['p99_limit_ms']:g} ms, no loss, RSS <= "
                         f"{MANY_RSS_PER_BOT_MAX} MB/bot", got, _met(ok)])
    core = parts.get("core")
    if core:
        for r in core["frames"]:
            ratio = 1 / r["time_ratio_ours_websockets"]
            rows.append([f"core, {_size(r['frame'])} frames", f">= {CORE_MIN}x websockets' "
                         "sans-IO core", f"{_f(r['ours_mbps'])} vs {_f(r['websockets_mbps'])} "
                         f"MB/s: **{ratio:.2f}x**", _met(ratio >= CORE_MIN)])
    if rows:
        out += ["## Targets", "",
                "The issue's targets, each a ratio against the peer measured in the same run "
                "(alternated rep by rep; ratios of the medians for flat, medians of the "
                "per-rep time ratios for core). The many-bots target is met by a server that "
                "holds K >= 1,000 (table below) with peak RSS per bot within the limit; MB is "
                "10^6 bytes.", "",
                _table(["target", "goal", "this run", "met?"], rows), ""]
        out += ["In short (flat and core must hold at every size; many bots by at least one of "
                "our servers):", ""]
        for kind, label in (("one bot flat out", "one bot flat out"),
                            ("many bots", "many bots"), ("core", "core")):
            mine = [r for r in rows if r[0].startswith(kind)]
            if not mine:
                continue
            if kind == "many bots":
                who = [r[0].split(": ", 1)[1] for r in mine if r[3] == _met(True)]
                out.append(f"* {label}: " + (f"{_met(True)} by {', '.join(who)}" if who
                                             else f"{_met(False)} by any of our servers"))
            else:
                bad = [r[0].split(kind, 1)[1].lstrip(", ") for r in mine
                       if r[3] != _met(True)]
                out.append(f"* {label}: " + (_met(True) if not bad else
                                             f"{_met(False)} ({'; '.join(bad)})"))
        out.append("")
    return out


def render(data: dict[str, Any], images: list[str]) -> str:
    parts = data["parts"]
    m = data.get("machine") or {}
    out: list[str] = ["# Benchmarks", ""]
    out.append(
        "Generated by `make bench` (`python -m benchmarks all --out benchmarks/results/all.json` "
        "then `python -m benchmarks report benchmarks/results/all.json`); do not edit by hand: "
        "the last section, *Profile and optimizations*, is included from `benchmarks/notes.md`"
        ", edit it there. "
        "`python -m benchmarks --help` lists the parts and options.")
    out.append("")
    if data.get("quick"):
        reps = sorted({str(x["reps"]) for x in data.get("sources", []) if x.get("reps")})
        out += ["> **Quick-run numbers** (`--quick`: small sizes, 4 s windows): every figure "
                f"is the median of {' or '.join(reps) or 'N'} runs alternated between the "
                f"servers, on {m.get('cpu', '?')} ({m.get('cores', '?')} cores) at "
                f"`{m.get('revision', '?')}`, a machine other work shared; absolute figures "
                "move by +-20 % between runs, so read the ratios taken inside the same run. "
                "Run `make bench` on a quiet machine for the real figures.", ""]
    out += ["## Method", "",
            "* Every figure is the median of the runs (`--reps`, default 3), alternated between "
            "the servers (rep 1 of each, then rep 2 of each...). Every comparison is a ratio "
            "taken inside the same run.",
            "* Servers run as subprocesses, a fresh one per run, recording to a temporary "
            "directory that is deleted afterwards: ours is `meetstream-live serve --adapter X` "
            "(the recorder: fMP4 scanning, .part files, fsync and rename at the end); the peers "
            "are what a user would write instead, the plain way the protocol document shows, "
            "in `benchmarks/peers/` (`websockets_receiver.py` on the websockets library, "
            "`ws_receiver.mjs` on Node.js `ws`).",
            "* The load generator (`benchmarks/loadgen.py`) runs in its own process, pre-builds "
            "its masked frames, writes with raw sockets and stamps pings as it sends them. "
            "Its own ceiling is the TCP sink row below.",
            "* The payload is a real fMP4 stream: the bundled sample's init segment and its "
            "fragments, each `mdat` padded to make 512 KiB fragments (one second at 4 Mbit/s).",
            "* Bytes lost = bytes sent per bot - bytes in that bot's finished recording files.",
            "* `ours-asyncio-w2` is `meetstream-live serve --adapter asyncio --workers 2`: "
            "two worker processes forked by a parent, sharing the port with `SO_REUSEPORT` (the "
            "kernel spreads connections by address, so one bot gets one worker).",
            "* Server CPU is `/proc/PID/stat` (all threads) over the load generator's life, in % "
            "of one core; peak RSS is `VmHWM`. Both are summed over the server's process tree "
            "(the process and its descendants, found by their `PPid`), so `--workers N` counts "
            "the parent and every worker, and pages shared after the fork count once per "
            "process.", ""]
    out += ["## Machine", ""]
    if m:
        pk = ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items())
        out += [f"* meetstream-live at `{m.get('revision')}` (imported from "
                f"`{m.get('package_path')}`)",
                f"* CPU: {m.get('cpu')} ({m.get('cores')} cores), memory {m.get('memory')}",
                f"* Linux {m.get('kernel')}, {m.get('implementation')} {m.get('python')}, "
                f"Node.js {m.get('node') or '-'}",
                f"* {pk}",
                f"* load average at start: {m.get('load_at_start')}; run at {m.get('time')}"]
        if m.get("dirty_files"):
            out.append("* uncommitted changes in the working tree at the run: "
                       + ", ".join(f"`{f}`" for f in m["dirty_files"]))
        out.append("")
    out += ["Commands:", ""]
    for source in data.get("sources", []):
        out.append(f"* `{source['command']}` -> `{source['file']}`")
    out.append("")
    out += _targets(parts)

    ceiling = parts.get("ceiling")
    sink_by_chunk: dict[int, float] = {}
    if ceiling:
        out += ["## The ceiling", "",
                "What the machine allows: the load generator into a raw TCP sink on loopback "
                "(`recv_into` a buffer, discard; also the load generator's own ceiling), and a "
                "sequential disk write (1 MiB writes, then fsync) where the servers record.", ""]
        rows = []
        for r in ceiling["tcp_sink"]:
            sink_by_chunk[r["chunk"]] = r["mbps"]
            rows.append([f"TCP sink, {r['chunk'] // KIB} KiB frames, {_size(r['total'])}",
                         _f(r["mbps"]), " / ".join(_f(v) for v in r["runs_mbps"])])
        tm = ceiling.get("tcp_sink_many")
        if tm:
            rows.append([f"TCP sink, {tm['k']} bots x 4 Mbit/s (load generator's many mode)",
                         f"{_f(tm['achieved_mbps'])} of {_f(tm['offered_mbps'])} offered "
                         f"(ratio {_f(tm['achieved_ratio'], 3)}, load generator CPU "
                         f"{_f(tm['loadgen_cpu_pct'])} %)", ""])
        d = ceiling["disk"]
        rows.append([f"disk write {_size(d['total'])} + fsync ({d['where']})", _f(d["mbps"]),
                     " / ".join(_f(v) for v in d["runs_mbps"])])
        out += [_table(["what", "MB/s (median)", "runs"], rows), ""]

    core = parts.get("core")
    if core:
        out += ["## 1. Core (in process)", "",
                f"MB/s of binary payload through the sans-IO layer, fed {core['read_size'] // KIB}"
                f" KiB reads of masked client frames, a `video_latency_ping` after every "
                f"{core['ping_every'] // MIB} MiB answered with a pong. `ours` is "
                "`ServerConnection` (wsproto + the session); `wsproto` is a bare wsproto "
                "connection answering pings the plain way (json); `websockets` is the "
                "websockets library's sans-IO `ServerProtocol`, same answers. Ratios are "
                "ours' time / the baseline's time in the same rep (1.10 = ours takes 10 % "
                "longer).", ""]
        rows = [[f"{r['frame'] // KIB} KiB", _f(r["ours_mbps"]), _f(r["wsproto_mbps"]),
                 _f(r["websockets_mbps"]), _f(r["time_ratio_ours_wsproto"], 2),
                 _f(r["time_ratio_ours_websockets"], 2)] for r in core["frames"]]
        out += [_table(["frame", "ours MB/s", "wsproto MB/s", "websockets MB/s",
                        "ours/wsproto time", "ours/websockets time"], rows), ""]
        sc = core["fmp4_scanner"]
        out += [f"fMP4 scanner (`Fmp4Scanner.feed`, 64 KiB pieces, {sc['fragments']} fragments "
                f"of 512 KiB): **{_f(sc['mbps'])} MB/s** (runs: "
                f"{' / '.join(_f(v) for v in sc['runs_mbps'])}).", ""]

    flat = parts.get("flat")
    if flat:
        out += ["## 2. One bot, flat out", "",
                "One bot over loopback sending as fast as the server reads, a ping every "
                "100 ms; the clock stops when the server's close frame comes back (every byte "
                "read). `of sink` is the throughput as a fraction of the TCP sink with the same "
                "frames.", ""]
        if IMG_FLAT in images:
            out += [f"![throughput per server]({IMG_FLAT})", ""]
        rows = []
        for r in flat["rows"]:
            sink = sink_by_chunk.get(r["chunk"])
            rows.append([r["server"], f"{_size(r['chunk'])} x {_size(r['total'])}",
                         _f(r["mbps"]), _f(r["mbps"] / sink, 2) if sink else "-",
                         _f(r["rtt_p50_ms"], 1), _f(r["rtt_p99_ms"], 1),
                         f"{r['pongs']}/{r['pings']}", _f(r["bytes_lost"]),
                         _f(r["server_cpu_pct"]), _f(r["server_peak_rss_mib"])])
        out += [_table(["server", "chunks", "MB/s", "of sink", "pong p50 ms", "pong p99 ms",
                        "pongs", "bytes lost", "CPU %", "peak RSS MiB"], rows), ""]
        for name, why in flat.get("skipped", {}).items():
            out.append(f"* {name} skipped: {why}")
        out.append("")

    many = parts.get("many")
    if many:
        out += ["## 3. Many bots at 4 Mbit/s", "",
                f"K bots x {many['bitrate_bps'] / 1e6:g} Mbit/s in {many['chunk'] // KIB} KiB "
                f"chunks, a ping a second, {many['duration']} s of load per run. `achieved` "
                "is what left the load generator's sockets in the window, `ratio` that over "
                "what the schedule had due. A server **holds** K when pong p99 < "
                f"{many['p99_limit_ms']:g} ms, every ping is answered (pings of the last second "
                "excepted: their pong may lose the race with the close that follows; "
                "`pongs missing` counts them all), no byte is lost and ratio >= 0.99.", ""]
        if IMG_P99 in images:
            out += [f"![pong p99 vs K]({IMG_P99})", "", f"![achieved vs offered]({IMG_MANY})",
                    ""]
        out += [_table(["server", "highest K held"],
                       [[s, _f(k)] for s, k in many["max_k_held"].items()]), ""]
        rows = []
        for r in many["rows"]:
            if r.get("failed"):
                rows.append([r["server"], str(r["k"]), "0", "failed"] + ["-"] * 10)
                continue
            rows.append([r["server"], str(r["k"]), str(r["runs"]),
                         f"{_f(r['achieved_mbps'], 1)} / {_f(r['offered_mbps'], 1)}",
                         _f(r["achieved_ratio"], 3), _f(r["rtt_p50_ms"], 1),
                         _f(r["rtt_p99_ms"], 1),
                         " / ".join(_f(v, 1) for v in r.get("runs_rtt_p99_ms", [])) or "-",
                         _f(r["pongs_missing"]), _f(r["bytes_lost"]),
                         _f(r["server_cpu_pct"]), _f(r["server_peak_rss_mib"]),
                         _f(r["loadgen_cpu_pct"]), "yes" if r["holds"] else "no"])
        out += [_table(["server", "K", "runs", "achieved / offered MB/s", "ratio", "pong p50 ms",
                        "pong p99 ms", "p99 of each run", "pongs missing", "bytes lost",
                        "CPU %", "peak RSS MiB", "loadgen CPU %", "holds"], rows), ""]
        for name, why in {**many.get("skipped", {}), **many.get("missing", {})}.items():
            out.append(f"* {name}: not measured ({why})")
        out.append("")
    if NOTES.exists():
        out += [f"<!-- from {NOTES.parent.name}/{NOTES.name}: hand-written, kept by `report` -->",
                "", NOTES.read_text().rstrip("\n"), ""]
    return "\n".join(out)


def write_report(files: list[Path], docs: Path) -> None:
    data = _load(files)
    images = _plots(data["parts"], docs)
    (docs / "benchmarks.md").write_text(render(data, images))
