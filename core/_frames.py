"""The fast lane: binary data frames read here, every other frame byte handed to wsproto.

Why. Stock wsproto spends about 1.6 ns a byte on a binary payload (a ``bytearray`` append, a
slice, a ``del``, a bytewise masker that copies twice more) and several microseconds a frame in
``parse_header``: too slow for a media receiver by an order of magnitude (the figures are in
issue 5). wsproto stays the parser of record; this module only keeps the common frame away
from it.

The decision (option B of issue 5). Patching wsproto's ``Buffer`` and masker on our instance
(option A) was measured first: with a C-speed masker and a zero-copy buffer it reached 0.39x,
0.45x and 0.65x of websockets for 4 KiB, 32 KiB and 256 KiB frames, because wsproto's per-frame
Python work (``parse_header``, three named tuples, the events generator) stays. This lane,
with numpy, reaches 0.72x, 0.57x and 0.62x; in pure Python 0.36x, 0.14x and 0.11x (1.4x stock
wsproto's speed on 4 KiB frames, about the same above: the unmasking bounds it). So
:class:`FastLane` sits in front of the wsproto :class:`~wsproto.connection.Connection` and reads
every frame header itself, just far enough to sort the frame:

* **Ours**: a masked data frame, RSV bits 0, length minimally encoded (and below 2**63), that is
  either ``BINARY`` with no message in flight or ``CONTINUATION`` of a binary message. Its
  payload is unmasked straight out of the bytes read (:mod:`._mask`: numpy when importable, else
  pure Python) and given to the caller, one piece per frame per read, exactly as wsproto would
  have cut it. wsproto never sees these bytes.
* **wsproto's**: everything else — control frames, text, anything invalid. From its first byte
  on, the frame goes to wsproto byte for byte, as it arrives, so wsproto accepts, rejects and
  reports it at the very byte it would have without this lane. We only count the frame's length
  (from the header bytes we saw go by) to know where the next frame starts.

The only state the two share is the message in flight: wsproto's
``MessageDecoder.opcode`` stays the record of it. At the end of each of our frames we set it as
wsproto's own ``process_frame`` would have (``BINARY`` after a non-final frame, ``None`` after a
final one), and before sorting a ``BINARY``/``CONTINUATION`` header we let wsproto finish every
byte it was given, so its view is current. Hence what wsproto still validates: every control
frame (lengths, fragmentation, close codes and reasons), every text frame and its UTF-8, every
reserved opcode and RSV bit, unmasked frames, non-minimal lengths, and every message-sequence
error (a ``CONTINUATION`` with no message, a new message inside a fragmented one), including
when the message in flight is one of ours. We decide only "this is a valid binary data frame";
we never produce an error ourselves.

Guard. We read and write wsproto internals (``Connection._proto``, its ``_frame_decoder`` and
``_message_decoder``), so :func:`fast_lane` checks them on every new connection, together with
the wsproto version (:data:`WSPROTO_TESTED`): on any mismatch it warns (a ``RuntimeWarning``,
shown once per process under the default filters) and the connection takes the stock path.
``tests/core/test_fastpath.py`` checks that both paths give identical events and bytes for any
stream of valid and invalid frames, split anywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import wsproto
from wsproto.connection import Connection
from wsproto.connection import ConnectionState as WSState
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, MessageDecoder, Opcode

from . import _mask
from ._mask import Unmask, UnmaskRun

__all__ = [
    "RUN_BYTES",
    "UNMASK_MODES",
    "WSPROTO_TESTED",
    "FastLane",
    "fast_lane",
    "wsproto_mismatch",
]

#: The wsproto releases whose internals this module was checked against: ``>= 1.2, < 1.4``
#: (1.2.0 and 1.3.2 have the same ``frame_protocol`` and ``connection``, ruff reformatting aside).
WSPROTO_TESTED = ((1, 2), (1, 4))

#: What ``ServerConfig.unmask`` may say: ``"auto"`` (numpy when importable, else Python),
#: ``"numpy"``, ``"python"``, or ``"off"`` for the stock wsproto path.
UNMASK_MODES = frozenset({"auto", "numpy", "python", "off"})


def _version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return None


def wsproto_mismatch(ws: Connection, version: str = wsproto.__version__) -> str | None:
    """Why the fast lane cannot drive ``ws`` (a new server connection), or ``None`` if it can."""
    low, high = WSPROTO_TESTED
    found = _version(version)
    if found is None or not low <= found < high:
        return f"wsproto {version} is outside the tested range {low} to {high} (excluded)"
    proto = getattr(ws, "_proto", None)
    if not isinstance(proto, FrameProtocol):
        return "wsproto Connection has no FrameProtocol at ._proto"
    decoder = getattr(proto, "_frame_decoder", None)
    if not isinstance(decoder, FrameDecoder):
        return "wsproto FrameProtocol has no FrameDecoder at ._frame_decoder"
    messages = getattr(proto, "_message_decoder", None)
    if not isinstance(messages, MessageDecoder) or "opcode" not in vars(messages):
        return "wsproto FrameProtocol has no MessageDecoder with .opcode at ._message_decoder"
    if decoder.client or proto.extensions or decoder.extensions:
        return "not a server connection without extensions"
    if ws.state is not WSState.OPEN or decoder.header is not None or len(decoder.buffer):
        return "wsproto connection is not fresh"
    if messages.opcode is not None:
        return "wsproto connection is not fresh"
    return None


def fast_lane(
    ws: Connection,
    mode: str = "auto",
    *,
    run_limit: int | None = None,
    run_bytes: int | None = None,
) -> FastLane | None:
    """A :class:`FastLane` for a fresh wsproto server connection, or ``None`` for the stock path.

    ``mode`` is one of :data:`UNMASK_MODES` (``ServerConfig.unmask``). A wsproto that does not
    match what the lane was written against is reported with a ``RuntimeWarning`` and gets the
    stock path. ``run_limit`` and ``run_bytes`` are :attr:`FastLane.run_limit` and
    :attr:`FastLane.run_bytes`.
    """
    if mode == "off":
        return None
    problem = wsproto_mismatch(ws)
    if problem is not None:
        warnings.warn(
            f"meetstream_live: binary fast path off, stock wsproto path used: {problem}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    _name, unmask, unmask_run = _mask.unmaskers(mode)
    return FastLane(
        ws,
        unmask,
        unmask_run,
        run_limit=run_limit,
        run_bytes=RUN_BYTES if run_bytes is None else run_bytes,
    )


#: The default :attr:`FastLane.run_bytes` (``ServerConfig.max_joined_bytes``): a run joins
#: whole messages up to this many bytes (a single bigger message is a run alone). Bounded so
#: that the bytes objects made stay below glibc's default ``mmap`` threshold (128 KiB): runs
#: of a whole 1 MiB read made 1 MiB objects read after read, and the allocator's mapping,
#: faulting in and trimming of those pages ran the receiver at 0.4x (one bot flat out at 64 KiB
#: messages). With glibc tuned for big blocks (``mallopt``, as ``meetstream-live serve`` does)
#: one run per read is 1.4x faster than this bound.
RUN_BYTES = 64 * 1024


class FastLane:
    """Sorts the frames of one server connection between itself and wsproto (see the module).

    ``feed(data)`` yields, in wire order, the unmasked payload pieces of our frames (``bytes``)
    and ``None`` whenever wsproto must be drained (``ws.events()``) before going on. The caller
    must drain at every ``None``, handle the events in order, and stop iterating once wsproto
    closes. Set :attr:`discard` to drop our payloads unread (they are then not unmasked).
    With each payload, :attr:`message_ended` says whether it ends its message (an empty final
    frame yields ``b""`` for that), and :attr:`whole_messages` whether it is a *run*: the
    payloads of one or more whole messages (single final ``BINARY`` frames, each at most
    :attr:`run_limit` bytes) that arrived back to back in this read, joined and unmasked into
    one buffer, up to :attr:`run_bytes` (a bot sends whole messages: at 4 KiB a message, 16 of
    them make one payload of 64 KiB instead of 16 payloads).
    """

    __slots__ = (
        "_fast",
        "_fin",
        "_head",
        "_head_fed",
        "_key",
        "_left",
        "_messages",
        "_unmask",
        "_unmask_run",
        "_ws",
        "discard",
        "message_ended",
        "run_bytes",
        "run_limit",
        "whole_messages",
    )

    def __init__(
        self,
        ws: Connection,
        unmask: Unmask,
        unmask_run: UnmaskRun | None = None,
        *,
        run_limit: int | None = None,
        run_bytes: int = RUN_BYTES,
    ) -> None:
        self._ws = ws
        self._messages: MessageDecoder = ws._proto._message_decoder
        self._unmask = unmask
        self._unmask_run = unmask_run
        #: Messages longer than this are never joined into a run (the caller's message size
        #: limit: each message of a run is then known to be within it). ``None``: no limit.
        self.run_limit = run_limit
        #: A run joins whole messages up to this many bytes (:data:`RUN_BYTES` by default; a
        #: single bigger message is a run alone; 0: no message is joined to another).
        self.run_bytes = run_bytes
        #: Whether the payload just yielded is a run of whole messages (see the class).
        self.whole_messages = False
        #: When true, payloads of our frames are consumed and dropped, not unmasked.
        self.discard = False
        #: Whether the payload just yielded ends its binary message (as wsproto's
        #: ``message_finished`` would say).
        self.message_ended = False
        self._head = b""  # the start of a frame header, not complete yet
        self._head_fed = False  # ... already given to wsproto: the frame is wsproto's
        self._left = 0  # bytes still to come: of our frame's payload, or of wsproto's frame
        self._fast = False  # the frame being read is ours
        self._key = b""  # our frame's masking key, rotated to the next payload byte
        self._fin = False  # our frame's FIN bit

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes | None]:
        """Read ``data`` (not EOF: give ``None`` to wsproto directly); see the class docstring.

        ``data`` is read in place and no reference to it is kept once the iteration is over
        (what is kept is copied: a partial header, a masking key), so the caller may reuse
        its read buffer. (wsproto's ``receive_data`` is annotated ``bytes`` but appends what
        it is given to a ``bytearray``: any bytes-like object does.)
        """
        ws = self._ws
        size = len(data)
        pos = 0
        fed = False  # wsproto was given bytes since it was last drained
        while True:
            left = self._left
            if left:
                end = pos + left
                if end > size:
                    end = size
                if end == pos:
                    break
                self._left = left - (end - pos)
                if not self._fast:
                    ws.receive_data(data[pos:end])  # type: ignore[arg-type]  # see feed
                    fed = True
                    pos = end
                    continue
                start, pos, key = pos, end, self._key
                if self._left:
                    shift = (end - start) & 3
                    if shift:
                        self._key = key[shift:] + key[:shift]
                else:
                    self._messages.opcode = None if self._fin else Opcode.BINARY
                if not self.discard:
                    self.message_ended = not self._left and self._fin
                    yield self._unmask(data, start, end, key)
                continue
            if pos == size:
                break

            # A frame boundary: sort the frame by its header.
            head = self._head
            buf: bytes | bytearray | memoryview
            if head:
                buf = head + data[pos : pos + 14]
                at = 0
            else:
                buf = data
                at = pos
            avail = len(buf) - at
            kind = buf[at] & 0x7F  # RSV bits and opcode
            ours = False
            if (kind == 0x2 or kind == 0x0) and not self._head_fed:
                if fed:
                    yield None  # wsproto's view of the message in flight must be current
                    fed = False
                if kind == 0x2:
                    ours = self._messages.opcode is None
                else:
                    ours = self._messages.opcode is Opcode.BINARY
            length = -1  # the payload length, once known
            hlen = 2  # the header length, once the second byte is known
            if avail >= 2:
                second = buf[at + 1]
                code = second & 0x7F
                if code < 126:
                    length = code
                elif code == 126:
                    hlen = 4
                    if avail >= 4:
                        length = buf[at + 2] << 8 | buf[at + 3]
                        if length < 126:
                            ours = False
                else:
                    hlen = 10
                    if avail >= 10:
                        length = int.from_bytes(buf[at + 2 : at + 10], "big")
                        if length < 0x10000 or length >> 63:
                            ours = False
                if second & 0x80:
                    hlen += 4
                else:
                    ours = False

            if ours:
                if length < 0 or avail < hlen:
                    self._head = bytes(buf[at:])  # wait for the rest of the header
                    break
                if (
                    not head
                    and buf[at] == 0x82
                    and pos + hlen + length <= size
                    and self._unmask_run is not None
                    and (self.run_limit is None or length <= self.run_limit)
                ):
                    # A whole final BINARY frame in this read: ours, with the ones after it.
                    pos, payload = self._run(data, pos + hlen, length, size)
                    if payload is not None:
                        self.message_ended = self.whole_messages = True
                        yield payload
                        self.whole_messages = False
                    continue
                key = bytes(buf[at + hlen - 4 : at + hlen])  # never a view of the caller's buffer
                pos += hlen - len(head)
                self._head = b""
                if length:
                    self._left = length
                    self._fast = True
                    self._key = key
                    self._fin = buf[at] >= 0x80
                else:
                    self._messages.opcode = None if buf[at] >= 0x80 else Opcode.BINARY
                    if buf[at] >= 0x80 and not self.discard:
                        # An empty final frame ends its message: say so, as wsproto would.
                        self.message_ended = True
                        yield b""
                continue

            # wsproto's frame: give it what we have of it, from its first byte on.
            if head and not self._head_fed:
                ws.receive_data(head)
                fed = True
            if length >= 0:
                self._left = hlen + length - len(head)
                self._fast = False
                self._head = b""
                self._head_fed = False
                continue
            ws.receive_data(data[pos:])  # type: ignore[arg-type]  # see feed
            fed = True
            self._head = bytes(buf[at:])
            self._head_fed = True
            break
        if fed:
            yield None

    def _run(
        self, data: bytes | bytearray | memoryview, start: int, length: int, size: int
    ) -> tuple[int, bytes | None]:
        """Read a run: the whole final ``BINARY`` frame whose payload of ``length`` bytes
        starts at ``start`` (its header read by :meth:`feed`), then the whole final ``BINARY``
        frames after it, until a frame that is not one, is not all in ``data`` or would make
        the run longer than :attr:`run_bytes`. Return where that frame starts and the payloads
        joined and unmasked (``None`` when :attr:`discard` is set or they are all empty). The
        message in flight stays ``None`` throughout."""
        pos = start + length
        segments = [(start, pos, bytes(data[start - 4 : start]))] if length else []
        total = length
        limit = self.run_limit
        run_bytes = self.run_bytes
        while pos + 6 <= size and data[pos] == 0x82:
            code = data[pos + 1]
            if code < 0xFE:  # masked, 7-bit length
                if code < 0x80:
                    break
                length = code & 0x7F
                hlen = 6
            elif code == 0xFE:  # masked, 16-bit length (minimal: >= 126)
                if pos + 8 > size:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
                if length < 126:
                    break
                hlen = 8
            else:  # masked, 64-bit length (minimal: >= 2**16, below 2**63)
                if pos + 14 > size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length < 0x10000 or length >> 63:
                    break
                hlen = 14
            start = pos + hlen
            stop = start + length
            if stop > size or (limit is not None and length > limit):
                break
            if length:
                if segments and total + length > run_bytes:
                    break
                segments.append((start, stop, bytes(data[start - 4 : start])))
                total += length
            pos = stop
        if not total or self.discard:
            return pos, None
        assert self._unmask_run is not None
        if len(segments) == 1:
            start, stop, key = segments[0]
            return pos, self._unmask(data, start, stop, key)
        return pos, self._unmask_run(data, segments, total)
