"""Unmasking WebSocket payloads (RFC 6455 section 5.3): XOR with a 4-byte key, fast.

A client masks every byte it sends; the server XORs them back. This is the hottest loop of the
receiver, so there are two implementations with one contract, and :func:`unmaskers` picks one
(by ``ServerConfig.unmask``):

* ``"numpy"``: 8 bytes per XOR, vectorized (about 0.05 ns a byte). Used when numpy can be
  imported; numpy is a dependency of meetstream-live on CPython (wheels for 3.10-3.13 on
  Linux, macOS and Windows), so a plain ``pip install`` gets this path.
* ``"python"``: the standard library only. Four strided ``bytes.translate`` calls (one per key
  byte, through a 256-byte XOR table) write the four lanes of the output (about 0.8 ns a byte:
  the ``int.from_bytes`` / XOR / ``int.to_bytes`` trick measured slower on CPython 3.11, the
  conversions cost about 0.4 ns a byte each way). Always available.

The contract: ``unmask(buf, start, stop, key) -> bytes`` returns ``buf[start:stop]`` XORed with
``key`` repeated from its first byte, as a new ``bytes``; the caller rotates ``key`` when a
frame's payload arrives in pieces. Its companion ``unmask_run(buf, segments, total) -> bytes``
does the same for several ``(start, stop, key)`` segments (whole frames of one read, back to
back on the wire) and returns their payloads joined, ``total`` bytes long, written into one
buffer: one result object per read instead of one per frame. ``buf`` is read in place (no
slice of it is made). Copies on the way to a :class:`~meetstream_live.MediaChunk`: numpy's
XOR writes a new array, which ``tobytes`` copies once more into the ``bytes`` the chunk holds
(both at memory speed, about 0.03 ns a byte each); the pure-Python path goes through four
strided temporaries.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "Buffer",
    "Unmask",
    "UnmaskRun",
    "numpy_unmask",
    "numpy_unmaskers",
    "unmask_backend",
    "unmask_python",
    "unmask_run_python",
    "unmaskers",
]

#: What the unmaskers read from: a read's bytes, or the reader's own buffer, read in place.
Buffer = bytes | bytearray | memoryview
#: ``unmask(buf, start, stop, key) -> bytes``: see the module docstring.
Unmask = Callable[[Buffer, int, int, bytes], bytes]
#: ``unmask_run(buf, segments, total) -> bytes``: see the module docstring.
UnmaskRun = Callable[[Buffer, "list[tuple[int, int, bytes]]", int], bytes]

_XOR_TABLES = [bytes(a ^ b for a in range(256)) for b in range(256)]


def unmask_python(buf: Buffer, start: int, stop: int, key: bytes) -> bytes:
    """The pure-Python unmasker: one ``translate`` per lane of the 4-byte key."""
    if not isinstance(buf, bytes):  # a memoryview has no translate: copy the slice first
        buf, start, stop = bytes(buf[start:stop]), 0, stop - start
    out = bytearray(stop - start)
    tables = _XOR_TABLES
    out[0::4] = buf[start:stop:4].translate(tables[key[0]])
    out[1::4] = buf[start + 1 : stop : 4].translate(tables[key[1]])
    out[2::4] = buf[start + 2 : stop : 4].translate(tables[key[2]])
    out[3::4] = buf[start + 3 : stop : 4].translate(tables[key[3]])
    return bytes(out)


def unmask_run_python(buf: Buffer, segments: list[tuple[int, int, bytes]], total: int) -> bytes:
    """The pure-Python :data:`UnmaskRun`: each segment unmasked, then joined."""
    return b"".join([unmask_python(buf, start, stop, key) for start, stop, key in segments])


#: Below this many bytes numpy's call overhead costs more than it saves.
NUMPY_MIN_SIZE = 512


def numpy_unmask() -> Unmask | None:
    """The numpy unmasker, or ``None`` when numpy cannot be imported.

    numpy is imported here, lazily, so that importing meetstream_live never loads it.
    """
    pair = numpy_unmaskers()
    return None if pair is None else pair[0]


def numpy_unmaskers() -> tuple[Unmask, UnmaskRun] | None:
    """numpy's :data:`Unmask` and :data:`UnmaskRun`, or ``None`` without numpy."""
    try:
        np: Any = importlib.import_module("numpy")
    except ImportError:
        return None
    frombuffer, xor, empty, ndarray = np.frombuffer, np.bitwise_xor, np.empty, np.ndarray
    u8, u64 = np.uint8, np.uint64

    def xor_into(out: Any, at: int, buf: Buffer, start: int, size: int, key: bytes) -> None:
        """``out[at : at + size]`` = ``buf[start : start + size]`` XOR ``key`` (repeated):
        8 bytes at a time, then the tail."""
        body = size & ~7
        key8 = key + key
        if body:
            xor(
                frombuffer(buf, u64, body >> 3, start),
                frombuffer(key8, u64),
                out=out[at : at + body].view(u64),
            )
        if body != size:
            tail = size - body
            xor(
                frombuffer(buf, u8, tail, start + body),
                frombuffer(key8, u8, tail),
                out=out[at + body : at + size],
            )

    def unmask_numpy(buf: Buffer, start: int, stop: int, key: bytes) -> bytes:
        size = stop - start
        if size < NUMPY_MIN_SIZE:
            return unmask_python(buf, start, stop, key)
        key8 = key + key
        words = size >> 3
        result: bytes
        if not size & 7:
            # Unaligned views are fine: numpy reads them. The XOR writes a new array.
            result = xor(frombuffer(buf, u64, words, start), frombuffer(key8, u64)).tobytes()
            return result
        out = empty(size, u8)
        xor_into(out, 0, buf, start, size, key)
        result = out.tobytes()
        return result

    def unmask_run_numpy(buf: Buffer, segments: list[tuple[int, int, bytes]], total: int) -> bytes:
        count = len(segments)
        if total < NUMPY_MIN_SIZE * count:
            return unmask_run_python(buf, segments, total)
        out = empty(total, u8)
        at = 0
        i = 0
        while i < count:
            start, stop, key = segments[i]
            size = stop - start
            # Frames of one size, evenly spaced (a bot's usual traffic): one XOR for all of
            # them, through a 2-D view of the read (rows: payloads; columns: 8-byte words),
            # each row with its own key.
            j = i + 1
            if not size & 7 and j < count:
                step = segments[j][0] - start
                while (
                    j < count
                    and segments[j][1] - segments[j][0] == size
                    and segments[j][0] - segments[j - 1][0] == step
                ):
                    j += 1
            if j - i > 1:
                rows = j - i
                words = ndarray((rows, size >> 3), u64, buf, start, (step, 8))
                keys = frombuffer(b"".join([k + k for _, _, k in segments[i:j]]), u64)
                into = out[at : at + rows * size].view(u64).reshape(rows, size >> 3)
                xor(words, keys.reshape(rows, 1), out=into)
                at += rows * size
                i = j
                continue
            xor_into(out, at, buf, start, size, key)
            at += size
            i += 1
        result: bytes = out.tobytes()
        return result

    return unmask_numpy, unmask_run_numpy


@functools.cache
def _numpy() -> tuple[Unmask, UnmaskRun] | None:
    """numpy's pair, loaded once per process (a failed import is not retried per connection)."""
    return numpy_unmaskers()


def unmaskers(name: str = "auto") -> tuple[str, Unmask, UnmaskRun]:
    """The unmaskers called ``name`` (``"auto"``: numpy when it imports, else ``"python"``),
    with the name of the ones returned. ``ValueError`` for an unknown name or ``"numpy"``
    where numpy does not import."""
    if name in ("auto", "numpy"):
        pair = _numpy()
        if pair is not None:
            return ("numpy", *pair)
        if name == "numpy":
            raise ValueError("the numpy unmasker needs numpy, which does not import here")
        return "python", unmask_python, unmask_run_python
    if name == "python":
        return "python", unmask_python, unmask_run_python
    raise ValueError(f"no unmasker called {name!r}")


def unmask_backend(name: str = "auto") -> str:
    """The unmasker a connection configured with ``name`` (``ServerConfig.unmask``) uses:
    ``"numpy"`` or ``"python"``.

    Calling it loads numpy now, if it is installed, instead of on the first connection: servers
    call it at start-up, so that the import (tens of milliseconds, and the thread pool numpy's
    BLAS starts) never lands in the middle of a stream.
    """
    return unmaskers(name)[0]
