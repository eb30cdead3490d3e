"""Moshi's per-frame loop for many conversations at once: one model, B slots stepped together.

moshi keeps its streaming state per batch item (``mimi.streaming(B)``, ``LMGen.streaming(B)``),
resets items alone (``reset_streaming(mask)``) and leaves items out of a step
(``set_exec_mask(mask)``).  A slot is one conversation: each tick takes one 80 ms frame from
every slot that has one; the others are masked out and go on later exactly where they were.

Per slot, a tick does what ``moshi.server`` does for its one session: ``mimi.encode``; after
a session's first frame the encoder is reset (that frame is in the past for the model, its
codes still go to the LM); ``lm_gen.step``; ``mimi.decode`` once the LM's acoustic delay has
passed for that slot.  Not thread-safe: one thread calls :meth:`SlotEngine.tick`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

from myca_ops.voice.protocol import FRAME_SAMPLES

STAGES = ("encode", "lm_step", "decode")


@dataclass
class SlotOutput:
    codes: object  # Mimi's codes for the frame, (8,) int64 numpy
    tokens: object | None  # the LM's (text, 8 audio) tokens, (9,) int64 numpy; None during the delay
    pcm: object | None  # 1920 decoded samples, float32 numpy; None during the delay


class SlotEngine:
    def __init__(self, mimi, lm_gen, slots: int, device: str) -> None:
        import torch

        self.torch, self.mimi, self.lm_gen, self.slots, self.device = torch, mimi, lm_gen, slots, device
        if not lm_gen.support_out_of_sync:
            # Without it LMGen answers None for every slot while any one is in its delay.
            raise ValueError("the LMGen must be made with support_out_of_sync=True")
        self.max_delay = lm_gen.max_delay
        self._streaming = ExitStack()  # the slots' state lives until close()
        self._streaming.enter_context(mimi.streaming(slots))
        self._streaming.enter_context(lm_gen.streaming(slots))
        self.steps = [0] * slots  # LM steps since the slot's reset; output starts after max_delay
        self.cuda = device.startswith("cuda")

    def state_bytes(self) -> int:
        """Bytes of every tensor in the slots' streaming state (KV caches, codec buffers, token
        caches): fixed at the start for a ring KV cache, whatever the sessions' lengths."""
        seen: set[int] = set()

        def size(value, depth: int = 0) -> int:
            if isinstance(value, self.torch.Tensor):
                if value.data_ptr() in seen:
                    return 0
                seen.add(value.data_ptr())
                return value.nbytes
            if isinstance(value, (list, tuple)):
                return sum(size(v, depth + 1) for v in value)
            if depth < 3 and hasattr(value, "__dict__") and not callable(value):
                return sum(size(v, depth + 1) for v in vars(value).values())
            return 0

        modules = [self.lm_gen, *self.lm_gen.lm_model.modules(), *self.mimi.modules()]
        return sum(size(m._streaming_state) for m in modules if getattr(m, "_streaming_state", None) is not None)

    def close(self) -> None:
        """Free the slots' state (KV caches, codec buffers); the models can make another engine."""
        self._streaming.close()

    def _mask(self, members) -> object:
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

    def tick(self, frames: dict, first: set | frozenset = frozenset()) -> tuple[dict, dict]:
        """Step every slot in `frames` ({slot: 1920 float32 samples}); `first` holds the slots
        whose frame is their session's first.  Returns ({slot: SlotOutput}, ms per stage)."""
        torch = self.torch
        active = sorted(frames)
        batch = torch.zeros(self.slots, 1, FRAME_SAMPLES, dtype=torch.float32)
        for k in active:
            batch[k, 0] = torch.from_numpy(frames[k])
        clock = StageClock(torch, self.cuda)
        exec_mask = self._mask(active)
        self.mimi.set_exec_mask(exec_mask)
        self.lm_gen.set_exec_mask(exec_mask)
        codes = self.mimi.encode(batch.to(self.device))  # (B, 8, 1)
        if first:
            self.mimi.reset_streaming(self._mask(first))
        clock.mark()
        tokens = self.lm_gen.step(codes)  # (B, 9, 1): ungenerated ids where a slot is masked or delayed
        for k in active:
            self.steps[k] += 1
        ready = [k for k in active if self.steps[k] > self.max_delay]
        clock.mark()
        pcm = None
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
        return out, dict(zip(STAGES, clock.stages_ms(), strict=True))


class StageClock:
    """Stage boundaries: CUDA events on a GPU (no host sync inside the tick), perf_counter on CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda, self.marks = torch, cuda, []
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
