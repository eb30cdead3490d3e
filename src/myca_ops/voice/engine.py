"""Moshi's per-frame loop for many conversations at once: one model, B slots stepped together.

moshi keeps its streaming state per batch item (``mimi.streaming(B)``, ``LMGen.streaming(B)``),
resets items alone (``reset_streaming(mask)``) and leaves items out of a step
(``set_exec_mask(mask)``).  A slot is one conversation: each tick takes one 80 ms frame from
every slot that has one; the others are masked out and go on later exactly where they were.

Per slot, a tick does what ``moshi.server`` does for its one session: ``mimi.encode``; after
a session's first frame the encoder is reset (that frame is in the past for the model, its
codes still go to the LM); ``lm_gen.step``; ``mimi.decode`` once the LM's acoustic delay has
passed for that slot.  Not thread-safe: one thread calls :meth:`SlotEngine.tick`.

A slot with a persona is first stepped through its :class:`~myca_ops.voice.persona.Prompt` (the
model's channels forced, no Mimi), in the same ticks as the talking slots and up to
``prefill_steps`` steps per tick while the tick stays under PREFILL_TICK_MS (every model step
steps the whole batch: the talking slots must not pay for a prompt); :meth:`snapshot` keeps the state it ends in (the filled part of
the KV caches, offsets, token buffers) and :meth:`restore` gives it to the next slot that needs it.
A PersonaPlex voice file's steps (``Prompt.replay``) give the LM their saved input embeddings
instead of tokens (:class:`ReplayInput`), then the slot's token cache is set from the file.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from myca_ops.voice.protocol import FRAME_SAMPLES

if TYPE_CHECKING:
    from myca_ops.voice.persona import Prompt

STAGES = ("encode", "lm_step", "decode")
PREFILL_TICK_MS = 60.0  # extra prompt steps only while a tick with talking slots stays under this


@dataclass
class SlotOutput:
    codes: Any  # Mimi's codes for the frame, (8,) int64 numpy
    tokens: Any  # the LM's (text, 8 audio) tokens, (9,) int64 numpy; None during the delay
    pcm: Any  # 1920 decoded samples, float32 numpy; None during the delay


@dataclass
class SlotState:
    """A slot's LM state after a prompt: the filled positions only (see SlotEngine.snapshot)."""

    steps: int
    rows: dict  # per-slot rows of the state's tensors, by (module, attribute)
    rings: list  # the KV caches' first `steps` positions

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in [*self.rows.values(), *self.rings])


class ReplayInput:
    """Per-slot embeddings in place of the LM's input tokens (a PersonaPlex voice file's steps):
    for the slots in `mask`, the audio embeddings give zeros and the text embedding gives
    `embedding`, so the temporal transformer takes exactly the saved input.  Hooks on the LM's
    input embeddings, installed before CUDA graphs are captured; the buffers change in place."""

    def __init__(self, torch, lm, slots: int, device: str) -> None:
        self.torch = torch
        dtype = lm.text_emb.weight.dtype
        self.mask = torch.zeros(slots, 1, 1, dtype=torch.bool, device=device)
        self.embedding = torch.zeros(slots, 1, lm.dim, dtype=dtype, device=device)
        self.hooks = [emb.register_forward_hook(self._zero) for emb in lm.emb]
        self.hooks.append(lm.text_emb.register_forward_hook(self._replace))

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def _zero(self, module, args, out):
        return self.torch.where(self.mask, self.torch.zeros_like(out), out)

    def _replace(self, module, args, out):
        return self.torch.where(self.mask, self.embedding.to(out.dtype), out)


@dataclass
class Prefill:
    """A slot on its way through a prompt (SlotEngine.prefill), on the engine's device."""

    prompt: Prompt
    forced: Any  # (steps, 1 + audio codebooks): the tokens written into the model's channels, -1 none
    user: Any  # (codebooks,): the caller's channel meanwhile (the sine frame)
    replay: Any  # a .pt voice's input embeddings, (steps, dim), or None
    restore: Any  # the slot's token cache column after the replayed steps, or None
    step: int = 0  # the next of `forced` to write


class SlotEngine:
    def __init__(self, mimi, lm_gen, slots: int, device: str, prefill_steps: int = 4, replay: bool = False) -> None:
        import torch

        self.torch, self.mimi, self.lm_gen, self.slots, self.device = torch, mimi, lm_gen, slots, device
        self.replay = ReplayInput(torch, lm_gen.lm_model, slots, device) if replay else None
        if not lm_gen.support_out_of_sync:
            # Without it LMGen answers None for every slot while any one is in its delay.
            raise ValueError("the LMGen must be made with support_out_of_sync=True")
        self.max_delay = lm_gen.max_delay
        self._streaming = ExitStack()  # the slots' state lives until close()
        self._streaming.enter_context(mimi.streaming(slots))
        self._streaming.enter_context(lm_gen.streaming(slots))
        self.steps = [0] * slots  # LM steps since the slot's reset; output starts after max_delay
        self.cuda = device.startswith("cuda")
        self.prefill_steps = max(1, prefill_steps)  # a prefilling slot's LM steps per tick
        self.prefilling: dict[int, Prefill] = {}  # by slot
        self.prefilled: list[tuple] = []  # (slot, Prompt) whose prompt ended in the last tick
        self.last_tick: tuple[float, float] | None = None  # (ms without extra prompt steps, ms per LM step)
        self._rows, self._rings = self._slot_tensors()

    def state_bytes(self) -> int:
        """Bytes of every tensor in the slots' streaming state (KV caches, codec buffers, token
        caches): fixed at the start for a ring KV cache, whatever the sessions' lengths."""
        seen: set[int] = set()

        def size(value, depth: int = 0) -> int:
            if isinstance(value, self.torch.Tensor):
                where = value.data_ptr() or id(value)  # the meta device (sizes without memory) has no addresses
                if where in seen:
                    return 0
                seen.add(where)
                return value.nbytes
            if isinstance(value, (list, tuple)):
                return sum(size(v, depth + 1) for v in value)
            if depth < 3 and hasattr(value, "__dict__") and not callable(value):
                return sum(size(v, depth + 1) for v in vars(value).values())
            return 0

        modules = [self.lm_gen, *self.lm_gen.lm_model.modules(), *self.mimi.modules()]
        return sum(size(m._streaming_state) for m in modules if getattr(m, "_streaming_state", None) is not None)

    def _slot_tensors(self) -> tuple[dict, list]:
        """Where the LM's per-slot streaming tensors live, as (holder, attribute): rows (batch
        first: token buffers, offsets) and the ring KV caches (2, batch, heads, capacity, dim or 1),
        whose filled positions are 0..steps-1.  Read at each use: moshi replaces some (offsets)."""
        from moshi.modules.streaming import StreamingModule
        from moshi.modules.transformer import RingKVCache

        rows, rings = {}, []
        modules = [self.lm_gen, *(m for m in self.lm_gen.lm_model.modules() if isinstance(m, StreamingModule))]
        for i, state in enumerate(m._streaming_state for m in modules):
            for name, value in (vars(state) if state is not None else {}).items():
                if isinstance(value, RingKVCache):
                    if value.end_offset.shape[0] != self.slots:
                        raise ValueError("the LM's KV cache does not keep a position per slot")
                    # An 8-bit cache (myca_ops.voice.kvcache) has its scales beside, in the same layout.
                    rings += [(value, part) for part in ("cache", "scales") if hasattr(value, part)]
                    rows[(i, name)] = (value, "end_offset")
                elif (
                    name != "exec_mask"
                    and isinstance(value, self.torch.Tensor)
                    and value.dim() > 0
                    and value.shape[0] == self.slots
                ):
                    rows[(i, name)] = (state, name)
        return rows, rings

    @property
    def context(self) -> int | None:
        """Steps the LM attends to (its ring KV cache); past them a slot's first steps are forgotten."""
        return getattr(*self._rings[0]).shape[3] if self._rings else None

    def snapshot(self, slot: int) -> SlotState:
        """The slot's LM state, as a copy on the device: the filled positions only."""
        n = self.steps[slot]
        rings = [getattr(holder, name) for holder, name in self._rings]
        if any(n > ring.shape[3] for ring in rings):
            raise ValueError(f"slot {slot} has run past the model's context: its state is no prompt any more")
        return SlotState(
            n,
            {key: getattr(holder, name)[slot].clone() for key, (holder, name) in self._rows.items()},
            [ring[:, slot, :, :n].clone() for ring in rings],
        )

    def restore(self, slot: int, state: SlotState) -> None:
        """Give a (reset) slot the state of a snapshot: it goes on exactly as the snapshotted one."""
        # Keyed: with one slot, tensors shared by all slots (an initial token) look per-slot too.
        for key, (holder, name) in self._rows.items():
            if key in state.rows or self.slots > 1:
                getattr(holder, name)[slot].copy_(state.rows[key])
        for (holder, name), saved in zip(self._rings, state.rings, strict=True):
            getattr(holder, name)[:, slot, :, : state.steps].copy_(saved)
        self.steps[slot] = state.steps

    def prefill(self, slot: int, prompt: Prompt) -> None:
        """Step this (reset) slot through `prompt` in the next ticks; it is in `prefilled` after
        the tick that ends it.  The slot takes no audio meanwhile."""
        torch = self.torch
        forced = torch.from_numpy(prompt.forced).to(self.device)
        user = torch.from_numpy(prompt.user).to(self.device)
        replay = restore = None
        if prompt.replay is not None:
            if self.replay is None:
                raise ValueError(f"{prompt.label}: a .pt voice needs an engine made with replay=True")
            replay = torch.from_numpy(prompt.replay).to(self.device, self.replay.embedding.dtype)
            restore = torch.from_numpy(prompt.restore).to(self.device)
        self.prefilling[slot] = Prefill(prompt, forced, user, replay, restore)

    def close(self) -> None:
        """Free the slots' state (KV caches, codec buffers); the models can make another engine."""
        self._streaming.close()
        if self.replay is not None:
            self.replay.remove()

    def _mask(self, members) -> Any:
        mask = self.torch.zeros(self.slots, dtype=self.torch.bool)
        mask[list(members)] = True
        return mask.to(self.device)

    def reset(self, slots) -> None:
        """Start these slots afresh (a new conversation): nothing of the last one remains."""
        if not slots:
            return
        mask = self._mask(slots)
        self.mimi.reset_streaming(mask)
        self.lm_gen.reset_streaming(mask)
        for k in slots:
            self.steps[k] = 0
            self.prefilling.pop(k, None)

    def tick(self, frames: dict, first: set | frozenset = frozenset()) -> tuple[dict, dict]:
        """Step every slot in `frames` ({slot: 1920 float32 samples}) and every prefilling slot;
        `first` holds the slots whose frame is their session's first.  Returns ({slot:
        SlotOutput} for the slots in `frames`, ms per stage); `prefilled` lists the prompts ended."""
        torch = self.torch
        active = sorted(frames)
        prefilling = sorted(self.prefilling)
        if set(active) & set(prefilling):
            raise ValueError(f"slots {sorted(set(active) & set(prefilling))} are prefilling: they take no audio yet")
        self.prefilled = []
        batch = torch.zeros(self.slots, 1, FRAME_SAMPLES, dtype=torch.float32)
        for k in active:
            batch[k, 0] = torch.from_numpy(frames[k])
        clock = StageClock(torch, self.cuda)
        if active:
            self.mimi.set_exec_mask(self._mask(active))
            codes = self.mimi.encode(batch.to(self.device))  # (B, 8, 1)
        else:  # prompts only: no audio to encode
            lm = self.lm_gen.lm_model
            codes = torch.zeros(self.slots, lm.n_q - lm.dep_q, 1, dtype=torch.long)
            codes = codes.to(self.device)
        if first:
            self.mimi.reset_streaming(self._mask(first))
        clock.mark()
        tokens = self._lm_step(codes, active)
        extra = 0
        while self.prefilling and extra < self.extra_steps(bool(active)):
            self._lm_step(codes, [])
            extra += 1
        ready = [k for k in active if self.steps[k] > self.max_delay]
        clock.mark()
        pcm: Any = None
        if ready:
            ready_mask = self._mask(ready)
            self.mimi.set_exec_mask(ready_mask)
            # Rows not decoded hold out-of-range ids: give them a valid one (their state stays masked).
            audio_tokens = torch.where(ready_mask[:, None, None], tokens[:, 1:], torch.zeros_like(tokens[:, 1:]))
            pcm = self.mimi.decode(audio_tokens)[:, 0].cpu().numpy().copy()
        clock.mark()
        # Copies: on CPU .numpy() shares the model's buffers, and an answer kept by its reader
        # would pin them (a long session's memory grew by a megabyte a frame).
        codes_np, tokens_np = codes[:, :, 0].cpu().numpy().copy(), tokens[:, :, 0].cpu().numpy().copy()
        out = {
            k: SlotOutput(codes_np[k], tokens_np[k] if k in ready else None, pcm[k] if k in ready else None)
            for k in active
        }
        stages = dict(zip(STAGES, clock.stages_ms(), strict=True))
        step_ms = stages["lm_step"] / (1 + extra)
        self.last_tick = (sum(stages.values()) - extra * step_ms, step_ms)
        return out, stages

    def tick_codes(self, codes: dict) -> dict:
        """One LM step for slots given their caller's Mimi codes ({slot: (codebooks,) ints}) in place
        of audio: no encoder, no decoder, no prompt steps.  What a recorded run of another engine is
        compared with, token for token.  Returns {slot: the LM's (text, audio) tokens, or None
        during its delay}."""
        torch = self.torch
        lm = self.lm_gen.lm_model
        batch = torch.zeros(self.slots, lm.n_q - lm.dep_q, 1, dtype=torch.long)
        for k, frame in codes.items():
            batch[k, :, 0] = torch.as_tensor(frame)
        tokens = self._lm_step(batch.to(self.device), sorted(codes))[:, :, 0].cpu().numpy().copy()
        return {k: tokens[k] if self.steps[k] > self.max_delay else None for k in codes}

    def extra_steps(self, talking: bool) -> int:
        """Prompt steps a tick may add: all it may when no one talks, else as many as keep the
        tick under PREFILL_TICK_MS by the last tick's figures (none on a host already over it)."""
        if not talking or self.last_tick is None:
            return self.prefill_steps - 1
        base_ms, step_ms = self.last_tick
        return max(0, min(self.prefill_steps - 1, int((PREFILL_TICK_MS - base_ms) / max(step_ms, 0.01))))

    def _lm_step(self, codes, talking: list[int]):
        """One LM step of the talking slots (with their Mimi codes) and the prefilling ones (the
        caller's channel: the prompt's sine codes); then the prompts' tokens overwrite what the
        model sampled for its own channels."""
        prefilling = sorted(self.prefilling)
        if prefilling:
            codes = codes.clone()
            for k in prefilling:
                codes[k, :, 0] = self.prefilling[k].user
        if self.replay is not None:
            self.replay.mask.zero_()
            for k in prefilling:
                replay, step = self.prefilling[k].replay, self.prefilling[k].step
                if replay is not None and step < len(replay):
                    self.replay.mask[k] = True
                    self.replay.embedding[k, 0] = replay[step]
        self.lm_gen.set_exec_mask(self._mask(talking + prefilling))
        tokens = self.lm_gen.step(codes)  # (B, 9, 1): ungenerated ids where a slot is masked or delayed
        for k in talking + prefilling:
            self.steps[k] += 1
        if prefilling:
            cache = self.lm_gen._streaming_state.cache
            width, ring = self.lm_gen.lm_model.dep_q + 1, cache.shape[2]
            for k in prefilling:
                entry = self.prefilling[k]
                forced, position = entry.forced[entry.step], self.steps[k] % ring
                cache[k, :width, position] = self.torch.where(forced >= 0, forced, cache[k, :width, position])
                if entry.replay is not None and entry.step == len(entry.replay) - 1:  # the voice's last replayed step
                    cache[k, :, position] = entry.restore
                entry.step += 1
                if entry.step == len(entry.forced):
                    del self.prefilling[k]
                    self.prefilled.append((k, entry.prompt))
        return tokens


class StageClock:
    """Stage boundaries: CUDA events on a GPU (no host sync inside the tick), perf_counter on CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def stages_ms(self) -> list[float]:
        pairs = list(zip(self.marks, self.marks[1:], strict=False))
        if self.cuda:
            self.torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1000 for a, b in pairs]
