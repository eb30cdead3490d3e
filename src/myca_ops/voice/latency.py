"""Moshi's per-frame step latency, measured the way the server runs it, and its verdict.

One 80 ms frame (1920 samples at 24 kHz): ``mimi.encode`` -> ``lm_gen.step`` ->
``mimi.decode``, timed per stage (CUDA events on a GPU, perf_counter on CPU).  moshi reads
``NO_TORCH_COMPILE`` at import, so each mode runs in its own process:

    python -m myca_ops.voice.latency --env-file /etc/moshi/moshi.env            # the service's mode
    python -m myca_ops.voice.latency --env-file /etc/moshi/moshi.env --compare  # eager, graphs, compile+graphs
    python -m myca_ops.voice.latency --random full --device cuda --mode graphs   # the 7B shapes, random bf16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from myca_ops.envfile import read_env_file
from myca_ops.voice.engine import StageClock
from myca_ops.voice.protocol import FRAME_BUDGET_MS, FRAME_SAMPLES
from myca_ops.voice.stats import summary

STAGES = ("encode", "lm_step", "decode", "total")
MODE_ENV = {  # moshi's switches per mode; "cpu" is what the launcher sets on CPU
    "eager": {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"},
    "graphs": {"NO_TORCH_COMPILE": "1"},
    "compile+graphs": {},
    "cpu": {"NO_TORCH_COMPILE": "1"},
}
COMPARE_MODES = ("eager", "graphs", "compile+graphs")
FRAME_LOG = re.compile(r"frame handled in\s+([0-9.]+)\s*ms")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SMALL_LM = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 2,
    "depformer_dim": 128,
    "depformer_num_heads": 1,
    "depformer_num_layers": 2,
    "depformer_dim_feedforward": 528,
}


def parse_service_log(text: str) -> list[float]:
    """The server's own 'frame handled in X ms' figures (its log is coloured)."""
    return [float(m.group(1)) for m in FRAME_LOG.finditer(ANSI.sub("", text))]


def verdict(
    total_p99: float | None, device: str, mode: str, mode_reason: str, gpu_name: str | None
) -> tuple[bool, str]:
    """Real-time when the p99 frame fits the 80 ms budget.  The cause names what to change."""
    if total_p99 is None:
        return False, "no frame was measured"
    figures = f"p99 {total_p99:.1f} ms per frame against a {FRAME_BUDGET_MS:.0f} ms budget"
    if total_p99 <= FRAME_BUDGET_MS:
        note = "; CPU only: fine for this checkpoint, the 7B model needs a GPU" if not device.startswith("cuda") else ""
        return True, f"{figures} in mode {mode}{note}"
    if not device.startswith("cuda"):
        return False, f"no CUDA device: {figures} on CPU"
    if mode in ("eager", "compile"):
        return False, f"slow mode forced ({mode_reason}): {figures}; remove the force to turn CUDA graphs on"
    if mode == "graphs" and "Triton" in mode_reason:
        return False, f"Triton missing ({mode_reason}): {figures} with CUDA graphs only"
    return False, f"over budget on this GPU ({gpu_name or 'unknown'}): {figures} in mode {mode}"


def _checkpoint_models(weights_dir: Path, device: str, dtype):
    from moshi.models import loaders

    from myca_ops.voice.launcher import config_or_default, resolve_weights

    paths = resolve_weights(weights_dir)
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/unused", paths["moshi"], paths["mimi"], paths["tokenizer"], config_path=config_or_default(paths)
    )
    return info.get_mimi(device=device), info.get_moshi(device=device, dtype=dtype), info.lm_gen_config


def _random_models(size: str, device: str, dtype):
    """Random weights with the real shapes: 'full' is the 7B LM, 'small' a tiny one; Mimi is always full."""
    from moshi.models import loaders

    overrides = {} if size == "full" else dict(SMALL_LM)
    mimi = loaders.get_mimi(None, device=device)
    lm = loaders.get_moshi_lm(None, device=device, dtype=dtype, lm_kwargs_overrides=overrides)
    return mimi, lm, {}


def check_gpu_memory(device: str, weights_dir: Path | None) -> None:
    """Refuse to load when the GPU lacks room, rather than crash the service that holds it."""
    import torch

    if not device.startswith("cuda"):
        return
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    need = int(sum(p.stat().st_size for p in weights_dir.iterdir() if p.is_file()) * 1.3) if weights_dir else 0
    if free < need:
        raise MemoryError(
            f"{free // 2**20} MiB free on {device}, about {need // 2**20} MiB needed: the running "
            "moshi service holds the GPU; measure with stop_service: true"
        )


def measure(
    mode: str,
    device: str,
    frames: int,
    warmup: int,
    weights_dir: Path | None = None,
    random_size: str | None = None,
    half: bool = False,
) -> dict:
    """Time `frames` frames in this process.  The caller has set moshi's switches for `mode`."""
    import torch
    from moshi.models import LMGen

    from myca_ops.voice.probe import speech_like

    torch.set_grad_enabled(False)
    dtype = torch.float16 if half else torch.bfloat16
    check_gpu_memory(device, weights_dir)
    load_start = time.perf_counter()
    if random_size:
        mimi, lm, gen_config = _random_models(random_size, device, dtype)
    else:
        mimi, lm, gen_config = _checkpoint_models(weights_dir, device, dtype)
    lm_gen = LMGen(lm, **gen_config)
    mimi.streaming_forever(1)
    lm_gen.streaming_forever(1)
    load_s = time.perf_counter() - load_start

    cuda = device.startswith("cuda")
    audio = torch.from_numpy(speech_like((frames + warmup) * FRAME_SAMPLES / 24000)).to(device)
    times = {stage: [] for stage in STAGES}
    for i in range(frames + warmup):
        chunk = audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES][None, None]
        clock = StageClock(torch, cuda)
        codes = mimi.encode(chunk)
        clock.mark()
        tokens = lm_gen.step(codes[:, :, 0:1])
        clock.mark()
        if tokens is not None:  # None for the LM's first steps (acoustic delay)
            mimi.decode(tokens[:, 1:])
        clock.mark()
        stage_ms = clock.stages_ms()
        if i >= warmup and tokens is not None:
            for stage, ms in zip(STAGES, [*stage_ms, sum(stage_ms)], strict=True):
                times[stage].append(ms)
    return {
        "mode": mode,
        "device": device,
        "load_s": round(load_s, 1),
        "stages": {stage: summary(values) for stage, values in times.items()},
        # Every timed frame's total, in order: the verify report draws their distribution.
        "samples_ms": [round(ms, 2) for ms in times["total"]],
        "gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
    }


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def run_mode(
    mode: str,
    args: list[str],
    timeout: float,
    program: tuple[str, ...] = ("-m", "myca_ops.voice.latency"),
    show_progress: bool = False,
) -> dict:
    """Measure one mode in a fresh interpreter, with exactly that mode's switches set: `program`
    (this module, or a benchmark script) runs with ``--one-mode MODE`` and prints one JSON line.
    `show_progress`: the child's stderr (progress, a traceback) goes to ours as it comes."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_TORCH_COMPILE", "NO_CUDA_GRAPH")}
    env.update(MODE_ENV[mode])
    cmd = [sys.executable, *program, "--one-mode", mode, *args]
    stderr = None if show_progress else subprocess.PIPE
    try:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {timeout:.0f}s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        said = (out.stderr or "").strip().splitlines() or [f"exit {out.returncode}, no result (its stderr is above)"]
        return {"mode": mode, "error": said[-1]}
    return json.loads(lines[-1])


def service_mode(env: dict[str, str]) -> tuple[str, str, str]:
    """The mode the service runs in, decided exactly as myca-moshi decides it: (mode, reason, device)."""
    from myca_ops.voice.launcher import decide_from_env

    decision = decide_from_env(env)
    return decision.mode, decision.reason, env.get("MYCA_MOSHI_DEVICE", "cuda")


def report(results: list[dict], reason: str) -> dict:
    """Add the real-time factor and verdict to each measured mode; the first one is the headline."""
    for r in results:
        if "error" in r:
            r.update(realtime=False, cause=f"measurement failed: {r['error']}")
            continue
        p99 = r["stages"]["total"]["p99"]
        r["realtime_factor"] = round(p99 / FRAME_BUDGET_MS, 3) if p99 is not None else None
        r["realtime"], r["cause"] = verdict(p99, r["device"], r["mode"], reason, r.get("gpu_name"))
    head = results[0]
    return {
        "budget_ms": FRAME_BUDGET_MS,
        "mode_reason": reason,
        "results": results,
        "realtime": head["realtime"],
        "cause": head["cause"],
        "mode": head["mode"],
    }


def from_service_log(env: dict[str, str], unit: str, since: str) -> dict:
    """The service's own 'frame handled in' figures over a window of its journal."""
    journal = subprocess.run(
        ["journalctl", "-u", unit, "--since", since, "-o", "cat", "--no-pager"], capture_output=True, text=True
    )
    if journal.returncode != 0:
        raise ValueError(f"cannot read the journal of {unit}: {journal.stderr.strip()}")
    mode, reason, device = service_mode(env) if env else ("unknown", "no env file", "unknown")
    frames = parse_service_log(journal.stdout)
    result = {
        "mode": mode,
        "device": device,
        "source": f"journal of {unit} since {since}",
        "stages": {"total": summary(frames)},
        "samples_ms": [round(ms, 2) for ms in frames],
        "gpu_name": None,
    }
    if not frames:
        return {
            "results": [result],
            "realtime": False,
            "mode": mode,
            "mode_reason": reason,
            "budget_ms": FRAME_BUDGET_MS,
            "cause": f"no 'frame handled' lines in the journal of {unit} since {since}: no session ran",
        }
    return report([result], reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, help="the service's environment (mode, device, weights)")
    parser.add_argument("--random", choices=("small", "full"), help="random weights with these shapes instead")
    parser.add_argument("--device", help="overrides the env file's device")
    parser.add_argument("--mode", choices=tuple(MODE_ENV), help="overrides the service's mode")
    parser.add_argument("--compare", action="store_true", help="eager, graphs and compile+graphs, one process each")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mode")
    parser.add_argument(
        "--service-log",
        metavar="SINCE",
        help="no model load: the service's own frame times from its journal since SINCE ('-15min')",
    )
    parser.add_argument("--unit", default="moshi", help="systemd unit for --service-log")
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    env = read_env_file(args.env_file) if args.env_file else {}
    weights_dir = Path(env.get("MYCA_MOSHI_WEIGHTS_DIR", "/var/lib/moshi/weights"))
    device = args.device or env.get("MYCA_MOSHI_DEVICE", "cuda")
    half = env.get("MYCA_MOSHI_HALF") == "1"
    try:
        if args.service_log:
            print(json.dumps(from_service_log(env, args.unit, args.service_log)))
            return 0
        if args.one_mode:  # the child: moshi's switches are already in the environment
            result = measure(
                args.one_mode, device, args.frames, args.warmup, None if args.random else weights_dir, args.random, half
            )
            print(json.dumps(result))
            return 0
        if not args.random:
            from myca_ops.voice.launcher import resolve_weights

            resolve_weights(weights_dir)  # fail here, with the file's name, not in each child
        mode, reason, _ = (
            service_mode(env) if env else (args.mode or "compile+graphs", "chosen on the command line", device)
        )
        if args.mode:
            mode, reason = args.mode, "chosen on the command line"
        if not device.startswith("cuda") and (args.compare or mode != "cpu"):
            mode, reason = "cpu", f"device {device}"
        modes = [mode] if not args.compare or mode == "cpu" else [mode, *(m for m in COMPARE_MODES if m != mode)]
        child = ["--device", device, "--frames", str(args.frames), "--warmup", str(args.warmup)]
        child += ["--env-file", str(args.env_file)] if args.env_file else []
        child += ["--random", args.random] if args.random else []
        print(json.dumps(report([run_mode(m, child, args.timeout) for m in modes], reason)))
    except (ValueError, FileNotFoundError, MemoryError) as exc:
        print(json.dumps({"error": str(exc), "realtime": False, "cause": str(exc)}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
