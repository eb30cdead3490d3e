"""GET /api/myca/status: the truth about the stack, in one JSON document.

    {status: ok|degraded|down, version, checked_at,
     components: {database: {ok, latency_ms, error},
                  collectors: {<name>: {state, last_heartbeat_age_s, backlog}},
                  voice: {moshi: {...}, bridge: {...}}}}

200 for ok or degraded, 503 for down (the database is unreachable).  Every check has a
timeout and runs in parallel; the result is cached for a short TTL and computed by one
request at a time, so a burst costs the database one query.  A failing dependency is a
field in the answer, never a 500.  Mount it into any FastAPI app with `mount(app)`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from importlib.metadata import PackageNotFoundError, version

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from myca_ops.mas.checks import bridge_health, tcp_reachable
from myca_ops.mas.settings import Settings

log = logging.getLogger("myca_ops.mas")
router = APIRouter()

try:
    VERSION = version("myca-ops")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0+unknown"


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class Stack:
    """The database pool (made on first use, so a dead database never stops the app) and the status cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._status_lock = asyncio.Lock()
        self._cached: tuple[float, int, dict] | None = None

    async def pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.settings.dsn, min_size=0, max_size=4, timeout=self.settings.check_timeout_s
                )
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def status(self) -> tuple[int, dict]:
        async with self._status_lock:  # one computation at a time; the others take its result
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.settings.status_ttl_s:
                return self._cached[1], self._cached[2]
            code, body = await self._compute()
            self._cached = (time.monotonic(), code, body)
            return code, body

    async def _compute(self) -> tuple[int, dict]:
        timeout = self.settings.check_timeout_s
        (database, collectors), moshi, bridge = await asyncio.gather(
            self._database(timeout),
            tcp_reachable(self.settings.moshi_url, timeout),
            bridge_health(self.settings.bridge_url, timeout),
        )
        voice = {"moshi": moshi, "bridge": bridge}
        if not database["ok"]:
            overall = "down"
        elif any(c["state"] != "running" for c in collectors.values()) or any(v["ok"] is False for v in voice.values()):
            overall = "degraded"
        else:
            overall = "ok"
        body = {
            "status": overall,
            "version": VERSION,
            "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "components": {"database": database, "collectors": collectors, "voice": voice},
        }
        return (503 if overall == "down" else 200), body

    async def _database(self, timeout: float) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        try:
            rows = await asyncio.wait_for(self._query(), timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is the database's state, reported
            error = describe(exc)
            unknown = {"state": "unknown", "last_heartbeat_age_s": None, "backlog": None}
            return {"ok": False, "latency_ms": None, "error": error}, {
                n: dict(unknown) for n in self.settings.collectors
            }
        database = {"ok": True, "latency_ms": round((time.perf_counter() - t0) * 1000, 2), "error": None}
        collectors = {
            n: {"state": "missing", "last_heartbeat_age_s": None, "backlog": None} for n in self.settings.collectors
        }
        for row in rows:
            age = float(row["age_s"])
            stale_after = max(self.settings.stale_after_s, 3 * float(row["interval_s"]))
            collectors[row["collector"]] = {
                "state": "running" if age <= stale_after else "stale",
                "last_heartbeat_age_s": round(age, 1),
                "backlog": row["backlog"],
            }
        return database, collectors

    async def _query(self):
        pool = await self.pool()
        async with pool.acquire() as conn:
            return await conn.fetch(
                "SELECT collector, backlog, interval_s, extract(epoch FROM now() - beat_at) AS age_s FROM collector_heartbeats"
            )


def stack_of(app: FastAPI) -> Stack:
    if getattr(app.state, "myca_stack", None) is None:
        app.state.myca_stack = Stack(Settings.from_env())
    return app.state.myca_stack


@router.get("/api/myca/status")
async def get_status(request: Request) -> JSONResponse:
    try:
        code, body = await stack_of(request.app).status()
    except Exception as exc:  # noqa: BLE001 - the endpoint itself must never answer 500
        log.exception("status check failed")
        code, body = 503, {"status": "down", "version": VERSION, "error": describe(exc)}
    return JSONResponse(body, status_code=code)


@router.post("/api/myca/events")
async def post_event(request: Request) -> JSONResponse:
    """Session events from the bridge, stored once per (session_id, event); 503 makes the bridge retry."""
    try:
        event = await request.json()
        session_id, kind, at = str(event["session_id"]), str(event["event"]), float(event["at"])
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"an event needs session_id, event and at (epoch seconds): {describe(exc)}"}, 400)
    try:
        pool = await stack_of(request.app).pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO bridge_events (session_id, event, at, body) VALUES ($1, $2, to_timestamp($3), $4::jsonb)"
                " ON CONFLICT DO NOTHING",
                session_id,
                kind,
                at,
                json.dumps(event),
            )
    except Exception as exc:  # noqa: BLE001
        return JSONResponse({"error": f"database: {describe(exc)}"}, 503)
    return JSONResponse({"stored": True})


def mount(app: FastAPI) -> FastAPI:
    """Add /api/myca/status and /api/myca/events to an existing MAS app."""
    app.include_router(router)
    return app
