"""What refusals cost the bridge: a storm of upgrades told "busy" while a caller holds the only slot.

One caller holds the bridge's only session (an audio page every 0.5 s, everything read) in front
of an echo upstream; N upgrades from many source addresses in 127.0.0.0/8, C at a time, are each
refused with 1013; a client closes its socket once the close frame has arrived, or `--linger`
seconds later without answering the close (a bot that never does). The
bridge's resident memory is read before, at the end of the storm and one minute later; its CPU
time over the storm, per refusal. Target (issue "the public edge, round two"): 50,000 refusals
leave the RSS within 20 MB of where it started, one minute later.

    python bench/refusal_storm.py --refusals 50000 --addresses 200 --concurrency 100 --after 60 [--linger 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from myca_ops.lab.callers import holding_the_slot, refused_upgrade, rss_mb
from myca_ops.lab.processes import echo_upstream, free_port, process


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


async def storm(base: str, refusals: int, addresses: int, concurrency: int, linger: float) -> dict[int, int]:
    host, port = base.removeprefix("http://").split(":")
    codes: dict[int, int] = {}
    gate = asyncio.Semaphore(concurrency)
    lingering: set[asyncio.Task] = set()

    async def close_later(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(linger)
        writer.close()

    async def refused(i: int) -> None:
        async with gate:
            source = f"127.{1 + i % addresses // 250}.{i % addresses % 250}.1"
            try:
                code, writer = await refused_upgrade(host, int(port), source)
                if linger:
                    task = asyncio.create_task(close_later(writer))
                    lingering.add(task)
                    task.add_done_callback(lingering.discard)
                else:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError) as exc:
                code = -1
                print(f"  refusal {i}: {type(exc).__name__}: {exc}")
            codes[code] = codes.get(code, 0) + 1
            if sum(codes.values()) % 5000 == 0:
                print(f"  {sum(codes.values())} refusals", flush=True)

    await asyncio.gather(*(refused(i) for i in range(refusals)))
    await asyncio.gather(*lingering)
    return codes


async def run(args: argparse.Namespace, base: str, pid: int) -> None:
    async with holding_the_slot(base.replace("http", "ws") + "/api/chat"):
        await asyncio.sleep(1)
        before, cpu0, t0 = rss_mb(pid), cpu_s(pid), time.perf_counter()
        codes = await storm(base, args.refusals, args.addresses, args.concurrency, args.linger)
        wall, cpu, end = time.perf_counter() - t0, cpu_s(pid) - cpu0, rss_mb(pid)
        print(f"  waiting {args.after:g} s", flush=True)
        await asyncio.sleep(args.after)
        later = rss_mb(pid)
    print(
        f"\n{'refusals':>9} {'from':>10} {'wall':>8} {'per s':>7} {'CPU/refusal':>12} {'RSS before':>11} "
        f"{'at the end':>11} {f'{args.after:g} s later':>11}  close codes"
    )
    print(
        f"{args.refusals:>9} {args.addresses:>6} addr {wall:>7.1f}s {args.refusals / wall:>7.0f} "
        f"{cpu / args.refusals * 1000:>9.3f} ms {before:>8.1f} MB {end:>8.1f} MB {later:>8.1f} MB  {codes}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refusals", type=int, default=50_000)
    parser.add_argument("--addresses", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--after", type=float, default=60)
    parser.add_argument("--linger", type=float, default=0, help="seconds a refused client keeps its socket")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, echo_upstream(Path(tmp)) as upstream:
        port = free_port()
        config = Path(tmp) / "bridge.json"
        config.write_text(json.dumps({"listen_host": "127.0.0.1", "listen_port": port, "upstream": upstream}))
        argv = [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(config)]
        with process(argv, port, Path(tmp) / "bridge.log") as server:
            asyncio.run(run(args, f"http://127.0.0.1:{port}", server.pid))


if __name__ == "__main__":
    main()
