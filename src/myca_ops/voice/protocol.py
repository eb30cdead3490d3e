"""Moshi's websocket protocol (/api/chat): one binary message per item, first byte = kind."""

from __future__ import annotations

import asyncio
import ssl
import time

HANDSHAKE = 0x00  # server -> client, bare byte: the session is ready
AUDIO = 0x01  # both ways: Ogg/Opus pages, 24 kHz mono
TEXT = 0x02  # server -> client: a UTF-8 text piece
CONTROL = 0x03
METADATA = 0x04  # JSON
ERROR = 0x05
PING = 0x06
KINDS = {HANDSHAKE: "handshake", AUDIO: "audio", TEXT: "text", CONTROL: "control", METADATA: "metadata", ERROR: "error",
         PING: "ping"}

SAMPLE_RATE = 24000
FRAME_RATE = 12.5
FRAME_SAMPLES = 1920  # one model frame: 80 ms at 24 kHz
FRAME_BUDGET_MS = 1000 / FRAME_RATE


def client_ssl(url: str, cafile: str | None = None, verify: bool = True) -> ssl.SSLContext | bool | None:
    if not url.startswith("wss://"):
        return None
    if not verify:
        return False
    return ssl.create_default_context(cafile=cafile)


async def handshake(url: str, timeout: float = 10, cafile: str | None = None, verify: bool = True) -> float:
    """Connect, wait for the 0x00 byte, close; return the seconds it took.  Raises on failure."""
    import aiohttp

    start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, ssl=client_ssl(url, cafile, verify), timeout=timeout) as ws:
            msg = await ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data[:1] != bytes([HANDSHAKE]):
                raise ConnectionError(f"expected the handshake byte 0x00 from {url}, got {msg.type.name} {msg.data!r:.40}")
    return time.perf_counter() - start


def wait_for_handshake(url: str, timeout: float, cafile: str | None = None, verify: bool = True) -> float:
    """Retry the handshake until it answers or `timeout` seconds pass; return the total wait."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            asyncio.run(handshake(url, min(10.0, timeout), cafile, verify))
            return time.monotonic() - start
        except Exception as exc:  # refused while loading, or a timeout: try again
            last = exc
            time.sleep(1)
    raise TimeoutError(f"no handshake from {url} within {timeout:.0f}s (last error: {last})")
