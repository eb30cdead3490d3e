"""The rules a websocket session of the voice stack lives by, for the bridge and the batched server.

A slot is held only by a real caller, for a bounded time:

- **write stall**: the client is pinged every ``write_stall_s / 4``; a client whose pongs stop for
  ``write_stall_s`` is not reading, and its connection is aborted at once (no close handshake:
  it could not take part in one), so its slot is free at once;
- **idle**: no *audio* for ``idle_timeout_s`` (frames of other kinds do not count) closes with 4408;
- **session limit**: ``max_session_s`` after the start, 4410;
- **flood**: over ``max_frames_per_s`` frames in a second aborts the connection (1008 in the log);
  the frames over the budget go nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiohttp import WSCloseCode

CLOSE_POLICY = WSCloseCode.POLICY_VIOLATION  # 1008: over the frame budget
CLOSE_IDLE = 4408
CLOSE_SESSION_LIMIT = 4410
CLOSE_ABORTED = 1006  # reserved, never sent: what a client that stopped reading would see
CLOSE_TIMEOUT_S = 2.0
# Outcomes whose connection is aborted at once, without a close handshake: a client that reads
# nothing cannot take part in one, and a flood is not worth the CPU of waiting for it.
ABORTED = frozenset({"write_stall", "flood"})


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
    """When the client last answered a ping and last sent audio, when its session started, and
    its frames in the current second."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.started = self.last_pong = self.last_audio = time.monotonic()
        self.second, self.frames = 0, 0

    def pong(self) -> None:
        self.last_pong = time.monotonic()

    def frame(self, audio: bool) -> tuple[str, int, str] | None:
        """Count one frame from the client; the session's end when it is over the budget."""
        now = time.monotonic()
        if int(now) != self.second:
            self.second, self.frames = int(now), 0
        self.frames += 1
        if self.frames > self.rules.max_frames_per_s:
            return "flood", CLOSE_POLICY, f"over {self.rules.max_frames_per_s} frames in a second"
        if audio:
            self.last_audio = now
        return None


async def _ping(ws) -> None:
    with contextlib.suppress(Exception):  # the connection is going: the watch notices the silence
        await ws.ping()


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
                ping = asyncio.create_task(_ping(ws))
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
