"""A load test: many callers at once, each a :mod:`myca_ops.voice.probe` in a process of its own
(one process decoding many Opus streams falls behind its own clock and reports the server late:
docs/PERFORMANCE.md), starting ``--stagger`` seconds after the one before, and a summary: served
in real time, served late, cut off, refused, or "caller lagged" (the caller fell behind its own
clock, so the summary gives the server's own tick figures instead).

    python -m myca_ops.voice.loadtest --url ws://127.0.0.1:8999/api/chat --callers 8

Spread over hosts, each runs a share (``--first``, ``--start-at``) and :func:`merge` joins them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from myca_ops.voice.probe import add_caller_options, lagged, probe, verdict

OUTCOMES = ("real-time", "late", "cut off", "refused", "caller lagged")
MOMENTS = ("start_s", "handshake_s", "stream_s", "first_audio_s", "end_s")  # a load test's one clock


def _crowd_caller(ready, results, i: int, url: str, seconds: float, stagger_s: float, start_at, kwargs: dict) -> None:
    """One load-test caller, in a process of its own: it starts `i * stagger_s` after every caller
    is ready (imports done), or after `start_at` (a wall-clock time every host of a load test
    shares), so the callers keep their order however slowly processes start."""
    try:
        import aiohttp  # noqa: F401  (imported before the start line, not on the caller's clock)
        import numpy  # noqa: F401
        import sphn  # noqa: F401

        ready.wait(timeout=120)
        start = (time.time() if start_at is None else start_at) + i * stagger_s
        time.sleep(max(0.0, start - time.time()))
        result = asyncio.run(probe(url, seconds, **kwargs))
        result["caller"] = i
    except Exception as exc:  # a caller that breaks is a result, never a hung load test
        result = {"url": url, "caller": i, "error": f"caller {i} failed: {type(exc).__name__}: {exc}"}
    results.put(result)


def on_one_clock(results, epoch: float | None = None) -> float:
    """Each caller's moments as seconds since `epoch` (default: the first caller's connect):
    ``start_s`` (it connected), ``handshake_s``, ``first_audio_s``, ``end_s`` (None when it did not
    get there).  The moments are wall-clock times, which the callers' processes share, and hosts
    too when their clocks are synchronised (NTP).  Returns the epoch."""
    clocks = [r.pop("clock", None) or {} for r in results]
    if epoch is None:
        epoch = min((c["connect"] for c in clocks if "connect" in c), default=0.0)
    for result, clock in zip(results, clocks, strict=True):

        def since(at):
            return None if at is None else round(at - epoch, 3)

        handshake = clock["connect"] + result["handshake_ms"] / 1000 if result.get("handshake_ms") is not None else None
        stream = clock.get("stream")
        first_audio = stream + result["first_audio_ms"] / 1000 if stream and result.get("first_audio_ms") else None
        result.update(
            start_s=since(clock.get("connect")),
            handshake_s=since(handshake),
            stream_s=since(stream),
            first_audio_s=since(first_audio),
            end_s=since(clock.get("end")),
        )
    return epoch


def crowd(
    url: str,
    callers: int,
    seconds: float,
    stagger_s: float = 0.5,
    first: int = 0,
    start_at: float | None = None,
    **kwargs,
) -> dict:
    """`callers` probes at once, each starting `stagger_s` after the one before: who was served in
    real time, late, cut off (the server closed mid-talk) or refused (no handshake).

    Each caller runs in a process of its own: one process decoding many Opus streams falls
    behind its own clock and reports the server late (measured: docs/PERFORMANCE.md).  Spread
    over hosts, each host runs a share: callers numbered from `first`, caller i starting at
    `start_at` (a wall-clock time all hosts share) plus i * `stagger_s`; :func:`merge` joins them."""
    import multiprocessing
    import queue

    ready = multiprocessing.Barrier(callers)
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=_crowd_caller, args=(ready, results, i, url, seconds, stagger_s, start_at, kwargs), daemon=True
        )
        for i in range(first, first + callers)
    ]
    for proc in procs:
        proc.start()
    late_start = max(0.0, (start_at or time.time()) - time.time()) + (first + callers) * stagger_s
    deadline = time.monotonic() + 120 + late_start + seconds * 3
    collected: dict[int, dict] = {}
    while len(collected) < callers and time.monotonic() < deadline:
        finished = not any(proc.is_alive() for proc in procs)
        try:
            result = results.get(timeout=1)
        except queue.Empty:
            if finished:  # every process has ended and nothing more came
                break
            continue
        collected[result["caller"]] = result
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    numbers = range(first, first + callers)
    for i in numbers:  # a caller process that died or hung (killed above)
        collected.setdefault(i, {"url": url, "caller": i, "error": f"caller {i} gave no result"})
    epoch = on_one_clock(collected.values())
    return {**summarise(url, [collected[i] for i in numbers]), "epoch": epoch}


def merge(loads: list[dict]) -> dict:
    """One load test from the shares several hosts ran (:func:`crowd` with `first` and `start_at`):
    the callers in order, their moments on one clock (the earliest share's epoch), one summary."""
    if not loads:
        raise ValueError("no load test shares to merge")
    epoch = min(load["epoch"] for load in loads)
    callers = []
    for load in loads:
        shift = load["epoch"] - epoch
        for caller in load["callers"]:
            moments = {k: round(caller[k] + shift, 3) for k in MOMENTS if caller.get(k) is not None}
            callers.append({**caller, **moments})
    callers.sort(key=lambda caller: caller["caller"])
    return {**summarise(loads[0]["url"], callers), "epoch": epoch, "shares": len(loads)}


def summarise(url: str, results: list[dict], health=None) -> dict:
    """A load test's outcome per caller and in all.  When some callers lagged on their own machine,
    the cause gives the server's own tick figures (`health`: :func:`myca_ops.voice.health.check`)."""
    for result in results:
        if "handshake_ms" not in result:
            result.update(outcome="refused", realtime=False, cause=result["error"])
            continue
        result["realtime"], result["cause"] = verdict(result)
        if result.get("close_code") is not None:
            result["outcome"] = "cut off"
        elif lagged(result):
            result["outcome"] = "caller lagged"
        else:
            result["outcome"] = "real-time" if result["realtime"] else "late"
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    cause = (
        ", ".join(f"{n} {o}" for o, n in counts.items() if n or o != "caller lagged") + f" of {len(results)} callers"
    )
    server = None
    if counts["caller lagged"]:  # the server's own figures, since some callers' are not
        if health is None:
            from myca_ops.voice.health import check as health
        server = health(url)
        ticks = server.get("tick_ms") or {}
        cause += f"; {counts['caller lagged']} caller(s) lagged on this machine, so the server's own figures: " + (
            f"tick p99 {ticks['p99']} ms over its last {ticks['count']} ticks (budget {server.get('budget_ms')} ms)"
            if ticks.get("p99") is not None
            else f"none ({server['status']}: {server.get('error') or 'no tick figures'})"
        )
    return {
        "url": url,
        "callers": results,
        "summary": counts,
        "error": None,
        "realtime": counts["real-time"] == len(results),
        "cause": cause,
        "server_health": server,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_caller_options(parser)
    parser.add_argument("--callers", type=int, default=1, help="this many callers at once")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between the callers' starts")
    parser.add_argument("--first", type=int, default=0, help="a share: the number of its first caller")
    parser.add_argument("--start-at", type=float, help="a share: when caller 0 starts (wall clock, seconds since 1970)")
    args = parser.parse_args(argv)
    options = {
        "cafile": args.cafile,
        "verify_tls": not args.insecure,
        "token": os.environ.get("MYCA_PROBE_TOKEN") or None,  # argv is visible to every user
        "timing_only": args.timing_only,
    }
    print(json.dumps(crowd(args.url, args.callers, args.seconds, args.stagger, args.first, args.start_at, **options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
