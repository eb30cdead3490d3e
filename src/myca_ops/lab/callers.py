"""Callers the attack battery and the refusal benchmark share: a slot holder, a refused upgrade, RSS."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

UPGRADE = (
    b"GET /api/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.asynccontextmanager
async def holding_the_slot(chat_url: str):
    """A well-behaved caller for as long as the block runs: an Ogg/Opus page of silence (80 ms, so
    that the server has little to do) every 0.5 s, so the idle timer never fires, and everything
    read, so every ping is answered."""
    import numpy as np
    import sphn

    async with aiohttp.ClientSession() as http, http.ws_connect(chat_url) as holder:
        first = await holder.receive(timeout=5)
        if first.data != b"\x00":
            raise RuntimeError(f"the holder got {first.type.name} {first.data!r}, not the handshake")

        async def talk():
            writer, silence = sphn.OpusStreamWriter(24000), np.zeros(1920, np.float32)
            while True:
                await holder.send_bytes(b"\x01" + bytes(writer.append_pcm(silence)))
                await asyncio.sleep(0.5)

        async def listen():
            while True:
                await holder.receive()

        keepers = [asyncio.create_task(talk()), asyncio.create_task(listen())]
        try:
            yield holder
        finally:
            for keeper in keepers:
                keeper.cancel()


async def refused_upgrade(host: str, port: int, source: str) -> tuple[int, asyncio.StreamWriter]:
    """An upgrade from `source`: the websocket close code it is answered with (or the HTTP status,
    or 0 when neither comes first), and its connection, left open for the caller to close."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(UPGRADE)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        return int(head.split()[1]), writer
    frame = await reader.readexactly(4)
    return (int.from_bytes(frame[2:4], "big") if frame[:1] == b"\x88" else 0), writer
