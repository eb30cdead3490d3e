"""The batched Moshi server: moshi.server's /api/chat for many conversations on one model.

``myca-moshi serve`` runs it when ``MYCA_MOSHI_SERVER=batched`` (the moshi role's default).
The wire protocol is moshi.server's: the handshake byte 0x00 once the session has its slot,
Ogg/Opus pages as kind 1 both ways, text pieces as kind 2.  What differs:

- ``MYCA_MOSHI_SLOTS`` conversations at once (0: as many as the GPU's free memory holds, by
  the per-slot memory measured at start; 1 on CPU).  One model thread steps every slot that
  has a new 80 ms frame together (:class:`~myca_ops.voice.engine.SlotEngine`); the event
  loop reads and sends; each session's Opus decoding and encoding runs in
  ``MYCA_MOSHI_CODEC_WORKERS`` processes (:mod:`myca_ops.voice.codec`; unset: a quarter of the
  cores, at most 8, on a GPU host; 0, on the event loop, on CPU where the model needs the cores).
- A caller who finds every slot taken waits up to 0.1 s for one to be freed (a reload right after
  a hang-up), then is closed with 1013 "all N slots busy".
- A client that does not read loses audio, not the others' time: its outgoing queue is
  bounded, and what does not fit is dropped and counted.
- A slot is held only by a real caller, for a bounded time, by the bridge's own rules
  (:mod:`myca_ops.sessions`, ``MYCA_MOSHI_WRITE_STALL_S``, ``_IDLE_TIMEOUT_S``, ``_MAX_SESSION_S``,
  ``_MAX_FRAMES_PER_S``): a client that reads nothing, sends no audio, floods, or talks past the
  limit is ended, for callers that reach the server directly as for those behind the bridge; a
  connection that sends no complete request within ``MYCA_MOSHI_HEADER_TIMEOUT_S`` (10 s) is closed.
- Personas (:mod:`myca_ops.voice.persona`): ``?persona=NAME`` picks one of
  ``MYCA_MOSHI_PERSONAS_FILE``, else ``MYCA_MOSHI_DEFAULT_PERSONA`` applies; PersonaPlex's own
  ``text_prompt``/``voice_prompt`` are taken only with ``MYCA_MOSHI_ALLOW_CLIENT_PROMPTS``.  The
  slot is stepped through the prompt (or given the persona's kept state) before the handshake
  byte; an unknown persona or a refused prompt is closed with 1008 and the reason, before it.
- ``GET /healthz`` answers without a session (:mod:`myca_ops.voice.health` is its contract): 503
  while loading, then 200 with ``status`` ready, full (every slot taken: healthy, but no room), or
  over budget (the ticks of the last minute ran over 80 ms); ``GET /metrics`` is Prometheus text.
- ``POST /api/measure?ticks=N``, from this host only (verify's ``moshi_step_latency``): the served
  engine times its own ticks with every free slot talking speech-like audio beside the callers
  (:class:`Measurement`): the capacity verdict with no second copy of the model.  A caller who
  comes meanwhile takes a measuring slot at once; 409 while another measurement runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from myca_ops.sessions import Liveness, close, end, is_audio, watch
from myca_ops.version import installed
from myca_ops.voice import model
from myca_ops.voice.codec import Codec
from myca_ops.voice.engine import STAGES, SlotEngine, SlotState
from myca_ops.voice.metrics import Metrics
from myca_ops.voice.persona import NAME as persona_name
from myca_ops.voice.persona import NAME_RULE, Prompt, Prompts, check_voice_name
from myca_ops.voice.protocol import AUDIO, FRAME_BUDGET_MS, FRAME_SAMPLES, HANDSHAKE, SAMPLE_RATE, TEXT
from myca_ops.voice.settings import Settings
from myca_ops.voice.stats import percentile, summary

log = logging.getLogger("myca_ops.voice.server")

HEALTH_WINDOW_S = 60.0
BUSY_GRACE_S = 0.1  # a caller who finds every slot taken waits this long for one (a reload after a hang-up)
MAX_MEASURED_TICKS = 2000  # a measurement's ticks (and warm-up) at most: 160 s of frames
MAX_QUEUED_FRAMES = 50  # input frames per slot waiting for the model (4 s): more were sent faster than real time
PREFILL_TIMEOUT_S = 60.0  # a prompt slower than this on its way to the handshake is a fault, said in the close
SILENT_TOKENS = (0, 3)  # text ids moshi.server does not send (padding, end of padding)
STATE: web.AppKey[VoiceServer] = web.AppKey("state")


@dataclass
class Session:
    slot: int
    generation: int
    queue: asyncio.Queue
    tokenizer: Any
    transport: Any  # the connection's, to see what the client has not taken yet
    buffer_limit: int
    refused: asyncio.Future  # set to (outcome, code, reason) when the caller's audio cannot be read
    ready: asyncio.Future  # set to how the prompt was made ("cache", "prefill", "none") when it is
    prompt: Prompt | None = None  # the persona the slot is stepped through before the handshake
    sid: int = -1  # the session's Opus streams (Codec)
    encoding: int = 0  # answer frames with the codec: their room in the queue is kept for them
    dropped: int = 0

    def behind(self) -> bool:
        """The client is not reading: its queue is full, or its socket's buffers are."""
        unsent = self.transport.get_write_buffer_size() if self.transport else 0
        room = self.queue.maxsize - self.queue.qsize() - 2 * self.encoding  # an audio and a text message each
        return room < 2 or bool(self.buffer_limit and unsent > self.buffer_limit)

    def answer(self, output, metrics: Metrics, codec: Codec) -> None:
        """Encode one answer frame (audio, then its text), or drop it whole when the client is behind.
        A dropped frame is never encoded: the Opus stream stays valid, the listener hears a gap."""
        if output.pcm is None:
            return
        if self.behind():
            self.drop(metrics)
            return
        text, piece = int(output.tokens[0]), None
        if text not in SILENT_TOKENS and self.tokenizer is not None:  # None: random weights (a benchmark)
            piece = bytes([TEXT]) + self.tokenizer.id_to_piece(text).replace("\u2581", " ").encode()
        self.encoding += 1
        codec.encode(self.sid, self, output.pcm, piece)

    def send(self, opus: bytes, piece: bytes | None) -> None:
        """On the event loop: queue an encoded frame and its text, in the room kept for them (an
        encoded page is never dropped: the caller's Ogg stream would break)."""
        self.encoding -= 1
        for message in ([bytes([AUDIO]) + opus] if opus else []) + ([piece] if piece else []):
            self.queue.put_nowait(message)

    def drop(self, metrics: Metrics) -> None:
        self.dropped += 1
        metrics.dropped.labels("out").inc()


@dataclass
class Inbox:
    """What the event loop hands the model thread, guarded by VoiceServer.lock."""

    frames: list = field(default_factory=list)  # per slot: deque of (samples, when complete)
    first: set = field(default_factory=set)  # slots whose next frame is their session's first
    resets: dict = field(default_factory=dict)  # slots to start afresh, with their prompt (or None)


def fail(what: str) -> None:
    """Log the exception and end the process with exit 2 at once: systemd restarts the unit and the
    role's wait reports a crash loop with these journal lines, never a server that answers nothing."""
    log.exception(what)
    logging.shutdown()
    os._exit(2)


@dataclass
class Measurement:
    """A verify's request: `ticks` ticks timed, after `warmup`, with every slot talking: the callers'
    and, in each free slot, speech-like audio (whose answers go nowhere).  Made on the event loop,
    stepped by the model thread; `done` gets the figures."""

    ticks: int
    warmup: int
    done: asyncio.Future
    audio: Any = None  # speech-like samples, cycled through
    talking: set = field(default_factory=set)  # the free slots it talks in now
    ran: int = 0  # ticks so far, warm-up included
    callers: int = 0  # the most callers talking beside it
    times: dict = field(default_factory=lambda: {stage: [] for stage in (*STAGES, "total")})

    def frames(self, free: list[int]) -> tuple[dict, set]:
        """This tick's frame for each free slot, and the slots that start talking with it."""
        at = self.ran * FRAME_SAMPLES % (len(self.audio) - FRAME_SAMPLES)
        frame = self.audio[at : at + FRAME_SAMPLES]
        new = set(free) - self.talking
        self.talking = set(free)
        return dict.fromkeys(free, frame), new

    def report(self, slots: int, slot_bytes: int, settings: Settings) -> dict:
        total = summary(self.times["total"])
        return {
            "slots": slots,
            "callers": self.callers,
            "ticks": len(self.times["total"]),
            "stages": {stage: summary(values) for stage, values in self.times.items()},
            "samples_ms": [round(ms, 2) for ms in self.times["total"]],
            "slot_bytes": slot_bytes,
            "realtime": total["p99"] is not None and total["p99"] <= FRAME_BUDGET_MS,
            "mode": settings.mode,
            "device": settings.device,
            **device_facts(settings.device),
        }


def device_facts(device: str) -> dict:
    import torch

    cuda = device.startswith("cuda")
    return {"gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None, "torch": torch.__version__}


class VoiceServer:
    # Set before any caller is served: the loop and the codec at startup, the prompts at load.
    loop: asyncio.AbstractEventLoop
    codec: Codec
    prompts: Prompts

    def __init__(self, settings: Settings, build) -> None:
        """`build()` loads the model and returns (SlotEngine, text tokenizer); it runs off the event loop."""
        self.settings, self.build = settings, build
        self.metrics = Metrics()
        self.engine: SlotEngine | None = None
        self.start_s: float | None = None  # seconds from the launcher's start to the first caller taken
        self.tokenizer = None
        self.personas: dict[str, Prompt] = {}
        self.states: dict[tuple, SlotState] = {}  # a configured persona's state after its prompt
        self.sessions: list[Session | None] = []
        self.generation: list[int] = []
        self.lock = threading.Condition()
        self.inbox = Inbox()
        self.ticks: deque = deque()  # (monotonic end, total ms) over HEALTH_WINDOW_S
        self.stopping = False
        self.freed = asyncio.Event()  # set (and replaced) each time a slot is freed, on the event loop
        self.slot_bytes: int | None = None  # each slot's streaming state (KV caches, codec buffers)
        self.measurement: Measurement | None = None  # a verify's, while it runs (POST /api/measure)

    def start_codec(self) -> None:
        def refused(session: Session, why: str) -> None:
            if not session.refused.done():
                session.refused.set_result(("bad_audio", WSCloseCode.INVALID_TEXT, f"audio is not Ogg/Opus: {why}"))

        self.codec = Codec(
            self.settings.codec_workers,
            decoded=self.push,
            encoded=lambda session, opus, piece: session.send(opus, piece),
            refused=refused,
            loop=self.loop,
            died=fail,
        )
        if self.codec.workers:
            log.info("Opus in %d worker process(es)", self.codec.workers)

    # --- Loading and the model thread ---------------------------------------------------
    def load(self) -> None:
        try:
            engine, self.tokenizer, self.prompts = self.build()
            self.personas = {p.name: self.prompts.make(p.text, p.voice, p.name) for p in self.settings.personas}
            if self.settings.persona_warm:
                self.warm_personas(engine)
            self.slot_bytes = engine.state_bytes() // engine.slots
            self.engine = engine  # loaded: /healthz says so, callers are taken
        except Exception:
            fail("loading the model failed")
        slots = engine.slots
        self.sessions = [None] * slots
        self.generation = [0] * slots
        self.inbox.frames = [deque() for _ in range(slots)]
        self.metrics.slots_total.set(slots)
        self.start_s = round(time.monotonic() - self.settings.started_at, 1)
        self.metrics.start.labels(self.settings.compile_cache[0]).set(self.start_s)
        log.info(
            "ready in %.1f s (compile cache: %s): %d slot(s), mode %s on %s, personas: %s",
            self.start_s,
            self.settings.compile_cache[0],
            slots,
            self.settings.mode,
            self.settings.device,
            ", ".join(f"{n} ({p.steps} steps)" for n, p in self.personas.items()) or "none",
        )
        try:
            self.run_model()
        except Exception:  # a CUDA error or out of memory: every session would wait forever
            fail("the model loop failed")

    def warm_personas(self, engine: SlotEngine) -> None:
        """Each persona's state, built in slot 0 before any caller comes (then slot 0 is reset)."""
        for name, prompt in self.personas.items():
            started = time.monotonic()
            engine.reset([0])
            engine.prefill(0, prompt)
            while engine.prefilling:
                engine.tick({})
            self.states[prompt.key] = engine.snapshot(0)
            log.info(
                "persona %s: %d steps in %.2f s, state %.1f MiB",
                name,
                prompt.steps,
                time.monotonic() - started,
                self.states[prompt.key].nbytes / 2**20,
            )
        engine.reset([0])

    def run_model(self) -> None:
        engine, inbox = self.engine, self.inbox
        assert engine is not None  # load() set it
        while True:
            with self.lock:
                while not (
                    self.stopping
                    or any(inbox.frames)
                    or inbox.resets
                    or engine.prefilling
                    or (self.measurement and None in self.sessions)
                ):
                    self.lock.wait()
                if self.stopping:
                    return
                resets, inbox.resets = inbox.resets, {}
                taken = {
                    k: q.popleft()
                    for k, q in enumerate(inbox.frames)
                    if q and k not in resets and k not in engine.prefilling
                }
                first = inbox.first & set(taken)
                inbox.first -= first
                generations = list(self.generation)
                measuring = self.measurement
                if measuring:  # the slots no caller holds, read under the lock (a verify's ticks only)
                    free = [k for k, s in enumerate(self.sessions) if s is None and k not in resets]
                    measuring.callers = max(measuring.callers, sum(s is not None for s in self.sessions))
            engine.reset(list(resets))
            frames = {k: samples for k, (samples, _) in taken.items()}
            if measuring:
                free = [k for k in free if k not in engine.prefilling]
                talking, new = measuring.frames(free)
                engine.reset(list(new))  # nothing of an earlier conversation in a measuring slot
                frames.update(talking)
                first |= new
            ready = []
            for k, prompt in resets.items():
                if prompt is None:
                    continue
                if prompt.key in self.states:
                    engine.restore(k, self.states[prompt.key])
                    ready.append((k, "cache"))
                else:
                    engine.prefill(k, prompt)
            if frames or engine.prefilling:
                outputs, stages = engine.tick(frames, first)
                if measuring and frames:
                    self.measured(measuring, stages)
                for k, prompt in engine.prefilled:
                    if prompt.label in self.personas and prompt.key not in self.states:
                        self.states[prompt.key] = engine.snapshot(k)
                    ready.append((k, "prefill"))
                if taken and self.settings.past_context == "end":
                    full = [k for k in taken if engine.context and engine.steps[k] >= engine.context]
                    if full:
                        self.loop.call_soon_threadsafe(self.end_at_context, full, generations, engine.context)
                if taken:
                    done = time.monotonic()
                    self.record(stages, done, [done - complete for _, complete in taken.values()])
                    self.loop.call_soon_threadsafe(self.deliver, outputs, generations)
            if ready:
                self.loop.call_soon_threadsafe(self.announce, ready, generations)

    def measured(self, measuring: Measurement, stages: dict) -> None:
        """Model thread: count a tick of the measurement; at its last, free its slots and answer."""
        measuring.ran += 1
        if measuring.ran > measuring.warmup:
            for stage, ms in (*stages.items(), ("total", sum(stages.values()))):
                measuring.times[stage].append(ms)
        if measuring.ran < measuring.warmup + measuring.ticks:
            return
        with self.lock:
            self.measurement = None
        assert self.engine is not None and self.slot_bytes is not None  # ticking: loaded
        self.engine.reset(sorted(measuring.talking))
        report = measuring.report(self.engine.slots, self.slot_bytes, self.settings)

        def answer() -> None:
            if not measuring.done.done():
                measuring.done.set_result(report)

        self.loop.call_soon_threadsafe(answer)

    async def measure(self, ticks: int, warmup: int) -> dict | None:
        """On the event loop: the figures of a measurement of `ticks` ticks, or None while one runs."""
        from myca_ops.voice.probe import speech_like

        done = self.loop.create_future()
        audio = speech_like(min(ticks + warmup, 250) * FRAME_SAMPLES / SAMPLE_RATE + 0.1)  # up to 20 s, cycled
        with self.lock:
            if self.measurement is not None:
                return None
            self.measurement = Measurement(ticks, warmup, done, audio)
            self.lock.notify()
        log.info("measuring %d ticks with every free slot talking", ticks)
        return await done

    def record(self, stages: dict, done: float, waits: list[float]) -> None:
        m = self.metrics
        for stage, ms in stages.items():
            m.tick.labels(stage).observe(ms / 1000)
        total = sum(stages.values())
        m.tick.labels("total").observe(total / 1000)
        m.frames.inc(len(waits))
        m.late.inc(sum(1 for w in waits if w * 1000 > FRAME_BUDGET_MS))
        m.batch.observe(len(waits))
        with self.lock:
            self.ticks.append((done, total))
            while self.ticks and self.ticks[0][0] < done - HEALTH_WINDOW_S:
                self.ticks.popleft()

    def deliver(self, outputs: dict, generations: list[int]) -> None:
        """On the event loop: each slot's answer to the session that asked (not to a successor)."""
        for k, output in outputs.items():
            session = self.sessions[k]
            if session is not None and session.generation == generations[k]:
                session.answer(output, self.metrics, self.codec)

    def announce(self, ready: list, generations: list[int]) -> None:
        """On the event loop: these slots' prompts are in; their sessions may send the handshake."""
        for k, how in ready:
            session = self.sessions[k]
            if session is not None and session.generation == generations[k] and not session.ready.done():
                session.ready.set_result(how)

    def end_at_context(self, slots: list[int], generations: list[int], context: int | None) -> None:
        """On the event loop: these slots' sessions have filled the model's context; those with a
        persona end (moshi_past_context: end) before their prompt leaves the model's window."""
        seconds = (context or 0) * FRAME_SAMPLES / SAMPLE_RATE
        for k in slots:
            session = self.sessions[k]
            if session is not None and session.generation == generations[k] and session.prompt is not None:
                if not session.refused.done():
                    reason = f"the conversation filled the model's context ({seconds:.0f} s): call again to go on with {session.prompt.label}"
                    session.refused.set_result(("context", 1000, reason))

    # --- Personas -----------------------------------------------------------------------------
    def prompt_for(self, query) -> tuple[Prompt | None, str]:
        """The prompt a caller's query asks for (or the default persona's), or why it is refused."""
        s = self.settings
        text, voice = query.get("text_prompt", "").strip(), query.get("voice_prompt", "").strip()
        name = query.get("persona", "").strip()
        if text or voice:
            if not s.allow_client_prompts:
                return None, "client prompts are off on this server; ask for a persona (?persona=NAME)"
            if name:
                return None, "give a persona or text_prompt/voice_prompt, not both"
            if len(text) > s.max_prompt_chars:
                return None, f"text_prompt has {len(text)} characters, at most {s.max_prompt_chars} are taken"
            if s.voice_required and not voice:
                return None, "PersonaPlex's model starts from a voice prompt: give voice_prompt too"
            try:
                return self.prompts.make(text, voice and check_voice_name(voice) or None, "client prompt"), ""
            except ValueError as exc:
                return None, str(exc)
        name = name or s.default_persona
        if not name:
            return None, ""
        if not persona_name.fullmatch(name):
            return None, f"persona must be {NAME_RULE}"
        if name not in self.personas:  # its own name only: the list is the operator's, not a caller's
            return None, f"unknown persona {name!r}"
        return self.personas[name], ""

    def persona_health(self) -> dict:
        out = {}
        for name, prompt in self.personas.items():
            state = self.states.get(prompt.key)
            out[name] = {
                "steps": prompt.steps,
                "cached": state is not None,
                "state_mib": None if state is None else round(state.nbytes / 2**20, 2),
            }
        return out

    # --- Slots ------------------------------------------------------------------------------
    def take_slot(self, make_session) -> Session | None:
        with self.lock:
            free = next((k for k, s in enumerate(self.sessions) if s is None), None)
            if free is None:
                return None
            self.generation[free] += 1
            session = self.sessions[free] = make_session(free, self.generation[free])
            self.inbox.frames[free].clear()
            self.inbox.resets[free] = session.prompt
            self.inbox.first.add(free)
            self.lock.notify()
        self.metrics.slots_used.inc()
        return session

    def release(self, session: Session) -> None:
        """On the event loop: the slot is free for the next caller (one waiting for it included)."""
        with self.lock:
            if self.sessions[session.slot] is session:
                self.sessions[session.slot] = None
                self.generation[session.slot] += 1  # answers still in flight go nowhere
                self.inbox.frames[session.slot].clear()
                self.inbox.first.discard(session.slot)
        self.metrics.slots_used.dec()
        freed, self.freed = self.freed, asyncio.Event()
        freed.set()

    async def slot_within(self, make_session, seconds: float) -> Session | None:
        """A slot freed within `seconds`, or None: a caller who hangs up and calls again at once may
        arrive before the server has read the end of the old connection."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.freed.wait(), left)
            except asyncio.TimeoutError:
                return None
            session = self.take_slot(make_session)
            if session is not None:
                return session
        return None

    def push(self, session: Session, frames) -> None:
        """Whole 80 ms frames of samples (the codec cuts them) to the model thread."""
        whole = len(frames) // FRAME_SAMPLES
        now, dropped = time.monotonic(), 0
        with self.lock:
            if self.sessions[session.slot] is not session or not session.ready.done():
                return  # gone, or still in its prompt: nothing is heard before the handshake
            queue = self.inbox.frames[session.slot]
            for i in range(whole):
                if len(queue) < MAX_QUEUED_FRAMES:
                    queue.append((frames[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], now))
                else:
                    dropped += 1
            self.lock.notify()
        if dropped:
            self.metrics.dropped.labels("in").inc(dropped)

    # --- HTTP -------------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        with self.lock:
            window = [ms for _, ms in self.ticks]
            used = sum(1 for s in self.sessions if s is not None)
        p50, p99 = percentile(window, 50), percentile(window, 99)
        body = {
            "server": "batched",
            "version": installed(),
            "model_loaded": self.engine is not None,
            "mode": self.settings.mode,
            "device": self.settings.device,
            "slots_used": used,
            "slots_total": self.engine.slots if self.engine else None,
            "slot_bytes": self.slot_bytes,
            "measuring": self.measurement is not None,  # a verify's ticks: every free slot talks meanwhile
            "tick_ms": {
                "p50": None if p50 is None else round(p50, 2),
                "p99": None if p99 is None else round(p99, 2),
                "count": len(window),
                "window_s": HEALTH_WINDOW_S,
            },
            "budget_ms": FRAME_BUDGET_MS,
            "personas": self.persona_health(),
            "default_persona": self.settings.default_persona or None,
            "client_prompts": self.settings.allow_client_prompts,
            # This start: compiled kernels found ("warm"), compiled anew ("cold") or none ("unused"),
            # and the seconds from the launcher's start to the first caller taken (null while loading).
            "compile_cache": {"state": self.settings.compile_cache[0], "why": self.settings.compile_cache[1]},
            "start_s": self.start_s,
        }
        if self.engine is None:
            body.update(ok=False, status="loading")
        elif p99 is not None and p99 > FRAME_BUDGET_MS:
            body.update(ok=True, status="over budget")
        elif used == self.engine.slots:
            body.update(ok=True, status="full")
        else:
            body.update(ok=True, status="ready")
        return (200 if body["ok"] else 503), body


async def chat(request: web.Request) -> web.StreamResponse:
    server: VoiceServer = request.app[STATE]
    m, settings = server.metrics, server.settings
    # No aiohttp heartbeat (its ping waits forever behind a full buffer): the session's watch pings.
    # timeout: how long a close waits for the client's answer (a busy caller's too).
    ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024, timeout=2.0, autoping=False)
    await ws.prepare(request)
    if server.engine is None:
        m.sessions.labels("loading").inc()
        await close(ws, WSCloseCode.TRY_AGAIN_LATER, "the model is still loading", request.transport)
        return ws

    prompt, refusal = server.prompt_for(request.query)
    if refusal:
        m.sessions.labels("refused").inc()
        log.info("session refused: %s", refusal)
        await close(ws, WSCloseCode.POLICY_VIOLATION, refusal, request.transport)
        return ws

    def make(slot: int, generation: int) -> Session:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(settings.send_queue)
        refused, ready = loop.create_future(), loop.create_future()
        session = Session(
            slot, generation, queue, server.tokenizer, request.transport, settings.send_buffer_bytes, refused, ready
        )
        session.prompt = prompt
        if prompt is None:
            ready.set_result("none")
        session.sid = server.codec.open(session)
        return session

    asked = time.monotonic()

    session = server.take_slot(make) or await server.slot_within(make, BUSY_GRACE_S)
    if session is None:
        m.sessions.labels("busy").inc()
        await close(ws, WSCloseCode.TRY_AGAIN_LATER, f"all {server.engine.slots} slots busy", request.transport)
        return ws
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and settings.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    peer = request.remote or ""
    log.info("session in slot %d from %s", session.slot, peer)
    seen = Liveness(settings.rules)
    tasks: set = set()
    outcome, code, reason = "error", WSCloseCode.GOING_AWAY, "connection lost"
    try:
        how = await asyncio.wait_for(session.ready, PREFILL_TIMEOUT_S)
        m.handshake.labels(how).observe(time.monotonic() - asked)
        await ws.send_bytes(bytes([HANDSHAKE]))  # the first thing the caller gets, before any ping
        tasks = {
            asyncio.create_task(send_loop(ws, session.queue)),
            asyncio.create_task(receive_loop(ws, server, session, seen)),
            asyncio.create_task(watch(ws, seen)),
            session.refused,
        }
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ended = done.pop()
        failure = None if ended.cancelled() else ended.exception()
        if failure is not None:  # a bug, said in the log and the close, not a silent "connection lost"
            log.error("session in slot %d failed", session.slot, exc_info=failure)
            outcome, code, reason = "error", WSCloseCode.INTERNAL_ERROR, f"server error: {type(failure).__name__}"
        elif not ended.cancelled() and ended.result() is not None:
            outcome, code, reason = ended.result()
    except (ConnectionError, aiohttp.ClientError):
        pass
    except asyncio.TimeoutError:
        outcome, code, reason = (
            "error",
            WSCloseCode.TRY_AGAIN_LATER,
            f"the persona's prompt took over {PREFILL_TIMEOUT_S:.0f} s",
        )
    finally:
        server.release(session)  # the slot is free before any close handshake
        server.codec.close(session.sid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        m.sessions.labels(outcome).inc()
        log.info(
            "session in slot %d from %s ended (%s: %s, %d answer frames dropped)",
            session.slot,
            peer,
            outcome,
            reason,
            session.dropped,
        )
        await end(outcome, code, reason, ws, request.transport)
    return ws


async def receive_loop(ws: web.WebSocketResponse, server: VoiceServer, session: Session, seen: Liveness):
    """The client's frames: audio to the model (through its Opus decoder); pongs to the watch; the
    session's end when the client closes, errs or floods.  Other binary kinds are ignored, as
    moshi.server does (and are not audio)."""
    async for message in ws:
        if message.type in (WSMsgType.PING, WSMsgType.PONG):
            over = await seen.control(ws, message.type, message.data)
            if over:
                server.metrics.dropped.labels("in").inc()
                return over
        elif message.type == WSMsgType.ERROR:
            return "error", WSCloseCode.PROTOCOL_ERROR, f"client error: {message.data}"
        elif message.type == WSMsgType.BINARY and message.data:
            over = seen.frame(audio=is_audio(message.data))
            if over:
                server.metrics.dropped.labels("in").inc()
                return over
            if message.data[0] == AUDIO:
                server.codec.decode(session.sid, session, message.data[1:])
                if session.refused.done():  # decoded inline: not Ogg/Opus, the stream cannot be read past it
                    return session.refused.result()
    return "ended", 1000, "client closed"


async def send_loop(ws: web.WebSocketResponse, queue: asyncio.Queue) -> None:
    try:
        while True:
            await ws.send_bytes(await queue.get())
    except (ConnectionError, RuntimeError, aiohttp.ClientError):
        pass  # the client is gone; the receive loop ends the session


async def healthz(request: web.Request) -> web.Response:
    status, body = request.app[STATE].health()
    return web.json_response(body, status=status)


async def measure(request: web.Request) -> web.Response:
    """POST /api/measure?ticks=N&warmup=W: the served engine's tick figures (Measurement), asked
    from this host only: a measurement makes every slot talk, which no one else may ask for."""
    server: VoiceServer = request.app[STATE]
    try:
        local = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        local = False
    if not local:
        return web.json_response({"error": "measurements are asked from the server's own host"}, status=403)
    if server.engine is None:
        return web.json_response({"error": "the model is still loading"}, status=503)
    try:
        ticks, warmup = int(request.query.get("ticks", 100)), int(request.query.get("warmup", 10))
    except ValueError:
        ticks = warmup = -1
    if not (1 <= ticks and 0 <= warmup and ticks + warmup <= MAX_MEASURED_TICKS):
        why = f"ticks (1 or more) and warmup (0 or more) must be whole numbers, together at most {MAX_MEASURED_TICKS}"
        return web.json_response({"error": why}, status=400)
    report = await server.measure(ticks, warmup)
    if report is None:
        return web.json_response({"error": "another measurement is running: ask again when it ends"}, status=409)
    return web.json_response(report)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(server: VoiceServer) -> web.Application:
    app = web.Application()
    app[STATE] = server

    async def lifecycle(app: web.Application):
        server.loop = asyncio.get_running_loop()
        server.start_codec()
        thread = threading.Thread(target=server.load, name="moshi-model", daemon=True)
        thread.start()
        yield
        with server.lock:
            server.stopping = True
            server.lock.notify_all()
        server.codec.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/api/chat", chat)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/measure", measure)
    return app


# --- Building the model ------------------------------------------------------------------
def builder(settings: Settings, env: dict[str, str]):
    """The `build` for VoiceServer: the service's model (myca_ops.voice.model) and its engine."""

    def build():
        log.info("loading mimi and moshi on %s", settings.device)
        loaded = model.load(env)
        prompts = loaded.prompts(Path(settings.voices_dir))
        slots = settings.slots
        if not slots:
            made = [prompts.make(p.text, p.voice, p.name) for p in settings.personas]
            slots, how = (
                loaded.slots_for_gpu(sum(p.steps for p in made)) if settings.device.startswith("cuda") else (1, "CPU")
            )
            log.info("slots: %d (%s)", slots, how)
        return loaded.engine(slots, settings.prefill_steps, bool(prompts.replays)), loaded.tokenizer, prompts

    return build


def serve(settings: Settings, build) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    context = None
    if settings.ssl_dir:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(settings.ssl_dir, "cert.pem"), os.path.join(settings.ssl_dir, "key.pem"))
    web.run_app(
        make_app(VoiceServer(settings, build)),
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        keepalive_timeout=settings.header_timeout_s,  # aiohttp times a new connection from its start
    )
