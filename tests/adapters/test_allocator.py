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
