"""The batched server's settings, read from its environment (``MYCA_MOSHI_*``, written by the
moshi role into moshi.env) once at its start: a wrong value stops the start, naming it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from myca_ops.envvars import number, switch, whole
from myca_ops.sessions import Rules
from myca_ops.voice import model
from myca_ops.voice.persona import Persona, parse

PAST_CONTEXT = ("wrap", "end")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8998
    slots: int = 0  # 0: from the GPU's free memory (1 on CPU)
    send_queue: int = 25  # messages per session waiting to be sent (about 2 s of audio)
    # Bytes a client may leave unread (socket and write buffers) before its answers are dropped:
    # about 4 s of audio, so a client that stops reading never hears stale speech later.
    send_buffer_bytes: int = 16384
    ssl_dir: str = ""
    mode: str = "unknown"  # as the launcher decided it, for /healthz
    device: str = "cuda"
    codec_workers: int = 0  # processes for the sessions' Opus work; 0: on the event loop
    header_timeout_s: float = 10.0  # a connection that sends no complete request in this time is closed
    rules: Rules = Rules()  # write stall, idle, session limit, frame budget: as the bridge's
    personas: tuple[Persona, ...] = ()
    default_persona: str = ""  # given to a caller who names none; "": no prompt at all
    allow_client_prompts: bool = False  # PersonaPlex's text_prompt/voice_prompt from the query
    voice_required: bool = False  # PersonaPlex's model: every conversation starts from a voice prompt
    max_prompt_chars: int = 1000
    persona_warm: bool = True  # each persona's state built at start, not by its first caller
    prefill_steps: int = 4  # a prefilling slot's model steps per tick
    # A session with a persona that reaches the model's context: wrap (talk on; its prompt leaves
    # the model's window step by step, as moshi.server's would) or end (closed with the reason).
    past_context: str = "wrap"
    voices_dir: str = ""  # the voice files (WAV, or PersonaPlex's .pt); "": the weights folder's voices/
    # Whether this start found compiled kernels (myca_ops.voice.compile_cache), and when it began.
    compile_cache: tuple[str, str] = ("unused", "not prepared")
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_env(cls, env: dict[str, str], mode: str) -> Settings:
        where = model.device(env)
        personas = parse(persona_file(env.get("MYCA_MOSHI_PERSONAS_FILE", "")))
        past_context = env.get("MYCA_MOSHI_PAST_CONTEXT", "") or "wrap"
        if past_context not in PAST_CONTEXT:
            raise ValueError(f"MYCA_MOSHI_PAST_CONTEXT is {past_context!r}: expected wrap or end (moshi_past_context)")
        default = env.get("MYCA_MOSHI_DEFAULT_PERSONA", "")
        if default and default not in personas:
            known = ", ".join(personas) or "none"
            raise ValueError(f"MYCA_MOSHI_DEFAULT_PERSONA is {default!r}, not a configured persona (personas: {known})")
        voice_required = model.flavour(env) == "personaplex"
        if voice_required:
            check_personaplex(personas, default, switch(env, "MYCA_MOSHI_HALF"))
        auto_workers = min(8, max(1, (os.cpu_count() or 1) // 4)) if where.startswith("cuda") else 0
        return cls(
            host=env.get("MYCA_MOSHI_HOST", "127.0.0.1"),
            port=whole(env, "MYCA_MOSHI_PORT", 8998),
            slots=whole(env, "MYCA_MOSHI_SLOTS", 0),
            send_queue=max(1, whole(env, "MYCA_MOSHI_SEND_QUEUE", 25)),
            send_buffer_bytes=whole(env, "MYCA_MOSHI_SEND_BUFFER_BYTES", 16384),
            ssl_dir=env.get("MYCA_MOSHI_SSL_DIR", ""),
            mode=mode,
            device=where,
            codec_workers=whole(env, "MYCA_MOSHI_CODEC_WORKERS", auto_workers),
            header_timeout_s=number(env, "MYCA_MOSHI_HEADER_TIMEOUT_S", 10.0),
            rules=Rules(
                number(env, "MYCA_MOSHI_WRITE_STALL_S", 10.0),
                number(env, "MYCA_MOSHI_IDLE_TIMEOUT_S", 60.0),
                number(env, "MYCA_MOSHI_MAX_SESSION_S", 3600.0),
                whole(env, "MYCA_MOSHI_MAX_FRAMES_PER_S", 200),
            ).check(),
            personas=tuple(personas.values()),
            default_persona=default,
            allow_client_prompts=switch(env, "MYCA_MOSHI_ALLOW_CLIENT_PROMPTS"),
            voice_required=voice_required,
            max_prompt_chars=whole(env, "MYCA_MOSHI_MAX_PROMPT_CHARS", 1000),
            persona_warm=switch(env, "MYCA_MOSHI_PERSONA_WARM", True),
            prefill_steps=max(1, whole(env, "MYCA_MOSHI_PREFILL_STEPS", 4)),
            past_context=past_context,
            voices_dir=env.get("MYCA_MOSHI_VOICES_DIR", "") or str(model.weights_dir(env) / "voices"),
        )


def check_personaplex(personas: dict[str, Persona], default: str, half: bool) -> None:
    """PersonaPlex's model as NVIDIA trained and serves it: bf16, and a voice prompt before every
    conversation (the moshi role checks the same before a deploy)."""
    if half:
        raise ValueError("MYCA_MOSHI_HALF is on: PersonaPlex's model runs in bf16, never fp16 (moshi_half: false)")
    if not default:
        raise ValueError(
            "PersonaPlex's model needs a default persona with a voice (MYCA_MOSHI_DEFAULT_PERSONA; "
            "moshi_default_persona): a caller who names none would get no prompt, which it was never trained on"
        )
    voiceless = [p.name for p in personas.values() if p.voice is None]
    if voiceless:
        raise ValueError(
            f"persona(s) {', '.join(voiceless)} have no voice: PersonaPlex's model always starts from a voice "
            "prompt (moshi_personas)"
        )


def persona_file(path: str) -> str:
    """The personas' JSON (the moshi role writes it from moshi_personas); "" when none is set."""
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ValueError(
            f"MYCA_MOSHI_PERSONAS_FILE: cannot read {path} ({exc.strerror}); re-run the moshi role"
        ) from None
