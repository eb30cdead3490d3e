"""A tiny random Moshi checkpoint in the real format, for hosts without a GPU or a hub.

No weights can be downloaded in the lab, so this makes them: ``config.json`` (moshi's
own keys: LM kwargs plus file names), the LM in safetensors (small dims), the full-size
Mimi codec in safetensors (its config is fixed) and a sentencepiece tokenizer trained on
the spot with exactly ``text_card`` pieces.  Deterministic for a seed, and cached: a
folder whose ``recipe.json`` matches is left as it is.  It is served by the real
``moshi.server`` through the same ``moshi_weights`` files an operator would hand over.

With ``--flavour personaplex`` the checkpoint is in NVIDIA's PersonaPlex layout instead: the
depformer has a step per codebook of both streams (16), its attention weights in moshi's older
stacked layout, and the voices are PersonaPlex voice files too (``voices/*.pt`` and
``voices.tgz``: the LM's input embeddings over a WAV voice's steps, then its token cache).

    python -m myca_ops.lab.weights OUT_DIR [--seed 0] [--dim 256] [--layers 2] [--flavour personaplex]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from myca_ops.voice.model import CONFIG_FILE, MIMI_FILE, MOSHI_FILE, TOKENIZER_FILE, moshi_7b_config

RECIPE_FILE = "recipe.json"
RECIPE_VERSION = 4

WORDS = (
    "hello moshi how are you today the voice stack runs in real time on this host and every frame "
    "fits its budget of eighty milliseconds when cuda graphs are on the mycelium network grows under "
    "the forest floor spores travel with the wind sensors report soil moisture temperature and light "
    "please repeat that again slowly thank you goodbye yes no maybe tomorrow morning evening"
).split()


def lm_config(dim: int, layers: int, text_card: int, context: int | None = None) -> dict:
    """Moshi's 7B LM kwargs with small dims; the codebook layout stays the real one.  `context`:
    the LM's context in frames (the 7B's 3000 when None; a small one makes its KV cache wrap soon)."""
    config = moshi_7b_config()
    config.update(
        dim=dim,
        num_heads=max(1, dim // 64),
        num_layers=layers,
        depformer_dim=dim // 2,
        depformer_dim_feedforward=int(4.125 * (dim // 2)),
        depformer_num_heads=max(1, dim // 128),
        depformer_num_layers=layers,
        text_card=text_card,
    )
    if context:
        config["context"] = context
    return config


def train_tokenizer(dest: Path, vocab_size: int, seed: int) -> None:
    """Trained from an in-memory corpus, so the model holds no temporary path: same seed, same bytes."""
    import io

    import sentencepiece as spm

    rng = random.Random(seed)
    sentences = [" ".join(rng.choices(WORDS, k=12)) for _ in range(3000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        num_threads=1,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    dest.write_bytes(model.getvalue())


def seed_codebooks(mimi, scale: float = 1e-3) -> None:
    """Give Mimi's quantizer random codebooks at the scale of its random encoder's output.

    An untrained codebook is all zeros (filled by k-means in training), so every input would
    give code 0 and nothing downstream could tell two voices apart: the batched server's
    parity and isolation tests need codes, tokens and audio that follow the input."""
    from moshi.quantization.core_vq import EuclideanCodebook

    for module in mimi.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.normal_(0, scale)
            module.cluster_usage.fill_(1)
            module._initialized.fill_(1)


VOICES_DIR = "voices"
LAB_VOICES = {"myca.wav": 1, "field.wav": 2}  # voice file: the seed of its speech-like audio


def write_voices(folder: Path) -> None:
    """The lab's voice prompts: 2 s of speech-like audio each, 24 kHz mono WAV (a persona's voice)."""
    import sphn

    from myca_ops.voice.probe import speech_like
    from myca_ops.voice.protocol import SAMPLE_RATE

    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in LAB_VOICES.items():
        if not (folder / name).exists():
            sphn.write_wav(str(folder / name), speech_like(2.0, seed=seed), SAMPLE_RATE)


def personaplex_layout(state: dict) -> dict:
    """An LM's tensors as PersonaPlex's checkpoint names them: each attention's per-step
    projections stacked in one matrix (in_proj_weight, out_proj.weight)."""
    import torch

    out: dict = {}
    stacks: dict = {}
    for key, tensor in state.items():
        m = re.match(r"^(.*\.self_attn)\.(in_projs|out_projs)\.(\d+)\.weight$", key)
        if m:
            name = f"{m.group(1)}.{'in_proj_weight' if m.group(2) == 'in_projs' else 'out_proj.weight'}"
            stacks.setdefault(name, {})[int(m.group(3))] = tensor
        else:
            out[key] = tensor
    for name, parts in stacks.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)]).contiguous()
    return out


def write_replay_voices(out: Path) -> None:
    """A PersonaPlex voice file per lab WAV voice, made by this checkpoint's own model: the LM's
    input embedding at each step the voice is fed (all frames but its first, as PersonaPlex), and
    the token cache after them in PersonaPlex's ring (moshi's + 1 column): the column the next
    step reads, and the next, which holds the last frame's delayed codebooks."""
    import tarfile

    import numpy as np
    import torch

    from myca_ops.voice import model

    env = {"MYCA_MOSHI_FLAVOUR": "personaplex", "MYCA_MOSHI_DEVICE": "cpu", "MYCA_MOSHI_WEIGHTS_DIR": str(out)}
    loaded = model.load(env)
    prompts = loaded.prompts(out / VOICES_DIR)
    seen: list = []
    loaded.lm.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0][0, 0].clone()))
    for name in LAB_VOICES:
        engine = loaded.engine(1, prefill_steps=1)
        seen.clear()
        steps = len(prompts.voices[name]) - 1  # the voice's first frame is never fed
        engine.prefill(0, prompts.make("", name, name))
        for _ in range(steps):
            engine.tick({})
        cache = engine.lm_gen._streaming_state.cache[0]
        ring = cache.shape[1] + 1
        saved = torch.full((cache.shape[0], ring), -2, dtype=torch.long)
        saved[:, steps % ring] = cache[:, steps % cache.shape[1]]
        delays = np.asarray(loaded.lm.delays[1 : 1 + model.OWN_CODEBOOKS])
        saved[1 : 1 + model.OWN_CODEBOOKS, (steps + 1) % ring] = torch.from_numpy(
            np.where(delays > 0, prompts.voices[name][-1], 0)
        )
        torch.save(
            {"embeddings": torch.stack(seen[-steps:])[:, None, None], "cache": saved[None]},
            out / VOICES_DIR / name.replace(".wav", ".pt"),
        )
        engine.close()
    with tarfile.open(out / "voices.tgz", "w:gz") as archive:
        for name in LAB_VOICES:
            archive.add(out / VOICES_DIR / name.replace(".wav", ".pt"), f"{VOICES_DIR}/{name.replace('.wav', '.pt')}")


def generate(
    out: Path,
    seed: int = 0,
    dim: int = 256,
    layers: int = 2,
    vocab: int = 400,
    context: int | None = None,
    flavour: str = "kyutai",
    quantize: bool = False,
) -> Path:
    """`quantize`: in Kyutai's 8-bit format (moshiko-pytorch-q8: the LM's linear layers as
    bitsandbytes int8 weights with a scale per row, config.json's ``quantize``), made by moshi's own
    code, which needs bitsandbytes here."""
    recipe: dict[str, Any] = {"version": RECIPE_VERSION, "seed": seed, "dim": dim, "layers": layers, "vocab": vocab}
    if context:
        recipe["context"] = context
    if quantize:
        recipe["quantize"] = True
    if flavour != "kyutai":
        recipe["flavour"] = flavour
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / RECIPE_FILE
    write_voices(out / VOICES_DIR)
    if recipe_path.exists() and json.loads(recipe_path.read_text()) == recipe:
        print(f"[weights] {out} is up to date", flush=True)
        return out

    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file, save_model

    recipe_path.unlink(missing_ok=True)  # a run cut short leaves no valid-looking folder
    torch.manual_seed(seed)
    print(f"[weights] training a {vocab}-piece sentencepiece tokenizer", flush=True)
    train_tokenizer(out / TOKENIZER_FILE, vocab, seed)

    config = lm_config(dim, layers, vocab, context)
    print(f"[weights] random LM: dim {dim}, {layers} layers, depformer {dim // 2} x {layers}", flush=True)
    if flavour == "personaplex":  # a depformer step per codebook of both streams, as PersonaPlex's
        config["dep_q"] = config["n_q"]
    if quantize:
        config["quantize"] = True  # moshi makes every linear layer of the LM a bitsandbytes int8 one
    lm = loaders.get_moshi_lm(None, lm_kwargs=config, device="cpu", dtype=torch.float32)
    if flavour == "personaplex":
        save_file(personaplex_layout(lm.state_dict()), str(out / MOSHI_FILE))
    else:
        save_model(lm, str(out / MOSHI_FILE))
    del lm
    print("[weights] random full-size Mimi (79 M parameters, about 385 MB)", flush=True)
    mimi = loaders.get_mimi(None, device="cpu")
    seed_codebooks(mimi)
    if flavour == "personaplex":  # its package's Mimi reads only the stacked layout
        save_file(personaplex_layout(mimi.state_dict()), str(out / MIMI_FILE))
    else:
        save_model(mimi, str(out / MIMI_FILE))

    full = dict(config, moshi_name=MOSHI_FILE, mimi_name=MIMI_FILE, tokenizer_name=TOKENIZER_FILE, model_type="moshi")
    (out / CONFIG_FILE).write_text(json.dumps(full, indent=2) + "\n")
    if flavour == "personaplex":
        print("[weights] PersonaPlex voice files from the WAV voices", flush=True)
        write_replay_voices(out)
    recipe_path.write_text(json.dumps(recipe) + "\n")
    print(f"[weights] checkpoint written to {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a tiny random Moshi checkpoint (real format).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=400, help="tokenizer pieces, also the LM's text_card")
    parser.add_argument("--context", type=int, help="the LM's context in frames (default: the 7B's 3000)")
    parser.add_argument("--flavour", choices=["kyutai", "personaplex"], default="kyutai", help="whose layout")
    parser.add_argument("--quantize", action="store_true", help="Kyutai's 8-bit format (bitsandbytes needed)")
    args = parser.parse_args(argv)
    generate(args.out, args.seed, args.dim, args.layers, args.vocab, args.context, args.flavour, args.quantize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
