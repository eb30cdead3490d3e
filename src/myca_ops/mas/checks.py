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
        if not isinstance(body, dict):
            return {"ok": False, "error": f"{base_url}/healthz answered {type(body).__name__}, not a JSON object"}
        error = body.get("error")
        return {
            "ok": body.get("ok") is True,
            "sessions": _number(body.get("sessions")),
            "handshake_ms": _number(body.get("handshake_ms")),
            "error": None if error is None else _text(error, 300),
        }
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RecursionError) as exc:
        return {"ok": False, "error": f"{base_url}/healthz: {type(exc).__name__}: {exc}".rstrip(": ")[:300]}


async def firing_alerts(prometheus_url: str, timeout: float) -> tuple[dict, list[dict]]:
    """Prometheus's firing alerts, as ({ok, error}, [{name, severity, summary, since, labels}]).
    Prometheus away or answering nonsense is an error field, never an exception."""
    if not prometheus_url:
        return {"ok": None, "error": "not configured"}, []
    url = prometheus_url.rstrip("/") + "/api/v1/alerts"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url) as resp:
                body = await resp.json(content_type=None)
        alerts = body["data"]["alerts"]
        if not isinstance(alerts, list):
            raise ValueError("data.alerts is not a list")
        firing = [a for a in alerts if isinstance(a, dict) and a.get("state") == "firing"]
        listed = [
            {
                "name": _text(a.get("labels", {}).get("alertname", "?"), 100),
                "severity": _text(a.get("labels", {}).get("severity", ""), 20),
                "summary": _text(a.get("annotations", {}).get("summary", ""), 300),
                "since": _text(a.get("activeAt", ""), 40),
                "labels": {_text(k, 50): _text(v, 100) for k, v in list(a.get("labels", {}).items())[:20]},
            }
            for a in firing[:50]
        ]
    except (
        aiohttp.ClientError,
        asyncio.TimeoutError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:
        return {"ok": False, "error": f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")[:300]}, []
    return {"ok": True, "error": None}, listed


def _text(value, limit: int) -> str:
    """A peer's value as a short string: a string as it is, anything else (deeply nested JSON
    included, whose str() could recurse without end) named by its type."""
    return (
        value
        if isinstance(value, str)
        else f"<{type(value).__name__}>"
        if isinstance(value, dict | list)
        else str(value)
    )[:limit]


def _number(value) -> float | None:
    """A finite number, else None (JSON from elsewhere may hold NaN, strings or huge integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(float(value)) else None
    except OverflowError:
        return None
