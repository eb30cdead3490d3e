"""Records NVIDIA PersonaPlex's own answers on a lab checkpoint: the reference that
tests/test_personaplex_reference.py holds this project's engine to, token for token.

It imports `LMGen` and the loaders from a checkout of NVIDIA/personaplex (nothing of it is copied
here) and runs, greedy, in float32 on the CPU: the text prompt with a WAV voice, then the same
with the `.pt` voice file NVIDIA's own code made from that WAV (`save_voice_prompt_embeddings`),
each followed by fixed caller codes.  It writes `fixtures/personaplex_reference.json` (the
checkpoint's recipe and hashes, the inputs, per caller frame the tokens and the gap between the
two highest logits) and `fixtures/personaplex_reference_voice.pt` (that voice file).

NVIDIA's package is on no package registry and pins its own torch; run this in a venv of its pins:

    git -C CHECKOUT rev-parse HEAD              # the revision the moshi role pins
    python3 -m venv /tmp/pp && /tmp/pp/bin/pip install torch==2.4.1 CHECKOUT/moshi pyloudnorm==0.2.0
    .venv/bin/python -m myca_ops.lab.weights /tmp/pp-weights --flavour personaplex --dim 128 --layers 1
    /tmp/pp/bin/python tests/personaplex_reference.py --checkout CHECKOUT --revision SHA --weights /tmp/pp-weights

A tiny random model has near-ties in its logits, and two torch builds round differently: the
caller codes are drawn from seeds 0, 1, ... until every answer frame's gap is above GAP_FLOOR on
both voice paths, so a tie can never decide a token.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "personaplex_reference.json"
VOICE_FILE = HERE / "fixtures" / "personaplex_reference_voice.pt"
TEXT = "You are MYCA, the voice of a mycology lab. Answer questions about fungi."
VOICE = "myca.wav"
CALLER_FRAMES = 30
GAP_FLOOR = 1e-3  # logits; float32 rounding between two torch builds moves them by ~1e-6
CHECKPOINT_FILES = ("model.safetensors", "mimi.safetensors", "tokenizer.model", "config.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def top_gap(logits) -> float:
    """The smallest, over the batch's streams, of the gap between the two highest logits."""
    top = logits.float().reshape(-1, logits.shape[-1]).topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def prompted(nvidia, lm, mimi, tokenizer, voice: Path, save_voice: bool = False):
    """NVIDIA's LMGen, greedy, through its prompt phases (voice, silence, text, silence) as its
    server runs them; with `save_voice` it writes the voice file beside a WAV voice."""
    gen = nvidia.LMGen(
        lm,
        device="cpu",
        use_sampling=False,
        return_logits=not save_voice,  # its voice-file path reads step()'s plain output
        audio_silence_frame_cnt=int(0.5 * mimi.frame_rate),
        sample_rate=mimi.sample_rate,
        frame_rate=mimi.frame_rate,
        save_voice_prompt_embeddings=save_voice,
    )
    mimi.streaming_forever(1)
    gen.streaming_forever(1)
    if voice.suffix == ".pt":
        gen.load_voice_prompt_embeddings(str(voice))
    else:
        gen.load_voice_prompt(str(voice))
    gen.text_prompt_tokens = tokenizer.encode(f"<system> {TEXT} <system>")
    mimi.reset_streaming()
    gen.reset_streaming()
    gen.step_system_prompts(mimi)
    mimi.reset_streaming()
    return gen


def answer(gen, caller) -> dict:
    """One step per caller frame: the tokens (text, the model's 8 audio codebooks) and the smallest
    top-2 gap of the logits that chose them."""
    import torch

    tokens, gaps, last = [], [], None
    for codes in caller:
        out, logits = gen.step(input_tokens=torch.tensor(codes, dtype=torch.long).view(1, -1, 1))
        text_logits, audio_logits = logits
        own = audio_logits[:, : len(codes)]  # the model's own codebooks; the rest predict the caller
        gap = min(top_gap(text_logits), top_gap(own))
        # A frame's text and first codebook were chosen one step before its delayed codebooks.
        gaps.append(gap if last is None else min(gap, last))
        last = gap
        tokens.append(out[0, : 1 + len(codes), 0].tolist())
    return {"tokens": tokens, "gaps": [round(g, 6) for g in gaps]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, required=True, help="NVIDIA/personaplex at the pinned revision")
    parser.add_argument("--revision", required=True, help="that checkout's commit")
    parser.add_argument("--weights", type=Path, required=True, help="a lab checkpoint, --flavour personaplex")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.checkout / "moshi"))
    import numpy as np
    import sentencepiece
    import torch
    from moshi.models import lm as nvidia
    from moshi.models import loaders

    if not Path(nvidia.__file__).resolve().is_relative_to(args.checkout.resolve()):
        raise SystemExit(f"moshi was imported from {nvidia.__file__}, not from {args.checkout}")
    torch.set_grad_enabled(False)
    config = json.loads((args.weights / "config.json").read_text())
    # NVIDIA's loader hard-codes the 7B's sizes: give it the lab checkpoint's.
    loaders._lm_kwargs.update({k: v for k, v in config.items() if k in loaders._lm_kwargs})
    lm = loaders.get_moshi_lm(str(args.weights / "model.safetensors"), device="cpu", dtype=torch.float32)
    mimi = loaders.get_mimi(str(args.weights / "mimi.safetensors"), device="cpu")
    tokenizer = sentencepiece.SentencePieceProcessor(str(args.weights / "tokenizer.model"))
    card = lm.card

    with tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / VOICE
        shutil.copy(args.weights / "voices" / VOICE, wav)
        prompted(nvidia, lm, mimi, tokenizer, wav, save_voice=True)  # NVIDIA's voice file: VOICE as .pt
        voices = [("wav", wav), ("pt", wav.with_suffix(".pt"))]
        for seed in range(50):
            caller = np.random.default_rng(seed).integers(0, card, size=(CALLER_FRAMES, 8)).tolist()
            runs = {path: answer(prompted(nvidia, lm, mimi, tokenizer, voice), caller) for path, voice in voices}
            smallest = min(min(r["gaps"]) for r in runs.values())
            print(f"caller seed {seed}: smallest gap {smallest:.4f}", flush=True)
            if smallest > GAP_FLOOR:
                break
        else:
            raise SystemExit(f"no caller seed under 50 keeps every gap above {GAP_FLOOR}")
        FIXTURE.parent.mkdir(exist_ok=True)
        shutil.copy(wav.with_suffix(".pt"), VOICE_FILE)
        recipe = json.loads((args.weights / "recipe.json").read_text())
        fixture = {
            "made_by": {
                "personaplex_revision": args.revision,
                "imported_from": "NVIDIA/personaplex checkout, moshi/moshi/models/lm.py (LMGen)",
                "torch": torch.__version__,
                "dtype": "float32",
                "device": "cpu",
                "command": "tests/personaplex_reference.py (see its docstring)",
            },
            "recipe": recipe,
            "sha256": {name: sha256(args.weights / name) for name in CHECKPOINT_FILES}
            | {f"voices/{VOICE}": sha256(args.weights / "voices" / VOICE), VOICE_FILE.name: sha256(VOICE_FILE)},
            "text_prompt": TEXT,
            "voice": VOICE,
            "gap_floor": GAP_FLOOR,
            "caller_seed": seed,
            "caller_codes": caller,
            "answers": runs,
        }
    FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {FIXTURE.relative_to(HERE.parent)} and {VOICE_FILE.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
