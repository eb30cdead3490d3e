"""Session events to the MAS: a bounded queue drained by one task, so audio never waits.

Events are POSTed as JSON, one at a time and in order; a failed POST is retried with
backoff.  When the queue is full the oldest event is dropped and counted, never the audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

log = logging.getLogger("myca_ops.bridge")


class EventSink:
    def __init__(self, url: str, maxsize: int = 1000, on_drop=None, max_backoff_s: float = 30.0) -> None:
        self.url = url
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize)
        self.on_drop = on_drop or (lambda: None)
        self.max_backoff_s = max_backoff_s
        self._task: asyncio.Task | None = None

    def emit(self, event: dict) -> None:
        if not self.url:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.on_drop()
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
                event = await self.queue.get()
                backoff = 0.5
                while True:
                    try:
                        async with session.post(self.url, json=event) as resp:
                            if resp.status < 300:
                                break
                            problem = f"HTTP {resp.status}"
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        problem = f"{type(exc).__name__}: {exc}"
                    log.warning("session event to %s failed (%s); retrying in %.1f s", self.url, problem, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
