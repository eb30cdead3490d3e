"""Latency the bridge adds to each message, against a direct connection and HAProxy.

M sessions each send 12.5 audio messages/s (Ogg pages of four 20 ms Opus frames: 200 to
800 bytes) to an echo upstream speaking Moshi's protocol, four ways in one run: direct,
through the bridge, through HAProxy (Debian's package) as a plain websocket proxy, and
through the bridge relaying to HAProxy (a pool's path: bridge -> moshi_lb -> Moshi).
The round trip of every message is timed on the client (on uvloop, like the bridge and the
echo, so the harness takes as little of the 2 cores as it can); a proxy's added latency is
its percentile minus the direct one.  The four are interleaved in rounds, so the machine's
noise falls on all of them.  Targets with 32 sessions: the bridge adds at most 1 ms at p99,
the bridge and HAProxy together at most 1.5 ms.

    apt-get install haproxy   # once
    python bench/bridge_relay.py --sessions 32 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from myca_ops.lab.processes import bridge, echo_upstream, free_port, process
from myca_ops.voice.stats import summary

RATE_HZ = 12.5
HAPROXY_CFG = """global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend relay
  bind 127.0.0.1:{port}
  default_backend echo
backend echo
  server echo 127.0.0.1:{echo_port}
"""


async def one_session(url: str, seconds: float, offset: float, rng: random.Random) -> list[float]:
    rtts: list[float] = []
    sent_at: dict[int, float] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.receive_bytes(timeout=10)  # handshake
        await ws.receive_bytes(timeout=10)  # the echo's metadata

        async def receive(count: int) -> None:
            for _ in range(count):
                data = await ws.receive_bytes(timeout=10)
                seq = struct.unpack_from("!I", data, 1)[0]
                rtts.append((time.perf_counter() - sent_at.pop(seq)) * 1000)

        count = int(seconds * RATE_HZ)
        receiver = asyncio.create_task(receive(count))
        start = time.perf_counter() + offset
        for seq in range(count):
            await asyncio.sleep(max(0.0, start + seq / RATE_HZ - time.perf_counter()))
            payload = b"\x01" + struct.pack("!I", seq) + rng.randbytes(rng.randint(200, 800) - 5)
            sent_at[seq] = time.perf_counter()
            await ws.send_bytes(payload)
        await receiver
    return rtts


async def run_sessions(url: str, sessions: int, seconds: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    results = await asyncio.gather(
        *(one_session(url, seconds, i / sessions / RATE_HZ, random.Random(rng.random())) for i in range(sessions))
    )
    return [rtt for rtts in results for rtt in rtts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not shutil.which("haproxy"):
        print("haproxy is not installed: apt-get install haproxy", file=sys.stderr)
        return 1
    rtts: dict[str, list[float]] = {"direct": [], "bridge": [], "haproxy": [], "bridge+lb": []}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        echo_url = stack.enter_context(echo_upstream(tmp))
        echo_port = int(echo_url.split(":")[2].split("/")[0])
        bridge_url = stack.enter_context(
            bridge(
                tmp, upstream=echo_url, max_sessions=args.sessions * 2, max_connections_per_address=args.sessions * 2
            )
        )  # every session of the harness comes from 127.0.0.1
        proxy_port = free_port()
        (tmp / "haproxy.cfg").write_text(HAPROXY_CFG.format(port=proxy_port, echo_port=echo_port))
        stack.enter_context(
            process(["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], proxy_port, tmp / "haproxy.log")
        )
        proxy_url = f"ws://127.0.0.1:{proxy_port}/api/chat"
        pooled_url = stack.enter_context(
            bridge(
                tmp, upstream=proxy_url, max_sessions=args.sessions * 2, max_connections_per_address=args.sessions * 2
            )
        )
        urls = {
            "direct": echo_url,
            "bridge": bridge_url.replace("http", "ws") + "/api/chat",
            "haproxy": proxy_url,
            "bridge+lb": pooled_url.replace("http", "ws") + "/api/chat",
        }
        for round_ in range(args.rounds):
            for name, url in urls.items():
                print(
                    f"round {round_ + 1}/{args.rounds}: {name}, {args.sessions} sessions for {args.seconds:g} s",
                    flush=True,
                )
                rtts[name] += uvloop.run(run_sessions(url, args.sessions, args.seconds, seed=round_))
    stats = {name: summary(values, digits=3) for name, values in rtts.items()}
    direct = stats["direct"]
    print(f"\n{args.sessions} sessions x {RATE_HZ} msg/s, {args.rounds} rounds of {args.seconds:g} s; round trip in ms")
    print(f"{'path':<9} {'messages':>8} {'p50':>7} {'p99':>7} {'added p50':>10} {'added p99':>10}")
    for name, s in stats.items():
        added = (
            f"{s['p50'] - direct['p50']:>10.3f} {s['p99'] - direct['p99']:>10.3f}"
            if name != "direct"
            else f"{'-':>10} {'-':>10}"
        )
        print(f"{name:<9} {len(rtts[name]):>8} {s['p50']:>7.3f} {s['p99']:>7.3f} {added}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
