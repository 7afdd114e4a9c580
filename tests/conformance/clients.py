"""Bot clients for the conformance suite: ours, the ``websockets`` library's, and Node's ``ws``.

Each runs the same :class:`Script` against a URL and reports a :class:`Result`. Nobody here wrote
the ``websockets`` or ``ws`` clients: they keep our server honest about the wire format.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
START_FIELDS: dict[str, Any] = {
    "codec": "h264",
    "audio_codec": "aac",
    "container": "fmp4",
    "width": 320,
    "height": 240,
    "framerate": 25,
    "audio_sample_rate": 44100,
    "audio_bitrate": "128k",
}


@dataclass(frozen=True)
class Script:
    """What a bot does. The media is sent in ``chunk``-byte binary messages."""

    media: bytes
    chunk: int = 32 * 1024
    bot_id: str = "bot-1"
    early: int = 0  # bytes of the media sent before video_stream_start
    fragment: int | None = None  # send each message as frames of this many bytes
    ping_every: int = 4  # a latency ping after every N messages
    ws_ping: bool = False  # WebSocket ping frames between messages
    end: bool = True  # send video_stream_end
    close: bool = True  # close handshake at the end (else the socket is just closed)

    def messages(self) -> tuple[bytes, list[bytes]]:
        early, rest = self.media[: self.early], self.media[self.early :]
        return early, [rest[i : i + self.chunk] for i in range(0, len(rest), self.chunk)]


@dataclass
class Result:
    pongs: list[dict[str, Any]] = field(default_factory=list)
    pings: list[tuple[int, int]] = field(default_factory=list)  # (seq, sent_at_ms)
    close_code: int | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pings(script: Script, index: int) -> bool:
    return script.ping_every > 0 and (index + 1) % script.ping_every == 0


# ------------------------------------------------------------------------------- ours


def run_ours(url: str, script: Script) -> Result:
    from meetstream_live import BotClosed, PongReceived
    from meetstream_live.adapters.asyncio import AsyncioBot

    async def main() -> Result:
        result = Result()
        bot = await AsyncioBot.connect(url)
        early, messages = script.messages()
        if early:
            await bot.send_chunk(early)
        await bot.send_start(script.bot_id, **START_FIELDS)
        seq = 0
        for i, message in enumerate(messages):
            await _send_fragmented(bot, message, script.fragment)
            if script.ws_ping:
                await bot.send_ws_ping(b"hi")
            if _pings(script, i):
                seq += 1
                sent = _now_ms()
                result.pings.append((seq, sent))
                await bot.send_ping(seq, sent)
        while len(result.pongs) < len(result.pings):
            event = await bot.next_event(10)
            if isinstance(event, PongReceived):
                result.pongs.append(dict(event.raw))
            assert not isinstance(event, BotClosed), event
        if script.end:
            await bot.send_end(2.0)
        if script.close:
            result.close_code = (await bot.close()).code
        else:
            bot.abort()
        return result

    return asyncio.run(asyncio.wait_for(main(), 60))


async def _send_fragmented(bot: Any, message: bytes, fragment: int | None) -> None:
    if not fragment or len(message) <= fragment:
        await bot.send_chunk(message)
        return
    pieces = [message[i : i + fragment] for i in range(0, len(message), fragment)]
    for piece in pieces[:-1]:
        await bot.send_chunk(piece, final=False)
    await bot.send_chunk(pieces[-1])


# ------------------------------------------------------------------------- websockets


def run_websockets(url: str, script: Script) -> Result:
    from websockets.sync.client import connect

    result = Result()
    with connect(url, max_size=None, open_timeout=10, close_timeout=10) as ws:
        early, messages = script.messages()
        if early:
            ws.send(early)
        ws.send(json.dumps({"type": "video_stream_start", "bot_id": script.bot_id, **START_FIELDS}))
        seq = 0
        for i, message in enumerate(messages):
            if script.fragment and len(message) > script.fragment:
                f = script.fragment
                ws.send([message[j : j + f] for j in range(0, len(message), f)])
            else:
                ws.send(message)
            if script.ws_ping:
                ws.ping(b"hi").wait(10)
            if _pings(script, i):
                seq += 1
                sent = _now_ms()
                result.pings.append((seq, sent))
                ping = {"type": "video_latency_ping", "bot_id": script.bot_id}
                ws.send(json.dumps({**ping, "seq": seq, "sent_at_ms": sent}))
        while len(result.pongs) < len(result.pings):
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str)
            result.pongs.append(json.loads(reply))
        if script.end:
            end = {"type": "video_stream_end", "bot_id": script.bot_id, "duration_seconds": 2.0}
            ws.send(json.dumps(end))
        if not script.close:
            ws.socket.shutdown(socket.SHUT_RDWR)
            return result
    result.close_code = ws.close_code
    return result


# ------------------------------------------------------------------------------- node


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "ws").is_dir()


def run_node(url: str, script: Script) -> Result:
    if script.ws_ping and script.fragment:
        raise ValueError("the node bot takes one of --ws-ping / --fragment at a time")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as media:
        media.write(script.media)
        media.flush()
        argv = ["node", str(NODE_DIR / "bot.mjs"), "--url", url, "--file", media.name]
        argv += ["--bot-id", script.bot_id, "--chunk", str(script.chunk)]
        argv += ["--ping-every", str(script.ping_every), "--early-bytes", str(script.early)]
        if script.fragment:
            argv += ["--fragment", str(script.fragment)]
        if script.ws_ping:
            argv += ["--ws-ping"]
        if not script.end:
            argv += ["--no-end"]
        if not script.close:
            argv += ["--no-close"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"node bot failed: {proc.stderr}\n{proc.stdout}"
    result = Result()
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if "pong" in record:
            result.pongs.append(record["pong"])
        elif record.get("done"):
            result.close_code = record.get("close_code")
            result.pings = [(p["seq"], p["sent_at_ms"]) for p in result.pongs]
    return result


CLIENTS = {"ours": run_ours, "websockets": run_websockets, "node": run_node}


# --------------------------------------------------------------------------- raw bytes


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame built by hand (mask of zeros is legal and keeps the payload readable)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


def raw_handshake(port: int, path: str = "/") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        more = sock.recv(4096)
        assert more, f"closed during handshake: {response!r}"
        response += more
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST, like a bot process that dies."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
