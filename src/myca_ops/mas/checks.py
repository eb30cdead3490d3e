"""Reachability checks of the voice stack, shared by the status endpoint and the voice collector."""

from __future__ import annotations

import asyncio
import json
import math

import aiohttp

from myca_ops.voice.health import MAX_BODY_BYTES, check


async def moshi_health(url: str, timeout: float) -> dict:
    """Moshi's own health (myca_ops.voice.health: the batched server's /healthz, or moshi.server's
    HTTP answer), never a session: moshi.server serves one at a time."""
    if not url:
        return {"ok": None, "error": "not configured"}
    health = await asyncio.to_thread(check, url, timeout)
    return {
        "ok": health["up"],
        "status": health["status"],
        "slots_used": _number(health.get("slots_used")),
        "slots_total": _number(health.get("slots_total")),
        "error": health.get("error"),
    }


async def bridge_health(base_url: str, timeout: float) -> dict:
    """The bridge's own /healthz (whether Moshi is up, as the bridge sees it), read defensively:
    whatever it answers becomes plain fields (a bool, numbers or None, a short string)."""
    if not base_url:
        return {"ok": None, "error": "not configured"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(base_url + "/healthz") as resp:
                raw = await resp.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return {
                "ok": False,
                "error": f"{base_url}/healthz answered over {MAX_BODY_BYTES} bytes: not a health document",
            }
        body = json.loads(raw)
        if not isinstance(body, dict):
            return {"ok": False, "error": f"{base_url}/healthz answered {type(body).__name__}, not a JSON object"}
        error, moshi = body.get("error"), body.get("moshi")
        return {
            "ok": body.get("ok") is True,
            "sessions": _number(body.get("sessions")),
            "moshi_status": _text(moshi.get("status"), 40) if isinstance(moshi, dict) else None,
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
