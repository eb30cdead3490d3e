"""The rules a websocket session of the voice stack lives by, for the bridge and the batched server.

A slot is held only by a real caller, for a bounded time:

- **write stall**: the client is pinged every ``write_stall_s / 4`` with a payload of random bytes;
  only a pong that echoes one (RFC 6455: a pong answers with the ping's payload) proves it read
  that far into what it was sent, so an unsolicited or forged pong proves nothing.  A client with
  no such pong for ``write_stall_s`` is not reading, and its connection is aborted at once (no
  close handshake: it could not take part in one), so its slot is free at once;
- **idle**: no *audio* for ``idle_timeout_s`` closes with 4408: audio is an Ogg page of the audio
  kind (``is_audio``), so frames of other kinds, control frames and a bare kind byte do not count;
- **session limit**: ``max_session_s`` after the start, 4410;
- **flood**: every frame the client sends, control frames included, draws on a budget of
  ``max_frames_per_s`` that refills continuously (a sliding second, not a calendar one); a frame
  beyond it aborts the connection (1008 in the log) and goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType

from myca_ops.voice.protocol import AUDIO

CLOSE_POLICY = WSCloseCode.POLICY_VIOLATION  # 1008: over the frame budget
CLOSE_IDLE = 4408
CLOSE_SESSION_LIMIT = 4410
CLOSE_ABORTED = 1006  # reserved, never sent: what a client that stopped reading would see
CLOSE_TIMEOUT_S = 2.0
# Outcomes whose connection is aborted at once, without a close handshake: a client that reads
# nothing cannot take part in one, and a flood is not worth the CPU of waiting for it.
ABORTED = frozenset({"write_stall", "flood"})
OGG_PAGE_HEADER = 27  # bytes of an Ogg page before its segment table: "OggS", version, flags, ...


def is_audio(data: bytes) -> bool:
    """Whether a client's frame is audio: the audio kind byte, then an Ogg page."""
    return len(data) > OGG_PAGE_HEADER and data[0] == AUDIO and data[1:5] == b"OggS"


@dataclass(frozen=True)
class Rules:
    write_stall_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_session_s: float = 3600.0
    max_frames_per_s: int = 200  # the web client sends 50 pages a second

    def check(self) -> Rules:
        for name in ("write_stall_s", "idle_timeout_s", "max_session_s", "max_frames_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0, got {getattr(self, name)}")
        return self


class Liveness:
    """When the client last answered one of our pings and last sent audio, when its session
    started, and what is left of its frame budget."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.started = self.last_pong = self.last_audio = self.last_frame = time.monotonic()
        self.budget = float(rules.max_frames_per_s)
        self.pings: tuple[bytes, ...] = ()  # the payloads of the last two pings sent

    def ping_payload(self) -> bytes:
        payload = os.urandom(8)
        self.pings = (*self.pings[-1:], payload)
        return payload

    def pong(self, payload: bytes) -> None:
        if payload in self.pings:  # an answer to a ping of ours, not a pong made up unread
            self.last_pong = time.monotonic()

    def frame(self, audio: bool) -> tuple[str, int, str] | None:
        """Count one frame from the client (any kind, control frames too); the session's end when
        it is over the budget, which refills at max_frames_per_s a second up to one second's worth."""
        now, rate = time.monotonic(), self.rules.max_frames_per_s
        self.budget = min(float(rate), self.budget + (now - self.last_frame) * rate)
        self.last_frame = now
        if self.budget < 1:
            return "flood", CLOSE_POLICY, f"over {rate} frames in a second"
        self.budget -= 1
        if audio:
            self.last_audio = now
        return None

    async def control(self, ws, kind: WSMsgType, payload: bytes) -> tuple[str, int, str] | None:
        """A ping or pong from the client: counted as a frame; a ping answered, a pong taken as
        proof of reading when it answers one of ours.  The session's end when over the budget."""
        over = self.frame(audio=False)
        if over is None and kind == WSMsgType.PONG:
            self.pong(payload)
        elif over is None:
            await ws.pong(payload)
        return over


async def _ping(ws, payload: bytes) -> None:
    with contextlib.suppress(Exception):  # the connection is going: the watch notices the silence
        await ws.ping(payload)


async def watch(ws, seen: Liveness) -> tuple[str, int, str]:
    """The session's timers, one for all: pings the client (its pongs prove it reads), and ends the
    session on a write stall, on no audio for idle_timeout_s, or at max_session_s."""
    rules = seen.rules
    interval = min(rules.write_stall_s / 4, 5.0)
    ping = None
    try:
        while True:
            now = time.monotonic()
            if now - seen.last_pong > rules.write_stall_s:
                stalled = now - seen.last_pong
                return "write_stall", CLOSE_ABORTED, f"write stall: the client read nothing for {stalled:.1f} s"
            if now - seen.last_audio > rules.idle_timeout_s:
                return "idle", CLOSE_IDLE, f"idle: no audio from the client for {rules.idle_timeout_s:g} s"
            if now - seen.started > rules.max_session_s:
                return "session_limit", CLOSE_SESSION_LIMIT, f"session limit: {rules.max_session_s:g} s"
            if ping is None or ping.done():  # one ping in flight: behind a full buffer it waits
                ping = asyncio.create_task(_ping(ws, seen.ping_payload()))
            await asyncio.sleep(interval)
    finally:
        if ping is not None:
            ping.cancel()


async def close(ws, code: int, reason: str, transport=None) -> None:
    """Close within CLOSE_TIMEOUT_S: a peer that stops reading (or never answers the close) cannot
    hold the handler; past the bound the connection is aborted."""
    # A close reason has at most 123 bytes of valid UTF-8 (a browser fails a connection whose
    # reason is not): cut on a character boundary.
    message = reason.encode()[:120].decode(errors="ignore").encode()
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT_S)
    except asyncio.TimeoutError:
        if transport is not None:
            transport.abort()
    except Exception:  # noqa: BLE001 - the peer is gone: nothing to close
        if transport is not None:
            transport.abort()


def end(outcome: str, code: int, reason: str, ws, transport):
    """How a session's connection ends: aborted for ABORTED outcomes, else a bounded close."""
    if outcome in ABORTED:
        if transport is not None:
            transport.abort()
        return asyncio.sleep(0)
    return close(ws, code, reason, transport)
