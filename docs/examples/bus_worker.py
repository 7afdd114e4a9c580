"""A transcription-style worker on the bus ``serve --nats`` publishes to (docs/bus.md): a
durable pull consumer on every stream's events; at each part's ``verdict`` (the part is final
on the bus) it rebuilds the part from the media subject and "transcribes" it (here: counts
its seconds of audio). Run several with the same name: JetStream gives each event to one of
them, and a worker that was stopped goes on where the consumer was.

    python bus_worker.py nats://127.0.0.1:4222 [--once N]   # N: stop after N parts
"""

import argparse
import asyncio
import io
import json

import av
import nats
from nats.errors import TimeoutError as NoMessages

from meetstream_live.adapters.recording.bus import EVENTS_STREAM, rebuild


def transcribe(recording: bytes) -> float:  # stand-in for a speech-to-text call
    with av.open(io.BytesIO(recording)) as container:
        audio = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(audio)) / audio.rate


async def work(url: str, once: int | None) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    events = await js.pull_subscribe("meetstream.*.*.events", durable="transcriber",
                                     stream=EVENTS_STREAM)
    done = 0
    while once is None or done < once:
        try:
            batch = await events.fetch(16, timeout=5)
        except NoMessages:
            continue
        for msg in batch:
            event = json.loads(msg.data)
            if event["type"] == "verdict":
                out = io.BytesIO()
                await rebuild(js, event["bot_id"], event["speaker"], out,
                              part=event["part"], session=event["session"])
                seconds = await asyncio.to_thread(transcribe, out.getvalue())
                print(f"{event['bot_id']} part {event['part']}: {seconds:.2f} s of audio,"
                      f" {event['verdict']}", flush=True)
                done += 1
            await msg.ack()  # after the work: a worker that dies mid-part gets it again
    await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--once", type=int)
    args = parser.parse_args()
    asyncio.run(work(args.url, args.once))
