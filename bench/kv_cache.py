"""More conversations per card from a smaller attention cache: for each cache setting, the slots a
GPU memory budget holds, counted as the service counts them, and the tick at that many slots; then
how often the answers agree with moshi's own cache.

Random weights with the 7B's shapes (`--shapes small`: a tiny LM, for a smoke run on CPU), greedy,
loaded as the service loads them (myca_ops.voice.model: MYCA_MOSHI_KV_DTYPE, _CONTEXT_FRAMES and
_MEMORY_BUDGET_GIB, so torch refuses what would pass the budget, as a smaller card would):

    python bench/kv_cache.py --device cuda --budget-gib 24      # a 24 GB card, on a larger GPU
    python bench/kv_cache.py --device cpu --shapes small --slots 2 --ticks 10 --frames 40

Prints one table of slots, MiB per slot, tick p50/p99 at those slots and the verdict per setting,
and one of token agreement (teacher-forced, myca_ops.voice.kvcache.agreement) per setting; the
last line is the JSON of both.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from myca_ops.voice import model
from myca_ops.voice.latency import measure_slots

SETTINGS = [("model", 0), ("int8", 0), ("fp8", 0), ("int8", 750)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", choices=("full", "small"), default="full")
    parser.add_argument("--budget-gib", type=float, default=24.0, help="on a GPU: the memory the service may take")
    parser.add_argument("--slots", type=int, default=0, help="this many slots instead of counting them (CPU)")
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--frames", type=int, default=500, help="frames of the agreement run")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    base = {"MYCA_MOSHI_DEVICE": args.device, "MYCA_MOSHI_GREEDY": "1"}
    if cuda:
        base["MYCA_MOSHI_MEMORY_BUDGET_GIB"] = str(args.budget_gib)
    model.set_cpu_threads(base)
    import torch

    rows = []
    for kv_dtype, context in SETTINGS:
        env = {**base, "MYCA_MOSHI_KV_DTYPE": kv_dtype, "MYCA_MOSHI_CONTEXT_FRAMES": str(context)}
        loaded = model.load(env, args.shapes)
        slots, how = (args.slots, "--slots") if args.slots or not cuda else loaded.slots_for_gpu()
        print(f"[kv_cache] {kv_dtype}, context {context or 'own'}: {slots} slots ({how})", file=sys.stderr, flush=True)
        row = measure_slots(loaded, slots, args.ticks, 10)
        total = row["stages"]["total"]
        engine = loaded.engine(1)
        per_slot = engine.state_bytes()
        engine.close()
        rows.append(
            {
                "kv_dtype": kv_dtype,
                "context": context or loaded.lm.context,
                "slots": slots,
                "slot_mib": round(per_slot / 2**20, 1),
                "tick_p50_ms": total["p50"],
                "tick_p99_ms": total["p99"],
                "realtime": row["realtime"],
            }
        )
        del loaded
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    from myca_ops.voice import kvcache

    if cuda:  # the agreement runs the model twice over: the budget, set for the process above, is lifted
        torch.cuda.set_per_process_memory_fraction(1.0)
    loaded = model.load({**base, "MYCA_MOSHI_MEMORY_BUDGET_GIB": "0"}, args.shapes)
    # One setting at a time beside the reference: two copies of the 7B at once, not five.
    agreement = [
        kvcache.agreement(loaded, [(kv, context or None)], frames=args.frames)[0] for kv, context in SETTINGS[1:]
    ]

    budget = f"a {args.budget_gib:g} GiB budget" if cuda else "CPU"
    print(f"{args.shapes}-size shapes, random weights, {args.device}, {budget}")
    print("| kv dtype | context | slots | MiB per slot | tick p50 | tick p99 | real-time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kv_dtype']} | {r['context']} | {r['slots']} | {r['slot_mib']} | {r['tick_p50_ms']} ms "
            f"| {r['tick_p99_ms']} ms | {'yes' if r['realtime'] else 'no'} |"
        )
    print(f"Agreement with moshi's own cache, {args.frames} frames, greedy, teacher-forced:")
    print("| kv dtype | context | text | audio 1 | lowest codebook | all channels |")
    print("|---|---|---|---|---|---|")
    for a in agreement:
        shares = a["per_channel"]
        print(
            f"| {a['kv_dtype']} | {a['context'] or 'own'} | {shares['text']:.3f} | {shares['audio 1']:.3f} "
            f"| {min(shares.values()):.3f} | {a['all']:.3f} |"
        )
    print(json.dumps({"slots": rows, "agreement": agreement}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
