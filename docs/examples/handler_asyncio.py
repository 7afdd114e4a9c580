"""A receiver on the asyncio adapter with a custom handler: each stream's media goes to a file
of its own, and each latency ping's one-way latency is printed.

Usage: python handler_asyncio.py PORT OUTDIR  (port 0 picks a free port; the first line printed
is the port). Serves until SIGINT or SIGTERM, then shuts down gracefully.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from media_to_files import MediaToFilesFactory

from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.asyncio import run


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} PORT OUTDIR")
    port, out_dir = int(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def ready(bound_port: int) -> None:
        print(bound_port, flush=True)

    # Handlers run in the server's handler threads; use_uvloop=True runs the same on uvloop.
    options = ServerOptions(drain_timeout=10.0)
    run(MediaToFilesFactory(out_dir), "127.0.0.1", port, options, on_ready=ready)


if __name__ == "__main__":
    main()
