"""The batched server's CPU per caller, variants side by side in one run.

Each variant starts the batched server on this machine (the lab checkpoint, one slot per caller,
with the variant's extra environment), lets N callers talk for S seconds through it (one process
each), and reads the server's CPU time (user + system, all its threads and its Opus worker
processes) over the talk from /proc, and its event loop's share (the main thread's).
The variants alternate over rounds, so the machine's noise falls on all of them.  Prints per
variant: CPU per caller (% of one core), the tick p50/p99 the server saw (its /healthz) and the
callers real-time.

    python bench/server_cpu.py --callers 2 --seconds 20 --rounds 2 \\
        --variant today= --variant passive=OMP_WAIT_POLICY=PASSIVE
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from myca_ops.lab.processes import batched_moshi
from myca_ops.voice.health import check
from myca_ops.voice.loadtest import crowd

ROOT = Path(__file__).resolve().parent.parent
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(stat: str) -> float:
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def usage(pid: int) -> dict[str, float]:
    """CPU seconds so far: the whole server with its Opus workers, and its event loop (the main thread)."""
    workers = sum(cpu_s(f"/proc/{child}/stat") for child in children(pid))
    return {"total": cpu_s(f"/proc/{pid}/stat") + workers, "loop": cpu_s(f"/proc/{pid}/task/{pid}/stat")}


def one_run(weights: Path, extra: dict[str, str], callers: int, seconds: float, tmp: Path) -> dict:
    with batched_moshi(weights, tmp / "server.log", MYCA_MOSHI_SLOTS=str(callers), **extra) as (server, url):
        time.sleep(3)  # past the start's own work
        before, t0 = usage(server.pid), time.monotonic()
        load = crowd(url.replace("http", "ws", 1) + "/api/chat", callers, seconds, 0.1)
        after, wall = usage(server.pid), time.monotonic() - t0
        ticks = check(url).get("tick_ms") or {}
    return {
        "cpu_pct_per_caller": 100 * (after["total"] - before["total"]) / wall / callers,
        "loop_pct_per_caller": 100 * (after["loop"] - before["loop"]) / wall / callers,
        "tick_p50": ticks.get("p50"),
        "tick_p99": ticks.get("p99"),
        "realtime": load["summary"]["real-time"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=ROOT / ".lab" / "weights")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=[VAR=VALUE,...]", help="the server's extra environment"
    )
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant or ["today="]:
        name, _, assignments = spec.partition("=")
        variants[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="server-cpu-") as tmp:
        for round_ in range(args.rounds):
            for name, extra in variants.items():
                print(f"[server_cpu] round {round_ + 1}: {name}", file=sys.stderr, flush=True)
                runs[name].append(one_run(args.weights, extra, args.callers, args.seconds, Path(tmp)))
    head = (
        f"{'variant':<12} {'CPU/caller':>10} {'vs first':>8} {'loop/caller':>11} {'vs first':>8} "
        f"{'tick p50':>9} {'tick p99':>9} {'real-time':>9}"
    )
    lines, first, first_loop = [head, "-" * len(head)], None, None
    for name, results in runs.items():
        cpu = statistics.median(r["cpu_pct_per_caller"] for r in results)
        loop = statistics.median(r["loop_pct_per_caller"] for r in results)
        first, first_loop = first or cpu, first_loop or loop
        p50 = statistics.median(r["tick_p50"] or 0 for r in results)
        p99 = statistics.median(r["tick_p99"] or 0 for r in results)
        realtime = sum(r["realtime"] for r in results)
        lines.append(
            f"{name:<12} {cpu:>9.1f}% {cpu / first:>7.2f}x {loop:>10.1f}% {loop / first_loop:>7.2f}x "
            f"{p50:>6.1f} ms {p99:>6.1f} ms "
            f"{realtime:>4}/{args.callers * args.rounds}"
        )
    lines.append(
        f"medians of {args.rounds} rounds; {args.callers} callers of {args.seconds:g} s each, one slot per caller; "
        "CPU: the server and its Opus workers; loop: its event loop's thread alone"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
