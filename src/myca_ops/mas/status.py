"""GET /api/myca/status: the truth about the stack, in one JSON document.

    {status: ok|degraded|down, version, checked_at,
     components: {database: {ok, latency_ms, error},
                  collectors: {<name>: {state, last_heartbeat_age_s, backlog}},
                  voice: {moshi: {...}, bridge: {...}},
                  prometheus: {ok, error}},
     alerts: [{name, severity, summary, since, labels}]}

200 for ok or degraded, 503 for down (the database is unreachable).  `alerts` lists what
Prometheus (MYCA_MAS_PROMETHEUS_URL) has firing; it informs, it does not change `status`.
GET /metrics gives the same checks to Prometheus, with request counts and latency.  Every check has a
timeout and runs in parallel; the result is cached for a short TTL and computed by one
request at a time, so a burst costs the database one query.  A failing dependency is a
field in the answer, never a 500.  Mount it into any FastAPI app with `mount(app)`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Literal

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from myca_ops.bridge.events import SIGNATURE, signature_problem
from myca_ops.mas.backup import last_backup
from myca_ops.mas.checks import bridge_health, firing_alerts, moshi_health
from myca_ops.mas.settings import Settings
from myca_ops.version import installed

log = logging.getLogger("myca_ops.mas")
router = APIRouter()

VERSION = installed()


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class BackupCollector(Collector):
    """The last successful backup (myca-mas backup's last-backup.json), read at each scrape. Before
    the first its time is 0, so the backup-age alert fires until one succeeds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self):
        last = last_backup(self.folder) or {}
        yield GaugeMetricFamily(
            "myca_mas_backup_last_success_timestamp_seconds",
            "When the last successful backup of the MAS database finished (0: none yet)",
            value=last.get("finished_at", 0),
        )
        yield GaugeMetricFamily(
            "myca_mas_backup_bytes", "The last successful backup's size", value=last.get("bytes", 0)
        )


class Metrics:
    def __init__(self, backup_dir: Path | None = None) -> None:
        self.registry = r = CollectorRegistry()
        if backup_dir is not None:
            r.register(BackupCollector(backup_dir))
        self.requests = Counter("myca_mas_requests", "Requests by route and status code", ["route", "code"], registry=r)
        self.latency = Histogram("myca_mas_request_seconds", "Time to answer, by route", ["route"], registry=r)
        self.database_up = Gauge(
            "myca_mas_database_up", "1 when the last status check reached the database", registry=r
        )
        self.database_check = Gauge(
            "myca_mas_database_check_seconds", "Time the last database check took (NaN: it failed)", registry=r
        )
        labels = ["collector"]
        self.collector_running = Gauge(
            "myca_mas_collector_running", "1 when the collector's last heartbeat is fresh", labels, registry=r
        )
        self.collector_age = Gauge(
            "myca_mas_collector_heartbeat_age_seconds", "Age of the collector's last heartbeat", labels, registry=r
        )
        self.collector_backlog = Gauge(
            "myca_mas_collector_backlog", "Samples the collector holds in its spool", labels, registry=r
        )

    def observe_status(self, body: dict) -> None:
        components = body.get("components", {})
        database = components.get("database", {})
        self.database_up.set(1 if database.get("ok") else 0)
        latency = database.get("latency_ms")
        self.database_check.set(float("nan") if latency is None else latency / 1000)
        for name, c in components.get("collectors", {}).items():
            self.collector_running.labels(name).set(1 if c["state"] == "running" else 0)
            age, backlog = c["last_heartbeat_age_s"], c["backlog"]
            self.collector_age.labels(name).set(float("nan") if age is None else age)
            self.collector_backlog.labels(name).set(float("nan") if backlog is None else backlog)


class Stack:
    """The database pool (made on first use, so a dead database never stops the app) and the status cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._status_lock = asyncio.Lock()
        self._cached: tuple[float, int, dict] | None = None
        self.metrics = Metrics(settings.backup_dir)

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
        (database, collectors), moshi, bridge, (prometheus, alerts) = await asyncio.gather(
            self._database(timeout),
            moshi_health(self.settings.moshi_url, timeout),
            bridge_health(self.settings.bridge_url, timeout),
            firing_alerts(self.settings.prometheus_url, timeout),
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
            "components": {"database": database, "collectors": collectors, "voice": voice, "prometheus": prometheus},
            "alerts": alerts,
        }
        self.metrics.observe_status(body)
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
        collectors: dict[str, dict] = {
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


@router.get("/metrics")
async def get_metrics(request: Request) -> Response:
    """The status checks (cached like the endpoint's) and request figures, for Prometheus."""
    stack = stack_of(request.app)
    try:
        await stack.status()
    except Exception:  # noqa: BLE001 - the figures of the last good check are still served
        log.exception("status check failed")
    return Response(generate_latest(stack.metrics.registry), media_type=CONTENT_TYPE_LATEST)


EVENTS_MAX_BYTES = 16 * 1024
NAME = r"^[A-Za-z0-9_.:-]{1,64}$"


class BridgeEvent(BaseModel):
    """What the bridge sends (myca_ops.bridge.app): anything else is refused with 400."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event: Literal["session_start", "session_end"]
    session_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    at: float = Field(ge=946684800, le=4102444800)  # 2000-01-01 to 2100-01-01, epoch seconds
    peer: str = Field(default="", max_length=64)
    duration_s: float | None = Field(default=None, ge=0, le=31_536_000)
    outcome: str | None = Field(default=None, pattern=NAME)
    close_code: int | None = Field(default=None, ge=1000, le=4999)
    reason: str | None = Field(default=None, max_length=200)

    @field_validator("peer", "reason")
    @classmethod
    def no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("holds a NUL character (\\u0000), which PostgreSQL cannot store")
        return value


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@router.post("/api/myca/events")
async def post_event(request: Request) -> JSONResponse:
    """Session events from the bridge, stored once per (session_id, event); 503 makes the bridge retry."""
    stack = stack_of(request.app)
    token = stack.settings.events_token
    if not token:
        return JSONResponse({"error": "events need mas_events_token set on the MAS"}, 401)
    raw = await read_limited(request, EVENTS_MAX_BYTES)
    if raw is None:
        return JSONResponse({"error": f"an event is at most {EVENTS_MAX_BYTES} bytes"}, 413)
    problem = signature_problem(token, request.headers.get(SIGNATURE, ""), raw)
    if problem:
        return JSONResponse({"error": f"events are signed with the events token: {problem}"}, 401)
    try:
        event = BridgeEvent.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        return JSONResponse({"error": f"not a bridge event: {problems}"}, 400)
    try:
        pool = await stack.pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO bridge_events (session_id, event, at, body) VALUES ($1, $2, to_timestamp($3), $4::jsonb)"
                " ON CONFLICT DO NOTHING",
                event.session_id,
                event.event,
                event.at,
                event.model_dump_json(exclude_none=True),
            )
    except Exception as exc:  # noqa: BLE001
        return JSONResponse({"error": f"database: {describe(exc)}"}, 503)
    return JSONResponse({"stored": True})


def mount(app: FastAPI) -> FastAPI:
    """Add /api/myca/status, /api/myca/events and /metrics to an existing MAS app, and count its requests."""
    app.include_router(router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        t0 = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            # The route's template (never the raw path: one series per route, whatever callers send).
            route = getattr(request.scope.get("route"), "path", "unmatched")
            metrics = stack_of(request.app).metrics
            metrics.requests.labels(route, str(code)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - t0)

    return app
