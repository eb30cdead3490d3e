"""How many conversations this host carries in real time, measured on the engine that serves them.

The batched server steps every slot together, one tick per 80 ms frame
(:meth:`~myca_ops.voice.engine.SlotEngine.tick`: ``mimi.encode`` -> ``lm_gen.step`` ->
``mimi.decode``).  A host carries N conversations when the tick with N slots talking fits the
80 ms budget.  This loads the service's model as the server does (:mod:`myca_ops.voice.model`:
its weights, dtype, device, sampling and mode), makes the engine with the service's slot count,
warms it up as the server does, and times ticks with every slot talking (the worst case), per
stage (CUDA events on a GPU, perf_counter on CPU).  Then one slot alone (a single session), and,
when the configured slots do not fit, fewer, until the largest count that fits is found.

The batched server measures itself (``--served``, :func:`from_server`: its ``POST /api/measure``
times the served engine's ticks with every free slot talking beside its callers): no second copy
of the model, so it runs on a GPU the service fills (a 24 GB card), and nothing loads.  Otherwise
it runs in a process of its own beside the service: a second copy of the model and its slots, so
on a GPU it needs that memory free (else the module's ``stop_service``); moshi.server
(``moshi_server: upstream``) and ``--compare`` are measured so.  moshi reads ``NO_TORCH_COMPILE`` at
import, so each mode is measured in its own process:

    python -m myca_ops.voice.latency --env-file /etc/moshi/moshi.env --served   # the running batched server
    python -m myca_ops.voice.latency --env-file /etc/moshi/moshi.env            # a second copy, the service's mode
    python -m myca_ops.voice.latency --env-file /etc/moshi/moshi.env --compare  # and eager, graphs, compile+graphs
    python -m myca_ops.voice.latency --random full --device cuda --slots 64     # the 7B shapes, random weights
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from myca_ops.envfile import read_env_file
from myca_ops.voice import gpu as gpu_health
from myca_ops.voice import model
from myca_ops.voice.engine import STAGES
from myca_ops.voice.protocol import FRAME_BUDGET_MS, FRAME_SAMPLES
from myca_ops.voice.stats import summary

COMPARE_MODES = ("eager", "graphs", "compile+graphs")
MODE_SWITCHES = {  # moshi's switches per mode
    "eager": {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"},
    "graphs": {"NO_TORCH_COMPILE": "1"},
    "compile+graphs": {},
    "compile": {"NO_CUDA_GRAPH": "1"},
    "cpu": {"NO_TORCH_COMPILE": "1"},
}
FRAME_LOG = re.compile(r"frame handled in\s+([0-9.]+)\s*ms")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_service_log(text: str) -> list[float]:
    """moshi.server's own 'frame handled in X ms' figures (its log is coloured)."""
    return [float(m.group(1)) for m in FRAME_LOG.finditer(ANSI.sub("", text))]


# --- Timing the engine ---------------------------------------------------------------------------
def time_ticks(engine, talking: int, ticks: int, warmup: int) -> dict[str, list[float]]:
    """ms per stage and in total for `ticks` ticks (after `warmup`) with slots 0..talking-1 each
    sending a new frame of speech-like audio every tick, all starting a session at the first."""
    from myca_ops.voice.probe import speech_like

    audio = speech_like((ticks + warmup) * FRAME_SAMPLES / 24000 + 0.1)
    times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    slots = range(talking)
    for i in range(ticks + warmup):
        frame = audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        _, stages = engine.tick(dict.fromkeys(slots, frame), set(slots) if i == 0 else set())
        if i >= warmup:
            for stage, ms in (*stages.items(), ("total", sum(stages.values()))):
                times[stage].append(ms)
    engine.reset(list(slots))
    return times


def measure_slots(loaded: model.Loaded, slots: int, ticks: int, warmup: int) -> dict:
    """An engine of `slots` slots, all talking: the tick per stage and each slot's memory (GPU)."""
    import torch

    cuda = loaded.device.startswith("cuda")
    print(f"[latency] {slots} slot(s), {ticks} ticks", file=sys.stderr, flush=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated() if cuda else 0
    engine = loaded.engine(slots)
    times = time_ticks(engine, slots, ticks, warmup)
    row: dict[str, Any] = {"slots": slots, "stages": {stage: summary(values) for stage, values in times.items()}}
    row["samples_ms"] = [round(ms, 2) for ms in times["total"]]  # the verify report draws them
    row["slot_mib"] = round((torch.cuda.memory_allocated() - before) / 2**20 / slots, 1) if cuda else None
    engine.close()
    p99 = row["stages"]["total"]["p99"]
    row["realtime"] = p99 is not None and p99 <= FRAME_BUDGET_MS
    row["realtime_factor"] = None if p99 is None else round(p99 / FRAME_BUDGET_MS, 3)
    return row


def find_capacity(measure, slots: int) -> tuple[int, list[dict]]:
    """The largest slot count up to `slots` whose tick fits, by `measure(n) -> row`: first `slots`
    (the service's), then 1 (a single session), then halving the gap between what fits and what does not."""
    rows = {slots: measure(slots)}
    if slots > 1:
        rows[1] = measure(1)
    fits, over = (slots, slots + 1) if rows[slots]["realtime"] else ((1, slots) if rows[1]["realtime"] else (0, 1))
    while over - fits > 1:
        middle = (fits + over) // 2
        rows[middle] = measure(middle)
        fits, over = (middle, over) if rows[middle]["realtime"] else (fits, middle)
    return fits, list(rows.values())


def verdict(
    capacity: int, rows: list[dict], decision: model.Decision, device: str, gpu: str | None
) -> tuple[bool, str]:
    """Real-time when the configured slots (the first row) fit; the cause names what to change."""
    head = rows[0]
    slots, p99 = head["slots"], head["stages"]["total"]["p99"]
    if p99 is None:
        return False, "no tick was measured"
    at = {row["slots"]: row["stages"]["total"]["p99"] for row in rows}
    figures = f"tick p99 {p99:.1f} ms at {slots} slot{'s' if slots > 1 else ''}, budget {FRAME_BUDGET_MS:.0f} ms"
    if capacity >= slots:
        note = "; CPU only: fine for this checkpoint, the 7B model needs a GPU" if not device.startswith("cuda") else ""
        return (
            True,
            f"carries {slots} conversation{'s' if slots > 1 else ''} in real time ({figures}) in mode {decision.mode}{note}",
        )
    if capacity:
        fit = f"{capacity} fit (tick p99 {at[capacity]:.1f} ms): set moshi_slots: {capacity}"
    elif 1 in at:
        fit = f"not even one fits (tick p99 {at[1]:.1f} ms at 1 slot)"
    else:  # the served engine, measured at its own slot count only
        fit = (
            "fewer slots tick faster: lower moshi_slots and verify again (stop_service: true finds the count that fits)"
        )
    said = f"carries {capacity} of {slots} conversations in real time ({figures}); {fit}"
    if not device.startswith("cuda"):
        return False, f"no CUDA device (CPU): {said}"
    if decision.limit == "forced":
        return False, f"slow mode forced ({decision.reason}): {said}; remove the force to turn CUDA graphs on"
    if decision.limit in ("no_triton", "triton_fails"):
        return False, f"Triton missing ({decision.reason}): {said} with CUDA graphs only"
    return False, f"over budget on this GPU ({gpu or 'unknown'}) in mode {decision.mode}: {said}"


# --- One measurement, in the process whose switches are set for its mode ----------------------------------
def check_gpu_memory(device: str, weights: Path | None) -> None:
    """Refuse to load when the GPU lacks room, rather than crash the service that holds it."""
    import torch

    if not device.startswith("cuda"):
        return
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    need = int(sum(p.stat().st_size for p in weights.iterdir() if p.is_file()) * 1.3) if weights else 0
    if free < need:
        raise MemoryError(
            f"{free // 2**20} MiB free on {device}, about {need // 2**20} MiB needed for a second copy of the "
            "model beside the running service: measure with stop_service: true"
        )


def configured_slots(env: dict[str, str], loaded: model.Loaded) -> tuple[int, str]:
    """The slot count the service runs with, and where it comes from."""
    if env.get("MYCA_MOSHI_SERVER", "batched") == "upstream":
        return 1, "moshi.server serves one conversation"
    from myca_ops.voice.settings import Settings  # the server's own parser of its variables

    configured = Settings.from_env(env, "unknown").slots
    if configured:
        return configured, "moshi_slots"
    if not loaded.device.startswith("cuda"):
        return 1, "moshi_slots 0 on CPU"
    from myca_ops.voice import health

    served = health.check(health.service_url(env)).get("slots_total")
    if served:
        return served, "the running service's /healthz"
    slots, how = loaded.slots_for_gpu()
    return slots, f"from the GPU's free memory, as the service counts them ({how})"


def measure(
    env: dict[str, str], mode: str, ticks: int, warmup: int, random_size: str | None, slots: int | None
) -> dict:
    """The capacity report for `mode` in this process (moshi's switches are already set for it)."""
    model.set_cpu_threads(env)  # as the service does, before torch loads
    import torch

    decision = model.decide_from_env(env)
    if mode != decision.mode:  # one of --compare's other modes
        limit = "forced" if mode in ("eager", "compile") else decision.limit if mode == "graphs" else None
        decision = model.Decision(mode, "compared with the service's mode", limit, MODE_SWITCHES[mode])
    check_gpu_memory(model.device(env), None if random_size else model.weights_dir(env))
    started = time.perf_counter()
    loaded = model.load(env, random_size)
    load_s = round(time.perf_counter() - started, 1)
    count, source = (slots, "--slots") if slots else configured_slots(env, loaded)
    with gpu_health.Sampler() as gpu_state:  # the GPU's peaks while it is measured (None: no GPU)
        capacity, rows = find_capacity(lambda n: measure_slots(loaded, n, ticks, warmup), count)
    cuda = loaded.device.startswith("cuda")
    gpu = torch.cuda.get_device_name(torch.device(loaded.device)) if cuda else None
    realtime, cause = verdict(capacity, rows, decision, loaded.device, gpu)
    for row in rows:
        row["mode"] = mode
        row["label"] = f"{mode}, {row['slots']} slot{'s' if row['slots'] > 1 else ''}"
    return {
        "budget_ms": FRAME_BUDGET_MS,
        "mode": mode,
        "mode_reason": decision.reason,
        "mode_limit": decision.limit,
        "device": loaded.device,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "slots": count,
        "slots_source": source,
        "capacity": capacity,
        "realtime": realtime,
        "cause": cause,
        "load_s": load_s,
        "gpu_name": gpu,
        "gpu_state": gpu_state.summary(),
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "results": rows,
    }


def from_server(env: dict[str, str], ticks: int, warmup: int, timeout: float) -> dict:
    """The running batched server's own measurement (``POST /api/measure``): its served engine,
    every free slot talking beside its callers, no second copy of the model.  While another
    measurement runs, the live tick figures of its ``/healthz`` (the last minute's callers)."""
    from myca_ops.voice import health

    base = health.service_url(env)
    decision = model.decide_from_env(env)
    # The service's own certificate, on loopback: nothing to verify it against here.
    context = ssl._create_unverified_context() if base.startswith("https") else None
    asked = urllib.request.Request(f"{base}/api/measure?ticks={ticks}&warmup={warmup}", data=b"", method="POST")
    print(f"[latency] the service at {base} times {ticks} of its own ticks", file=sys.stderr, flush=True)
    with gpu_health.Sampler() as gpu_state:
        try:
            with urllib.request.urlopen(asked, timeout=timeout, context=context) as reply:
                served = json.loads(reply.read(health.MAX_BODY_BYTES * 16))
        except urllib.error.HTTPError as exc:
            said = exc.read(health.MAX_BODY_BYTES).decode(errors="replace")
            if exc.code == 404:
                said = "not the batched server (moshi.server measures with a second copy: source measure)"
            if exc.code != 409:
                raise ValueError(f"{base}/api/measure answered {exc.code}: {said[:300]}") from None
            served = live_figures(health.check(base, context=context))
        except OSError as exc:
            raise ValueError(
                f"the service does not answer at {base} ({getattr(exc, 'reason', exc)}): "
                "start it (systemctl status moshi; supervisorctl status moshi without systemd; or the container's log) "
                "and verify again"
            ) from None
    slots, callers = served["slots"], served["callers"]
    row = {
        "slots": slots,
        "mode": served["mode"],
        "label": f"{served['mode']}, {slots} slot{'s' if slots > 1 else ''} served",
        "stages": served["stages"],
        "samples_ms": served["samples_ms"],
        "slot_mib": None if served.get("slot_bytes") is None else round(served["slot_bytes"] / 2**20, 1),
        "realtime": served["realtime"],
        "realtime_factor": round(served["stages"]["total"]["p99"] / FRAME_BUDGET_MS, 3),
    }
    realtime, cause = verdict(slots if served["realtime"] else 0, [row], decision, served["device"], served["gpu_name"])
    said = (
        served.get("source") or f"measured by the service itself beside {callers} caller{'' if callers == 1 else 's'}"
    )
    return {
        "budget_ms": FRAME_BUDGET_MS,
        "mode": served["mode"],
        "mode_reason": decision.reason,
        "mode_limit": decision.limit,
        "device": served["device"],
        "slots": slots,
        "slots_source": "the running service",
        "capacity": slots if realtime else 0,
        "realtime": realtime,
        "cause": f"{cause}; {said}",
        "callers": callers,
        "gpu_name": served["gpu_name"],
        "gpu_state": gpu_state.summary(),
        "torch_version": served["torch"],
        "results": [row],
    }


def live_figures(served: dict) -> dict:
    """A measurement's figures from a batched server's /healthz: its callers' ticks of the last minute."""
    tick = served.get("tick_ms") or {}
    if not tick.get("count"):
        raise ValueError(
            f"{served['url']}: another measurement is running and no caller talked in the last minute: verify again later"
        )
    total = {"count": tick["count"], "p50": tick["p50"], "p95": None, "p99": tick["p99"], "max": None}
    return {
        **served,
        "slots": served["slots_total"],
        "callers": served["slots_used"],
        "stages": {"total": total},
        "samples_ms": [],
        "realtime": tick["p99"] <= served["budget_ms"],
        "gpu_name": None,
        "torch": None,
        "source": f"another measurement was running: its callers' ticks of the last {tick['window_s']:.0f} s (/healthz)",
    }


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def run_mode(
    mode: str, args: list[str], timeout: float, program: tuple[str, ...] = ("-m", "myca_ops.voice.latency")
) -> dict:
    """Measure one mode in a fresh interpreter with exactly that mode's switches set: `program` runs
    with ``--one-mode MODE`` and prints one JSON line; its stderr (progress, a traceback) is ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_TORCH_COMPILE", "NO_CUDA_GRAPH")}
    env.update(MODE_SWITCHES[mode])
    cmd = [sys.executable, *program, "--one-mode", mode, *args]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {timeout:.0f}s"}
    sys.stderr.write(out.stderr)
    lines = out.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None  # the child's result, or its own error
    except ValueError:
        result = None
    if result is None or (out.returncode != 0 and "error" not in result):
        said = out.stderr.strip().splitlines() or [f"exit {out.returncode}, no result"]
        return {"mode": mode, "error": said[-1]}
    return {"mode": mode, **result} if "error" in result else result


def from_service_log(env: dict[str, str], unit: str, since: str) -> dict:
    """moshi.server's own 'frame handled in' figures over a window of its journal (moshi_server: upstream)."""
    journal = subprocess.run(
        ["journalctl", "-u", unit, "--since", since, "-o", "cat", "--no-pager"], capture_output=True, text=True
    )
    if journal.returncode != 0:
        raise ValueError(f"cannot read the journal of {unit}: {journal.stderr.strip()}")
    decision = model.decide_from_env(env)
    frames = parse_service_log(journal.stdout)
    total = summary(frames)
    row: dict[str, Any] = {
        "slots": 1,
        "mode": decision.mode,
        "label": f"{decision.mode}, journal",
        "stages": {"total": total},
    }
    row["samples_ms"] = [round(ms, 2) for ms in frames]
    p99 = total["p99"]
    row["realtime"] = p99 is not None and p99 <= FRAME_BUDGET_MS
    row["realtime_factor"] = None if p99 is None else round(p99 / FRAME_BUDGET_MS, 3)
    if frames:
        realtime, cause = verdict(int(row["realtime"]), [row], decision, model.device(env), None)
    else:
        realtime, cause = False, f"no 'frame handled' lines in the journal of {unit} since {since}: no session ran"
    return {
        "budget_ms": FRAME_BUDGET_MS,
        "mode": decision.mode,
        "mode_reason": decision.reason,
        "mode_limit": decision.limit,
        "device": model.device(env),
        "slots": 1,
        "slots_source": f"journal of {unit} since {since}",
        "capacity": int(realtime),
        "realtime": realtime,
        "cause": cause,
        "results": [row],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, help="the service's environment (mode, device, weights, slots)")
    parser.add_argument("--random", choices=("small", "full"), help="random weights with these shapes instead")
    parser.add_argument("--device", help="overrides the env file's device")
    parser.add_argument("--slots", type=int, help="overrides the service's slot count")
    parser.add_argument("--compare", action="store_true", help="also eager, graphs and compile+graphs (a GPU)")
    parser.add_argument("--frames", type=int, default=100, help="ticks timed per slot count")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mode")
    parser.add_argument(
        "--service-log",
        metavar="SINCE",
        help="no model load: moshi.server's own frame times from its journal since SINCE ('-15min')",
    )
    parser.add_argument("--unit", default="moshi", help="systemd unit for --service-log")
    parser.add_argument(
        "--served", action="store_true", help="no model load: the running batched server measures itself"
    )
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    env = read_env_file(args.env_file) if args.env_file else {}
    if args.device:
        env["MYCA_MOSHI_DEVICE"] = args.device
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    try:
        if args.service_log:
            print(json.dumps(from_service_log(env, args.unit, args.service_log)))
            return 0
        if args.served:
            print(json.dumps(from_server(env, args.frames, args.warmup, args.timeout)))
            return 0
        if args.one_mode:  # the child: moshi's switches are already in the environment
            print(json.dumps(measure(env, args.one_mode, args.frames, args.warmup, args.random, args.slots)))
            return 0
        if not args.random:
            model.resolve_weights(model.weights_dir(env))  # fail here, with the file's name, not in each child
        service = model.decide_from_env(env).mode
        modes = (
            [service, *(m for m in COMPARE_MODES if m != service)] if args.compare and service != "cpu" else [service]
        )
        child = ["--frames", str(args.frames), "--warmup", str(args.warmup)]
        child += ["--env-file", str(args.env_file)] if args.env_file else []
        child += ["--device", args.device] if args.device else []
        child += ["--random", args.random] if args.random else []
        child += ["--slots", str(args.slots)] if args.slots else []
        reports = [run_mode(m, child, args.timeout) for m in modes]
        head = reports[0]
        if "error" in head:
            raise ValueError(f"measurement failed: {head['error']}")
        if len(reports) > 1:
            head["compare"] = [
                {k: r.get(k) for k in ("mode", "capacity", "realtime", "cause", "error")} for r in reports
            ]
            head["results"] = [row for r in reports for row in r.get("results", [])]
        print(json.dumps(head))
    except (ValueError, FileNotFoundError, MemoryError) as exc:
        print(json.dumps({"error": str(exc), "realtime": False, "cause": str(exc)}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
