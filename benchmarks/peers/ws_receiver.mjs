// The receiver a Node.js user would write on the `ws` package, the plain way the MeetStream
// protocol document describes: one file per stream, chunks appended in order, every
// video_latency_ping answered with a video_latency_pong. A peer for the benchmarks only.
//
//   WS_HOST=127.0.0.1 WS_PORT=9876 OUTPUT_DIR=/tmp/rec node ws_receiver.mjs
import fs from "node:fs";
import path from "node:path";
import { WebSocketServer } from "ws";

const host = process.env.WS_HOST ?? "127.0.0.1";
const port = Number.parseInt(process.env.WS_PORT ?? "9876", 10);
const outputDir = process.env.OUTPUT_DIR ?? path.resolve("recordings");
fs.mkdirSync(outputDir, { recursive: true });

const server = new WebSocketServer({ host, port });

server.on("connection", (socket) => {
  let file = null; // the stream's fs.WriteStream while recording
  let botId = "bot";

  const finish = () => {
    if (file !== null) {
      file.end();
      file = null;
    }
  };

  socket.on("message", (data, isBinary) => {
    if (isBinary) {
      if (file !== null) file.write(data);
      return;
    }
    let message;
    try {
      message = JSON.parse(data.toString("utf8"));
    } catch {
      return;
    }
    switch (message.type) {
      case "video_stream_start":
        finish();
        botId = String(message.bot_id ?? "unknown");
        file = fs.createWriteStream(path.join(outputDir, `${botId}_${Date.now()}.mp4`));
        break;
      case "video_latency_ping":
        socket.send(JSON.stringify({
          type: "video_latency_pong",
          seq: message.seq,
          sent_at_ms: message.sent_at_ms,
          server_received_at_ms: Date.now(),
          bot_id: message.bot_id ?? botId,
        }));
        break;
      case "video_stream_end":
        finish();
        break;
      default:
        break;
    }
  });
  socket.on("close", finish);
  socket.on("error", finish);
});

server.on("listening", () => console.log(`listening on ws://${host}:${port}/`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
