"""The attack battery: hostile callers against the real bridge in front of the real moshi.server,
and against the batched Moshi server for callers that reach it directly.

Every attacker keeps its socket open while a real caller is probed: the caller must get Moshi's
handshake within 1 s *during* the attack and again after it, and the bridge's resident memory
must stay under 100 MB (the batched server's, which holds the model, may not grow by more than
50 MB).  The tables it prints are the ones in docs/SECURITY.md:

    .venv/bin/pytest tests/test_edge_battery.py -s
"""

import abc
import asyncio
import contextlib
import itertools
import json
import socket
import sys
import threading
import time
import urllib.request

import aiohttp
from test_bridge import chat_url, client_frame, raw_websocket

from myca_ops.lab.callers import holding_the_slot, refused_upgrade, rss_mb
from myca_ops.lab.processes import batched_moshi, bridge, echo_upstream, free_port, process

RSS_LIMIT_MB = 100
BATCHED_GROWTH_MB = 50
SETTINGS = {
    "max_sessions": 1,
    "max_message_bytes": 65536,
    "idle_timeout_s": 2,  # no audio for 2 s: idle
    "write_stall_s": 1,  # nothing read for 1 s: aborted
    "max_frames_per_s": 200,
    "header_timeout_s": 2,
    "max_connections_per_address": 16,  # the production default: the real caller is 127.0.0.1, the many-connection
}  # attackers 127.0.0.3 (HalfOpen, KeepAlive) or 200 addresses of their own (Refusals)
ATTACKER = "127.0.0.3"


async def handshake_ms(base: str, within_s: float = 1.0) -> float | None:
    """A real caller, who may be told "busy" while the bridge is still ending the attacker's
    session and tries again: the time to Moshi's handshake byte, None when it does not come in time."""
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


class Attack(abc.ABC):
    """An attacker that runs in a thread of its own until the battery is done with it (its socket
    open all along); `seen` says what it saw."""

    settle_s = 0.0  # how long the bridge may take to notice, before the real caller is probed
    until_seen = False  # or: probe as soon as the attacker has seen the bridge's answer (at most 10 s)

    def __init__(self, base: str) -> None:
        self.base, self.seen, self.stop = base, "", threading.Event()
        self.thread = threading.Thread(target=self.guarded, daemon=True)

    @abc.abstractmethod
    def run(self) -> None:
        """The attack; it sets `seen`, then holds its sockets until `stop` is set."""

    def guarded(self) -> None:
        try:
            self.run()
        except Exception as exc:  # shown in the table, and the assertions on `seen` fail
            self.seen = f"the attacker itself failed: {exc!r}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + (10 if self.until_seen else self.settle_s)
        while time.monotonic() < deadline and not (self.until_seen and self.seen):
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def ogg_block(size: int = 60_000) -> bytes:
    """Real Ogg/Opus speech pages, as many as fit in `size` bytes (repeated pages still decode)."""
    import sphn

    from myca_ops.voice.probe import SEND_FRAME, speech_like

    writer, audio = sphn.OpusStreamWriter(24000), speech_like(4.0)
    pages = b"".join(bytes(writer.append_pcm(audio[i : i + SEND_FRAME])) for i in range(0, len(audio), SEND_FRAME))
    return (pages * (size // len(pages) + 1))[:size]


class StopReading(Attack):
    """Floods real audio (Ogg/Opus speech in 60 KB frames) until both directions' buffers are
    full, then reads nothing: no pong."""

    settle_s = 2.0  # write stall 1 s, checked 4 times a second

    def run(self) -> None:
        sock = raw_websocket(self.base)
        sock.setblocking(False)
        frame, sent = client_frame(b"\x01" + ogg_block()), 0
        with contextlib.suppress(BlockingIOError, ConnectionError):
            while sent < 32 * 2**20:
                sent += sock.send(frame)
        self.seen = f"sent {sent / 2**20:.1f} MiB, then read nothing"
        self.stop.wait()
        sock.close()


def ogg_pages() -> list[bytes]:
    """Real Ogg/Opus speech, one page (or the few a chunk makes) per 80 ms chunk, each a frame."""
    import sphn

    from myca_ops.voice.probe import SEND_FRAME, speech_like

    writer, audio = sphn.OpusStreamWriter(24000), speech_like(4.0)
    chunks = (bytes(writer.append_pcm(audio[i : i + SEND_FRAME])) for i in range(0, len(audio), SEND_FRAME))
    return [chunk for chunk in chunks if chunk]


async def talking(ws, every_s: float, until) -> int:
    """Audio pages every `every_s` (so the idle timer never fires) until `until()` or the end."""
    sent = 0
    for page in itertools.cycle(ogg_pages()):
        if until() or ws.closed:
            return sent
        await ws.send_bytes(b"\x01" + page)
        sent += 1
        await asyncio.sleep(every_s)
    return sent


async def reading(ws) -> None:
    while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
        pass


class ForgedPongs(Attack):
    """Talks (real audio every 0.1 s) and reads nothing, but answers the pings it never read with
    made-up pongs, 10 a second, as RFC 6455 lets any client send one unasked."""

    settle_s = 2.5  # write stall 1 s, checked 4 times a second

    def run(self) -> None:
        sock = raw_websocket(self.base, rcvbuf=4096)
        pong = bytes([0x8A, 0x80 | 8]) + bytes(4) + b"notyours"  # masked (zero mask), 8 bytes of payload
        pages, t0, reason = itertools.cycle(ogg_pages()), time.monotonic(), "still open after 10 s"
        try:
            while time.monotonic() - t0 < 10 and not self.stop.is_set():
                sock.sendall(pong + client_frame(b"\x01" + next(pages)))
                time.sleep(0.1)
        except OSError as exc:
            reason = f"cut after {time.monotonic() - t0:.1f} s ({type(exc).__name__})"
        self.seen = f"audio and a forged pong every 0.1 s, nothing read: {reason}"
        self.stop.wait()
        sock.close()


class PingFlood(Attack):
    """Answers the server's pings and talks (an audio page every 0.5 s) while it pings about 1,000
    times a second: control frames are frames too."""

    until_seen = True

    def run(self) -> None:
        async def flood():
            pings, t0 = 0, time.monotonic()
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(self.base)) as ws:
                talker = asyncio.create_task(talking(ws, 0.5, self.stop.is_set))
                reader = asyncio.create_task(reading(ws))  # its receive() answers the server's pings
                with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                    while not ws.closed and time.monotonic() - t0 < 10:
                        await ws.ping()
                        pings += 1
                        if pings % 10 == 0:
                            await asyncio.sleep(0.01)  # about 1,000 a second, and its reader answers pings
                talker.cancel()
                reader.cancel()
                ended = ws.close_code or "reset"
            return f"{pings} pings, audio every 0.5 s: ended after {time.monotonic() - t0:.1f} s ({ended})"

        self.seen = asyncio.run(flood())
        self.stop.wait()


class KindByte(Attack):
    """Reads everything and answers pings, and sends the audio kind byte alone twice a second: a
    kind byte is not audio."""

    settle_s = 3.0  # idle after 2 s

    def run(self) -> None:
        async def bare():
            sent = 0
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(self.base)) as ws:

                async def send():
                    nonlocal sent
                    while not ws.closed:
                        await ws.send_bytes(b"\x01")
                        sent += 1
                        await asyncio.sleep(0.5)

                sender = asyncio.create_task(send())
                while (msg := await ws.receive(timeout=15)).type == aiohttp.WSMsgType.BINARY:
                    pass
                sender.cancel()
                while not self.stop.is_set():
                    await asyncio.sleep(0.1)
            return f"the audio kind byte alone every 0.5 s ({sent} sent): {msg.extra or msg.type.name}"

        self.seen = asyncio.run(bare())


class Junk(Attack):
    """Reads and answers pings, but sends only frames of an unknown kind: no audio."""

    settle_s = 3.0  # idle after 2 s

    def run(self) -> None:
        async def junk():
            sent, closed = 0, None
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(self.base)) as ws:
                while not self.stop.is_set() and not ws.closed:
                    with contextlib.suppress(asyncio.TimeoutError):
                        msg = await ws.receive(timeout=0.2)
                        if msg.type != aiohttp.WSMsgType.BINARY:
                            closed = msg.extra or msg.type.name
                            break
                    await ws.send_bytes(b"\x09")
                    sent += 1
                while not self.stop.is_set():
                    await asyncio.sleep(0.1)
            return f"a 1-byte frame of kind 9 every 0.2 s ({sent} sent): {closed}"

        self.seen = asyncio.run(junk())


class TinyFlood(Attack):
    """As many 2-byte frames as one socket carries, never closing."""

    until_seen = True

    def run(self) -> None:
        sock = raw_websocket(self.base)
        frame = client_frame(b"\x01\x00") * 1000
        sent = 0
        try:
            while not self.stop.is_set():
                sock.sendall(frame)
                sent += 1000
        except (ConnectionError, TimeoutError, OSError) as exc:
            self.seen = f"{sent} tiny frames at full speed: {type(exc).__name__} from the server"
        self.stop.wait()
        sock.close()


class HugeFrame(Attack):
    def run(self) -> None:
        sock = raw_websocket(self.base)
        sock.sendall(client_frame(b"", declared=2**30) + bytes(64 * 1024))  # 1 GiB announced, 64 KiB sent
        sock.settimeout(5)
        try:
            answer = sock.recv(64)
            # The bridge's ping and Moshi's handshake byte may come first: skip frames up to the close.
            while answer[:1] in (b"\x89", b"\x82") and len(answer) >= 2:
                answer = answer[2 + answer[1] :] or sock.recv(64)
        except ConnectionResetError:
            answer = b""  # the close frame can be lost to the reset of a socket closed with unread bytes
        if len(answer) >= 4 and answer[0] == 0x88:
            self.seen = f"a frame declaring 1 GiB: closed with {int.from_bytes(answer[2:4], 'big')}"
        else:
            self.seen = "a frame declaring 1 GiB: connection reset" if not answer else f"1 GiB: {answer[:8]!r}"
        self.stop.wait()
        sock.close()


class HalfOpen(Attack):
    """1,000 connections that never finish their headers, probed while they are all open."""

    settle_s = 1.0

    def run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        socks = []
        for _ in range(1000):
            s = socket.create_connection((host, int(port)), source_address=(ATTACKER, 0))
            with contextlib.suppress(ConnectionError):  # refused over the address's cap
                s.sendall(b"GET /api/chat HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            socks.append(s)
        self.stop.wait()
        time.sleep(max(0.0, 3 - self.settle_s))  # past the header timeout (2 s)
        closed = told = 0
        for s in socks:
            s.settimeout(0.01)
            with contextlib.suppress(TimeoutError, BlockingIOError):
                try:
                    answer = s.recv(64)
                    closed += answer == b""
                    told += answer.startswith(b"HTTP/1.1 429")  # over the address's cap: told, then closed
                except ConnectionError:
                    closed += 1
            s.close()
        self.seen = (
            f"1,000 connections from {ATTACKER} that never finish their headers: {closed + told} closed by the "
            f"server ({told} told 429 first)"
        )


class KeepAlive(Attack):
    """300 keep-alive connections from one address, each asking for /healthz every 2 s and kept
    open between requests (the attacker never closes)."""

    settle_s = 1.0

    def run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        answers: dict[bytes, int] = {}
        socks = []
        while not self.stop.is_set():
            socks = [s for s in socks if s.fileno() >= 0]
            while len(socks) < 300:
                socks.append(socket.create_connection((host, int(port)), timeout=2, source_address=(ATTACKER, 0)))
            for s in socks:
                try:
                    s.sendall(request)
                    status = s.recv(4096).split(b"\r\n")[0] or b"closed"
                except OSError:
                    status = b"reset"
                answers[status] = answers.get(status, 0) + 1
                if status != b"HTTP/1.1 200 OK":
                    s.close()
            self.seen = (
                f"300 keep-alive connections from {ATTACKER}, /healthz every 2 s: {dict(sorted(answers.items()))}"
            )
            self.stop.wait(2)
        for s in socks:
            s.close()


class Refusals(Attack):
    """A caller holds the only slot (an audio page every 0.5 s, everything read) while 2,000
    upgrades from 200 addresses in 127.0.0.0/8 are refused, their sockets left open; the holder
    leaves before the real caller calls."""

    until_seen = True

    async def storm(self) -> str:
        host, port = self.base.removeprefix("http://").split(":")
        codes: dict[int, int] = {}
        writers = []

        async def refused(i: int) -> None:
            code, writer = await refused_upgrade(host, int(port), f"127.0.{i % 200}.2")
            codes[code] = codes.get(code, 0) + 1
            writers.append(writer)  # never closed until the battery is done

        async with holding_the_slot(chat_url(self.base)):
            for batch in range(40):
                await asyncio.gather(*(refused(batch * 50 + i) for i in range(50)))
        self.seen = f"2,000 upgrades from 200 addresses while the slot was held: close codes {codes}"
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        for writer in writers:
            writer.close()
        return self.seen

    def run(self) -> None:
        asyncio.run(self.storm())


def healthz_burst(base: str) -> str:
    """50 concurrent /healthz, from 50 addresses (a monitor's checks, not one client over its cap)."""

    async def burst():
        async def one(i: int):
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.1.{i + 1}", 0))
            async with aiohttp.ClientSession(connector=connector) as http, http.get(base + "/healthz") as resp:
                return resp.status

        return await asyncio.gather(*(one(i) for i in range(50)))

    statuses = asyncio.run(burst())
    return f"50 concurrent /healthz from 50 addresses: {statuses.count(200)} answered 200"


def reconnects(base: str) -> str:
    async def storm():
        busy = 0
        for _ in range(200):
            async with aiohttp.ClientSession() as http, http.ws_connect(chat_url(base)) as ws:
                busy += (await ws.receive(timeout=10)).data != b"\x00"
        return busy

    return f"200 callers, each hanging up right after the handshake: {asyncio.run(storm())} told busy"


ATTACKS = [StopReading, ForgedPongs, PingFlood, KindByte, Junk, TinyFlood, HugeFrame, HalfOpen, KeepAlive, Refusals]
QUICK = [healthz_burst, reconnects]  # over before the probe: probed after


def battery(base: str, pid: int, what: str) -> list[tuple]:
    """Every attack against the server at `base` (process `pid`), a real caller probed during and
    after each: the rows of the table, printed."""
    rows = []
    start_rss = rss_mb(pid)
    for attack in ATTACKS:
        with attack(base) as running:
            during = asyncio.run(handshake_ms(base))
            rss = rss_mb(pid)
        after = asyncio.run(handshake_ms(base))
        rows.append((attack.__name__, running.seen, during, after, max(rss, rss_mb(pid))))
    for quick in QUICK:
        seen = quick(base)
        after = asyncio.run(handshake_ms(base))
        rows.append((quick.__name__, seen, after, after, rss_mb(pid)))
    print(f"\n{what}: RSS at start {start_rss:.0f} MB")
    print(f"{'attack':<14} {'what was seen':<84} {'during':>9} {'after':>9} {'RSS':>7}")
    for name, seen, during, after, rss in rows:
        ms = [f"{v:.0f} ms" if v is not None else "none" for v in (during, after)]
        print(f"{name:<14} {seen:<84} {ms[0]:>9} {ms[1]:>9} {rss:>4.0f} MB")
    for name, seen, during, after, _ in rows:
        assert during is not None and during < 1000, f"{name}: {seen}; a caller during it waited {during} ms"
        assert after is not None and after < 1000, f"{name}: {seen}; the next caller waited {after} ms"
    seen = {name: text for name, text, *_ in rows}
    assert "nothing read: cut after" in seen["ForgedPongs"]
    assert "ended after" in seen["PingFlood"] and float(seen["PingFlood"].split("ended after ")[1].split()[0]) < 2
    assert "idle: no audio" in seen["KindByte"]
    assert "idle: no audio" in seen["Junk"]
    assert "from the server" in seen["TinyFlood"]
    assert seen["HugeFrame"].endswith(("closed with 1009", "connection reset"))
    assert "headers: 1000 closed by the server" in seen["HalfOpen"]
    assert "HTTP/1.1 200 OK" in seen["KeepAlive"]
    assert seen["Refusals"].endswith("close codes {1013: 2000}")
    assert seen["healthz_burst"].endswith("50 answered 200")
    assert seen["reconnects"].endswith(": 0 told busy")
    return [(name, start_rss, rss) for name, _, _, _, rss in rows]


def test_the_battery_against_the_bridge(tmp_path, moshi_server):
    port = free_port()
    config = tmp_path / "bridge.json"
    config.write_text(
        json.dumps({"listen_host": "127.0.0.1", "listen_port": port, "upstream": moshi_server[0], **SETTINGS})
    )
    argv = [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(config)]
    with process(argv, port, tmp_path / "bridge.log") as server:
        rows = battery(f"http://127.0.0.1:{port}", server.pid, f"the bridge, limit {RSS_LIMIT_MB} MB")
    for name, _, rss in rows:
        assert rss < RSS_LIMIT_MB, f"{name}: the bridge grew to {rss:.0f} MB"


def test_the_battery_against_the_batched_server(tmp_path, lab_weights):
    """The same attacks on the batched server reached directly (its own aiohttp, the same session
    rules, one slot)."""
    rules = {
        "MYCA_MOSHI_SLOTS": "1",
        "MYCA_MOSHI_WRITE_STALL_S": str(SETTINGS["write_stall_s"]),
        "MYCA_MOSHI_IDLE_TIMEOUT_S": str(SETTINGS["idle_timeout_s"]),
        "MYCA_MOSHI_MAX_FRAMES_PER_S": str(SETTINGS["max_frames_per_s"]),
        "MYCA_MOSHI_HEADER_TIMEOUT_S": str(SETTINGS["header_timeout_s"]),
    }
    with batched_moshi(lab_weights, tmp_path / "server.log", **rules) as (server, base):
        asyncio.run(handshake_ms(base))  # a first session: the model's first-tick allocations are not growth
        rows = battery(base, server.pid, f"the batched server, growth limit {BATCHED_GROWTH_MB} MB")
    for name, start, rss in rows:
        assert rss - start < BATCHED_GROWTH_MB, f"{name}: the batched server grew from {start:.0f} to {rss:.0f} MB"


def test_health_calls_open_no_upstream_session(tmp_path, burst=50):
    """50 concurrent /healthz on the bridge: all answered, and the upstream (the echo server, which
    counts its sessions) opened none: the bridge reads Moshi's /healthz, once for the burst."""
    with echo_upstream(tmp_path) as upstream:
        settings = {"upstream": upstream, "max_connections_per_address": 100}  # the whole burst comes from here
        with bridge(tmp_path, **settings) as base:

            async def scenario():
                async with aiohttp.ClientSession() as http:

                    async def one():
                        async with http.get(base + "/healthz") as resp:
                            return resp.status, await resp.json()

                    return await asyncio.gather(*(one() for _ in range(burst)))

            answers = asyncio.run(scenario())
        with urllib.request.urlopen(upstream.replace("ws", "http", 1).replace("/api/chat", "/healthz")) as answer:
            upstream_health = json.load(answer)
    assert [status for status, _ in answers] == [200] * burst
    assert all(body["moshi"]["status"] == "ready" for _, body in answers)  # loopback sees the details
    assert upstream_health["sessions_opened"] == 0
