"""Unmasking WebSocket payloads (RFC 6455 section 5.3): XOR with a 4-byte key, fast.

A client masks every byte it sends; the server XORs them back. This is the hottest loop of the
receiver, so there are two implementations with one contract, and :func:`best` picks one:

* ``"numpy"``: 8 bytes per XOR, vectorized (about 0.05 ns a byte). Used when numpy can be
  imported; numpy is *not* a dependency of meetstream-live, only an optional speedup.
* ``"python"``: the standard library only. Four strided ``bytes.translate`` calls (one per key
  byte, through a 256-byte XOR table) write the four lanes of the output (about 0.8 ns a byte:
  the ``int.from_bytes`` / XOR / ``int.to_bytes`` trick measured slower on CPython 3.11, the
  conversions cost about 0.4 ns a byte each way). Always available.

The contract: ``unmask(buf, start, stop, key) -> bytes`` returns ``buf[start:stop]`` XORed with
``key`` repeated from its first byte, as a new ``bytes``; the caller rotates ``key`` when a
frame's payload arrives in pieces. ``buf`` is read in place (no slice of it is made). Copies on
the way to a :class:`~meetstream_live.MediaChunk`: numpy's XOR writes a new array, which
``tobytes`` copies once more into the ``bytes`` the chunk holds (both at memory speed, about
0.03 ns a byte each); the pure-Python path goes through four strided temporaries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["BACKENDS", "Unmask", "best", "numpy_unmask", "unmask_backend", "unmask_python"]

#: ``unmask(buf, start, stop, key) -> bytes``: see the module docstring.
Unmask = Callable[[bytes, int, int, bytes], bytes]

_XOR_TABLES = [bytes(a ^ b for a in range(256)) for b in range(256)]


def unmask_python(buf: bytes, start: int, stop: int, key: bytes) -> bytes:
    """The pure-Python unmasker: one ``translate`` per lane of the 4-byte key."""
    out = bytearray(stop - start)
    tables = _XOR_TABLES
    out[0::4] = buf[start:stop:4].translate(tables[key[0]])
    out[1::4] = buf[start + 1 : stop : 4].translate(tables[key[1]])
    out[2::4] = buf[start + 2 : stop : 4].translate(tables[key[2]])
    out[3::4] = buf[start + 3 : stop : 4].translate(tables[key[3]])
    return bytes(out)


#: Below this many bytes numpy's call overhead costs more than it saves.
NUMPY_MIN_SIZE = 512


def numpy_unmask() -> Unmask | None:
    """The numpy unmasker, or ``None`` when numpy cannot be imported.

    numpy is imported here, lazily, so that importing meetstream_live never loads it.
    """
    try:
        np: Any = importlib.import_module("numpy")
    except ImportError:
        return None
    frombuffer, xor, empty = np.frombuffer, np.bitwise_xor, np.empty
    u8, u64 = np.uint8, np.uint64

    def unmask_numpy(buf: bytes, start: int, stop: int, key: bytes) -> bytes:
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
        body = words << 3
        out = empty(size, u8)
        xor(frombuffer(buf, u64, words, start), frombuffer(key8, u64), out=out[:body].view(u64))
        tail = size - body
        xor(frombuffer(buf, u8, tail, start + body), frombuffer(key8, u8, tail), out=out[body:])
        result = out.tobytes()
        return result

    return unmask_numpy


#: The unmaskers by name; ``"numpy"`` is added by :func:`best` where numpy imports.
BACKENDS: dict[str, Unmask] = {"python": unmask_python}

_chosen: list[tuple[str, Unmask]] = []


def best() -> tuple[str, Unmask]:
    """The fastest unmasker available here, and its name: numpy when importable, else Python.

    Decided once per process (a failed import is not retried on every connection).
    """
    if not _chosen:
        fast = numpy_unmask()
        if fast is None:
            _chosen.append(("python", unmask_python))
        else:
            BACKENDS["numpy"] = fast
            _chosen.append(("numpy", fast))
    return _chosen[0]


def unmask_backend() -> str:
    """The unmasker this process uses for binary payloads: ``"numpy"`` or ``"python"``.

    Calling it loads numpy now, if it is installed, instead of on the first connection: servers
    call it at start-up, so that the import (tens of milliseconds, and the thread pool numpy's
    BLAS starts) never lands in the middle of a stream.
    """
    return best()[0]
