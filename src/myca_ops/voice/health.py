"""Is Moshi up?  One answer for every reader, and none of them opens a session.

The batched server's ``GET /healthz`` is the contract: 200 once the model is loaded (whether
its slots are free, all taken, or its ticks run over budget: ``status`` says which), 503 while
it loads.  moshi.server (``moshi_server: upstream``) has no ``/healthz``: it answers 404 there,
which says the server is up and serving HTTP; it serves one conversation at a time, after
seconds of prefill, so no reader ever opens ``/api/chat`` to ask.

NVIDIA's own PersonaPlex server sets each connection's prompts on one generator shared by all
before it takes its lock: a second connection during a caller's prompt overwrites that caller's
persona.  It opens its port only once its model is loaded and warmed up, so the role waits for it
with :func:`wait_up` (``myca-moshi wait --no-session``), never with a session.

The bridge's ``/healthz``, the MAS's voice collector and status, ``myca-moshi alive`` and the
verify and status playbooks read Moshi through :func:`check` (the playbooks read the same
``/healthz`` fields with ``uri``); HAProxy's ``http-check`` expects the same 200.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

UP_STATUSES = ("ready", "full", "over budget", "answering")  # "answering": moshi.server, no /healthz
MAX_BODY_BYTES = 65536  # a health document is a few hundred bytes: more is not one, and is not read


def base_url(url: str) -> str:
    """http(s)://HOST:PORT from a server's base URL or its ws(s)://HOST:PORT/api/chat."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s):// or ws(s):// URL of a Moshi server")
    return f"{scheme}://{parts.netloc}"


def service_url(env: dict[str, str]) -> str:
    """The local service's base URL from its environment file (MYCA_MOSHI_HOST, _PORT, _SSL_DIR)."""
    host = env.get("MYCA_MOSHI_HOST") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if env.get("MYCA_MOSHI_SSL_DIR") else "http"
    return f"{scheme}://{host}:{env.get('MYCA_MOSHI_PORT') or 8998}"


def check(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> dict:
    """Moshi's health at `url`, without a session: ``up``, ``status`` (loading, ready, full, over
    budget, answering, down), ``source`` (healthz or http) and, from /healthz, its figures (slots,
    ticks, mode).  `context`: TLS verification (default: none, for a server's own certificate on loopback)."""
    base = base_url(url)
    if context is None and base.startswith("https"):
        context = ssl._create_unverified_context()
    answer = {"url": base}
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=timeout, context=context) as reply:
            code, body = reply.status, reply.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read(MAX_BODY_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {**answer, "up": False, "status": "down", "source": "http", "error": f"no answer from {base}: {reason}"}
    if code == 404:
        return {**answer, "up": True, "status": "answering", "source": "http", "detail": "no /healthz (moshi.server)"}
    if len(body) > MAX_BODY_BYTES:
        return {
            **answer,
            "up": False,
            "status": "down",
            "source": "http",
            "error": f"{base}/healthz: over {MAX_BODY_BYTES} bytes",
        }
    try:
        health = json.loads(body)
        if not isinstance(health, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        said = body[:120].decode(errors="replace").strip()
        return {**answer, "up": False, "status": "down", "source": "http", "error": f"{base}/healthz: {code} {said}"}
    up = code == 200 and bool(health.get("model_loaded"))
    status = health.get("status") or ("ready" if up else "down")
    return {**health, **answer, "up": up, "status": status, "source": "healthz"}


def wait_up(url: str, timeout: float, broken=lambda: None, every_s: float = 1.0) -> float:
    """Seconds until the server at `url` is up by :func:`check` (no session opened); TimeoutError
    with its last answer, or as soon as `broken()` says why waiting longer is pointless."""
    start = time.monotonic()
    while True:
        health = check(url)
        if health["up"]:
            return time.monotonic() - start
        why = broken()
        if why:
            raise TimeoutError(f"{health['url']} is not up: {why}")
        if time.monotonic() - start > timeout:
            said = health.get("error") or health["status"]
            raise TimeoutError(f"{health['url']} did not come up within {timeout:.0f}s (last answer: {said})")
        time.sleep(every_s)
