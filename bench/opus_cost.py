"""What one caller's Opus work costs the batched server's event loop, on it and in a worker process.

Per 80 ms of one caller the server decodes four 20 ms Ogg/Opus pages and encodes one 80 ms
answer frame.  Inline (``MYCA_MOSHI_CODEC_WORKERS=0``) the event loop's thread does that work;
with workers it only hands the bytes over a pipe (:mod:`myca_ops.voice.codec`, the server's
own code).  Also: whether two threads encode faster than one (they do not when sphn holds the
GIL, which is why the work goes to processes).  Prints a table; CPU is the calling thread's.

    python bench/opus_cost.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from myca_ops.voice.codec import Codec, Streams
from myca_ops.voice.probe import SEND_FRAME, speech_like
from myca_ops.voice.protocol import FRAME_SAMPLES


def caller_pages(seconds: float) -> tuple[list[bytes], list]:
    """A caller's 20 ms pages, and the 80 ms frames an answer would be."""
    import sphn

    audio = speech_like(seconds)
    writer = sphn.OpusStreamWriter(24000)
    pages = [bytes(writer.append_pcm(audio[i : i + SEND_FRAME])) for i in range(0, len(audio), SEND_FRAME)]
    frames = [audio[i : i + FRAME_SAMPLES] for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    return [p for p in pages if p], frames


def inline_ms(pages, frames) -> float:
    """The loop's CPU per 80 ms of one caller when it decodes and encodes itself."""
    streams = Streams()
    start = time.thread_time()
    for page in pages:
        streams.decode(page)
    for frame in frames:
        streams.encode(frame)
    return (time.thread_time() - start) * 1000 / len(frames)


def worker_ms(pages, frames) -> tuple[float, float]:
    """The loop's CPU per 80 ms of one caller when a worker process does the work; and the wall
    time for all of it to come back (the worker's throughput)."""

    async def run() -> tuple[float, float]:
        answers: asyncio.Queue = asyncio.Queue()
        codec = Codec(
            1,
            decoded=lambda session, frames: None,
            encoded=lambda session, opus, text: answers.put_nowait(opus),
            refused=print,
            loop=asyncio.get_running_loop(),
            died=sys.exit,
        )
        sid = codec.open("caller")
        codec.encode(sid, "caller", frames[0], None)  # the worker has started and loaded sphn
        await answers.get()
        wall, start = time.perf_counter(), time.thread_time()
        for page in pages:
            codec.decode(sid, "caller", page)
        for frame in frames:
            codec.encode(sid, "caller", frame, None)
        for _ in frames:
            await answers.get()
        wall = time.perf_counter() - wall
        used = time.thread_time() - start  # handing over, and the answers' callbacks on this loop
        codec.stop()
        return used * 1000 / len(frames), wall * 1000 / len(frames)

    return asyncio.run(run())


def threads_speedup(frames, jobs: int = 8) -> float:
    """Encoding `jobs` streams on two threads instead of one: 2.0 if the GIL were released, 1.0 if not."""

    def encode(_):
        streams = Streams()
        for frame in frames:
            streams.encode(frame)

    def timed(workers: int) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(encode, range(jobs)))
        return time.perf_counter() - start

    return timed(1) / timed(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="seconds of one caller's audio")
    args = parser.parse_args(argv)
    pages, frames = caller_pages(args.seconds)
    inline = min(inline_ms(pages, frames) for _ in range(3))
    worker, wall = min(worker_ms(pages, frames) for _ in range(3))
    speedup = threads_speedup(frames)
    rows = [
        ("event loop CPU per 80 ms of a caller, Opus on the loop", f"{inline:.3f} ms", "1.00x"),
        ("event loop CPU per 80 ms of a caller, Opus in a worker", f"{worker:.3f} ms", f"{worker / inline:.2f}x"),
        ("a worker's wall time per 80 ms of a caller (its throughput)", f"{wall:.3f} ms", ""),
        ("callers one event loop core could code, Opus on the loop", f"{80 / inline:.0f}", ""),
        ("two threads encoding instead of one (2.0: the GIL released)", f"{speedup:.2f}x", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}} {'value':>10} {'ratio':>6}")
    print("-" * (width + 18))
    for what, value, ratio in rows:
        print(f"{what:<{width}} {value:>10} {ratio:>6}")
    print(f"one caller: {len(pages)} pages in, {len(frames)} frames out ({args.seconds:g} s); best of 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
