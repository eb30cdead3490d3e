"""A smaller attention cache per slot: 8-bit keys and values, and a shorter context.

moshi's temporal transformer keeps, for every slot and layer, the keys and values of its last
``context`` steps (``RingKVCache``: 2 x kv-heads x context x head-dim in the model's dtype).  For
the 7B in bf16 at 3000 steps that is 1.5 GiB a slot: after the weights, three conversations on a
24 GB card.  Two settings shrink it, applied to the loaded LM before any engine streams:

- ``MYCA_MOSHI_KV_DTYPE`` (``moshi_kv_dtype``): ``model`` (moshi's own cache), ``int8`` or ``fp8``
  (float8 e4m3): each step's key and value vectors stored in 8 bits with one scale per vector
  (per slot, head and position, in the model's dtype), turned back into the model's dtype before
  attention.  fp8 here is a storage format: it needs no fp8 arithmetic, so it runs on any GPU (and
  on CPU); int8 keeps one more bit of mantissa for vectors of even magnitude.
- ``MYCA_MOSHI_CONTEXT_FRAMES`` (``moshi_context_frames``): the steps attended to, at most the
  checkpoint's own (3000 steps, 240 s, for moshiko).  A conversation goes on past it, the oldest
  steps leaving the window (a persona's prompt included: ``moshi_past_context`` says what then).

:func:`myca_ops.voice.model.cache_settings` reads both; :func:`myca_ops.voice.model.load` applies
them.  Both change the model's answers a little: ``tests/test_kvcache.py`` measures by how much
against moshi's own cache; ``bench/slot_bytes.py`` gives the bytes a slot takes for each setting.
"""

from __future__ import annotations

import torch
from moshi.modules.transformer import KVCacheResult, RingKVCache, StreamingMultiheadAttention

STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def temporal_attention(lm) -> list:
    """The LM's temporal transformer's self-attention modules: the ones whose cache grows with the
    context (the depformer's holds one frame's steps)."""
    return [
        m
        for m in lm.transformer.modules()
        if isinstance(m, StreamingMultiheadAttention) and not m.cross_attention and not m.weights_per_step
    ]


def shrink(lm, kv_dtype: str = "model", context: int | None = None) -> None:
    """Make the LM's temporal attention keep `context` steps (None: its own) stored in `kv_dtype`.
    Before any streaming: each attention makes its cache when an engine starts."""
    modules = temporal_attention(lm)
    own = lm.context or (modules[0].context if modules else None)
    if context is not None:
        if own is None or context > own:
            raise ValueError(
                f"moshi_context_frames is {context}: the checkpoint attends to {own} steps, and more is not "
                "what it was trained for: set it at most that (0: the checkpoint's own)"
            )
        for m in modules:
            m.context = context
        lm.context = context
    if kv_dtype == "model":
        return
    for m in modules:
        m._init_streaming_state = _with_8bit_cache(m, m._init_streaming_state, STORAGE[kv_dtype])


def _with_8bit_cache(module, make_state, storage):
    """moshi's streaming state for `module`, its cache replaced by an 8-bit one of the same capacity.
    moshi's state is made with a one-step cache, so the full one in the model's dtype is never
    allocated (it would not fit where this matters)."""

    def init(batch_size: int):
        capacity = module.context
        module.context = 1
        try:
            state = make_state(batch_size)
        finally:
            module.context = capacity
        small = state.kv_cache
        _, _, heads, _, dim = small.cache.shape
        state.kv_cache = Ring8bitKVCache(
            batch_size, heads, dim, capacity, small.cache.device, small.cache.dtype, storage
        )
        return state

    return init


class Ring8bitKVCache(RingKVCache):
    """moshi's ``RingKVCache`` (same positions, reset and exec mask) with keys and values stored in
    8 bits and a scale per vector: ``cache`` (2, B, heads, capacity, dim) in `storage`, ``scales``
    (2, B, heads, capacity, 1) in the model's dtype.  The engine snapshots and restores both."""

    def __init__(self, batch_size, heads, dim, capacity, device, dtype, storage) -> None:
        self.dtype, self.storage = dtype, storage
        self.capacity = capacity
        self.respect_exec_mask = True
        self.cache = torch.zeros((2, batch_size, heads, capacity, dim), device=device, dtype=storage)
        self.scales = torch.zeros((2, batch_size, heads, capacity, 1), device=device, dtype=dtype)
        self.end_offset = torch.zeros(batch_size, device=device, dtype=torch.long)
        # The largest magnitude each format holds: int8 rounds to steps of amax/127, e4m3 to 3 bits of mantissa.
        self.top = 127.0 if storage == torch.int8 else float(torch.finfo(storage).max)

    def quantize(self, x):
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / self.top
        scaled = x / scale
        if self.storage == torch.int8:
            scaled = scaled.round()
        return scaled.to(self.storage), scale.to(self.dtype)

    def complete(self, k, v, exec_mask):
        B, H, T, D = k.shape
        steps = torch.arange(T, device=self.end_offset.device, dtype=torch.long)
        written = ((steps + self.end_offset.view(-1, 1)) % self.capacity).view(B, 1, T, 1)
        for i, x in enumerate((k, v)):
            stored, scale = self.quantize(x)
            into = self.cache[i]
            if self.storage.is_floating_point and self.storage.itemsize == 1:  # torch has no scatter for float8
                into, stored = into.view(torch.uint8), stored.view(torch.uint8)
            into.scatter_(2, written.expand(-1, H, T, D), stored)
            self.scales[i].scatter_(2, written.expand(-1, H, T, 1), scale)
        keys = self.cache[0].to(self.dtype) * self.scales[0]
        values = self.cache[1].to(self.dtype) * self.scales[1]
        # The positions each cache entry holds, as moshi's RingKVCache gives them (-1: not written).
        indexes = torch.arange(self.capacity, device=self.end_offset.device, dtype=torch.long)
        last = self.end_offset.view(-1, 1) + T - 1
        delta = indexes - last % self.capacity
        positions = torch.where(delta <= 0, last + delta, last + delta - self.capacity)
        self.end_offset[:] = torch.where(exec_mask, self.end_offset + T, self.end_offset)
        positions = torch.where(indexes >= self.end_offset.view(-1, 1), torch.full_like(positions, -1), positions)
        return KVCacheResult(keys, values, positions)


def agreement(loaded, settings: list[tuple[str, int | None]], frames: int = 500, seed: int = 1) -> list[dict]:
    """How often the LM answers the same tokens with each (kv dtype, context) of `settings` as with
    moshi's own cache, greedy, over `frames` frames of a caller's codes (random, seeded).
    Teacher-forced: after each step every other engine is given the reference's tokens as its
    history, so a difference is that step's, not the echo of an earlier one.  `loaded`
    (myca_ops.voice.model.Loaded, greedy) is left as it is: each setting runs on a copy of the
    model.  Per setting, the share of frames equal per channel (text, then each audio codebook)
    and in all its channels."""
    import copy
    import dataclasses

    import numpy as np

    others = []
    for kv_dtype, context in settings:  # copies made before any streams: each engine streams its own Mimi and LM
        other = dataclasses.replace(loaded, lm=copy.deepcopy(loaded.lm), mimi=copy.deepcopy(loaded.mimi))
        shrink(other.lm, kv_dtype, context)
        others.append(other)
    engines = [m.engine(1) for m in (loaded, *others)]
    codebooks = loaded.lm.n_q - loaded.lm.dep_q
    codes = np.random.default_rng(seed).integers(0, loaded.lm.card, size=(frames, codebooks))
    same: list[list] = [[] for _ in settings]
    channels = loaded.lm.dep_q + 1  # text, then the model's audio codebooks
    try:
        for frame in codes:
            for engine in engines:
                engine.tick_codes({0: frame})
            # What each sampled in this step (its token cache at its new offset): the LM's output
            # gives them only after the acoustic delay, by when the history below has replaced them.
            sampled = [sampled_now(engine.lm_gen, channels) for engine in engines]
            history = engines[0].lm_gen._streaming_state.cache
            for engine, answer, equal in zip(engines[1:], sampled[1:], same, strict=True):
                equal.append(sampled[0] == answer)
                engine.lm_gen._streaming_state.cache.copy_(history)
    finally:
        for engine in engines:
            engine.close()
    names = ["text", *(f"audio {i + 1}" for i in range(loaded.lm.dep_q))]
    out = []
    for (kv_dtype, context), steps in zip(settings, same, strict=True):
        hits = np.array(steps)
        out.append(
            {
                "kv_dtype": kv_dtype,
                "context": context,
                "frames": len(hits),
                "per_channel": dict(zip(names, (round(float(x), 4) for x in hits.mean(axis=0)), strict=True)),
                "all": round(float(hits.all(axis=1).mean()), 4),
            }
        )
    return out


def sampled_now(lm_gen, channels: int):
    """The tokens slot 0 sampled in the LMGen's last step (text and its audio codebooks), as numpy."""
    state = lm_gen._streaming_state
    position = int(state.offsets[0]) % state.cache.shape[2]
    return state.cache[0, :channels, position].cpu().numpy().copy()
