"""Reachability checks of the voice stack, shared by the status endpoint and the voice collector."""

from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import urlsplit

import aiohttp


async def tcp_reachable(url: str, timeout: float) -> dict:
    """Open and close a TCP connection to the URL's host and port: no websocket session (Moshi serves one at a time)."""
    if not url:
        return {"ok": None, "error": "not configured"}
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    t0 = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout)
        writer.close()
        return {"ok": True, "connect_ms": round((time.perf_counter() - t0) * 1000, 2), "error": None}
    except (OSError, asyncio.TimeoutError) as exc:
        return {"ok": False, "error": f"{parts.hostname}:{port} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")}


async def bridge_health(base_url: str, timeout: float) -> dict:
    """The bridge's own /healthz (it knows whether Moshi answers the handshake), read defensively:
    whatever it answers becomes plain fields (a bool, numbers or None, a short string)."""
    if not base_url:
        return {"ok": None, "error": "not configured"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(base_url + "/healthz") as resp:
                body = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return {"ok": False, "error": f"{base_url}/healthz: {type(exc).__name__}: {exc}".rstrip(": ")}
    if not isinstance(body, dict):
        return {"ok": False, "error": f"{base_url}/healthz answered {type(body).__name__}, not a JSON object"}
    error = body.get("error")
    return {
        "ok": body.get("ok") is True,
        "sessions": _number(body.get("sessions")),
        "handshake_ms": _number(body.get("handshake_ms")),
        "error": None if error is None else str(error)[:300],
    }


def _number(value) -> float | None:
    """A finite number, else None (JSON from elsewhere may hold NaN, strings or huge integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(float(value)) else None
    except OverflowError:
        return None
