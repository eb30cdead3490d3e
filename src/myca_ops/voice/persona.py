"""Personas: the role and voice a conversation starts from, as NVIDIA's PersonaPlex conditions Moshi.

A persona is a name, a text prompt (the role) and a voice (a WAV file in the voices folder, or
none).  Before its caller speaks, a slot is stepped through the persona's prompt with every
channel forced, as PersonaPlex's server does: the voice's Mimi frames on the model's own audio
channel (text: the zero token), 0.5 s of silence, the text prompt one token per step (audio:
silence), 0.5 s of silence; the caller's channel carries a 440 Hz sine frame throughout.  Only the
temporal transformer's state counts afterwards; what the model sampled meanwhile is overwritten.

This module turns personas into :class:`Prompt` (the forced tokens per step);
:class:`~myca_ops.voice.engine.SlotEngine` steps a slot through one and keeps its state.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from myca_ops.voice.protocol import FRAME_SAMPLES, SAMPLE_RATE

SILENCE_STEPS = 6  # 0.5 s at 12.5 frames/s, around the text prompt, as PersonaPlex
ZERO_TEXT = 3  # PersonaPlex's text token while the voice plays and in the silences (moshi's padding id)
SINE_HZ, SINE_AMPLITUDE = 440.0, 0.5  # the caller's channel during the prompt, as PersonaPlex
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A voice: a WAV file (Mimi encodes it at start), or one of PersonaPlex's voice files (.pt, as in
# its voices.tgz): the embeddings its LM took at each step of the voice, then its token cache.
WAV, REPLAY = ".wav", ".pt"


@dataclass(frozen=True)
class Persona:
    name: str
    text: str  # the role; wrapped in <system> tags when it is not already
    voice: str | None = None  # a file name in the voices folder


def wrap(text: str) -> str:
    """The text prompt as PersonaPlex's model was trained on it: between two <system> tags."""
    cleaned = text.strip()
    if cleaned.startswith("<system>") and cleaned.endswith("<system>"):
        return cleaned
    return f"<system> {cleaned} <system>"


def check_voice_name(voice: str) -> str:
    """A voice is a plain file name in the voices folder: a name with a path in it is refused."""
    if not NAME.match(voice) or ".." in voice:
        raise ValueError(f"voice {voice!r} is not a plain file name (letters, digits, '_', '-', '.'; no path)")
    return voice


def parse(raw: str) -> dict[str, Persona]:
    """The personas' file (``MYCA_MOSHI_PERSONAS_FILE``): a JSON list of {name, text, voice}, as the
    moshi role writes it from moshi_personas."""
    if not raw.strip():
        return {}
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the personas are not JSON ({exc}): set moshi_personas in the moshi role") from None
    personas: dict[str, Persona] = {}
    for item in items if isinstance(items, list) else [items]:
        if not isinstance(item, dict) or not item.get("name") or not str(item.get("text", "")).strip():
            raise ValueError(f"a persona needs a name and a text prompt, got {item!r} (moshi_personas)")
        name = str(item["name"])
        if not NAME.match(name):
            raise ValueError(f"persona name {name!r}: letters, digits, '_', '-', '.' only (moshi_personas)")
        if name in personas:
            raise ValueError(f"persona {name!r} is named twice (moshi_personas)")
        voice = item.get("voice") or None
        personas[name] = Persona(name, str(item["text"]), None if voice is None else check_voice_name(str(voice)))
    return personas


@dataclass(frozen=True)
class Prompt:
    """A slot's forced steps: `forced[i]` holds, for step i, the tokens written into the model's
    own channels (text, then each audio codebook; -1: not forced), already in the LM's delayed
    layout; `user` is the caller's channel (Mimi's codes of the sine frame) for every step."""

    key: tuple  # (text, voice): equal keys, equal state
    label: str  # the persona's name, or "client prompt"
    forced: object  # (steps, 1 + audio codebooks) int64 numpy
    user: object  # (codebooks,) int64 numpy
    # A .pt voice: the LM's input embeddings of its first steps, (steps, dim) float32 numpy, in
    # place of tokens; then the slot's token cache column at the step after them, (codebooks + 1,).
    replay: object = None
    restore: object = None

    @property
    def steps(self) -> int:
        return len(self.forced)


class Prompts:
    """Makes Prompts for one model: Mimi's codes for the sine, the silence and each voice (encoded
    once, before the engine streams), the text tokenizer, the LM's delays and context."""

    def __init__(
        self, mimi, tokenizer, delays: list[int], context: int, voices_dir: Path | None = None, model_dim: int = 0
    ) -> None:
        import numpy as np

        self.np, self.tokenizer, self.delays, self.context = np, tokenizer, list(delays), context
        t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
        sine = (SINE_AMPLITUDE * np.sin(2 * np.pi * SINE_HZ * t)).astype(np.float32)
        self.sine = self._encode(mimi, sine)[0]
        self.silence = self._encode(mimi, np.zeros(FRAME_SAMPLES, dtype=np.float32))[0]
        self.voices: dict[str, object] = {}  # a WAV's Mimi codes, (frames, codebooks)
        self.replays: dict[str, tuple] = {}  # a .pt voice's (embeddings, token cache)
        if voices_dir is not None and voices_dir.is_dir():
            for path in sorted(voices_dir.glob(f"*{WAV}")):
                self.voices[path.name] = self._encode(mimi, self._read(path))
            for path in sorted(voices_dir.glob(f"*{REPLAY}")):
                self.replays[path.name] = self._read_replay(path, model_dim, len(self.delays))

    @staticmethod
    def _read_replay(path: Path, model_dim: int, codebooks: int) -> tuple:
        """A PersonaPlex voice file: {"embeddings": (steps, ..., dim), "cache": (1, codebooks, ring)}."""
        import torch

        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            embeddings, cache = saved["embeddings"].float(), saved["cache"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same answer
            raise ValueError(f"voice {path.name}: not a PersonaPlex voice file ({exc})") from None
        if not len(embeddings):
            raise ValueError(f"voice {path.name}: a PersonaPlex voice file with no steps")
        embeddings = embeddings.reshape(len(embeddings), -1)
        if embeddings.shape[1] != model_dim or cache.dim() != 3 or cache.shape[1] != codebooks:
            raise ValueError(
                f"voice {path.name} was made for another model (embeddings {tuple(embeddings.shape)}, cache "
                f"{tuple(cache.shape)}; this model: dim {model_dim}, {codebooks} codebooks): use the voices.tgz of "
                "the checkpoint it runs"
            )
        return embeddings.numpy(), cache[0].numpy()

    @property
    def known(self) -> list[str]:
        return sorted([*self.voices, *self.replays])

    def _read(self, path: Path):
        import sphn

        try:
            audio, _ = sphn.read(str(path), sample_rate=SAMPLE_RATE)
        except Exception as exc:
            raise ValueError(f"voice {path.name}: not a readable audio file ({exc})") from None
        mono = audio.mean(axis=0) if audio.ndim == 2 else audio
        whole = len(mono) // FRAME_SAMPLES * FRAME_SAMPLES
        if not whole:
            raise ValueError(f"voice {path.name}: shorter than one 80 ms frame")
        return mono[:whole].astype(self.np.float32)

    @staticmethod
    def _encode(mimi, samples):
        """Mimi's codes of whole frames, (frames, codebooks); Mimi must not be streaming."""
        import torch

        device = next(mimi.parameters()).device
        codes = mimi.encode(torch.from_numpy(samples)[None, None].to(device))
        return codes[0].T.cpu().numpy()

    def make(self, text: str, voice: str | None, label: str) -> Prompt:
        np = self.np
        if voice is not None and voice not in self.known:
            raise ValueError(f"unknown voice {voice!r} (voices: {', '.join(self.known) or 'none'})")
        tokens = self.tokenizer.encode(wrap(text)) if text.strip() and self.tokenizer is not None else []
        replay = restore = None
        if voice in self.replays:
            # Its steps take embeddings, not these frames; the slot's tokens come back from its cache
            # (the column after them; the next holds the last frame's delayed codebooks, written ahead).
            replay, cache = self.replays[voice]
            steps, ring = len(replay), cache.shape[1]
            voice_frames = np.zeros((steps, len(self.silence)), np.int64)
            voice_frames[-1] = cache[1 : 1 + len(self.silence), (steps + 1) % ring]
            restore = cache[:, steps % ring]
        else:
            voice_frames = self.voices[voice] if voice is not None else np.zeros((0, len(self.silence)), np.int64)
        silence = np.repeat(self.silence[None], SILENCE_STEPS, axis=0)
        audio = np.concatenate([voice_frames, silence, np.repeat(self.silence[None], len(tokens), axis=0), silence])
        text_steps = np.concatenate(
            [
                np.full(len(voice_frames) + SILENCE_STEPS, ZERO_TEXT),
                np.asarray(tokens, np.int64),
                np.full(SILENCE_STEPS, ZERO_TEXT),
            ]
        )
        steps = len(text_steps)
        if self.context and steps >= self.context:
            raise ValueError(
                f"{label}: the prompt takes {steps} model steps, the model's context is {self.context}: shorten "
                "the text or the voice"
            )
        # Step i writes the frame after it (frame i): codebook c of that frame, delayed by d, is
        # written d steps later; the first d steps of a delayed codebook are never read.
        forced = np.full((steps, 1 + audio.shape[1]), -1, np.int64)
        forced[:, 0] = text_steps
        for c in range(audio.shape[1]):
            d = self.delays[1 + c]
            forced[d:, 1 + c] = audio[: steps - d, c]
        return Prompt((text, voice), label, forced, self.sine, replay, restore)
