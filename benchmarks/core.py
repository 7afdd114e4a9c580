"""Part 1, in process: MB/s of binary payload through the sans-IO layers, on the same bytes.

The input is a real client byte stream (masked frames of the benchmark fMP4 stream, a
``video_stream_start`` first and a ``video_latency_ping`` after every MiB of payload) fed in
64 KiB reads. Three consumers, timed alternately in the same process:

* ``ours``: :class:`meetstream_live.ServerConnection` (h11 upgrade done before the clock,
  then wsproto + the Session: events, pongs in ``data_to_send``);
* ``wsproto``: a bare ``wsproto`` server connection; text messages are answered the plain way
  (``json.loads``, a pong with ``json.dumps``), binary messages are dropped;
* ``websockets``: the ``websockets`` library's sans-IO ``ServerProtocol``, same plain answers.

And the fMP4 scanner alone on the payload (``Fmp4Scanner.feed`` of 64 KiB pieces).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from ._common import (
    KIB,
    MIB,
    SEED,
    build_media,
    frames_of,
    log,
    mb_per_s,
    median,
    ping_message,
    start_message,
    stream_bytes,
    text_frame,
    upgrade_request,
)

READ = 64 * KIB
FRAME_SIZES = (4 * KIB, 32 * KIB, 256 * KIB)
PING_EVERY = MIB


def client_stream(payload: bytes, chunk: int, seed: int = SEED) -> bytes:
    """Masked frames of ``payload``: start, then chunks with a ping after every MiB."""
    rng = random.Random(seed)
    parts = [text_frame(start_message("core-bot"), rng)]
    since_ping = 0
    seq = 0
    for frame in frames_of(payload, chunk, rng):
        parts.append(frame)
        since_ping += chunk
        if since_ping >= PING_EVERY:
            seq += 1
            parts.append(text_frame(ping_message("core-bot", seq), rng))
            since_ping = 0
    return b"".join(parts)


def _reads(data: bytes) -> list[bytes]:
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def _pong(text: str) -> str | None:
    message = json.loads(text)
    if message.get("type") != "video_latency_ping":
        return None
    return json.dumps({
        "type": "video_latency_pong", "seq": message["seq"], "sent_at_ms": message["sent_at_ms"],
        "server_received_at_ms": int(time.time() * 1000), "bot_id": message.get("bot_id"),
    })


#: Payload bytes the consumers must deliver; set by :func:`run` for each input.
_expected = {"media": 0}


def _check(out: int, media: int) -> None:
    """Every consumer delivered every payload byte and answered pings."""
    assert out > 0, "no pongs"
    assert media == _expected["media"], f"delivered {media} of {_expected['media']} bytes"


def time_core_ours(reads: list[bytes]) -> float:
    from meetstream_live import MediaChunk, ServerConnection

    request, _ = upgrade_request("127.0.0.1", 9876)
    now = int(time.time() * 1000)
    conn = ServerConnection(now_ms=now)
    conn.receive_data(request, now)
    conn.data_to_send()
    out = media = 0
    t0 = time.perf_counter()
    for data in reads:
        for event in conn.receive_data(data, now):
            if isinstance(event, MediaChunk):
                media += len(event.data)
        out += len(conn.data_to_send())
    elapsed = time.perf_counter() - t0
    _check(out, media)
    return elapsed


def time_core_wsproto(reads: list[bytes]) -> float:
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import BytesMessage, Ping, TextMessage

    ws = Connection(ConnectionType.SERVER)
    out = media = 0
    text: list[str] = []  # a text message cut by a read comes in pieces
    t0 = time.perf_counter()
    for data in reads:
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, BytesMessage):
                media += len(event.data)
                continue
            if isinstance(event, TextMessage):
                text.append(event.data)
                if not event.message_finished:
                    continue
                pong = _pong("".join(text))
                text.clear()
                if pong is not None:
                    out += len(ws.send(TextMessage(data=pong)))
            elif isinstance(event, Ping):
                out += len(ws.send(event.response()))
    elapsed = time.perf_counter() - t0
    _check(out, media)
    return elapsed


def time_core_websockets(reads: list[bytes]) -> float:
    from websockets.frames import Opcode
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    request, _ = upgrade_request("127.0.0.1", 9876)
    proto = ServerProtocol()
    proto.receive_data(request)
    [handshake] = proto.events_received()
    assert isinstance(handshake, Request)
    proto.send_response(proto.accept(handshake))
    proto.data_to_send()
    out = media = 0
    t0 = time.perf_counter()
    for data in reads:
        proto.receive_data(data)
        for frame in proto.events_received():
            if frame.opcode is Opcode.BINARY:  # type: ignore[union-attr]
                media += len(frame.data)  # type: ignore[union-attr]
            elif frame.opcode is Opcode.TEXT:  # type: ignore[union-attr]
                pong = _pong(bytes(frame.data).decode())  # type: ignore[union-attr]
                if pong is not None:
                    proto.send_text(pong.encode())
        for chunk in proto.data_to_send():
            out += len(chunk)
    elapsed = time.perf_counter() - t0
    _check(out, media)
    return elapsed


def time_fmp4_scanner(reads: list[bytes]) -> float:
    from meetstream_live import Fmp4Scanner

    scanner = Fmp4Scanner()
    t0 = time.perf_counter()
    for data in reads:
        scanner.feed(data)
    scanner.eof()
    elapsed = time.perf_counter() - t0
    assert scanner.fragment_count > 0 and not scanner.broken
    return elapsed


CONSUMERS: dict[str, Callable[[list[bytes]], float]] = {
    "ours": time_core_ours,
    "wsproto": time_core_wsproto,
    "websockets": time_core_websockets,
}


def run(quick: bool, reps: int) -> dict[str, Any]:
    size = (16 if quick else 128) * MIB
    media = build_media()
    # The init segment then whole fragments (so the scanner ends cleanly).
    payload = stream_bytes(media, len(media.init) + size)
    size = len(payload)
    rows: list[dict[str, Any]] = []
    # Untimed warm-up of every consumer: imports (numpy, for our unmasker), caches.
    _expected["media"] = 4 * MIB
    warm = _reads(client_stream(payload[: 4 * MIB], 32 * KIB))
    for fn in CONSUMERS.values():
        fn(warm)
    _expected["media"] = size
    for chunk in FRAME_SIZES:
        reads = _reads(client_stream(payload, chunk))
        times: dict[str, list[float]] = {name: [] for name in CONSUMERS}
        ratios: dict[str, list[float]] = {"wsproto": [], "websockets": []}
        for rep in range(reps):
            for name, fn in CONSUMERS.items():
                times[name].append(fn(reads))
            for base in ratios:
                ratios[base].append(times["ours"][-1] / times[base][-1])
            log(f"core {chunk // KIB} KiB rep {rep + 1}: " + ", ".join(
                f"{n} {mb_per_s(size, t[-1]):.0f} MB/s" for n, t in times.items()))
        row: dict[str, Any] = {"frame": chunk, "payload_bytes": size}
        for name, values in times.items():
            row[f"{name}_mbps"] = mb_per_s(size, median(values))
            row[f"{name}_runs_mbps"] = [mb_per_s(size, v) for v in values]
        # Time ratios in the same rep: ours / baseline (1.25 = ours takes 25 % longer).
        for base, values in ratios.items():
            row[f"time_ratio_ours_{base}"] = median(values)
        rows.append(row)
    scans = []
    reads = _reads(payload)
    for _ in range(reps):
        scans.append(time_fmp4_scanner(reads))
    from meetstream_live._mask import best

    return {
        "unmasker": best()[0],
        "read_size": READ, "ping_every": PING_EVERY, "reps": reps, "frames": rows,
        "fmp4_scanner": {
            "payload_bytes": size, "mbps": mb_per_s(size, median(scans)),
            "runs_mbps": [mb_per_s(size, v) for v in scans],
            "fragments": (size - len(media.init)) // (512 * KIB),
        },
    }
