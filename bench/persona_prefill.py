"""A persona's handshake: the prompt stepped in the batched ticks against its kept state copied in.

The server's own engine (:class:`~myca_ops.voice.engine.SlotEngine`, as ``myca-moshi serve`` makes
it) with a persona of a 2 s voice and a text prompt of ``--text-tokens`` tokens; one slot takes
the persona again and again while the other slots are idle or all talking.  Per trial, from the
tick boundary where the caller's slot is taken to the moment its prompt is in (the handshake byte
goes then): by steps (``--prefill-steps`` model steps per tick) or from the kept state.  A caller
who arrives mid-tick also waits for the rest of that tick: the talking slots' tick is the last
column, with and without a slot in its prompt beside them (what a prompt costs the others).

    python bench/persona_prefill.py --slots 2 --trials 5                      (CPU, the lab's weights)
    MYCA_MOSHI_DEVICE=cuda python bench/persona_prefill.py --shapes full --slots 64 --trials 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from myca_ops.voice import model
from myca_ops.voice.probe import speech_like
from myca_ops.voice.protocol import FRAME_SAMPLES, SAMPLE_RATE
from myca_ops.voice.stats import percentile


class Tokens:
    """A stand-in text tokenizer for random weights: `n` ordinary token ids."""

    def __init__(self, n: int) -> None:
        self.n = n

    def encode(self, text: str) -> list[int]:
        return [4 + i % 300 for i in range(self.n)]


def sync(engine) -> None:
    if engine.cuda:
        engine.torch.cuda.synchronize()


def trial(engine, slot: int, talking: list[int], speech, start: int, prompt=None, state=None) -> tuple[float, list]:
    """Take `slot` at a tick boundary and tick the talking slots until its prompt is in: (ms, the
    talking slots' tick times meanwhile)."""
    frame = {k: speech[(start + k) * FRAME_SAMPLES : (start + k + 1) * FRAME_SAMPLES] for k in talking}
    ticks = []
    t0 = time.perf_counter()
    engine.reset([slot])
    if state is not None:
        engine.restore(slot, state)
        sync(engine)
        return (time.perf_counter() - t0) * 1000, ticks
    engine.prefill(slot, prompt)
    while engine.prefilling:
        t1 = time.perf_counter()
        engine.tick(frame)
        sync(engine)
        ticks.append((time.perf_counter() - t1) * 1000)
    return (time.perf_counter() - t0) * 1000, ticks


def talking_ticks(engine, talking: list[int], speech, n: int) -> list[float]:
    out = []
    for i in range(n):
        frame = {k: speech[(i + k) * FRAME_SAMPLES : (i + k + 1) * FRAME_SAMPLES] for k in talking}
        t0 = time.perf_counter()
        engine.tick(frame)
        sync(engine)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=60, help="with random weights (no tokenizer)")
    parser.add_argument("--prefill-steps", type=int, default=4)
    parser.add_argument("--shapes", choices=["small", "full"], help="random weights of these shapes")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("MYCA_MOSHI_DEVICE", "cpu")
    if not args.shapes:
        from myca_ops.lab.weights import generate

        env["MYCA_MOSHI_WEIGHTS_DIR"] = str(generate(Path(__file__).resolve().parents[1] / ".lab" / "weights"))
    model.set_cpu_threads(env)
    loaded = model.load(env, random_size=args.shapes)
    with tempfile.TemporaryDirectory() as voices:
        import sphn

        sphn.write_wav(f"{voices}/voice.wav", speech_like(2.0, seed=7), SAMPLE_RATE)
        prompts = loaded.prompts(Path(voices))
    if prompts.tokenizer is None:
        prompts.tokenizer = Tokens(args.text_tokens)
    prompt = prompts.make("You are MYCA, the voice of a mycology lab. " * 4, "voice.wav", "bench")
    engine = loaded.engine(args.slots, args.prefill_steps)
    speech = speech_like(60.0, seed=2)
    slot = args.slots - 1
    _, _ = trial(engine, slot, [], speech, 0, prompt)  # the first prompt: its state is kept
    state = engine.snapshot(slot)
    print(
        f"persona_prefill: {engine.device}, {args.slots} slots, prompt {prompt.steps} steps, "
        f"{args.prefill_steps} steps per tick, kept state {state.nbytes / 2**20:.1f} MiB"
    )
    rows = []
    for busy in sorted({0, args.slots - 1}):
        talking = list(range(busy))
        alone = talking_ticks(engine, talking, speech, 2 * args.trials) if talking else []
        for how in ("steps", "cache"):
            times, beside = [], []
            for t in range(args.trials):
                ms, ticks = trial(
                    engine,
                    slot,
                    talking,
                    speech,
                    t,
                    prompt if how == "steps" else None,
                    state if how == "cache" else None,
                )
                times.append(ms)
                beside += ticks
            rows.append((busy, how, times, beside, alone))
    head = f"{'talking':>7} {'prompt':>7} {'handshake p50':>14} {'p99':>9} {'their tick p50, beside':>23} {'alone':>8}"
    print(head)
    for busy, how, times, beside, alone in rows:
        side = f"{percentile(beside, 50):.1f} ms" if beside and busy else "-"
        solo = f"{percentile(alone, 50):.1f} ms" if alone else "-"
        print(
            f"{busy:>7} {how:>7} {percentile(times, 50):>11.1f} ms {percentile(times, 99):>6.1f} ms {side:>23} {solo:>8}"
        )
    steps = [r for r in rows if r[1] == "steps"]
    cache = [r for r in rows if r[1] == "cache"]
    for (busy, _, by_steps, _, _), (_, _, by_cache, _, _) in zip(steps, cache, strict=True):
        ratio = percentile(by_steps, 50) / percentile(by_cache, 50)
        print(f"{busy} talking: the kept state hands over {ratio:,.0f} times faster than the prompt by steps")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
