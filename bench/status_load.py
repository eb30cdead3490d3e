"""Requests/s and latency of the MAS's /api/myca/status under load, against a static route.

Starts a private PostgreSQL cluster and the real MAS API (`myca-mas serve`, uvicorn), then
loads it with C concurrent keep-alive connections for S seconds per case, in rounds:
  /docs                  FastAPI's own static page: the yardstick for this machine
  /api/myca/status       the cached path (one request computes, the others reuse it)
  /api/myca/status down  the same with PostgreSQL stopped (503 "down", still cached)
Each case's figures are printed side by side with its ratio to the yardstick of the same
round, since these machines are noisy.

    python bench/status_load.py --connections 32 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from myca_ops.lab.postgres import PostgresCluster
from myca_ops.lab.processes import free_port, process
from myca_ops.voice.stats import summary

CASES = [
    ("static /docs", "/docs", True),
    ("status", "/api/myca/status", True),
    ("status, db down", "/api/myca/status", False),
]


async def load(url: str, connections: int, seconds: float) -> tuple[int, list[float], dict[int, int]]:
    """C clients, each one request at a time on its own connection: (requests, latencies ms, statuses)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))
    return len(latencies), latencies, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="myca-bench-pg-"))
    cluster = PostgresCluster(root)
    try:
        dsn = cluster.create_database("bench")
        port = free_port()
        env = dict(os.environ, MYCA_MAS_DSN=dsn, MYCA_MAS_HOST="127.0.0.1", MYCA_MAS_PORT=str(port))
        server = [sys.executable, "-m", "myca_ops.mas", "serve"]
        base = f"http://127.0.0.1:{port}"
        rows: dict[str, list[tuple[float, list[float], dict]]] = {name: [] for name, _, _ in CASES}
        with process(server, port, root / "mas.log", env):
            for r in range(args.rounds):
                for name, path, db_up in CASES:
                    if not db_up:
                        cluster.stop()
                    try:
                        uvloop.run(load(base + path, args.connections, 1))  # warm-up: connections, caches
                        n, lat, statuses = uvloop.run(load(base + path, args.connections, args.seconds))
                    finally:
                        if not db_up:
                            cluster.start()
                    rows[name].append((n / args.seconds, lat, statuses))
                    print(f"[round {r + 1}/{args.rounds}] {name}: {n / args.seconds:,.0f} req/s", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.connections} connections, {args.seconds:g} s per case, {args.rounds} rounds (median round shown)")
    print(f"{'case':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs /docs':>10}  statuses")
    yard = sorted(rps for rps, _, _ in rows["static /docs"])[args.rounds // 2]
    for name, _, _ in CASES:
        rps, lat, statuses = sorted(rows[name], key=lambda row: row[0])[args.rounds // 2]
        s = summary(lat, 1)
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items()))
        print(f"{name:<18}{rps:>9,.0f}{s['p50']:>9.1f}{s['p99']:>9.1f}{rps / yard:>9.2f}x  {codes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
