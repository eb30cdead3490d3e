"""The MAS side against a real PostgreSQL: migrations, the collectors' spool, the status endpoint."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import asyncpg
import pytest

from conftest import serve_one_route
from myca_ops.bridge.events import SIGNATURE, sign
from myca_ops.lab.processes import free_port, process
from myca_ops.mas import collectors
from myca_ops.mas.schema import migrate
from myca_ops.mas.settings import Settings, SettingsError
from myca_ops.mas.spool import Spool
from myca_ops.mas.status import Stack

DEAD_DSN = "postgresql://myca:x@127.0.0.1:9/none"  # nothing listens on port 9


async def fetch(dsn: str, query: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def records(n: int, name: str = "host") -> list[dict]:
    return [collectors.sample_record(name, {"n": i}) for i in range(n)]


# --- migrations -------------------------------------------------------------------------


def test_migrations_apply_once_and_check_lists_without_applying(postgres):
    async def scenario():
        conn = await asyncpg.connect(postgres.dsn())
        await conn.execute("CREATE DATABASE mig")
        await conn.close()
        conn = await asyncpg.connect(postgres.dsn("mig"))
        try:
            pending = await migrate(conn, check=True)
            tables_before = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'samples'")
            first, second = await migrate(conn), await migrate(conn)
            rows = await conn.fetch("SELECT version, name FROM schema_migrations")
        finally:
            await conn.close()
        return pending, tables_before, first, second, rows

    pending, tables_before, first, second, rows = asyncio.run(scenario())
    assert pending == ["0001_initial"] and tables_before == 0
    assert first == ["0001_initial"] and second == []
    assert [tuple(r) for r in rows] == [(1, "initial")]


# --- the spool --------------------------------------------------------------------------


def test_spool_flushes_in_order_and_empties(tmp_path, mas_db):
    spool = Spool(tmp_path / "host.jsonl")
    taken = records(5)
    for r in taken:
        spool.append(r)

    async def scenario():
        conn = await asyncpg.connect(mas_db)
        sent = await collectors.flush(conn, spool, "host", 1.0)
        await conn.close()
        return sent

    assert asyncio.run(scenario()) == 5
    assert len(spool) == 0
    rows = asyncio.run(fetch(mas_db, "SELECT id::text, data FROM samples ORDER BY taken_at"))
    assert [r["id"] for r in rows] == [r["id"] for r in taken]
    beat = asyncio.run(fetch(mas_db, "SELECT backlog FROM collector_heartbeats WHERE collector = 'host'"))
    assert beat[0]["backlog"] == 0


def test_a_crash_between_commit_and_truncation_stores_nothing_twice(tmp_path, mas_db):
    path = tmp_path / "host.jsonl"
    spool = Spool(path)
    for r in records(4):
        spool.append(r)

    async def scenario():
        conn = await asyncpg.connect(mas_db)
        await collectors.store(conn, spool.read())  # committed; the process "dies" before drop_first
        restarted = Spool(path)
        restarted.append(collectors.sample_record("host", {"n": "after restart"}))
        sent = await collectors.flush(conn, restarted, "host", 1.0)
        await conn.close()
        return sent

    assert asyncio.run(scenario()) == 5
    count = asyncio.run(fetch(mas_db, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM samples"))[0]
    assert (count["n"], count["d"]) == (5, 5)


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path):
    path = tmp_path / "host.jsonl"
    spool = Spool(path)
    kept = records(3)
    for r in kept:
        spool.append(r)
    with open(path, "ab") as f:
        f.write(b'{"id": "half a rec')  # a crash mid-append
    reopened = Spool(path)
    assert [r["id"] for r in reopened.read()] == [r["id"] for r in kept]
    reopened.append(records(1)[0])
    assert len(reopened.read()) == 4


def test_a_collector_spools_while_the_database_is_dead_and_flushes_after(tmp_path, mas_db):
    base = dict(collectors=("host",), collector_interval_s=0.05, spool_dir=tmp_path, check_timeout_s=0.5)
    asyncio.run(collectors.run("host", Settings(dsn=DEAD_DSN, **base), samples=6))
    spooled = Spool(tmp_path / "host.jsonl").read()
    assert len(spooled) == 6
    assert [r["taken_at"] for r in spooled] == sorted(r["taken_at"] for r in spooled)

    asyncio.run(collectors.run("host", Settings(dsn=mas_db, **base), samples=1))
    rows = asyncio.run(fetch(mas_db, "SELECT id::text, data FROM samples ORDER BY taken_at"))
    assert [r["id"] for r in rows][:6] == [r["id"] for r in spooled]
    assert len(rows) == 7 and len(Spool(tmp_path / "host.jsonl")) == 0
    assert json.loads(rows[0]["data"])["mem_total_mb"] > 0  # a real sample of this host


def test_an_unknown_collector_names_the_installed_ones():
    with pytest.raises(SystemExit, match="no collector named 'nope'; installed: host, voice"):
        collectors.load("nope", Settings(dsn=DEAD_DSN))


# --- status -----------------------------------------------------------------------------


async def heartbeat(dsn: str, name: str, age_s: float = 0.0, backlog: int = 0) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "INSERT INTO collector_heartbeats VALUES ($1, 'h', now() - make_interval(secs => $2), $3, 1)"
        " ON CONFLICT (collector) DO UPDATE SET beat_at = EXCLUDED.beat_at, backlog = EXCLUDED.backlog",
        name,
        age_s,
        backlog,
    )
    await conn.close()


def status_of(settings: Settings) -> tuple[int, dict]:
    async def scenario():
        stack = Stack(settings)
        try:
            return await stack.status()
        finally:
            await stack.close()

    return asyncio.run(scenario())


def test_status_ok_with_a_live_database_and_fresh_collectors(mas_db):
    asyncio.run(heartbeat(mas_db, "host", backlog=2))
    code, body = status_of(Settings(dsn=mas_db, collectors=("host",), collector_interval_s=1))
    assert code == 200 and body["status"] == "ok"
    assert body["components"]["database"]["ok"] is True and body["components"]["database"]["latency_ms"] > 0
    assert body["components"]["collectors"]["host"]["state"] == "running"
    assert body["components"]["collectors"]["host"]["backlog"] == 2
    assert body["components"]["voice"]["moshi"] == {"ok": None, "error": "not configured"}


def test_status_degraded_names_a_stale_and_a_missing_collector(mas_db):
    asyncio.run(heartbeat(mas_db, "host", age_s=3600))
    code, body = status_of(Settings(dsn=mas_db, collectors=("host", "voice"), collector_interval_s=1))
    assert code == 200 and body["status"] == "degraded"
    assert body["components"]["collectors"]["host"]["state"] == "stale"
    assert body["components"]["collectors"]["host"]["last_heartbeat_age_s"] >= 3600
    assert body["components"]["collectors"]["voice"]["state"] == "missing"


def test_status_degraded_when_moshi_is_unreachable(mas_db):
    port = free_port()
    code, body = status_of(Settings(dsn=mas_db, moshi_url=f"ws://127.0.0.1:{port}/api/chat"))
    assert code == 200 and body["status"] == "degraded"
    moshi = body["components"]["voice"]["moshi"]
    assert (moshi["ok"], moshi["status"]) == (False, "down")
    assert moshi["error"].startswith(f"no answer from http://127.0.0.1:{port}: [Errno 111] Connection refused")


def test_a_full_moshi_is_healthy_and_the_status_says_so(mas_db):
    """Moshi's /healthz says all slots are taken: up (no degraded status), and no session was opened."""
    import http.server
    import threading

    asked = []

    class FullMoshi(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            asked.append(self.path)
            body = json.dumps({"model_loaded": True, "ok": True, "status": "full", "slots_used": 2, "slots_total": 2})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), FullMoshi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"ws://127.0.0.1:{server.server_port}/api/chat"
        code, body = status_of(Settings(dsn=mas_db, moshi_url=url))
    finally:
        server.shutdown()
    assert body["components"]["voice"]["moshi"] == {
        "ok": True,
        "status": "full",
        "slots_used": 2,
        "slots_total": 2,
        "error": None,
    }
    assert code == 200 and body["status"] == "ok" and asked == ["/healthz"]


def test_status_lists_what_prometheus_has_firing_and_stays_ok(mas_db, prometheus):
    deadline = time.monotonic() + 20
    while True:  # the rule fires at Prometheus's first evaluation
        code, body = status_of(Settings(dsn=mas_db, prometheus_url=prometheus))
        if body["alerts"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 200 and body["status"] == "ok"  # alerts inform; they do not change the status
    assert body["components"]["prometheus"] == {"ok": True, "error": None}
    [alert] = body["alerts"]
    assert alert["name"] == "MycaTest" and alert["severity"] == "warning" and alert["summary"] == "always firing"
    assert alert["since"].startswith("20")


def test_status_without_its_prometheus_names_it_and_stays_ok(mas_db):
    url = f"http://127.0.0.1:{free_port()}"
    code, body = status_of(Settings(dsn=mas_db, prometheus_url=url))
    assert code == 200 and body["status"] == "ok" and body["alerts"] == []
    assert body["components"]["prometheus"]["ok"] is False
    assert body["components"]["prometheus"]["error"].startswith(f"{url}/api/v1/alerts: ClientConnectorError")


def test_status_down_and_503_naming_the_database_error_within_the_timeout():
    t0 = time.monotonic()
    code, body = status_of(Settings(dsn=DEAD_DSN, collectors=("host",), check_timeout_s=1))
    assert time.monotonic() - t0 < 3
    assert code == 503 and body["status"] == "down"
    assert (
        "Connect call failed" in body["components"]["database"]["error"]
        or "refused" in body["components"]["database"]["error"]
    )
    assert body["components"]["collectors"]["host"]["state"] == "unknown"


def test_a_burst_of_status_requests_costs_one_check(mas_db):
    async def scenario():
        stack = Stack(Settings(dsn=mas_db, status_ttl_s=5))
        calls = 0
        compute = stack._compute

        async def counted():
            nonlocal calls
            calls += 1
            return await compute()

        stack._compute = counted
        results = await asyncio.gather(*(stack.status() for _ in range(50)))
        await stack.close()
        return calls, {r[1]["checked_at"] for r in results}

    calls, stamps = asyncio.run(scenario())
    assert calls == 1 and len(stamps) == 1


@pytest.mark.parametrize(
    "env,message",
    [
        ({}, "MYCA_MAS_DSN must be a postgresql:// URL"),
        ({"MYCA_MAS_DSN": "postgresql://x", "MYCA_MAS_STATUS_TTL_S": "soon"}, "MYCA_MAS_STATUS_TTL_S must be a number"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


# --- the API as a process ---------------------------------------------------------------


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


EVENTS_TOKEN = "e" * 32


def post(url: str, body, token: str = EVENTS_TOKEN, now: float | None = None, headers: dict | None = None) -> int:
    """POST an event signed as the bridge signs it (no signature when `token` is empty)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        **({SIGNATURE: sign(token, data, now)} if token else {}),
        **(headers or {}),
    }
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def serve(tmp_path, dsn: str, **extra):
    port = free_port()
    env = dict(os.environ, MYCA_MAS_DSN=dsn, MYCA_MAS_HOST="127.0.0.1", MYCA_MAS_PORT=str(port))
    env.update(MYCA_MAS_EVENTS_TOKEN=EVENTS_TOKEN, **extra)
    return port, process([sys.executable, "-m", "myca_ops.mas", "serve"], port, tmp_path / "mas.log", env)


def test_the_api_serves_status_and_stores_bridge_events_once(tmp_path, mas_db):
    port, server = serve(tmp_path, mas_db)
    events = f"http://127.0.0.1:{port}/api/myca/events"
    event = {"event": "session_end", "session_id": uuid.uuid4().hex, "at": time.time(), "outcome": "relayed"}
    forged = {**event, "session_id": uuid.uuid4().hex}
    with server:
        code, body = get(f"http://127.0.0.1:{port}/api/myca/status")
        stored = [post(events, event) for _ in range(2)]
        refused = {
            "no token": post(events, forged, token=""),
            "wrong token": post(events, forged, token="x" * 32),
            "signed 10 minutes ago": post(events, forged, now=time.time() - 600),
            "the token in clear": post(events, forged, token="", headers={"Authorization": f"Bearer {EVENTS_TOKEN}"}),
            "unknown kind": post(events, {**forged, "event": "x"}),
            "extra key": post(events, {**forged, "admin": True}),
            "400-digit at": post(
                events, json.dumps({**forged, "at": 0}).replace('"at": 0', '"at": ' + "9" * 400).encode()
            ),
            "8 MiB": declared_only(port, "/api/myca/events", 8 * 2**20),
            "NUL in reason": post(events, {**forged, "reason": "a\u0000b"}),
        }
        nul_body = json.dumps({**forged, "peer": "\u0000"}).encode()
        nul_answer = urllib.request.Request(
            events, nul_body, {"Content-Type": "application/json", SIGNATURE: sign(EVENTS_TOKEN, nul_body)}
        )
        try:
            urllib.request.urlopen(nul_answer, timeout=10)
        except urllib.error.HTTPError as exc:
            nul_error = json.loads(exc.read())["error"]
    assert code == 200 and body["status"] == "ok" and body["version"]
    assert stored == [200, 200]
    assert refused == {
        "no token": 401,
        "wrong token": 401,
        "signed 10 minutes ago": 401,
        "the token in clear": 401,
        "unknown kind": 400,
        "extra key": 400,
        "400-digit at": 400,
        "8 MiB": 413,
        "NUL in reason": 400,  # PostgreSQL cannot store it: refused, so the bridge drops it (no retry)
    }
    assert nul_error.startswith("not a bridge event: peer: ") and "NUL" in nul_error
    rows = asyncio.run(fetch(mas_db, "SELECT body FROM bridge_events"))
    assert len(rows) == 1 and json.loads(rows[0]["body"])["outcome"] == "relayed"


def declared_only(port: int, path: str, length: int) -> int:
    """POST headers declaring `length` bytes, send none of them, and read the status the server answers."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        return int(sock.recv(100).split()[1])


def random_json(rng, depth: int = 0):
    """Any JSON a hostile or broken peer might send, biased towards the event's own keys."""
    atoms = [None, True, 0, -1, 2**70, 1e308, float("nan"), float("inf"), "", "x" * rng.randint(1, 300), "\u0000"]
    roll = rng.random()
    if depth < 3 and roll < 0.35:
        keys = ["event", "session_id", "at", "ok", "sessions", "moshi", "error", "outcome", "close_code", "z"]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))}
    if depth < 3 and roll < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.6:
        return rng.choice(["session_start", "session_end", uuid.uuid4().hex, time.time()])
    return rng.choice(atoms)


def test_no_input_gives_a_500_on_any_route(tmp_path, mas_db):
    """300 random documents from a fake client to the events route, and from a fake bridge's /healthz."""
    import random
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    rng = random.Random(11)
    health_bodies = [json.dumps(random_json(rng)).encode() for _ in range(300)]
    # Deeply nested documents: json's decoder (and str() of what it decodes) recurse.
    health_bodies += [b"[" * 100_000 + b"]" * 100_000, b'{"error": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"] * 20

    class FakeBridge(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = health_bodies[rng.randrange(len(health_bodies))]
            self.send_response(rng.choice([200, 503]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    fake = ThreadingHTTPServer(("127.0.0.1", 0), FakeBridge)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    bridge_url = f"http://127.0.0.1:{fake.server_address[1]}"
    port, server = serve(
        tmp_path,
        mas_db,
        MYCA_MAS_BRIDGE_URL=bridge_url,
        MYCA_MAS_PROMETHEUS_URL=bridge_url,  # its /api/v1/alerts answers the same random documents
        MYCA_MAS_STATUS_TTL_S="0.001",
    )
    answers = {"events": {}, "status": {}}
    with server:
        for _ in range(300):
            code = post(f"http://127.0.0.1:{port}/api/myca/events", json.dumps(random_json(rng)).encode())
            answers["events"][code] = answers["events"].get(code, 0) + 1
            code, body = get(f"http://127.0.0.1:{port}/api/myca/status")
            key = (code, body["status"])
            answers["status"][key] = answers["status"].get(key, 0) + 1
    fake.shutdown()
    assert set(answers["events"]) <= {200, 400}, answers
    assert set(answers["status"]) <= {(200, "degraded"), (200, "ok")}, answers  # the database is fine throughout


def scrape(url: str) -> dict[str, float]:
    """Prometheus's text format as {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in lines if line and not line.startswith("#"))}


def test_metrics_give_the_database_the_collectors_and_the_requests(tmp_path, mas_db):
    asyncio.run(heartbeat(mas_db, "host", backlog=3))
    port, server = serve(tmp_path, mas_db, MYCA_MAS_COLLECTORS="host,voice", MYCA_MAS_COLLECTOR_INTERVAL_S="5")
    base = f"http://127.0.0.1:{port}"
    with server:
        get(f"{base}/api/myca/status")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/no/such/{uuid.uuid4().hex}", timeout=10)
        live = scrape(f"{base}/metrics")
    dead_port, dead = serve(tmp_path, DEAD_DSN, MYCA_MAS_COLLECTORS="host", MYCA_MAS_CHECK_TIMEOUT_S="1")
    with dead:
        down = scrape(f"http://127.0.0.1:{dead_port}/metrics")
    assert live["myca_mas_database_up"] == 1 and 0 < live["myca_mas_database_check_seconds"] < 1
    assert live['myca_mas_collector_running{collector="host"}'] == 1
    assert live['myca_mas_collector_backlog{collector="host"}'] == 3
    assert live['myca_mas_collector_running{collector="voice"}'] == 0  # never beat: missing
    assert live['myca_mas_requests_total{code="200",route="/api/myca/status"}'] == 1
    # One series per route, whatever path a caller sends.
    assert live['myca_mas_requests_total{code="404",route="unmatched"}'] == 1
    assert not any("no/such" in k for k in live)
    assert down["myca_mas_database_up"] == 0 and down['myca_mas_collector_running{collector="host"}'] == 0


def test_the_status_router_mounts_into_the_operators_app(tmp_path, mas_db):
    (tmp_path / "operator_mas.py").write_text(
        "from fastapi import FastAPI\napp = FastAPI()\n\n@app.get('/api/agents')\ndef agents():\n    return ['myca']\n"
    )
    port, server = serve(tmp_path, mas_db, MYCA_MAS_APP="operator_mas:app", PYTHONPATH=str(tmp_path))
    with server:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/agents", timeout=10) as resp:
            agents = json.loads(resp.read())
        code, body = get(f"http://127.0.0.1:{port}/api/myca/status")
    assert agents == ["myca"]
    assert code == 200 and body["components"]["database"]["ok"] is True


def test_migrate_cli_reports_what_it_applied(postgres):
    dsn = postgres.dsn()
    env = dict(os.environ, MYCA_MAS_DSN=dsn)
    run = [sys.executable, "-m", "myca_ops.mas", "migrate"]
    check = subprocess.run([*run, "--check"], capture_output=True, text=True, env=env)
    first = subprocess.run(run, capture_output=True, text=True, env=env)
    second = subprocess.run(run, capture_output=True, text=True, env=env)
    assert json.loads(check.stdout) == {"pending": ["0001_initial"]}
    assert json.loads(first.stdout) == {"applied": ["0001_initial"]}
    assert json.loads(second.stdout) == {"applied": []}


def test_a_health_answer_too_large_to_be_one_is_not_read(tmp_path):
    """The bridge's /healthz and Moshi's, read by the MAS: an answer over 64 KiB (a hostile or broken
    peer streaming without end) is an error field after 64 KiB, never read whole; a real one reads."""
    from aiohttp import web

    from myca_ops.mas.checks import bridge_health, moshi_health

    async def scenario():
        async def huge(request):
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(10_000):  # 100 MB unless the reader stops
                await response.write(b" " * 10_000)
            return response

        async def small(request):
            return web.json_response({"ok": True, "sessions": 2, "moshi": {"status": "ready"}, "model_loaded": True})

        answers = {}
        for name, handler in (("huge", huge), ("small", small)):
            runner, port = await serve_one_route("/healthz", handler)
            url = f"http://127.0.0.1:{port}"
            answers[name] = (await bridge_health(url, 10), await moshi_health(url, 10))
            await runner.cleanup()
        return answers

    answers = asyncio.run(scenario())
    for said in answers["huge"]:
        assert said["ok"] is False and "over 65536 bytes" in said["error"], said
    bridge, moshi = answers["small"]
    assert bridge["ok"] is True and bridge["sessions"] == 2 and moshi["ok"] is True
