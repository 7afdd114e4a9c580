"""``tune_allocator``: glibc's malloc told to keep big blocks (what ``serve`` does first)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest


def glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def test_it_tunes_glibc_and_says_so_elsewhere_it_changes_nothing() -> None:
    # In a fresh process: the allocator's settings are the process's.
    code = "from meetstream_live.adapters import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(glibc())


MAPPED = (
    "import ctypes, sys\n"
    "from meetstream_live.adapters import tune_allocator\n"
    "class Info(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd"
    " usmblks fsmblks uordblks fordblks keepcost'.split()]\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.mallinfo2.restype = Info\n"
    "libc.malloc.restype = ctypes.c_void_p\n"
    "libc.free.argtypes = [ctypes.c_void_p]\n"
    "if sys.argv[1] == 'tuned':\n"
    "    tune_allocator()\n"
    "before = libc.mallinfo2().hblks\n"
    "p = libc.malloc(2 << 20)\n"
    "print(libc.mallinfo2().hblks - before)\n"
    "libc.free(p)\n"
)


@pytest.mark.skipif(not glibc(), reason="glibc only")
@pytest.mark.parametrize(("how", "mapped"), [("default", 1), ("tuned", 0)])
def test_a_2_mib_block_is_a_fresh_mapping_unless_tuned(how: str, mapped: int) -> None:
    """Each in a fresh process (glibc raises its threshold as blocks are freed)."""
    out = subprocess.run(
        [sys.executable, "-c", MAPPED, how], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == mapped


ARENAS = (
    "import ctypes, sys, threading\n"
    "from meetstream_live.adapters import tune_allocator\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype = ctypes.c_void_p\n"
    "libc.free.argtypes = [ctypes.c_void_p]\n"
    "if sys.argv[1] == 'tuned':\n"
    "    tune_allocator()\n"
    "together = threading.Barrier(6)\n"
    "def work():\n"
    "    p = libc.malloc(1000)\n"
    "    together.wait()\n"
    "    libc.free(p)\n"
    "threads = [threading.Thread(target=work) for _ in range(6)]\n"
    "for t in threads: t.start()\n"
    "for t in threads: t.join()\n"
    "libc.malloc_stats()\n"
)


@pytest.mark.skipif(not glibc(), reason="glibc only")
@pytest.mark.parametrize(("how", "most"), [("default", None), ("tuned", 2)])
def test_threads_share_two_arenas_when_tuned(how: str, most: int | None) -> None:
    """Six threads alive at once (the sync adapter's thread per connection): by default each
    gets an arena of its own, each keeping its freed memory; tuned, they share two."""
    out = subprocess.run(
        [sys.executable, "-c", ARENAS, how], capture_output=True, text=True, check=True
    )
    arenas = out.stderr.count("Arena ")
    if most is None:
        assert arenas >= 7  # the main arena and one per thread
    else:
        assert 1 <= arenas <= most
