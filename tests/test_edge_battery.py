"""The attack battery: hostile callers against the real bridge in front of the real moshi.server.

After each attack a real caller must get Moshi's handshake within 1 s and the bridge's
resident memory must stay under 100 MB.  The table it prints is the one in docs/SECURITY.md:

    .venv/bin/pytest tests/test_edge_battery.py -s
"""

import asyncio
import contextlib
import json
import socket
import sys
import time
from pathlib import Path

import aiohttp
from test_bridge import chat_url, client_frame, raw_websocket

from myca_ops.lab.processes import free_port, process

RSS_LIMIT_MB = 100
SETTINGS = {
    "max_sessions": 1,
    "max_message_bytes": 65536,
    "idle_timeout_s": 5,
    "heartbeat_s": 1,  # a client that reads nothing answers no ping: gone within 1.5 s
    "header_timeout_s": 2,
    "max_connections_per_address": 2000,  # every attacker here shares 127.0.0.1 with the real caller
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def handshake_ms(base: str, within_s: float = 1.0) -> float | None:
    """A real caller, who may be told "busy" while the bridge is still noticing that the attacker
    is gone and tries again: the time to Moshi's handshake byte, None when it does not come in time."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() - t0 < within_s:
            async with http.ws_connect(chat_url(base)) as ws:
                msg = await ws.receive(timeout=5)
            if msg.data == b"\x00":
                return (time.perf_counter() - t0) * 1000
            if msg.type != aiohttp.WSMsgType.CLOSE or msg.data != 1013:
                return None
            await asyncio.sleep(0.05)
    return None


def stop_reading(base: str) -> str:
    sock = raw_websocket(base)
    sock.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError, ConnectionError):
        while sent < 32 * 2**20:
            sent += sock.send(client_frame(b"\x01" + bytes(60_000)))
    time.sleep(2.5)  # the heartbeat (1 s) finds it gone, the close is bounded (2 s)
    sock.close()
    return f"sent {sent / 2**20:.1f} MiB, then read nothing for 2.5 s"


def huge_frame(base: str) -> str:
    sock = raw_websocket(base)
    sock.sendall(client_frame(b"", declared=2**30) + bytes(64 * 1024))  # 1 GiB announced, 64 KiB sent
    sock.settimeout(5)
    try:
        answer = sock.recv(64)
    except ConnectionResetError:
        answer = b""  # the close frame can be lost to the reset of a socket closed with unread bytes
    sock.close()
    if len(answer) >= 4 and answer[0] == 0x88:
        return f"a frame declaring 1 GiB: closed with {int.from_bytes(answer[2:4], 'big')}"
    return "a frame declaring 1 GiB: connection reset" if not answer else f"a frame declaring 1 GiB: {answer[:8]!r}"


def half_open(base: str) -> str:
    host, port = base.removeprefix("http://").split(":")
    socks = []
    for _ in range(1000):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /api/chat HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        socks.append(s)
    time.sleep(3)  # past the header timeout (2 s)
    closed = 0
    for s in socks:
        s.settimeout(0.01)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            closed += s.recv(1) == b""
        s.close()
    return f"1,000 connections that never finish their headers: {closed} closed by the bridge"


def healthz_burst(base: str) -> str:
    async def burst():
        async with aiohttp.ClientSession() as http:

            async def one():
                async with http.get(base + "/healthz") as resp:
                    return resp.status

            return await asyncio.gather(*(one() for _ in range(50)))

    statuses = asyncio.run(burst())
    return f"50 concurrent /healthz: {statuses.count(200)} answered 200"


def reconnects(base: str) -> str:
    async def storm():
        busy = 0
        for _ in range(200):
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
                busy += (await ws.receive(timeout=10)).data != b"\x00"
        return busy

    return f"200 callers, each hanging up right after the handshake: {asyncio.run(storm())} told busy"


ATTACKS = [stop_reading, huge_frame, half_open, healthz_burst, reconnects]


def test_the_battery(tmp_path, moshi_server):
    port = free_port()
    config = tmp_path / "bridge.json"
    config.write_text(
        json.dumps({"listen_host": "127.0.0.1", "listen_port": port, "upstream": moshi_server[0], **SETTINGS})
    )
    argv = [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(config)]
    rows = []
    with process(argv, port, tmp_path / "bridge.log") as bridge:
        base = f"http://127.0.0.1:{port}"
        start_rss = rss_mb(bridge.pid)
        for attack in ATTACKS:
            seen = attack(base)
            after = asyncio.run(handshake_ms(base))
            rows.append((attack.__name__, seen, after, rss_mb(bridge.pid)))
    print(f"\nbridge RSS at start {start_rss:.0f} MB; limit {RSS_LIMIT_MB} MB")
    print(f"{'attack':<14} {'what was seen':<72} {'handshake after':>15} {'RSS':>7}")
    for name, seen, after, rss in rows:
        print(
            f"{name:<14} {seen:<72} {after:>12.0f} ms {rss:>4.0f} MB"
            if after
            else f"{name:<14} {seen:<72} {'none':>15}"
        )
    for name, seen, after, rss in rows:
        assert after is not None and after < 1000, f"{name}: {seen}; the next caller waited {after} ms"
        assert rss < RSS_LIMIT_MB, f"{name}: the bridge grew to {rss:.0f} MB"
    assert rows[1][1].endswith(("closed with 1009", "connection reset"))
    assert rows[2][1].endswith("1000 closed by the bridge")
    assert rows[3][1].endswith("50 answered 200")
    assert rows[4][1].endswith(": 0 told busy")


def test_a_healthz_burst_opens_one_upstream_session(tmp_path, burst=50):
    """Counted at an upstream of our own: a burst of /healthz is one probe, shared."""
    from aiohttp import web

    opened = []

    async def scenario():
        async def chat(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            opened.append(time.monotonic())
            await ws.send_bytes(b"\x00")
            await asyncio.sleep(0.2)
            await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/api/chat", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        up_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", up_port).start()
        port = free_port()
        config = tmp_path / "bridge.json"
        upstream = f"ws://127.0.0.1:{up_port}/api/chat"
        settings = {"upstream": upstream, "max_connections_per_address": 100}  # the whole burst comes from here
        config.write_text(json.dumps({"listen_host": "127.0.0.1", "listen_port": port, **settings}))
        argv = [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(config)]
        with contextlib.ExitStack() as stack:
            await asyncio.to_thread(stack.enter_context, process(argv, port, tmp_path / "bridge.log"))
            async with aiohttp.ClientSession() as http:

                async def one():
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status, await resp.json()

                answers = await asyncio.gather(*(one() for _ in range(burst)))
            await asyncio.to_thread(stack.close)  # the bridge stops while this loop still serves its upstream
        await runner.cleanup()
        return answers

    answers = asyncio.run(scenario())
    assert {status for status, _ in answers} == {200}
    assert len(opened) == 1
    assert all(body["handshake_ms"] > 0 for _, body in answers)  # loopback sees the details
