"""Every plain HTTP answer under ``/live/`` (one prefix route of ``serve``):

=====================================  ==================================================
``/live/``                             the list of streams (HTML)
``/live/streams.json``                 the same, as JSON
``/live/{bot}/[{speaker}/]``           the player page (hls.js, or ``?mode=ws``: MSE)
``/live/{bot}/[{speaker}/]index.m3u8`` the HLS playlist (:mod:`.hls`)
``/live/{bot}/[{speaker}/]{n}.mp4``    part ``n``'s file, by byte ranges (RFC 9110 206/416)
``/live/_static/{name}``               hls.js and its license, vendored (no CDN)
=====================================  ==================================================

Without a speaker, the bot's latest stream. Every request needs the viewers' token (``?token=``
or ``Authorization: Bearer``, compared in constant time, never logged) when one is set; path
segments are only ever keys of the :class:`~.registry.LiveRegistry`, never paths on disk.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from meetstream_live import HTTPRequest
from meetstream_live.adapters import HTTPAnswer

from . import page
from .hls import playlist
from .registry import LivePart, LiveRegistry, LiveStream

__all__ = ["MAX_BODY", "LiveWeb", "parse_range"]

#: The most bytes of media one answer carries (answers are built in memory): a range asking for
#: more gets a 206 of this many bytes (players ask again for the rest); a request without a
#: Range for a larger file gets 416-free advice: 413 and "ask by Range".
MAX_BODY = 16 * 1024 * 1024

PREFIX = "/live/"
_PART = re.compile(r"([1-9][0-9]{0,8})\.mp4")
_STATIC = {
    "hls.min.js": "application/javascript; charset=utf-8",
    "hls.js.LICENSE": "text/plain; charset=utf-8",
}
Headers = tuple[tuple[bytes, bytes], ...]


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """The first..last byte (inclusive) a ``Range`` header asks of ``size`` bytes: ``None``
    when it is to be ignored (not ``bytes=``, malformed, several ranges: RFC 9110 14.2 lets a
    server ignore it), ``"unsatisfiable"`` for 416."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # a suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _offered(query: str, headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    found = [v.encode("utf-8") for v in parse_qs(query).get("token", [])]
    for name, value in headers:
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            found.append(value[7:].strip())
    return found


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class LiveWeb:
    """The ``/live/`` HTTP handler (an :data:`~meetstream_live.adapters.HTTPHandler`)."""

    def __init__(self, registry: LiveRegistry, *, token: str | None = None,
                 cors: Sequence[str] = (), relay_stats: Callable[[], dict[str, Any]] | None = None,
                 ws: bool = True) -> None:
        self.registry = registry
        self._token = None if token is None else token.encode("utf-8")
        #: Origins allowed to read the answers from a page of theirs (``*``: any).
        self.cors = tuple(cors)
        self.relay_stats = relay_stats
        self.ws = ws

    # ------------------------------------------------------------------ entry

    def __call__(self, request: HTTPRequest) -> HTTPAnswer:
        cors = self._cors_headers(request.headers)
        if request.method == "OPTIONS":
            return self._with(HTTPAnswer(204, b"", headers=(
                (b"Access-Control-Allow-Methods", b"GET, OPTIONS"),
                (b"Access-Control-Allow-Headers", b"Authorization, Range"),
                (b"Access-Control-Max-Age", b"600"),
            )), cors)
        if request.method != "GET":
            return self._with(HTTPAnswer(405, b"only GET here\n",
                                         headers=((b"Allow", b"GET, OPTIONS"),)), cors)
        if not self._authorized(request):
            return self._with(HTTPAnswer(401, b"missing or wrong token\n",
                                         headers=((b"WWW-Authenticate", b"Bearer"),)), cors)
        try:
            answer = self._route(request)
        except OSError:
            answer = HTTPAnswer(404, b"not found\n")
        return self._with(answer, cors)

    def _authorized(self, request: HTTPRequest) -> bool:
        expected = self._token
        if expected is None:
            return True
        # Every candidate compared, each in constant time.
        results = [hmac.compare_digest(c, expected)
                   for c in _offered(request.query, request.headers)]
        return any(results)

    def _cors_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> Headers:
        if not self.cors:
            return ()
        origin = _header(headers, b"origin")
        if "*" in self.cors:
            allowed = "*"
        elif origin is not None and origin in self.cors:
            allowed = origin
        else:
            return ((b"Vary", b"Origin"),)
        return (
            (b"Access-Control-Allow-Origin", allowed.encode("latin-1")),
            (b"Access-Control-Expose-Headers", b"Content-Length, Content-Range, Accept-Ranges"),
            (b"Vary", b"Origin"),
        )

    @staticmethod
    def _with(answer: HTTPAnswer, extra: Headers) -> HTTPAnswer:
        headers = ((b"X-Content-Type-Options", b"nosniff"), *answer.headers, *extra)
        return answer._replace(headers=headers)

    def _route(self, request: HTTPRequest) -> HTTPAnswer:
        path = request.path
        if not path.startswith(PREFIX):
            return HTTPAnswer(404, b"not found\n")
        token = parse_qs(request.query).get("token", [])
        query = f"?token={quote(token[0], safe='')}" if token else ""
        segments = [unquote(s) for s in path[len(PREFIX):].split("/")]
        if any(s in (".", "..") or "/" in s or "\0" in s for s in segments[:-1]):
            return HTTPAnswer(404, b"not found\n")
        if segments == [""]:
            return self._html(page.index(self._listing(), query))
        if segments == ["streams.json"]:
            body = json.dumps({"streams": self._listing()}, indent=1).encode()
            return HTTPAnswer(200, body, "application/json", ((b"Cache-Control", b"no-store"),))
        if len(segments) == 2 and segments[0] == "_static":
            return self._static(segments[1])
        if len(segments) == 1:  # /live/{bot}: the page is /live/{bot}/
            return HTTPAnswer(301, b"moved\n",
                              headers=((b"Location", f"{path.rsplit('/', 1)[-1]}/{query}"
                                        .encode("latin-1", "replace")),))
        if len(segments) not in (2, 3) or not segments[0]:
            return HTTPAnswer(404, b"not found\n")
        bot, name = segments[0], segments[-1]
        speaker = segments[1] if len(segments) == 3 else None
        if name == "":  # the page waits for the stream when it is not here yet
            return self._html(page.player(bot, speaker, len(segments), self.ws, query))
        stream = self.registry.get(bot, speaker)
        if stream is None:
            return HTTPAnswer(404, b"no such live stream\n")
        if name == "index.m3u8":
            cache = b"private, max-age=60" if stream.ended else b"no-cache"
            return HTTPAnswer(200, playlist(stream, query).encode(),
                              "application/vnd.apple.mpegurl", ((b"Cache-Control", cache),))
        match = _PART.fullmatch(name)
        if match is not None:
            part = stream.part(int(match.group(1)))
            if part is not None:
                return self._media(stream, part, request.headers)
        return HTTPAnswer(404, b"not found\n")

    # ------------------------------------------------------------------ answers

    @staticmethod
    def _html(body: str, status: int = 200) -> HTTPAnswer:
        return HTTPAnswer(status, body.encode(), "text/html; charset=utf-8",
                          ((b"Cache-Control", b"no-store"),
                           (b"Content-Security-Policy",
                            b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
                            b"media-src 'self' blob:; connect-src 'self' ws: wss:; "
                            b"style-src 'unsafe-inline'; worker-src blob:"),
                           (b"Referrer-Policy", b"no-referrer")))

    @staticmethod
    def _static(name: str) -> HTTPAnswer:
        kind = _STATIC.get(name)
        if kind is None:
            return HTTPAnswer(404, b"not found\n")
        body = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
        return HTTPAnswer(200, body, kind, ((b"Cache-Control", b"public, max-age=86400"),))

    def _listing(self) -> list[dict[str, Any]]:
        stats = self.relay_stats() if self.relay_stats is not None else {}
        out = []
        for stream in self.registry.streams():
            key = f"{stream.bot_id}/{stream.speaker}"
            out.append({
                "bot_id": stream.bot_id,
                "speaker": stream.speaker,
                "since_ms": stream.started_ms,
                "state": "ended" if stream.ended else "live",
                "seconds": round(stream.seconds, 3),
                "bitrate": round(stream.bitrate()),
                "parts": len(stream.parts),
                "verdict": _verdict(stream),
                "viewers": stats.get(key, {}).get("viewers", 0),
                "skips": stats.get(key, {}).get("skips", 0),
            })
        return out

    def _media(self, stream: LiveStream, part: LivePart,
               headers: Sequence[tuple[bytes, bytes]]) -> HTTPAnswer:
        try:
            fd = os.open(part.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:  # renamed by finalize since the snapshot: look again
            again = self.registry.get(stream.bot_id, stream.speaker)
            fresh = again.part(part.number) if again is not None else None
            if fresh is None or fresh.path == part.path:
                return HTTPAnswer(404, b"not found\n")
            part = fresh
            fd = os.open(part.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # While recording, only what the file sink said is stored (the file may hold
            # bytes of a fragment not complete yet); once final, the whole file.
            size = os.fstat(fd).st_size if part.finalized else part.end
            base = ((b"Accept-Ranges", b"bytes"), (b"Cache-Control", b"private, max-age=60"))
            wanted = _header(headers, b"range")
            chosen = parse_range(wanted, size) if wanted is not None else None
            if chosen == "unsatisfiable":
                return HTTPAnswer(416, b"range not satisfiable\n", headers=(
                    *base, (b"Content-Range", f"bytes */{size}".encode())))
            if chosen is None:
                if size > MAX_BODY:
                    return HTTPAnswer(413, b"too large for one answer: ask by Range\n",
                                      headers=base)
                return HTTPAnswer(200, os.pread(fd, size, 0), "video/mp4", base)
            assert not isinstance(chosen, str)
            first, last = chosen
            last = min(last, first + MAX_BODY - 1)
            body = os.pread(fd, last - first + 1, first)
            return HTTPAnswer(206, body, "video/mp4", (
                *base, (b"Content-Range", f"bytes {first}-{first + len(body) - 1}/{size}"
                        .encode())))
        finally:
            os.close(fd)


def _verdict(stream: LiveStream) -> str:
    gaps = stream.gaps
    if stream.dropped:
        return f"events missed: {stream.dropped}"
    return f"gaps: {gaps}" if gaps else "complete so far"


def static_path(name: str) -> Path:
    """Where a vendored file is (for tests and docs)."""
    return Path(str(resources.files(__package__).joinpath("static").joinpath(name)))
