"""Session events to the MAS: a bounded queue drained by one task, so audio never waits.

Events are POSTed as JSON, one at a time and in order, each signed with the MAS's events token
(``SIGNATURE``: an HMAC of its time and body, so the token itself never crosses the network and a
captured event cannot be sent again later or altered).  A 4xx
answer is permanent (the MAS refuses that event: it is dropped, counted and logged once per
status); a 5xx or a network error is retried with jittered backoff, but only while the queue
has room: when it fills up, the event being retried is dropped (counted) so that one event
never holds up the others beyond the queue's bound.  A full queue drops its oldest event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time

import aiohttp

log = logging.getLogger("myca_ops.bridge")
SIGNATURE = "X-Myca-Signature"  # t=UNIX TIME,v1=hex HMAC-SHA256(token, "TIME." + body)
SIGNATURE_MAX_AGE_S = 300  # a signed event older (or newer) than this is refused: clocks may differ a little


def sign(token: str, body: bytes, now: float | None = None) -> str:
    stamp = str(int(time.time() if now is None else now))
    digest = hmac.new(token.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def signature_problem(token: str, header: str, body: bytes, now: float | None = None) -> str | None:
    """Why `header` does not sign `body` with `token` now; None when it does."""
    fields = dict(part.partition("=")[::2] for part in header.split(",") if "=" in part)
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or not given:
        return f"no {SIGNATURE} header of the form t=TIME,v1=HMAC"
    if abs((time.time() if now is None else now) - int(stamp)) > SIGNATURE_MAX_AGE_S:
        return f"signed at {stamp}, more than {SIGNATURE_MAX_AGE_S} s from the MAS's clock"
    if not hmac.compare_digest(sign(token, body, int(stamp)).encode(), f"t={stamp},v1={given}".encode()):
        return "the signature does not match (another mas_events_token, or an altered event)"
    return None


class EventSink:
    def __init__(
        self, url: str, maxsize: int = 1000, on_drop=None, max_backoff_s: float = 30.0, token: str = ""
    ) -> None:
        self.url = url
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize)
        self.on_drop = on_drop or (lambda reason: None)
        self.max_backoff_s = max_backoff_s
        self.token = token
        self._task: asyncio.Task | None = None
        self._refusals_logged: set[int] = set()

    def emit(self, event: dict) -> None:
        if not self.url:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.on_drop("queue_full")
        self.queue.put_nowait(event)

    async def start(self) -> None:
        if self.url:
            self._task = asyncio.create_task(self._drain())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self._send(session, await self.queue.get())

    async def _send(self, session: aiohttp.ClientSession, event: dict) -> None:
        backoff = 0.5
        while True:
            body = json.dumps(event).encode()
            headers = {"Content-Type": "application/json", SIGNATURE: sign(self.token, body)}
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        return
                    if resp.status < 500:
                        self._refused(resp.status, await resp.text())
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if self.queue.full():
                self.on_drop("retries_over_queue_bound")
                log.warning("session event to %s dropped (%s): the queue is full behind it", self.url, problem)
                return
            delay = backoff * random.uniform(0.5, 1.5)  # jitter: bridges restarted together do not retry in step
            log.warning("session event to %s failed (%s); retrying in %.1f s", self.url, problem, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _refused(self, status: int, body: str) -> None:
        self.on_drop(f"refused_{status}")
        if status not in self._refusals_logged:  # once per status: a misconfiguration would flood the log
            self._refusals_logged.add(status)
            log.error(
                "the MAS at %s refused a session event with HTTP %s (%s); such events are dropped and counted "
                "(check mas_events_token and the bridge's version)",
                self.url,
                status,
                body[:200],
            )
