#!/usr/bin/env node
// A MeetStream bot simulator built on the `ws` library, for the interoperability tests.
//
// It plays the bot's side of one live-video session against a receiver:
//   [early binary bytes] -> video_stream_start -> binary chunks with video_latency_ping
//   interleaved -> (wait for every video_latency_pong) -> video_stream_end -> close 1000.
//
// Usage:
//   node bot.mjs --url ws://127.0.0.1:PORT/path --file media.mp4 [options]
//
// Options:
//   --bot-id ID        bot_id in every control message (default "node-bot")
//   --chunk N          bytes per binary message (default 32768)
//   --ping-every N     send a video_latency_ping (seq 1, 2, ...) after every N binary chunks
//                      sent after video_stream_start (default 4; 0 = none)
//   --early-bytes N    send the first N bytes of the file, as one binary message, before
//                      video_stream_start (the rest follows in --chunk messages)
//   --no-end           do not send video_stream_end
//   --no-close         after sending, destroy the TCP connection instead of a closing handshake
//   --fragment N       send each binary chunk as one message split into N-byte frames
//                      (ws `fin: false` sends; pings only go out between whole messages)
//   --ws-ping          send a WebSocket ping frame after every chunk; each must be ponged
//                      before video_stream_end (may be combined with --fragment)
//   --no-deflate       do not offer permessage-deflate (ws offers it by default)
//   --timeout-ms N     how long to wait for pongs / the closing handshake (default 10000)
//
// stdout: one JSON line per pong, {"pong": <pong object>, "rtt_ms": <float>}, then
//         {"done": true, "close_code": <code>, "bytes_sent": N, "pings": K, "pongs": K}.
// stderr: diagnostics. Exit status 0 on success, 1 on any error or missing/wrong pong.
// For wss:// with a test CA, set NODE_EXTRA_CA_CERTS=/path/to/ca.pem.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const USAGE =
  "usage: node bot.mjs --url ws://HOST:PORT/PATH --file MEDIA [--bot-id ID] [--chunk N]\n" +
  "       [--ping-every N] [--early-bytes N] [--no-end] [--no-close] [--fragment N]\n" +
  "       [--ws-ping] [--no-deflate] [--timeout-ms N]";

class Failure extends Error {}

// A small parser instead of util.parseArgs, so the script also runs on the older Node.js
// that some distributions ship (ws itself supports Node >= 10).
const VALUE_OPTIONS = ["url", "file", "bot-id", "chunk", "ping-every", "early-bytes", "fragment", "timeout-ms"];
const FLAG_OPTIONS = ["no-end", "no-close", "ws-ping", "no-deflate", "help"];

function parseOptions(argv) {
  const values = {
    "bot-id": "node-bot",
    chunk: "32768",
    "ping-every": "4",
    "early-bytes": "0",
    "timeout-ms": "10000",
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const match = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
    const name = match ? match[1] : arg === "-h" ? "help" : null;
    if (name !== null && FLAG_OPTIONS.includes(name) && (match === null || match[2] === undefined)) {
      values[name] = true;
    } else if (name !== null && VALUE_OPTIONS.includes(name)) {
      if (match[2] !== undefined) {
        values[name] = match[2];
      } else if (i + 1 < argv.length) {
        values[name] = argv[++i];
      } else {
        throw new Failure(`option --${name} needs a value\n${USAGE}`);
      }
    } else {
      throw new Failure(`unknown argument ${JSON.stringify(arg)}\n${USAGE}`);
    }
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (!values.url || !values.file) throw new Failure(`--url and --file are required\n${USAGE}`);
  if (!/^wss?:\/\//.test(values.url)) throw new Failure(`--url must start with ws:// or wss://`);
  const int = (name, min) => {
    const raw = values[name];
    if (!/^\d+$/.test(raw) || Number(raw) < min) {
      throw new Failure(`--${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    }
    return Number(raw);
  };
  return {
    url: values.url,
    file: values.file,
    botId: values["bot-id"],
    chunk: int("chunk", 1),
    pingEvery: int("ping-every", 0),
    earlyBytes: int("early-bytes", 0),
    fragment: values.fragment === undefined ? 0 : int("fragment", 1),
    end: !values["no-end"],
    close: !values["no-close"],
    wsPing: Boolean(values["ws-ping"]),
    deflate: !values["no-deflate"],
    timeoutMs: int("timeout-ms", 1),
  };
}

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${ms} ms ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let ws = null;

async function run(opts) {
  let media;
  try {
    media = readFileSync(opts.file);
  } catch (err) {
    throw new Failure(`cannot read --file: ${err.message}`);
  }
  ws = new WebSocket(opts.url, {
    perMessageDeflate: opts.deflate,
    handshakeTimeout: opts.timeoutMs,
    maxPayload: 16 * 1024 * 1024,
  });

  // Any of these ends the run with an error, unless we are the ones finishing it.
  let finishing = false;
  let rejectFatal;
  const fatal = new Promise((_, reject) => {
    rejectFatal = reject;
  });
  fatal.catch(() => {}); // observed through Promise.race below
  const fail = (message) => rejectFatal(new Failure(message));

  const closed = new Promise((resolve) => {
    ws.on("close", (code, reason) => {
      if (!finishing) {
        fail(`connection closed early: code ${code} reason ${JSON.stringify(reason.toString())}`);
      }
      resolve(code);
    });
  });
  ws.on("error", (err) => fail(`websocket error: ${err.message}`));
  ws.on("unexpected-response", (_req, res) => {
    fail(`handshake rejected: HTTP ${res.statusCode} ${res.statusMessage}`);
    res.resume();
    ws.terminate();
  });

  // video_latency_ping bookkeeping.
  const outstanding = new Map(); // seq -> {sentAtMs, sentPerf}
  let pings = 0;
  let pongs = 0;
  let allPongsSeen = () => {};
  const checkPongs = () => {
    if (outstanding.size === 0) allPongsSeen();
  };

  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      fail(`unexpected binary message from the receiver (${data.length} bytes)`);
      return;
    }
    const receivedPerf = performance.now();
    let msg;
    try {
      msg = JSON.parse(data.toString("utf8"));
    } catch {
      fail(`receiver sent text that is not JSON: ${JSON.stringify(data.toString("utf8"))}`);
      return;
    }
    if (msg === null || typeof msg !== "object" || msg.type !== "video_latency_pong") {
      process.stderr.write(`ignoring message from receiver: ${JSON.stringify(msg)}\n`);
      return;
    }
    const ping = outstanding.get(msg.seq);
    if (ping === undefined) {
      fail(`pong for unknown or already answered seq: ${JSON.stringify(msg)}`);
      return;
    }
    if (msg.sent_at_ms !== ping.sentAtMs || msg.bot_id !== opts.botId) {
      fail(`pong does not echo its ping (sent_at_ms ${ping.sentAtMs}, bot_id ${JSON.stringify(opts.botId)}): ${JSON.stringify(msg)}`);
      return;
    }
    if (!Number.isFinite(msg.server_received_at_ms)) {
      fail(`pong without a numeric server_received_at_ms: ${JSON.stringify(msg)}`);
      return;
    }
    outstanding.delete(msg.seq);
    pongs += 1;
    emit({ pong: msg, rtt_ms: Number((receivedPerf - ping.sentPerf).toFixed(3)) });
    checkPongs();
  });

  // WebSocket-level ping bookkeeping (--ws-ping): each ping carries its own counter.
  const wsOutstanding = new Set();
  let allWsPongsSeen = () => {};
  ws.on("pong", (payload) => {
    wsOutstanding.delete(payload.toString("utf8"));
    if (wsOutstanding.size === 0) allWsPongsSeen();
  });

  const race = (promise) => Promise.race([promise, fatal]);
  // A send fails when the receiver has started closing; report its close frame, which is the
  // real cause, rather than "not open" (the close event follows shortly).
  const sendFailed = (what, err, reject) => {
    const failure = new Failure(`${what} failed: ${err.message}`);
    if (ws.readyState === WebSocket.OPEN) {
      reject(failure);
      return;
    }
    const timer = setTimeout(() => reject(failure), 2000);
    closed.then(() => clearTimeout(timer));
  };
  const send = (data, options) =>
    race(
      new Promise((resolve, reject) => {
        ws.send(data, options, (err) => (err ? sendFailed("send", err, reject) : resolve()));
      }),
    );
  const sendJson = (obj) => send(JSON.stringify(obj), { binary: false });
  const sendBinary = async (buf) => {
    if (opts.fragment > 0 && buf.length > opts.fragment) {
      for (let off = 0; off < buf.length; off += opts.fragment) {
        const piece = buf.subarray(off, off + opts.fragment);
        await send(piece, { binary: true, fin: off + opts.fragment >= buf.length });
      }
    } else {
      await send(buf, { binary: true });
    }
  };
  let wsPingCounter = 0;
  const maybeWsPing = async () => {
    if (!opts.wsPing) return;
    const payload = `p${++wsPingCounter}`;
    wsOutstanding.add(payload);
    await race(
      new Promise((resolve, reject) => {
        ws.ping(payload, undefined, (err) => (err ? sendFailed("ping", err, reject) : resolve()));
      }),
    );
  };

  await withTimeout(
    race(new Promise((resolve) => ws.once("open", resolve))),
    opts.timeoutMs,
    "waiting for the WebSocket handshake",
  );

  // The early bytes go out as one binary message, before the receiver knows the stream.
  let bytesSent = 0;
  const early = Math.min(opts.earlyBytes, media.length);
  if (early > 0) {
    await sendBinary(media.subarray(0, early));
    bytesSent += early;
  }

  const startedPerf = performance.now();
  await sendJson({
    type: "video_stream_start",
    bot_id: opts.botId,
    codec: "h264",
    audio_codec: "aac",
    container: "fmp4",
    width: 320,
    height: 240,
    framerate: 25,
    audio_sample_rate: 44100,
    audio_bitrate: "128k",
  });

  let chunks = 0;
  for (let off = early; off < media.length; off += opts.chunk) {
    const buf = media.subarray(off, Math.min(off + opts.chunk, media.length));
    await sendBinary(buf);
    bytesSent += buf.length;
    chunks += 1;
    await maybeWsPing();
    if (opts.pingEvery > 0 && chunks % opts.pingEvery === 0) {
      pings += 1;
      const seq = pings;
      const sentAtMs = Date.now();
      outstanding.set(seq, { sentAtMs, sentPerf: performance.now() });
      await sendJson({ type: "video_latency_ping", bot_id: opts.botId, seq, sent_at_ms: sentAtMs });
    }
  }

  const pongsDone = new Promise((resolve) => {
    allPongsSeen = resolve;
  });
  checkPongs();
  await withTimeout(race(pongsDone), opts.timeoutMs, `waiting for ${outstanding.size} video_latency_pong(s)`).catch((err) => {
    if (outstanding.size > 0) {
      throw new Failure(`${err.message}; unanswered seq: ${[...outstanding.keys()].join(", ")}`);
    }
    throw err;
  });
  if (opts.wsPing) {
    const wsPongsDone = new Promise((resolve) => {
      allWsPongsSeen = resolve;
    });
    if (wsOutstanding.size === 0) allWsPongsSeen();
    await withTimeout(race(wsPongsDone), opts.timeoutMs, `waiting for ${wsOutstanding.size} WebSocket pong(s)`);
  }

  if (opts.end) {
    const durationSeconds = Number(((performance.now() - startedPerf) / 1000).toFixed(3));
    await sendJson({ type: "video_stream_end", bot_id: opts.botId, duration_seconds: durationSeconds });
  }

  finishing = true;
  if (opts.close) {
    ws.close(1000);
  } else {
    ws.terminate(); // every send above has been flushed to the socket (awaited callbacks)
  }
  const closeCode = await withTimeout(race(closed), opts.timeoutMs, "waiting for the closing handshake");
  if (opts.close && closeCode !== 1000) {
    throw new Failure(`closing handshake ended with code ${closeCode}, expected 1000`);
  }
  emit({ done: true, close_code: closeCode, bytes_sent: bytesSent, pings, pongs });
}

let opts;
try {
  opts = parseOptions(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`bot.mjs: ${err.message}\n`);
  process.exit(1);
}

run(opts).then(
  () => {
    process.exitCode = 0;
  },
  (err) => {
    const message = err instanceof Failure ? err.message : err.stack || String(err);
    process.stderr.write(`bot.mjs: ${message}\n`);
    process.exitCode = 1;
    if (ws !== null) ws.terminate();
  },
).finally(() => {
  // Do not let a half-open socket or a pending timer keep the process alive.
  setTimeout(() => process.exit(), 200).unref();
});
