"""Collectors: take a sample every interval, spool it, flush the spool to PostgreSQL.

Each collector runs as its own process (systemd `myca-collector@NAME`).  A collector is
found by name in the entry-point group `myca_ops.collectors`: a callable that takes the
Settings and returns an object with `collect()` (plain or async) returning a JSON-able
dict, and optionally `interval_s`.  The built-ins `host` and `voice` are registered there
too; an operator's package adds its own the same way:

    [project.entry-points."myca_ops.collectors"]
    queue = "mas_extras.collectors:QueueCollector"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import os
import shutil
import socket
import subprocess
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg

from myca_ops.mas.checks import bridge_health, moshi_health
from myca_ops.mas.settings import Settings
from myca_ops.mas.spool import Spool

GROUP = "myca_ops.collectors"
log = logging.getLogger("myca_ops.mas.collector")


class HostCollector:
    """CPU load, memory, disk of /, and the GPUs when nvidia-smi is there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> dict:
        load1, load5, _ = os.getloadavg()
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {k: int(meminfo[k].split()[0]) for k in ("MemTotal", "MemAvailable")}
        disk = shutil.disk_usage("/")
        sample: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "load1": load1,
            "load5": load5,
            "mem_total_mb": kib["MemTotal"] // 1024,
            "mem_available_mb": kib["MemAvailable"] // 1024,
            "disk_free_gb": round(disk.free / 2**30, 2),
            "disk_used_pct": round(100 * disk.used / disk.total, 1),
        }
        if shutil.which("nvidia-smi"):
            sample["gpus"] = self._gpus()
        return sample

    @staticmethod
    def _gpus() -> list[dict] | str:
        query = "name,utilization.gpu,memory.used,memory.total"
        try:
            out = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"nvidia-smi failed: {exc}"
        keys = ("name", "util_pct", "mem_used_mb", "mem_total_mb")
        return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.splitlines()]


class VoiceCollector:
    """Moshi's health (its /healthz, no session) and what the bridge's /healthz says."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def collect(self) -> dict:
        timeout = self.settings.check_timeout_s
        moshi, bridge = await asyncio.gather(
            moshi_health(self.settings.moshi_url, timeout), bridge_health(self.settings.bridge_url, timeout)
        )
        return {"moshi": moshi, "bridge": bridge}


def load(name: str, settings: Settings):
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise SystemExit(
            f"no collector named {name!r}; installed: {', '.join(sorted(found)) or 'none'} "
            f"(an operator's collector is an entry point in the group {GROUP})"
        )
    return found[name].load()(settings)


async def store(conn: asyncpg.Connection, records: list[dict]) -> None:
    """Insert spooled samples in one transaction; ones already stored are skipped by id."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO samples (id, collector, host, taken_at, data) VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT (id) DO NOTHING",
            [
                (uuid.UUID(r["id"]), r["collector"], r["host"], dt.datetime.fromisoformat(r["taken_at"]), r["data"])
                for r in records
            ],
        )


async def flush(conn: asyncpg.Connection, spool: Spool, name: str, interval_s: float) -> int:
    """Send the whole spool, then drop what was sent, then beat; returns the samples sent."""
    records = spool.read()
    if records:
        await store(conn, records)
        spool.drop_first(len(records))
    await conn.execute(
        "INSERT INTO collector_heartbeats (collector, host, beat_at, backlog, interval_s) VALUES ($1, $2, now(), $3, $4)"
        " ON CONFLICT (collector) DO UPDATE SET host = $2, beat_at = now(), backlog = $3, interval_s = $4",
        name,
        socket.gethostname(),
        len(spool),
        interval_s,
    )
    return len(records)


def sample_record(name: str, data: dict) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "collector": name,
        "host": socket.gethostname(),
        "taken_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "data": json.dumps(data),
    }


async def run(name: str, settings: Settings, samples: int | None = None) -> None:
    """Sample, spool, flush, every interval; `samples` stops after that many (tests)."""
    collector = load(name, settings)
    interval = float(getattr(collector, "interval_s", settings.collector_interval_s))
    spool = Spool(settings.spool_dir / f"{name}.jsonl")
    log.info("collector %s: every %g s, spool %s (%d samples waiting)", name, interval, spool.path, len(spool))
    conn: asyncpg.Connection | None = None
    outage = None
    loop = asyncio.get_running_loop()
    taken = 0
    while samples is None or taken < samples:
        started = loop.time()
        data = collector.collect()
        if inspect.isawaitable(data):
            data = await data
        spool.append(sample_record(name, data))
        taken += 1
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(settings.dsn, timeout=settings.check_timeout_s)
            sent = await asyncio.wait_for(flush(conn, spool, name, interval), settings.check_timeout_s * 5)
            if outage:
                log.info("collector %s: database back; flushed %d spooled samples in order", name, sent)
                outage = None
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if conn is not None:
                conn.terminate()
                conn = None
            problem = f"{type(exc).__name__}: {exc}"
            if problem != outage:
                log.warning("collector %s: database unreachable (%s); spooling to %s", name, problem, spool.path)
                outage = problem
            log.info("collector %s: %d samples spooled", name, len(spool))
        await asyncio.sleep(max(0.0, started + interval - loop.time()))
    if conn is not None:
        await conn.close()
