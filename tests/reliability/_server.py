"""A receiver in a process of its own, for the tests that limit, fill or kill the server:
``python _server.py ADAPTER OUTPUT [options]`` (``tests/`` on ``PYTHONPATH``).

Any adapter of ``conformance.servers.SERVERS`` (the ASGI ones under uvicorn or hypercorn) with
a :class:`Recorder` writing to OUTPUT, after :func:`recover`, with glibc's allocator tuned
(as ``serve`` does). Prints
``port N`` once it accepts, then reads commands on stdin, one a line, answering each:

* ``nofile N``: lower the soft ``RLIMIT_NOFILE`` to the descriptors open now plus N;
* ``hog``: open ``/dev/null`` until the process is out of descriptors (``hogged N``), as a
  leak or a burst of files elsewhere in the process would; ``free`` closes them (``freed``);
* ``stats``: ``rss BYTES fds N``;
* end of input (or ``quit``): graceful shutdown (the recorder finalizes what waits).

``--no-descriptor-defence`` switches the defence of :class:`~meetstream_live.adapters._driver.
Descriptors` off (to check that the tests fail without it).
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import sys
from pathlib import Path

from conformance.servers import running_server

from meetstream_live import ServerConfig
from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters._driver import Descriptors
from meetstream_live.adapters._system import JOINED_BYTES_TUNED, tune_allocator
from meetstream_live.adapters.recording.diskguard import DiskGuard
from meetstream_live.adapters.recording.hooks import HookConfig, HookRunner, HookSink, Journal
from meetstream_live.adapters.recording.recorder import Recorder
from meetstream_live.adapters.recording.recovery import recover


def stats() -> str:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return f"rss {rss} fds {len(os.listdir('/proc/self/fd'))}"


def command(line: str, hogged: list[int]) -> str:
    word, _, arg = line.strip().partition(" ")
    if word == "nofile":
        open_now = len(os.listdir("/proc/self/fd"))
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = open_now + int(arg)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        return f"limit {limit} open {open_now}"
    if word == "hog":
        try:
            while True:
                hogged.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        return f"hogged {len(hogged)}"
    if word == "free":
        while hogged:
            os.close(hogged.pop())
        return "freed"
    if word == "stats":
        return stats()
    return f"unknown {word!r}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("output")
    parser.add_argument("--grace", type=float, default=0.0)
    parser.add_argument("--disk-low", type=int, default=0)
    parser.add_argument("--on-finish", default=None)
    parser.add_argument("--max-connections", type=int, default=2000)
    parser.add_argument("--no-descriptor-defence", action="store_true")
    args = parser.parse_args()
    if args.no_descriptor_defence:
        Descriptors.headroom = lambda self: True  # type: ignore[method-assign]
        Descriptors.accept_failed = lambda self, exc: False  # type: ignore[method-assign]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    runner = journal = None
    if args.on_finish:
        hooks = HookConfig(command=args.on_finish)
        journal = Journal(output, hooks.names())
        runner = HookRunner(journal, hooks)
        runner.start()
    recover(output, journal=journal)
    guard = DiskGuard(output, low_bytes=args.disk_low) if args.disk_low else None
    recorder = Recorder(output, reconnect_grace=args.grace, disk_guard=guard, journal=journal,
                        sinks=[HookSink(runner)] if runner is not None else [])
    # As ``serve`` does: glibc tuned for big blocks (16 MiB keyframes come and go), then one
    # chunk per read.
    tuned = tune_allocator()
    config = ServerConfig(handshake_timeout_ms=60_000,
                          max_joined_bytes=JOINED_BYTES_TUNED if tuned
                          else ServerConfig().max_joined_bytes)
    options = ServerOptions(config=config, max_connections=args.max_connections)
    hogged: list[int] = []
    try:
        with running_server(args.adapter, recorder, options, drain_timeout=5) as port:
            print(f"port {port}", flush=True)
            for line in sys.stdin:
                if line.strip() == "quit":
                    break
                print(command(line, hogged), flush=True)
    finally:
        command("free", hogged)
        recorder.close()
        if runner is not None:
            runner.close()


if __name__ == "__main__":
    main()
