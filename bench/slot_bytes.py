"""What one conversation takes, for each attention-cache setting, at the 7B's full size, on CPU.

The 7B LM and the full Mimi are built on torch's meta device (shapes without memory: no weights
loaded, nothing allocated), the cache settings applied as the service applies them
(myca_ops.voice.kvcache), and the batched server's engine made with one slot; its streaming
state (every layer's keys and values, the codec's buffers, the token caches) is summed as
`/healthz` sums it.  From the weights' own size it estimates the slots a GPU budget holds, as the
service counts them (MAX_SLOTS_AUTO aside): budget less the headroom, the weights and Mimi,
divided by a slot.  The measured count on a GPU is bench/device_kv.sh's.

    python bench/slot_bytes.py                    # bf16, a 24 GiB budget
    python bench/slot_bytes.py --budget-gib 80
"""

from __future__ import annotations

import argparse
import sys

from myca_ops.voice.model import GPU_HEADROOM

SETTINGS = [
    ("model", None),
    ("int8", None),
    ("fp8", None),
    ("model", 1500),
    ("int8", 1500),
    ("model", 750),
    ("int8", 750),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-gib", type=float, default=24.0)
    args = parser.parse_args()

    import torch
    from moshi.models import LMGen, loaders

    from myca_ops.voice import kvcache
    from myca_ops.voice.engine import SlotEngine

    torch.set_grad_enabled(False)
    mimi = loaders.get_mimi(None, device="meta")
    mimi_bytes = sum(p.nbytes for p in mimi.parameters())
    rows = []
    for kv_dtype, context in SETTINGS:
        lm = loaders.get_moshi_lm(None, device="meta", dtype=torch.bfloat16)
        kvcache.shrink(lm, kv_dtype, context)
        engine = SlotEngine(mimi, LMGen(lm, support_out_of_sync=True), 1, "meta")
        per_slot = engine.state_bytes()
        engine.close()
        weights = sum(p.nbytes for p in lm.parameters())
        room = args.budget_gib * 2**30 * (1 - GPU_HEADROOM) - weights - mimi_bytes
        rows.append((kv_dtype, context or lm.context, per_slot, int(room // per_slot), weights))
    base = rows[0][2]
    print(
        f"7B in bf16: weights {rows[0][4] / 2**30:.2f} GiB, Mimi {mimi_bytes / 2**30:.2f} GiB; budget {args.budget_gib:g} GiB"
    )
    print("| kv dtype | context (frames) | MiB per slot | of bf16 at full context | slots in the budget (estimate) |")
    print("|---|---|---|---|---|")
    for kv_dtype, context, per_slot, slots, _ in rows:
        print(f"| {kv_dtype} | {context} | {per_slot / 2**20:.1f} | {per_slot / base:.3f} | {slots} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
