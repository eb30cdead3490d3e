"""The bridge as a real process in front of a real upstream (an echo speaking the protocol, and moshi.server)."""

import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from conftest import raw_websocket
from myca_ops.bridge.config import BridgeConfig, ConfigError
from myca_ops.bridge.events import SIGNATURE, signature_problem
from myca_ops.lab.processes import bridge, echo_upstream

TOKEN = "t" * 24


@pytest.fixture
def upstream(tmp_path):
    with echo_upstream(tmp_path) as url:
        yield url


def chat_url(base: str, query: str = "") -> str:
    return base.replace("http", "ws") + "/api/chat" + query


async def opening(ws) -> tuple[bytes, dict]:
    """The echo upstream's first two messages: the handshake byte and its metadata."""
    handshake = await ws.receive_bytes(timeout=5)
    meta = await ws.receive_bytes(timeout=5)
    return handshake, json.loads(meta[1:])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_relays_byte_exact_both_ways_and_passes_the_query(tmp_path, upstream):
    rng = random.Random(1)
    messages = [bytes([rng.randint(1, 6)]) + rng.randbytes(rng.randint(0, 4000)) for _ in range(300)]

    async def session(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base, "?voice=7&token=" + TOKEN)) as ws:
            handshake, meta = await opening(ws)
            for message in messages:
                await ws.send_bytes(message)
            echoed = [await ws.receive_bytes(timeout=5) for _ in messages]
            return handshake, meta, echoed

    # 300 messages at once: over the default frame budget, which the flood test checks
    with bridge(tmp_path, upstream=upstream, tokens=[TOKEN], max_frames_per_s=1000) as base:
        handshake, meta, echoed = asyncio.run(session(base))
        status, text = http_get(base + "/metrics")
    assert handshake == b"\x00"
    assert meta == {"query": "voice=7"}  # the bridge's token stays with the bridge
    assert echoed == messages
    audio = sum(1 for m in messages if m[0] == 1)
    assert metric(text, 'myca_bridge_messages_total{direction="to_upstream",kind="audio"}') == audio
    assert metric(text, 'myca_bridge_bytes_total{direction="to_client"}') == sum(map(len, messages)) + 1 + len(
        b'\x04{"query": "voice=7"}'
    )


def test_token_and_origin_are_checked_before_any_slot_is_taken(tmp_path, upstream):
    """A foreign origin is refused at the upgrade (403); a missing or wrong token too (401) for
    clients that are not browsers, while a browser (an Origin) gets the upgrade closed at once with
    4401 and the reason: a refused upgrade shows a browser only 1006."""

    async def answer_of(base, query="", headers=None):
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(chat_url(base, query), headers=headers or {}) as ws:
                    first = await ws.receive(timeout=5)
                    if first.type == aiohttp.WSMsgType.BINARY:
                        await opening_rest(ws)
                        return 101
                    return (first.data, first.extra)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    refused = (4401, "a valid token is required: header 'Authorization: Bearer T' or ?token=T")
    settings = {"upstream": upstream, "tokens": [TOKEN], "allowed_origins": ["https://myca.example"]}
    with bridge(tmp_path, **settings) as base:
        good = {"Origin": "https://myca.example"}
        assert asyncio.run(answer_of(base, headers=good)) == refused
        assert asyncio.run(answer_of(base, "?token=" + "x" * 24, headers=good)) == refused
        assert asyncio.run(answer_of(base, "?token=" + "x" * 24)) == 401
        assert asyncio.run(answer_of(base, "?token=" + TOKEN, headers=good)) == 101
        assert asyncio.run(answer_of(base, headers={**good, "Authorization": "Bearer " + TOKEN})) == 101
        assert asyncio.run(answer_of(base, headers={**good, "Authorization": "bearer " + TOKEN})) == 101  # any case
        evil = {"Origin": "https://evil.example", "Authorization": "Bearer " + TOKEN}
        assert asyncio.run(answer_of(base, headers=evil)) == 403


async def opening_rest(ws) -> dict:
    """The echo upstream's metadata, after its handshake byte was read."""
    return json.loads((await ws.receive_bytes(timeout=5))[1:])


def client_frame(payload: bytes, declared: int | None = None) -> bytes:
    """A masked binary frame (zero mask); `declared` lies about the length in the header."""
    n = len(payload) if declared is None else declared
    if n < 126:
        header = bytes([0x82, 0x80 | n])
    elif n < 65536:
        header = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + bytes(4) + payload


async def handshake_after(base: str, delay: float = 0.0) -> aiohttp.WSMessage:
    """What a caller who connects `delay` seconds from now receives first."""
    await asyncio.sleep(delay)
    async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
        return await ws.receive(timeout=5)


def test_a_caller_who_reconnects_right_after_hanging_up_gets_the_handshake(tmp_path, upstream):
    """A page reload: hang up, connect again at once, 20 times; the only slot is free every time."""

    async def scenario(base):
        firsts = []
        for _ in range(20):
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
                await opening(ws)
            firsts.append(await handshake_after(base))
        return firsts

    with bridge(tmp_path, upstream=upstream, max_sessions=1) as base:
        firsts = asyncio.run(scenario(base))
        _, text = http_get(base + "/metrics")
    assert [(m.type, m.data) for m in firsts] == [(aiohttp.WSMsgType.BINARY, b"\x00")] * 20
    assert metric(text, 'myca_bridge_sessions_total{outcome="busy"}') == 0
    assert metric(text, "myca_bridge_sessions_active") == 0


def test_a_client_that_stops_reading_loses_its_slot_while_its_socket_stays_open(tmp_path, upstream):
    """It floods the echo and never reads (no pong to the bridge's pings): aborted after the write
    stall (1 s), so a caller 1.5 s later is served while the attacker still holds its socket."""
    with bridge(tmp_path, upstream=upstream, max_sessions=1, write_stall_s=1) as base:
        sock = raw_websocket(base)
        sock.setblocking(False)
        chunk = client_frame(b"\x01" + bytes(60_000))
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 64 * 1024 * 1024:  # until both directions' buffers are full
                sock.send(chunk)
                sent += len(chunk)
        first = asyncio.run(handshake_after(base, delay=1.5))
        _, text = http_get(base + "/metrics")
        sock.close()
    assert sent < 64 * 1024 * 1024, "the bridge never pushed back"
    assert (first.type, first.data) == (aiohttp.WSMsgType.BINARY, b"\x00")
    assert metric(text, 'myca_bridge_sessions_total{outcome="write_stall"}') == 1


def test_frames_that_are_not_audio_do_not_keep_a_session(tmp_path, upstream):
    """A client that reads and answers pings but sends only junk (an unknown kind) is idle."""

    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            t0 = time.monotonic()

            async def junk():
                while True:
                    await ws.send_bytes(b"\x09")
                    await asyncio.sleep(0.1)

            sender = asyncio.create_task(junk())
            msg = await ws.receive(timeout=10)
            sender.cancel()
            return msg, time.monotonic() - t0

    with bridge(tmp_path, upstream=upstream, idle_timeout_s=1, write_stall_s=1) as base:
        msg, after = asyncio.run(scenario(base))
    assert (msg.data, msg.extra) == (4408, "idle: no audio from the client for 1 s")
    assert after < 2


def test_a_session_ends_at_its_longest_life(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            t0 = time.monotonic()
            while True:  # a well-behaved caller: audio every 80 ms, everything read
                await ws.send_bytes(b"\x01" + bytes(100))
                msg = await ws.receive(timeout=5)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return msg, time.monotonic() - t0
                await asyncio.sleep(0.08)

    with bridge(tmp_path, upstream=upstream, max_session_s=1.5) as base:
        msg, after = asyncio.run(scenario(base))
    assert (msg.data, msg.extra) == (4410, "session limit: 1.5 s")
    assert 1.2 < after < 3


def test_a_flood_is_closed_and_never_reaches_the_upstream(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                for _ in range(2000):
                    await ws.send_bytes(b"\x01")
                while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
                    pass
                return msg
            return None  # the connection was reset under the sender: aborted

    with bridge(tmp_path, upstream=upstream, max_frames_per_s=50) as base:
        msg = asyncio.run(scenario(base))
        _, text = http_get(base + "/metrics")
    assert msg is None or msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert metric(text, 'myca_bridge_sessions_total{outcome="flood"}') == 1
    assert metric(text, 'myca_bridge_messages_total{direction="to_upstream",kind="audio"}') <= 50


def test_a_caller_who_hangs_up_abruptly_and_calls_again_at_once_is_served(tmp_path, upstream):
    """No close handshake (a reset), then a new caller at once, with no retry: 30 times, never busy."""
    import socket
    import struct

    async def scenario(base):
        firsts = []
        for _ in range(30):
            sock = raw_websocket(base)
            sock.settimeout(5)
            seen = b""
            while b"\x82\x01\x00" not in seen:  # the handshake byte's frame (after the bridge's first ping)
                seen += sock.recv(64)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
            firsts.append(await handshake_after(base))
        return firsts

    with bridge(tmp_path, upstream=upstream, max_sessions=1) as base:
        firsts = asyncio.run(scenario(base))
    assert [m.data for m in firsts] == [b"\x00"] * 30


def test_a_second_caller_gets_busy_at_once_and_the_first_is_unharmed(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as first:
            await opening(first)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with http.ws_connect(chat_url(base)) as second:
                msg = await second.receive(timeout=5)
            busy_after = loop.time() - t0
            await first.send_bytes(b"\x01still here")
            return msg, busy_after, await first.receive_bytes(timeout=5)

    with bridge(tmp_path, upstream=upstream, max_sessions=1) as base:
        msg, busy_after, echoed = asyncio.run(scenario(base))
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 1013 and msg.extra.startswith("busy: 1 of 1 sessions in use")
    assert busy_after < 1.0
    assert echoed == b"\x01still here"


@pytest.mark.parametrize(
    "send,code,reason",
    [
        (lambda ws: ws.send_bytes(b"\x01" + bytes(2000)), 1009, "message of 2001 bytes is over the limit of 1024"),
        (lambda ws: ws.send_str("hello"), 1003, "text frames are not part of the protocol"),
    ],
    ids=["oversize", "text-frame"],
)
def test_bad_frames_close_the_session_with_a_code_and_reason(tmp_path, upstream, send, code, reason):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            await send(ws)
            return await ws.receive(timeout=5)

    with bridge(tmp_path, upstream=upstream, max_message_bytes=1024) as base:
        msg = asyncio.run(scenario(base))
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra[: len(reason)]) == (code, reason)


def test_unknown_kinds_are_dropped_and_counted(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            for message in (b"\x09junk", b"", b"\xffmore", b"\x01audio"):
                await ws.send_bytes(message)
            return await ws.receive_bytes(timeout=5)

    with bridge(tmp_path, upstream=upstream) as base:
        first_echo = asyncio.run(scenario(base))
        _, text = http_get(base + "/metrics")
    assert first_echo == b"\x01audio"
    assert metric(text, 'myca_bridge_dropped_messages_total{reason="unknown_kind"}') == 3


def test_an_idle_client_is_closed(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            return await ws.receive(timeout=10)

    with bridge(tmp_path, upstream=upstream, idle_timeout_s=0.5) as base:
        msg = asyncio.run(scenario(base))
    assert (msg.data, msg.extra) == (4408, "idle: no audio from the client for 0.5 s")


def test_a_dead_upstream_is_named_to_the_client_and_by_healthz(tmp_path):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            return await ws.receive(timeout=10)

    with bridge(tmp_path, upstream="ws://127.0.0.1:9/api/chat", connect_timeout_s=2) as base:
        msg = asyncio.run(scenario(base))
        status, body = http_get(base + "/healthz")
    assert msg.data == 1014 and msg.extra.startswith("upstream unreachable: ClientConnectorError")
    body = json.loads(body)
    assert status == 503 and body["moshi"]["status"] == "down"
    assert body["error"].startswith("Moshi: no answer from http://127.0.0.1:9")


def test_healthz_says_what_moshis_healthz_says_and_answers_as_health_too(tmp_path, upstream):
    with bridge(tmp_path, upstream=upstream) as base:
        answers = [http_get(base + path) for path in ("/healthz", "/health")]  # /health: the MYCA website's name
    for status, body in answers:
        body = json.loads(body)
        assert status == 200 and body["ok"] is True
        assert body["moshi"] == {"status": "ready", "source": "healthz"}


async def query_upstream_sees(base: str, query: str) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base, query)) as ws:
        return (await opening(ws))[1]["query"]


def test_the_bridge_adds_its_default_persona_and_passes_callers_prompts_only_when_allowed(tmp_path, upstream):
    prompt = "?text_prompt=Say%20anything&voice_prompt=x.wav&voice=7"
    with bridge(tmp_path, upstream=upstream, default_persona="myca") as base:
        named, unnamed, prompted = (
            asyncio.run(query_upstream_sees(base, q)) for q in ("?persona=field", "?voice=7", prompt)
        )
    assert named == "persona=field"  # the caller's choice stands
    assert unnamed == "voice=7&persona=myca"
    assert prompted == "voice=7&persona=myca"  # its prompts taken out: the operator's persona instead
    with bridge(tmp_path, upstream=upstream, default_persona="myca", allow_client_prompts=True) as base:
        prompted = asyncio.run(query_upstream_sees(base, prompt))
    assert prompted == "text_prompt=Say anything&voice_prompt=x.wav&voice=7"  # no persona beside its own prompt


def test_a_persona_outside_the_servers_rule_or_a_malformed_origin_never_reaches_the_upstream(tmp_path, upstream):
    """The server's persona-name rule at the bridge: a path, NUL, CRLF or 5,000 characters get 400
    (a browser a 4400 close naming the rule) before any upstream session; a name with a dot passes.
    An Origin of non-ASCII bytes or two Origin headers: 400, never a 500."""
    upgrade = b"GET /api/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    upgrade += b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

    async def refused(base: str, query: str, origin: str | None) -> tuple:
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(chat_url(base, query), headers={"Origin": origin} if origin else {})
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, ""
            msg = await ws.receive(timeout=5)
            await ws.close()
            return msg.data, msg.extra

    with bridge(tmp_path, upstream=upstream) as base:
        assert asyncio.run(query_upstream_sees(base, "?persona=support.en")) == "persona=support.en"
        for bad in ("../../etc/passwd", "a%00b", "a%0D%0Ab", "x" * 5000):
            assert asyncio.run(refused(base, f"?persona={bad}", None)) == (400, ""), bad
        code, reason = asyncio.run(refused(base, "?persona=a%20b", "https://myca.example"))
        assert code == 4400 and reason.startswith("persona must be 1 to 64 letters, digits")
        assert raw_request(base, upgrade + b"Origin: \xff\xfe\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
        twice = upgrade + b"Origin: https://myca.example\r\nOrigin: https://evil.example\r\n\r\n"
        assert raw_request(base, twice) == b"HTTP/1.1 400 Bad Request"
        assert asyncio.run(query_upstream_sees(base, "")) == ""  # and it serves on


def test_fuzz_leaves_the_bridge_up_and_other_sessions_unharmed(tmp_path, upstream):
    """1,000 random frames from several rude clients while a polite one keeps talking."""
    rng = random.Random(7)

    async def rude(base, frames):
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(chat_url(base))
            for frame in frames:
                if ws.closed:
                    ws = await http.ws_connect(chat_url(base))
                kind = rng.random()
                try:
                    if kind < 0.1:
                        await ws.send_str(frame.hex())
                    else:
                        await ws.send_bytes(frame)
                except (ConnectionResetError, aiohttp.ClientError):
                    ws = await http.ws_connect(chat_url(base))
                await asyncio.sleep(0.001)  # 250 frames each: the fuzz lasts at least 0.25 s
            await ws.close()

    async def polite(base, rude_running):
        sent = received = during = 0
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
            while rude_running.is_set() or sent < 10:  # talks before, during and after the fuzz
                payload = b"\x01" + rng.randbytes(160)
                await ws.send_bytes(payload)
                sent += 1
                during += rude_running.is_set()
                received += (await ws.receive_bytes(timeout=5)) == payload
                await asyncio.sleep(0.02)
        return sent, received, during

    async def scenario(base):
        frames = [rng.randbytes(rng.choice([0, 1, 2, 50, 500, 3000])) for _ in range(1000)]
        rude_running = asyncio.Event()
        polite_task = asyncio.create_task(polite(base, rude_running))
        await asyncio.sleep(0.1)
        rude_running.set()
        await asyncio.gather(*(rude(base, frames[i::4]) for i in range(4)))
        rude_running.clear()
        return await polite_task

    with bridge(tmp_path, upstream=upstream, max_sessions=8, max_message_bytes=2048) as base:
        sent, received, during = asyncio.run(scenario(base))
        status, _ = http_get(base + "/healthz")
        _, text = http_get(base + "/metrics")
    assert received == sent and during >= 3, (sent, received, during)
    assert status == 200
    assert metric(text, "myca_bridge_dropped_messages_total") > 0
    assert metric(text, 'myca_bridge_sessions_total{outcome="too_big"}') > 0


def test_session_events_reach_the_mas_once_it_is_up(tmp_path, upstream):
    from aiohttp import web

    from myca_ops.lab.processes import free_port

    port = free_port()
    received = []

    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
        await asyncio.sleep(1.2)  # the MAS is down: the bridge retries
        app = web.Application()

        async def record(request):
            received.append(await request.json())
            return web.json_response({"ok": True})

        app.router.add_post("/api/myca/events", record)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        for _ in range(100):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.1)
        await runner.cleanup()

    with bridge(tmp_path, upstream=upstream, mas_url=f"http://127.0.0.1:{port}/api/myca/events") as base:
        asyncio.run(scenario(base))
    assert [e["event"] for e in received] == ["session_start", "session_end"]
    assert received[0]["session_id"] == received[1]["session_id"]
    assert received[1]["outcome"] == "relayed"


def test_the_voice_probe_through_the_bridge_hears_moshi(tmp_path, moshi_server):
    from myca_ops.voice.probe import probe

    with bridge(tmp_path, upstream=moshi_server[0], tokens=[TOKEN]) as base:
        refused = asyncio.run(probe(chat_url(base), seconds=2, handshake_only=True))
        result = asyncio.run(probe(chat_url(base), seconds=2, token=TOKEN))
    assert "401" in refused["error"]
    assert result["error"] is None
    assert result["handshake_ms"] is not None and result["audio_messages"] > 0


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"upstream": "http://moshi:8998"}, "upstream must be a ws:// or wss:// URL"),
        ({"upstream": "ws://m/api/chat", "max_sessions": 0}, "max_sessions must be at least 1"),
        ({"upstream": "ws://m/api/chat", "tokens": ["short"]}, "every token must be at least 16 characters"),
        ({"upstream": "ws://m/api/chat", "tokens": [{"token": "t" * 20, "scopes": ["admin"]}]}, "scopes are ['admin']"),
        ({"upstream": "ws://m/api/chat", "tokens": [{"tok": "t" * 20}]}, "a bridge_tokens entry must be {token: T"),
        ({"upstream": "ws://m/api/chat", "ticket_keys": ["k" * 31]}, "every ticket key must be at least 32"),
        ({"upstream": "ws://m/api/chat", "ticket_route": True}, "ticket_route needs ticket_keys"),
        (
            {"upstream": "ws://m/api/chat", "ticket_route": True, "ticket_keys": ["k" * 32]},
            "ticket_route mints tickets for the pages of allowed_origins, and it is empty",
        ),
        ({"upstream": "ws://m/api/chat", "tls_cert": "/c.pem"}, "tls_cert and tls_key go together"),
        ({"upstream": "ws://m/api/chat", "max_session": 2}, "unknown setting(s) max_session"),
        ({}, "upstream is required"),
    ],
)
def test_bad_settings_name_the_cause(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        BridgeConfig.from_dict(settings)


def test_the_cli_reports_a_bad_config_file(tmp_path):
    path = tmp_path / "bridge.json"
    path.write_text("{not json")
    out = subprocess.run(
        [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2 and f"cannot read the bridge config {path}" in out.stderr


def test_metrics_and_health_details_are_for_the_allowed_networks_or_a_metrics_token(tmp_path, upstream):
    def get_with(url, token=""):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    session_only = "s" * 24
    tokens = [{"token": TOKEN, "scopes": ["session", "metrics"]}, session_only]  # a plain string: session only
    with bridge(tmp_path, upstream=upstream, tokens=tokens, metrics_allowed=["192.0.2.0/24"]) as base:
        anonymous_metrics = get_with(base + "/metrics")
        token_metrics = get_with(base + "/metrics", TOKEN)
        session_metrics = get_with(base + "/metrics", session_only)
        anonymous_health = get_with(base + "/healthz")
        token_health = get_with(base + "/healthz", TOKEN)
        session_health = get_with(base + "/healthz", session_only)
    assert anonymous_metrics[0] == 403 and "bridge_metrics_allowed" in anonymous_metrics[1]
    assert token_metrics[0] == 200 and "myca_bridge_sessions_active" in token_metrics[1]
    assert session_metrics[0] == 403 and "a token with the metrics scope" in session_metrics[1]
    assert anonymous_health == session_health == (200, '{"ok": true}')
    assert json.loads(token_health[1])["upstream"] == upstream


def test_a_client_address_over_its_connection_cap_gets_429(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http:
            first = await http.ws_connect(chat_url(base))
            second = await http.ws_connect(chat_url(base))
            try:
                await http.ws_connect(chat_url(base))
                third = 101
            except aiohttp.WSServerHandshakeError as exc:
                third = exc.status
            await first.close()
            await second.close()
            return third

    with bridge(tmp_path, upstream=upstream, max_sessions=4, max_connections_per_address=2) as base:
        assert asyncio.run(scenario(base)) == 429


def test_keep_alive_connections_count_against_their_address_and_another_address_is_served(tmp_path, upstream):
    """20 keep-alive connections from 127.0.0.2, each with a request answered and then held open
    idle: 4 are served (the cap counts connections in every state, not open requests), the rest
    told 429; a caller from 127.0.0.1 meanwhile gets its handshake at once; closed, the 4 free
    their address's places."""
    import socket

    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"

    def keep_alive(port: int) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        sock.sendall(request)
        return sock, sock.recv(4096).split(b"\r\n")[0]

    settings = {"max_connections_per_address": 4, "header_timeout_s": 30, "keepalive_timeout_s": 30}
    with bridge(tmp_path, upstream=upstream, **settings) as base:
        port = int(base.rsplit(":", 1)[1])
        held = [keep_alive(port) for _ in range(20)]
        statuses = [status for _, status in held]
        assert statuses.count(b"HTTP/1.1 200 OK") == 4 and statuses.count(b"HTTP/1.1 429 Too Many Requests") == 16
        t0 = time.monotonic()
        assert asyncio.run(query_upstream_sees(base, "")) == "" and time.monotonic() - t0 < 1
        for sock, _ in held:
            sock.close()
        time.sleep(0.2)
        assert keep_alive(port)[1] == b"HTTP/1.1 200 OK"


def test_a_kept_alive_connection_idles_for_the_keep_alive_timeout_and_a_silent_one_for_the_header_timeout(
    tmp_path, upstream
):
    """Keep-alive 0.5 s, header timeout 4 s: a connection answered and then idle is closed within
    2 s, and so is one that began a request and stalled; one that has sent nothing is still open
    at 2 s and closed by 6 s."""
    import socket

    def connect(port: int, send: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=8)
        if send:
            sock.sendall(send)
        return sock

    def closed_after(sock: socket.socket, start: float) -> float:
        while sock.recv(4096):  # an answer first, for the kept-alive one
            pass
        return time.monotonic() - start

    with bridge(tmp_path, upstream=upstream, header_timeout_s=4, keepalive_timeout_s=0.5) as base:
        port = int(base.rsplit(":", 1)[1])
        start = time.monotonic()
        idle = connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        stalled = connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        silent = connect(port, b"")
        assert closed_after(idle, start) < 2 and closed_after(stalled, start) < 2
        silent.settimeout(2 - (time.monotonic() - start))
        with pytest.raises(TimeoutError):
            silent.recv(1)  # open and unanswered at 2 s
        silent.settimeout(8)
        assert 2 <= closed_after(silent, start) < 6
        for sock in (idle, stalled, silent):
            sock.close()


def test_past_its_connections_in_all_the_bridge_drops_new_ones_and_takes_them_again_when_some_close(tmp_path, upstream):
    """max_connections 8: eight silent connections from four addresses fill it; a ninth, from a
    fifth address, is dropped at once (no answer); with two closed, a caller is served again."""
    import socket

    with bridge(tmp_path, upstream=upstream, max_connections=8, max_connections_per_address=2) as base:
        port = int(base.rsplit(":", 1)[1])
        held = [
            socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{2 + i // 2}", 0))
            for i in range(8)
        ]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0))
        try:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            dropped = extra.recv(64) == b""
        except ConnectionError:
            dropped = True
        assert dropped
        for sock in held[:2]:
            sock.close()
        time.sleep(0.2)
        assert http_get(base + "/healthz")[0] == 200
        for sock in [extra, *held[2:]]:
            sock.close()


def test_a_tls_handshake_that_never_comes_is_closed_by_the_header_timeout(tmp_path, upstream):
    """With TLS, a connection is counted once its handshake is done: one that never starts it is
    closed after the header timeout (1 s here), not asyncio's 60 s; a real TLS client is served."""
    import datetime
    import ipaddress
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    signing = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder(subject_name=name, issuer_name=name, public_key=signing.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(signing, hashes.SHA256())
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    settings = {"tls_cert": str(cert), "tls_key": str(key), "header_timeout_s": 1}
    with bridge(tmp_path, upstream=upstream, **settings) as base:
        port = int(base.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        try:
            assert silent.recv(64) == b""
        except ConnectionError:
            pass
        assert time.monotonic() - start < 4
        silent.close()
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10, context=context) as reply:
            assert reply.status == 200


def test_the_access_log_never_holds_a_token(tmp_path, upstream):
    async def scenario(base):
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base, f"?voice=1&token={TOKEN}")) as ws:
            await opening(ws)

    encoded = "".join(f"%{ord(c):02X}" for c in TOKEN)  # the token percent-encoded, every character
    with bridge(tmp_path, upstream=upstream, tokens=[TOKEN]) as base:
        asyncio.run(scenario(base))
        for query in (
            f"token={TOKEN}",
            f"%74oken={TOKEN}",
            f"token=x&token={TOKEN}",
            f"TOKEN={TOKEN}",
            f"tiCKet={TOKEN}",
            f"token={encoded}",
            f"%74%6F%6B%65%6E={encoded}",
        ):
            http_get(base + f"/healthz?{query}")
            http_get(base + f"/metrics?{query}")
    log = next(tmp_path.glob("bridge-*.log")).read_text()
    assert TOKEN not in log and encoded not in log and TOKEN.lower() not in log.lower()
    assert "/api/chat?voice=1&token=REDACTED" in log


def test_a_refused_event_is_dropped_at_once_and_the_next_one_goes_through(tmp_path, upstream):
    from aiohttp import web

    from myca_ops.lab.processes import free_port

    port = free_port()
    received, refused = [], []

    async def scenario(base):
        app = web.Application()

        async def record(request):
            body = await request.read()
            event = json.loads(body)
            if event["event"] == "session_start" and not refused:  # the MAS refuses the first event
                refused.append(event)
                return web.json_response({"error": "no"}, status=400)
            signed = signature_problem("m" * 20, request.headers.get(SIGNATURE, ""), body)
            received.append((event, signed, "m" * 20 in str(request.headers)))
            return web.json_response({"stored": True})

        app.router.add_post("/api/myca/events", record)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
            await opening(ws)
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.1)
        await runner.cleanup()

    mas_url = f"http://127.0.0.1:{port}/api/myca/events"
    with bridge(tmp_path, upstream=upstream, mas_url=mas_url, mas_token="m" * 20) as base:
        asyncio.run(scenario(base))
        _, text = http_get(base + "/metrics")
    assert [e["event"] for e, *_ in received] == ["session_end"]  # not held up by the refused one
    assert received[0][1:] == (None, False)  # signed with the events token, which it never sends
    assert metric(text, 'myca_bridge_events_dropped_total{reason="refused_400"}') == 1


def raw_request(base: str, head: bytes) -> bytes:
    """Send a hand-made request (any bytes in its headers) and return the status line."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_malformed_credentials_get_4xx_and_never_reach_the_log(tmp_path, upstream):
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    upgrade += b"Sec-WebSocket-Version: 13\r\n"
    with bridge(tmp_path, upstream=upstream, tokens=[TOKEN]) as base:
        port = base.rsplit(":", 1)[1]
        not_utf8 = raw_request(
            base, b"GET /api/chat HTTP/1.1\r\nHost: x\r\n" + upgrade + b"Authorization: Bearer \xff\xfe\xc3(\r\n\r\n"
        )
        nul = raw_request(
            base,
            b"GET /api/chat HTTP/1.1\r\nHost: x\r\n"
            + upgrade
            + b"Authorization: Bearer "
            + TOKEN.encode()
            + b"\x00x\r\n\r\n",
        )
        in_query = raw_request(
            base, b"GET /api/chat?token=" + TOKEN.encode() + b"%00 HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n"
        )
        time.sleep(0.5)
        log = (tmp_path / f"bridge-{port}.log").read_text()
    assert not_utf8.startswith(b"HTTP/1.1 401"), not_utf8
    assert nul.split(b" ")[1] == b"400", nul  # aiohttp answers a request it cannot parse in HTTP/1.0
    assert in_query.startswith(b"HTTP/1.1 401"), in_query
    assert TOKEN not in log, "a credential reached the log"
    assert "Traceback" not in log


def test_a_long_close_reason_is_cut_on_a_character_boundary():
    """A close reason has at most 123 bytes; cut inside a character, it is invalid UTF-8, which a
    browser takes as a failed connection instead of the reason."""
    from myca_ops.sessions import close

    class Peer:
        async def close(self, code: int, message: bytes) -> None:
            self.sent = (code, message)

    peer = Peer()
    asyncio.run(close(peer, 1008, "x" + "é" * 100))  # byte 120 falls inside an é
    code, message = peer.sent
    assert code == 1008 and message.decode() == "x" + "é" * 59


def test_the_frame_budget_is_a_sliding_second_not_a_calendar_one(monkeypatch):
    """300 frames in 20 ms across a second's edge are over a budget of 200 a second; 200 a second
    spread evenly, for as long as a session lasts, are not."""
    from myca_ops import sessions

    clock = [1000.99]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    seen = sessions.Liveness(sessions.Rules(max_frames_per_s=200))
    ends = []
    for i in range(300):
        clock[0] = 1000.99 + i * 0.02 / 300  # 1000.99 to 1001.01
        ends.append(seen.frame(audio=False))
    first = next(i for i, end in enumerate(ends) if end)  # a fixed second would take them all (150 + 150)
    assert 200 <= first < 210 and ends[first] == ("flood", 1008, "over 200 frames in a second")
    steady = sessions.Liveness(sessions.Rules(max_frames_per_s=200))
    for i in range(2000):  # 10 s at 200 a second
        clock[0] = 2000 + i / 200
        assert steady.frame(audio=True) is None
