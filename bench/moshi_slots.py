"""Many conversations on one model: the batched server's tick for B sessions, side by side.

For each B, an engine with B slots, every slot fed a new frame each tick (a full server:
masked slots are computed all the same, so the tick cost follows the slots, not the callers).
Random weights with the real shapes (the 7B LM and the full Mimi; `--small`: a tiny LM), in the
service's dtype (bf16 on a GPU, float32 on CPU: myca_ops.voice.model), one process per mode because moshi reads NO_TORCH_COMPILE at import:

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

from myca_ops.voice import model
from myca_ops.voice.latency import measure_slots, run_mode
from myca_ops.voice.protocol import FRAME_BUDGET_MS


def measure(mode: str, device: str, small: bool, batches: list[int], ticks: int, warmup: int) -> dict:
    """In this process (moshi's switches already set for `mode`): every B, one after the other, on
    the engine the server makes (myca_ops.voice.model: its dtype rule, its warm-up)."""
    import torch

    loaded = model.load({"MYCA_MOSHI_DEVICE": device}, "small" if small else "full")
    rows = []
    for b in batches:
        started = time.perf_counter()
        row = measure_slots(loaded, b, ticks, warmup)
        rows.append({**row, "batch": b, "wall_s": round(time.perf_counter() - started, 1)})
    cuda = device.startswith("cuda")
    return {
        "mode": mode,
        "device": device,
        "lm": f"{'tiny' if small else '7B shapes'} ({str(loaded.dtype).removeprefix('torch.')})",
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
            mib = f"{row['slot_mib']:.0f}" if row.get("slot_mib") is not None else "-"
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
    results = [run_mode(mode, child, timeout=args.timeout, program=(__file__,)) for mode in modes]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
