"""Personas: the role and voice a conversation starts from, as NVIDIA's PersonaPlex conditions Moshi.

A persona is a name, a text prompt (the role) and a voice (a WAV file in the voices folder, or one
of PersonaPlex's voice files).  Before its caller speaks, a slot is stepped through the persona's
prompt with every channel forced, as PersonaPlex's `LMGen` does (NVIDIA/personaplex,
`moshi/moshi/models/lm.py`): the voice's Mimi frames on the model's own audio channel (text: the
zero token), 0.5 s of silence, the text prompt one token per step (audio: silence), 0.5 s of
silence; the caller's channel carries a sine throughout.  Silence and sine are fixed token frames
(PersonaPlex's, below), not encoded audio.  Only the temporal transformer's state counts
afterwards; what the model sampled meanwhile is overwritten.  tests/test_personaplex_reference.py
holds this to answers recorded from NVIDIA's own code.

Kyutai's moshiko was not trained on such prompts: there a persona is a prefix the model hears as
earlier conversation, which sways what follows without the guarantee of a trained condition.

This module turns personas into :class:`Prompt` (the forced tokens per step);
:class:`~myca_ops.voice.engine.SlotEngine` steps a slot through one and keeps its state.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from myca_ops.voice.protocol import FRAME_SAMPLES, SAMPLE_RATE

SILENCE_STEPS = 6  # 0.5 s at 12.5 frames/s, around the text prompt, as PersonaPlex
ZERO_TEXT = 3  # PersonaPlex's text token while the voice plays and in the silences (moshi's padding id)
# PersonaPlex's fixed Mimi frames (its lm.py, SILENCE_TOKENS and SINE_TOKENS, at the revision the
# moshi role pins): the agent's silence, and the caller's 440 Hz sine on every prompt step.  Encoding
# one isolated 80 ms frame instead gives Mimi's onset codes, which the model never saw there.
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
VOICE_LUFS = -24.0  # a WAV voice's loudness before it is encoded, as PersonaPlex normalises it
# The persona-name rule, the one place it is written: the server, the bridge, the role's checks and
# the website's ticket route (filter_plugins/myca.py: persona_rule) all take it from here.
NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME_RULE = "1 to 64 letters, digits, '_', '-' or '.', the first a letter or digit"
NAME = re.compile(NAME_PATTERN)
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
    if not NAME.fullmatch(voice) or ".." in voice:
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
        if not NAME.fullmatch(name):
            raise ValueError(f"persona name {name!r}: {NAME_RULE} (moshi_personas)")
        if name in personas:
            raise ValueError(f"persona {name!r} is named twice (moshi_personas)")
        voice = item.get("voice") or None
        personas[name] = Persona(name, str(item["text"]), None if voice is None else check_voice_name(str(voice)))
    return personas


@dataclass(frozen=True)
class Prompt:
    """A slot's forced steps: `forced[i]` holds, for step i, the tokens written into the model's
    own channels (text, then each audio codebook; -1: not forced), already in the LM's delayed
    layout (its last rows hold only the last frame's delayed codebooks); `user` is the caller's
    channel (the sine frame) for every step."""

    key: tuple  # (text, voice): equal keys, equal state
    label: str  # the persona's name, or "client prompt"
    forced: Any  # (steps, 1 + audio codebooks) int64 numpy
    user: Any  # (codebooks,) int64 numpy
    # A .pt voice: the LM's input embeddings of its first steps, (steps, dim) float32 numpy, in
    # place of tokens; then the slot's token cache column at the step after them, (codebooks + 1,).
    replay: Any = None
    restore: Any = None

    @property
    def steps(self) -> int:
        return len(self.forced)


class Prompts:
    """Makes Prompts for one model: Mimi's codes of each voice (encoded once, before the engine
    streams), the text tokenizer, the LM's delays and context."""

    def __init__(
        self, mimi, tokenizer, delays: list[int], context: int, voices_dir: Path | None = None, model_dim: int = 0
    ) -> None:
        import numpy as np

        self.np, self.tokenizer, self.delays, self.context = np, tokenizer, list(delays), context
        self.sine, self.silence = np.asarray(SINE_TOKENS, np.int64), np.asarray(SILENCE_TOKENS, np.int64)
        self.voices: dict[str, Any] = {}  # a WAV's Mimi codes, (frames, codebooks)
        self.replays: dict[str, tuple] = {}  # a .pt voice's (embeddings, token cache)
        if voices_dir is not None and voices_dir.is_dir():
            for path in sorted(voices_dir.glob(f"*{WAV}")):
                self.voices[path.name] = self._encode(mimi, self.read_voice(path))
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

    @staticmethod
    def read_voice(path: Path):
        """A WAV voice as PersonaPlex reads one: 24 kHz, the first channel, normalised to
        VOICE_LUFS, the partial last frame zero-padded."""
        import numpy as np
        import pyloudnorm
        import sphn

        try:
            audio, _ = sphn.read(str(path), sample_rate=SAMPLE_RATE)
        except Exception as exc:
            raise ValueError(f"voice {path.name}: not a readable audio file ({exc})") from None
        first = audio[0] if audio.ndim == 2 else audio
        if len(first) < 2 * FRAME_SAMPLES:  # its first frame is never fed: one more must follow
            raise ValueError(f"voice {path.name}: shorter than two 80 ms frames")
        try:
            with np.errstate(divide="ignore"):
                loudness = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(first)
        except ValueError as exc:  # under its 0.4 s block
            raise ValueError(f"voice {path.name}: too short to measure its loudness ({exc})") from None
        if not np.isfinite(loudness):
            raise ValueError(f"voice {path.name}: silent (no loudness to normalise to {VOICE_LUFS} LUFS)")
        with warnings.catch_warnings():  # pyloudnorm warns when a peak passes 1.0, as PersonaPlex lets it
            warnings.simplefilter("ignore")
            voice = pyloudnorm.normalize.loudness(first, loudness, VOICE_LUFS)
        return np.pad(voice, (0, -len(voice) % FRAME_SAMPLES)).astype(np.float32)

    @staticmethod
    def _encode(mimi, samples):
        """Mimi's codes, (frames, codebooks), one 80 ms frame at a time as a streaming encoder
        gives them (PersonaPlex's voice path); Mimi must not be streaming already."""
        import torch

        device = next(mimi.parameters()).device
        frames = torch.from_numpy(samples).to(device).view(-1, 1, 1, FRAME_SAMPLES)
        with mimi.streaming(1):
            codes = [mimi.encode(frame) for frame in frames]
        return torch.cat(codes, dim=-1)[0].T.cpu().numpy()

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
        elif voice is not None:
            voice_frames = self.voices[voice][1:]  # PersonaPlex never feeds a voice's first frame
        else:
            voice_frames = np.zeros((0, len(self.silence)), np.int64)
        silence = np.repeat(self.silence[None], SILENCE_STEPS, axis=0)
        audio = np.concatenate([voice_frames, silence, np.repeat(self.silence[None], len(tokens), axis=0), silence])
        text_steps = np.concatenate(
            [
                np.full(len(voice_frames) + SILENCE_STEPS, ZERO_TEXT),
                np.asarray(tokens, np.int64),
                np.full(SILENCE_STEPS, ZERO_TEXT),
            ]
        )
        frames = len(text_steps)
        own_delays = self.delays[1 : 1 + audio.shape[1]]
        steps = frames + max(own_delays)  # the last frame's delayed codebooks take steps of their own
        if self.context and steps >= self.context:
            raise ValueError(
                f"{label}: the prompt takes {steps} model steps, the model's context is {self.context}: shorten "
                "the text or the voice"
            )
        # Step i writes the frame after it (frame i): codebook c of that frame, delayed by d, is
        # written d steps later; the first d steps of a delayed codebook are never read.
        forced = np.full((steps, 1 + audio.shape[1]), -1, np.int64)
        forced[:frames, 0] = text_steps
        for c, d in enumerate(own_delays):
            forced[d : d + frames, 1 + c] = audio[:, c]
        return Prompt((text, voice), label, forced, self.sine, replay, restore)
