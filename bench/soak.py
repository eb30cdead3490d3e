"""A soak: callers talk for minutes through a bridge to the batched server, past Moshi's context.

Starts myca-moshi (the batched server, one slot per caller, the lab checkpoint unless --weights)
and a bridge in front of it on this machine, then N callers, each one session for the whole run
(10 minutes is 7500 frames: the 3000-frame context wraps twice).  Prints one row per minute:
underruns heard by all callers in it, the server's tick p50/p99 over it (its /healthz), and the
server's and the bridge's resident memory at its end.  A slot whose state grew, or a server that
slowed down as sessions got long, shows as a trend down the rows.

    python bench/soak.py --callers 1 --minutes 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from myca_ops.lab.callers import rss_mb
from myca_ops.lab.processes import batched_moshi, free_port, process
from myca_ops.voice.health import check
from myca_ops.voice.loadtest import crowd

ROOT = Path(__file__).resolve().parent.parent


def sample(server_pid: int, bridge_pid: int, url: str, every_s: float, rows: list, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(every_s):
        ticks = check(url).get("tick_ms") or {}
        rows.append(
            {
                "minute": round((time.monotonic() - started) / 60, 1),
                "tick_p50": ticks.get("p50"),
                "tick_p99": ticks.get("p99"),
                "server_mb": round(rss_mb(server_pid), 1),
                "bridge_mb": round(rss_mb(bridge_pid), 1),
            }
        )
        print(f"[soak] {rows[-1]}", file=sys.stderr, flush=True)


def table(rows: list[dict], load: dict, minutes: int) -> str:
    underruns = [0] * (minutes + 1)
    for caller in load["callers"]:
        for at in caller.get("underrun_s") or []:
            underruns[min(int(((caller.get("stream_s") or 0) + at) // 60), minutes)] += 1
    head = f"{'minute':>6} {'underruns':>9} {'tick p50':>9} {'tick p99':>9} {'server MB':>10} {'bridge MB':>10}"
    lines = [head, "-" * len(head)]
    for i, row in enumerate(rows):
        lines.append(
            f"{i + 1:>6} {underruns[i]:>9} {row['tick_p50'] or 0:>6.1f} ms {row['tick_p99'] or 0:>6.1f} ms "
            f"{row['server_mb']:>10.1f} {row['bridge_mb']:>10.1f}"
        )
    lines.append(load["cause"] + f"; each caller one session of {minutes} min through the bridge")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--weights", type=Path, default=ROOT / ".lab" / "weights")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        with batched_moshi(args.weights, tmp / "server.log", MYCA_MOSHI_SLOTS=str(args.callers)) as (server, url):
            upstream = url.replace("http", "ws", 1) + "/api/chat"
            settings = {"upstream": upstream, "max_sessions": args.callers, "max_session_s": args.minutes * 60 + 120}
            port = free_port()
            config = tmp / "bridge.json"
            config.write_text(json.dumps({"listen_host": "127.0.0.1", "listen_port": port, **settings}))
            argv = [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(config)]
            with process(argv, port, tmp / "bridge.log") as relay:
                rows: list[dict] = []
                stop = threading.Event()
                sampler = threading.Thread(
                    target=sample, args=(server.pid, relay.pid, url, 60.0, rows, stop), daemon=True
                )
                sampler.start()
                load = crowd(f"ws://127.0.0.1:{port}/api/chat", args.callers, args.minutes * 60, 0.5)
                stop.set()
                sampler.join()
    print(table(rows, load, args.minutes))
    return 0 if load["summary"]["refused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
