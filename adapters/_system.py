"""What a server process may tune at start: glibc's allocator, and loading the unmasker."""

from __future__ import annotations

import ctypes
import logging
import sys

from meetstream_live import unmask_backend

__all__ = [
    "ARENA_MAX", "JOINED_BYTES_TUNED", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator",
    "warm_up",
]

log = logging.getLogger("meetstream_live")

#: glibc's ``mallopt`` parameters (``malloc.h``) and what :func:`tune_allocator` sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
#: At most this many malloc arenas (glibc's default is 8 per core): each keeps up to
#: ``TRIM_THRESHOLD`` of freed memory, and a thread per connection (the sync adapter) would
#: otherwise spread its blocks over all of them. Python holds the GIL while it allocates, so
#: more arenas buy no parallelism.
ARENA_MAX = 2
#: ``ServerConfig.max_joined_bytes`` once the allocator is tuned: one chunk per read.
JOINED_BYTES_TUNED = 1024 * 1024


def tune_allocator() -> bool:
    """Make glibc's ``malloc`` keep blocks of up to 4 MiB in its heap (``M_MMAP_THRESHOLD``),
    up to 16 MiB free at the heap's top (``M_TRIM_THRESHOLD``), in at most two arenas
    (``M_ARENA_MAX``); True if it did (Linux with glibc), False elsewhere (nothing changed).

    For the process that owns ``main`` (``meetstream-live serve`` calls it), not for a
    library's importer: it changes the whole process's allocator. Why: by default glibc
    serves each block over 128 KiB with a fresh ``mmap`` and hands heap memory back soon, so a
    receiver that makes a 1 MiB object per read (``ServerConfig.max_joined_bytes`` at 1 MiB)
    pays page faults on every one; tuned, one bot flat out at 64 KiB messages ran 1.4x faster
    (``docs/benchmarks.md``). The cost: up to 16 MiB of freed memory per malloc arena stays
    with the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt)  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and mallopt(_M_ARENA_MAX, ARENA_MAX)
    )


def warm_up(adapter: str, unmask: str = "auto") -> str:
    """At a server's start: load the core's unmasker now (numpy, if installed), not in the
    middle of the first stream, and log which one it is (debug level). Returns its name;
    ``ValueError`` when ``unmask`` (``ServerConfig.unmask``) names one that is not here."""
    backend = unmask_backend(unmask)
    log.debug("%s server: unmasking with %s", adapter, backend)
    return backend
