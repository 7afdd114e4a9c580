"""The two HTML pages of ``/live/``: the list of streams and the player. Every link is
relative (the pages work behind a reverse proxy that serves them under another prefix), and
every value shown is escaped. The player uses hls.js (vendored, ``_static/hls.min.js``), or
the browser's own HLS (Safari), or with ``?mode=ws`` the WebSocket relay through Media Source
Extensions (plain JavaScript)."""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = ["index", "player"]

_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;
text-align:left}video{width:100%;max-width:960px;background:#000}
#status{font-family:monospace;color:#555}</style>"""


def _since(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def index(streams: list[dict[str, Any]], query: str) -> str:
    """The list of streams (``query``: ``?token=...`` carried into each link)."""
    rows = []
    for s in streams:
        link = quote(s["bot_id"], safe="") + "/"
        if s["speaker"]:
            link += quote(s["speaker"], safe="") + "/"
        rows.append(
            f"<tr><td><a href=\"{escape(link + query)}\">{escape(s['bot_id'])}</a></td>"
            f"<td>{escape(s['speaker'])}</td><td>{escape(_since(s['since_ms']))}</td>"
            f"<td>{s['state']}</td><td>{s['seconds']:.0f} s</td>"
            f"<td>{s['bitrate'] / 1000:.0f} kbit/s</td><td>{escape(s['verdict'])}</td>"
            f"<td>{s['viewers']}</td></tr>")
    body = "\n".join(rows) or "<tr><td colspan=8>no stream yet</td></tr>"
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>Live streams</title>{_STYLE}</head><body>
<h1>Live streams</h1><table><thead><tr><th>bot</th><th>speaker</th><th>since</th>
<th>state</th><th>media</th><th>bitrate</th><th>verdict so far</th><th>relay viewers</th>
</tr></thead><tbody>
{body}
</tbody></table></body></html>"""


_PLAYER_JS = """
const params = new URLSearchParams(location.search);
const token = params.get('token');
const q = token ? '?token=' + encodeURIComponent(token) : '';
const video = document.getElementById('video');
const statusLine = document.getElementById('status');
const state = {mode: params.get('mode') === 'ws' ? 'ws' : 'hls', frames: 0, skips: 0,
               ended: false, error: null};
window.liveState = state;
function show(text) { statusLine.textContent = state.mode + ': ' + text; }
function frames() {
  const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  if (quality) state.frames = quality.totalVideoFrames;
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(frames);
}
if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(frames);
video.addEventListener('ended', () => { state.ended = true; show('ended'); });

async function waitForMedia() {
  for (;;) {
    try {
      const r = await fetch('index.m3u8' + q, {cache: 'no-store'});
      if (r.ok && (await r.text()).includes('#EXTINF')) return;
      show(r.status === 401 ? 'wrong or missing token' : 'waiting for the stream');
    } catch (e) { show('waiting: ' + e); }
    await new Promise(ok => setTimeout(ok, 1000));
  }
}

async function startHls() {
  await waitForMedia();
  const src = 'index.m3u8' + q;
  if (window.Hls && Hls.isSupported()) {
    const hls = new Hls({liveSyncDurationCount: 2, enableWorker: true});
    window.hls = hls;
    hls.on(Hls.Events.ERROR, (_, d) => {
      if (!d.fatal) return;
      state.error = d.type + ': ' + d.details; show(state.error);
      if (d.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
      else setTimeout(() => hls.loadSource(src), 2000);
    });
    hls.on(Hls.Events.LEVEL_LOADED, (_, d) => show(d.details.live ? 'live' : 'recording'));
    hls.loadSource(src);
    hls.attachMedia(video);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = src;  // Safari: native HLS
  } else { show('this browser plays neither HLS nor MSE'); return; }
  video.play().catch(() => {});
}

function startWs() {
  const url = new URL('ws' + q, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  let buffer = null, queue = [];
  function pump() {
    if (!buffer || buffer.updating || !queue.length) return;
    try { buffer.appendBuffer(queue.shift()); } catch (e) { state.error = String(e); show(e); }
  }
  function chase() {
    const b = video.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1), start = b.start(b.length - 1);
    if (video.currentTime < start || end - video.currentTime > 2.5)
      video.currentTime = Math.max(start, end - 0.3);   // at the live edge, over any gap
    if (buffer && !buffer.updating && video.currentTime - b.start(0) > 30)
      buffer.remove(0, video.currentTime - 10);
    video.play().catch(() => {});
  }
  ws.onmessage = (m) => {
    if (typeof m.data !== 'string') { queue.push(m.data); pump(); return; }
    const msg = JSON.parse(m.data);
    if (msg.type === 'header') {
      const source = new MediaSource();
      queue = []; buffer = null;
      video.src = URL.createObjectURL(source);
      source.addEventListener('sourceopen', () => {
        buffer = source.addSourceBuffer(msg.mime);
        buffer.addEventListener('updateend', () => { chase(); pump(); });
        pump();
      }, {once: true});
      show('live (' + msg.codecs + ')');
    } else if (msg.type === 'skipped') { state.skips = msg.skips; }
    else if (msg.type === 'end') { state.ended = true; show('ended'); }
    else if (msg.type === 'error') { state.error = msg.message; show(msg.message); }
  };
  ws.onclose = (e) => { if (!state.ended) show('closed ' + e.code + ' ' + e.reason); };
}
if (state.mode === 'ws') startWs(); else startHls();
"""


def player(bot_id: str, speaker: str | None, depth: int, ws: bool, query: str = "") -> str:
    """The player of one stream; ``depth``: path segments below ``/live/`` (2 or 3);
    ``query``: ``?token=...``, for the script that is fetched with the page."""
    up = "../" * (depth - 1)
    title = escape(bot_id + (f" / {speaker}" if speaker else ""))
    modes = ('<a href="?mode=hls" onclick="location.search=new URLSearchParams({...Object.'
             'fromEntries(new URLSearchParams(location.search)),mode:\'hls\'});return false">'
             'HLS</a> · <a href="?mode=ws" onclick="location.search=new URLSearchParams({...'
             'Object.fromEntries(new URLSearchParams(location.search)),mode:\'ws\'});return '
             'false">low latency (WebSocket)</a>') if ws else "HLS"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
{_STYLE}</head><body>
<p><a href="{up}" onclick="location.href='{up}'+location.search.replace(/[?&]mode=[^&]*/,'');
return false">all streams</a> · {modes}</p>
<h1>{title}</h1>
<video id="video" controls muted autoplay playsinline></video>
<p id="status">starting</p>
<script src="{escape(up + "_static/hls.min.js" + query)}"></script>
<script>{_PLAYER_JS}</script>
</body></html>"""
