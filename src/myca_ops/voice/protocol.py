"""Moshi's websocket protocol (/api/chat): one binary message per item, first byte = kind."""

from __future__ import annotations

import ssl

HANDSHAKE = 0x00  # server -> client, bare byte: the session is ready
AUDIO = 0x01  # both ways: Ogg/Opus pages, 24 kHz mono
TEXT = 0x02  # server -> client: a UTF-8 text piece
CONTROL = 0x03
METADATA = 0x04  # JSON
ERROR = 0x05
PING = 0x06

SAMPLE_RATE = 24000
FRAME_RATE = 12.5
FRAME_SAMPLES = 1920  # one model frame: 80 ms at 24 kHz
FRAME_BUDGET_MS = 1000 / FRAME_RATE


def client_ssl(url: str, cafile: str | None = None, verify: bool = True) -> ssl.SSLContext | bool:
    """aiohttp's ssl argument: verify against `cafile` (or the system store), or not at all."""
    if not url.startswith("wss://") or not verify:
        return url.startswith("wss://") and verify
    return ssl.create_default_context(cafile=cafile)
