"""Many conversations on one model: the batched server's tick for B sessions, side by side.

For each B, an engine with B slots, every slot fed a new frame each tick (a full server:
masked slots are computed all the same, so the tick cost follows the slots, not the callers).
Random weights with the real shapes (the 7B LM in bf16 and the full Mimi; `--small`: a tiny LM
in float32 on CPU), one process per mode because moshi reads NO_TORCH_COMPILE at import:

    python bench/moshi_slots.py --device cuda                           # graphs, compile+graphs
    python bench/moshi_slots.py --small --device cpu --batches 1,2,4    # anywhere

Prints per mode and B: tick p50/p99 per stage, per-session cost (tick p50 / B) and its ratio to
B=1 in the same run, GPU memory per slot, and "real-time sessions": the largest B whose p99
tick is at most 80 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from myca_ops.voice.engine import STAGES, SlotEngine
from myca_ops.voice.latency import run_mode
from myca_ops.voice.protocol import FRAME_BUDGET_MS, FRAME_SAMPLES
from myca_ops.voice.stats import summary


def measure(mode: str, device: str, small: bool, batches: list[int], ticks: int, warmup: int) -> dict:
    """In this process (moshi's switches already set for `mode`): every B, one after the other."""
    import torch
    from moshi.models import LMGen

    from myca_ops.voice.latency import _random_models
    from myca_ops.voice.probe import speech_like

    torch.set_grad_enabled(False)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    mimi, lm, gen_config = _random_models("small" if small else "full", device, dtype)
    audio = speech_like((ticks + warmup) * FRAME_SAMPLES / 24000 + 0.1)
    rows = []
    for b in batches:
        print(f"[bench] {mode}: B={b} ({ticks} ticks)", file=sys.stderr, flush=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated() if cuda else 0
        engine = SlotEngine(mimi, LMGen(lm, support_out_of_sync=True, **gen_config), b, device)
        times = {stage: [] for stage in (*STAGES, "total")}
        started = time.perf_counter()
        for i in range(ticks + warmup):
            frame = audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            _, stages = engine.tick(dict.fromkeys(range(b), frame), set(range(b)) if i == 0 else set())
            if i >= warmup:
                for stage, ms in (*stages.items(), ("total", sum(stages.values()))):
                    times[stage].append(ms)
        row = {"batch": b, "wall_s": round(time.perf_counter() - started, 1)}
        row["stages"] = {stage: summary(values) for stage, values in times.items()}
        if cuda:
            torch.cuda.synchronize()
            row["mib_per_slot"] = round((torch.cuda.memory_allocated() - before) / 2**20 / b, 1)
        engine.close()
        del engine
        rows.append(row)
    return {
        "mode": mode,
        "device": device,
        "lm": "tiny (float32)" if small else "7B shapes (bf16)",
        "gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "torch_version": torch.__version__,
        "rows": rows,
    }


def table(results: list[dict]) -> str:
    head = (
        f"{'mode':<15} {'B':>3} {'encode':>8} {'lm step':>8} {'decode':>8} {'tick p50':>9} {'tick p99':>9} "
        f"{'per sess':>9} {'vs B=1':>7} {'MiB/slot':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['mode']:<15} failed: {r['error']}")
            continue
        one = next((row for row in r["rows"] if row["batch"] == 1), None)
        for row in r["rows"]:
            s, b = row["stages"], row["batch"]
            per = s["total"]["p50"] / b
            ratio = f"{per / one['stages']['total']['p50']:.2f}x" if one else "-"
            mib = f"{row['mib_per_slot']:.0f}" if "mib_per_slot" in row else "-"
            lines.append(
                f"{r['mode']:<15} {b:>3} {s['encode']['p50']:>8.2f} {s['lm_step']['p50']:>8.2f} {s['decode']['p50']:>8.2f} "
                f"{s['total']['p50']:>9.2f} {s['total']['p99']:>9.2f} {per:>9.2f} {ratio:>7} {mib:>9}"
            )
        fits = [row["batch"] for row in r["rows"] if row["stages"]["total"]["p99"] <= FRAME_BUDGET_MS]
        lines.append(
            f"{r['mode']:<15} real-time sessions (p99 tick <= {FRAME_BUDGET_MS:.0f} ms): {max(fits, default=0)}"
        )
    first = next((r for r in results if "error" not in r), {})
    lines.append(
        f"ms per tick (stage p50s, tick p50/p99); {first.get('lm')} LM; device {first.get('device')} "
        f"{first.get('gpu_name') or ''}; torch {first.get('torch_version')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny LM in float32 (CPU); default: the 7B shapes")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--modes", default="graphs,compile+graphs", help="on CPU the mode is always cpu")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per mode before it is reported failed")
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.one_mode:  # the child: moshi's switches are already in the environment
        print(json.dumps(measure(args.one_mode, args.device, args.small, batches, args.ticks, args.warmup)))
        return 0
    modes = args.modes.split(",") if args.device.startswith("cuda") else ["cpu"]
    child = [
        "--device",
        args.device,
        "--batches",
        args.batches,
        "--ticks",
        str(args.ticks),
        "--warmup",
        str(args.warmup),
    ]
    child += ["--small"] if args.small else []
    results = [run_mode(mode, child, timeout=args.timeout, program=(__file__,), show_progress=True) for mode in modes]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
