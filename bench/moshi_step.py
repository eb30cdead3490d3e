"""Moshi's per-frame step latency in the three modes, side by side in one run.

One session (the batched server's engine with one slot), random weights with the real shapes (the
7B LM and the full Mimi; `--small` for a tiny LM), in the service's dtype (bf16 on a GPU, float32
on CPU), one process per mode because moshi reads NO_TORCH_COMPILE at import:

    eager           NO_TORCH_COMPILE=1 NO_CUDA_GRAPH=1   (the field report's slow mode)
    graphs          NO_TORCH_COMPILE=1                   (CUDA graphs, no Triton needed)
    compile+graphs  (nothing set)                         (the fast mode)

    python bench/moshi_step.py --device cuda            # on a GPU host
    python bench/moshi_step.py --small --device cpu     # anywhere

Prints a table: per mode p50 of each stage, total p50/p95/p99, real-time factor (p99 / 80 ms)
and the speedup of the p99 over eager in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys

from myca_ops.voice.latency import COMPARE_MODES, run_mode
from myca_ops.voice.protocol import FRAME_BUDGET_MS


def table(results: list[dict]) -> str:
    head = f"{'mode':<15} {'encode':>8} {'lm step':>8} {'decode':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'RTF':>6} {'vs eager':>9}"
    lines = [head, "-" * len(head)]
    eager = next((r["results"][0] for r in results if r["mode"] == "eager" and "error" not in r), None)
    for r in results:
        if "error" in r:
            lines.append(f"{r['mode']:<15} failed: {r['error']}")
            continue
        s = r["results"][0]["stages"]
        p99 = s["total"]["p99"]
        speedup = f"{eager['stages']['total']['p99'] / p99:.2f}x" if eager else "-"
        lines.append(
            f"{r['mode']:<15} {s['encode']['p50']:>8.2f} {s['lm_step']['p50']:>8.2f} {s['decode']['p50']:>8.2f} "
            f"{s['total']['p50']:>8.2f} {s['total']['p95']:>8.2f} {p99:>8.2f} {p99 / FRAME_BUDGET_MS:>6.2f} {speedup:>9}"
        )
    first = next((r for r in results if "error" not in r), {})
    lines.append(
        f"ms per 80 ms frame; device {first.get('device')} {first.get('gpu_name') or ''}; "
        f"torch {first.get('torch_version')}, Triton {first.get('triton_version')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny LM (CPU); default: the full 7B shapes")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--modes", default=",".join(COMPARE_MODES))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per mode before it is reported failed")
    args = parser.parse_args(argv)
    child = [
        "--device",
        args.device,
        "--frames",
        str(args.frames),
        "--warmup",
        str(args.warmup),
        "--random",
        "small" if args.small else "full",
        "--slots",
        "1",
    ]
    results = []
    for mode in args.modes.split(","):
        print(f"[bench] measuring {mode} ({args.frames} frames)...", file=sys.stderr, flush=True)
        results.append(run_mode(mode, child, timeout=args.timeout))
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
