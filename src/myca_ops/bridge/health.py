"""The bridge's /healthz (/health) and /metrics: Moshi's health through the bridge, and who sees
the details."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from myca_ops.bridge.state import CONFIG, STATE, token_ok
from myca_ops.version import installed
from myca_ops.voice.health import check

HEALTH_CACHE_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """200 when Moshi is up (its /healthz: model loaded, full included; moshi.server: answering), else 503.

    Never a session: Moshi's own health contract (myca_ops.voice.health), cached for HEALTH_CACHE_S
    and single flight, so a burst of calls is one request upstream.  Only the networks in
    metrics_allowed (or a token holder) see the details; others get {ok} alone."""
    config, state = request.app[CONFIG], request.app[STATE]
    async with state.health_lock:  # the callers of a burst wait for one check and share it
        if state.health is None or time.monotonic() - state.health[0] >= HEALTH_CACHE_S:
            body = {
                "upstream": config.upstream,
                "sessions": state.active,
                "max_sessions": config.max_sessions,
                "version": installed(),
            }
            moshi = await asyncio.to_thread(
                check,
                config.upstream,
                config.connect_timeout_s,
                state.upstream_ssl if isinstance(state.upstream_ssl, ssl.SSLContext) else None,
            )
            keep = ("status", "source", "slots_used", "slots_total", "mode", "error", "detail")
            body.update(ok=moshi["up"], moshi={k: moshi[k] for k in keep if k in moshi})
            if moshi.get("error"):
                body["error"] = f"Moshi: {moshi['error']}"
            state.health = (time.monotonic(), 200 if body["ok"] else 503, body)
    _, status, body = state.health
    return web.json_response(body if insider(request) else {"ok": body["ok"]}, status=status)


def insider(request: web.Request) -> bool:
    """The caller may see details and metrics: from metrics_allowed, or with a token of the metrics scope."""
    config = request.app[CONFIG]
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        peer = None
    if peer is not None and any(peer in net for net in request.app[STATE].metrics_networks):
        return True
    return token_ok(request, config.tokens_with("metrics"))


async def metrics(request: web.Request) -> web.Response:
    if not insider(request):
        raise web.HTTPForbidden(
            text="/metrics answers the networks in bridge_metrics_allowed, or a token with the metrics scope\n"
        )
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
