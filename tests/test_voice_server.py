"""The batched Moshi server: parity with moshi's own loop, isolation, slots, health, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import raw_websocket
from myca_ops.lab.processes import batched_moshi
from myca_ops.voice.probe import SEND_FRAME, chat_session, speech_like
from myca_ops.voice.protocol import AUDIO, FRAME_SAMPLES, HANDSHAKE, SAMPLE_RATE, TEXT

SLOTS = 2


def tone(seconds: float, pitch: float) -> np.ndarray:
    """A gliding tone: input that Mimi codes differently from speech_like's syllables."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.4 * np.sin(2 * np.pi * pitch * t * (1 + 0.2 * t))).astype(np.float32)


# --- Parity: one slot of a 4-slot engine against moshi.server's single-session loop ---------
FRAMES = 55


@pytest.fixture(scope="module")
def checkpoint(lab_weights):
    from moshi.models import loaders

    from myca_ops.voice.model import config_or_default, resolve_weights

    paths = resolve_weights(lab_weights)
    return loaders.CheckpointInfo.from_hf_repo(
        "local/unused", paths["moshi"], paths["mimi"], paths["tokenizer"], config_path=config_or_default(paths)
    )


def models(checkpoint, **gen_kwargs):
    import torch
    from moshi.models import LMGen

    torch.set_grad_enabled(False)
    mimi = checkpoint.get_mimi(device="cpu")
    lm = checkpoint.get_moshi(device="cpu", dtype=torch.float32)
    return mimi, LMGen(lm, use_sampling=False, **gen_kwargs, **checkpoint.lm_gen_config)


def moshi_server_loop(checkpoint, audio: np.ndarray) -> list[tuple]:
    """What moshi.server's recv_loop computes for one session, frame by frame: (codes, tokens, pcm)."""
    import torch

    mimi, lm_gen = models(checkpoint)
    mimi.streaming_forever(1)
    lm_gen.streaming_forever(1)
    out = []
    for i in range(FRAMES):
        codes = mimi.encode(torch.from_numpy(audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])[None, None])
        if i == 0:
            mimi.reset_streaming()  # moshi.server: the first frame is in the past for the model
        tokens = lm_gen.step(codes[:, :, 0:1])
        pcm = None if tokens is None else mimi.decode(tokens[:, 1:])[0, 0].numpy()
        out.append((codes[0, :, 0].numpy(), None if tokens is None else tokens[0, :, 0].numpy(), pcm))
    return out


def test_a_slot_gets_exactly_what_moshi_server_computes_for_the_same_input(checkpoint):
    from myca_ops.voice.engine import SlotEngine

    seconds = FRAMES * FRAME_SAMPLES / SAMPLE_RATE + 0.1
    speech, other = speech_like(seconds, seed=1), tone(seconds, 220)
    solo = moshi_server_loop(checkpoint, speech)

    # The check means something only if the input changes the output: codes, tokens and audio.
    contrast = moshi_server_loop(checkpoint, other)
    differing = [
        sum(not np.array_equal(a[i], b[i]) for a, b in zip(solo, contrast, strict=True) if a[i] is not None)
        for i in range(3)
    ]
    assert min(differing) >= FRAMES // 2, f"frames differing for other input (codes, tokens, audio): {differing}"

    # Slot 2 carries the speech; the other slots carry other audio, start at other times, and
    # pause; slot 2 itself starts late and pauses for three ticks (masked out, then resumed).
    mimi, lm_gen = models(checkpoint, support_out_of_sync=True)
    engine = SlotEngine(mimi, lm_gen, 4, "cpu")
    inputs = {0: tone(seconds * 2, 300), 1: speech_like(seconds * 2, seed=5), 2: speech, 3: tone(seconds * 2, 150)}
    sent = dict.fromkeys(inputs, 0)
    got = []
    for tick in range(FRAMES * 2):
        wanted = [k for k in (0, 1, 3) if tick % (k + 2) != 0 and tick >= k]
        if tick >= 3 and not 10 <= tick <= 12 and sent[2] < FRAMES:
            wanted.append(2)
        frames = {k: inputs[k][sent[k] * FRAME_SAMPLES : (sent[k] + 1) * FRAME_SAMPLES] for k in wanted}
        outputs, _ = engine.tick(frames, {k for k in wanted if sent[k] == 0})
        for k in wanted:
            sent[k] += 1
        if 2 in outputs:
            got.append(outputs[2])
        if sent[2] == FRAMES:
            break
    assert len(got) == FRAMES
    for i, ((codes, tokens, pcm), slot) in enumerate(zip(solo, got, strict=True)):
        assert np.array_equal(codes, slot.codes), f"frame {i}: codes differ"
        assert (tokens is None) == (slot.tokens is None), f"frame {i}: output starts at another frame"
        if tokens is not None:
            assert np.array_equal(tokens, slot.tokens), f"frame {i}: tokens differ"
            # Batched float32 matmuls round differently in the last bits: audio equal to 1e-5.
            assert np.abs(pcm - slot.pcm).max() < 1e-5, f"frame {i}: audio differs"


# --- The server over websockets ------------------------------------------------------------
@pytest.fixture(scope="module")
def batched(lab_weights, tmp_path_factory):
    """myca-moshi serving the batched server on CPU: 2 slots, greedy, small send buffers, the Opus
    work in a worker process (the strict server below does it on its event loop). (base URL, log)."""
    log = tmp_path_factory.mktemp("batched") / "server.log"
    settings = {
        "MYCA_MOSHI_SLOTS": str(SLOTS),
        "MYCA_MOSHI_GREEDY": "1",
        "MYCA_MOSHI_SEND_BUFFER_BYTES": "2048",
        "MYCA_MOSHI_WRITE_STALL_S": "30",  # the slow reader below reads nothing for 12 s, by design
        "MYCA_MOSHI_CODEC_WORKERS": "1",
    }
    with batched_moshi(lab_weights, log, **settings) as (_, url):
        yield url.removeprefix("http://"), log


def health(base: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{base}/healthz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
    except OSError:
        return 0, {}


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def pages(audio: np.ndarray) -> list[bytes]:
    import sphn

    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    out = [writer.append_pcm(audio[i : i + SEND_FRAME]) for i in range(0, len(audio) - SEND_FRAME + 1, SEND_FRAME)]
    return [bytes([AUDIO]) + p for p in out if p]


async def converse(
    base: str,
    audio: np.ndarray,
    start_delay: float = 0.0,
    hold: asyncio.Event | None = None,
    stutter: bool = False,
    query: str = "",
) -> list:
    """Send `audio` at real-time pace (`stutter`: in bursts, half a second late every second, as
    over a bad network), keep reading until answers stop; the answers (kind, payload)."""
    import aiohttp

    await asyncio.sleep(start_delay)
    answers = []
    async with chat_session(f"ws://{base}/api/chat{query}") as ws:

        async def receive():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] in (AUDIO, TEXT):
                    answers.append((msg.data[0], msg.data[1:]))

        receiver = asyncio.create_task(receive())
        t0 = time.perf_counter()
        for i, page in enumerate(pages(audio)):
            due = t0 + i * SEND_FRAME / SAMPLE_RATE + (0.5 * (i // 50 + 1) if stutter else 0)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send_bytes(page)
        seen = -1
        while seen != len(answers):  # the server still works through what it received
            seen = len(answers)
            await asyncio.sleep(1.0)
        if hold is not None:
            await hold.wait()
        receiver.cancel()
    return answers


def audio_of(answers: list) -> list[bytes]:
    return [payload for kind, payload in answers if kind == AUDIO]


SPEECH = speech_like(3.0, seed=3)
TONE = tone(3.0, 180)


@pytest.fixture(scope="module")
def solo_answers(batched):
    """Each caller's answers with the server to itself."""
    base, _ = batched
    return {name: asyncio.run(converse(base, audio)) for name, audio in (("speech", SPEECH), ("tone", TONE))}


def test_health_without_a_session_says_slots_mode_and_ticks(batched, solo_answers):
    base, _ = batched
    status, body = health(base)
    assert body["server"] == "batched" and body["model_loaded"] is True
    assert body["mode"] == "cpu" and body["device"] == "cpu"
    assert body["slots_total"] == SLOTS and body["slots_used"] == 0
    assert body["tick_ms"]["count"] > 0 and 0 < body["tick_ms"]["p50"] <= body["tick_ms"]["p99"]
    # 200 once loaded; the status says whether the last minute's p99 tick was over the 80 ms budget.
    assert status == 200 and body["ok"] is True, body
    assert body["status"] == ("ready" if body["tick_ms"]["p99"] <= 80.0 else "over budget"), body
    # On CPU nothing is compiled, so no start is warm or cold; the time to the first caller is kept.
    assert body["compile_cache"] == {"state": "unused", "why": "mode cpu compiles nothing"}, body
    assert 0 < body["start_s"] == metric(base, 'myca_moshi_start_seconds{compile_cache="unused"}')
    assert metric(base, "myca_moshi_slots") == SLOTS
    assert metric(base, "myca_moshi_frames_total") >= 2 * len(audio_of(solo_answers["speech"]))
    assert metric(base, 'myca_moshi_tick_seconds_count{stage="lm_step"}') > 0
    # No GPU here: the GPU's series are absent, not zero (an alert on them cannot fire).
    with urllib.request.urlopen(f"http://{base}/metrics", timeout=5) as r:
        assert "myca_gpu_" not in r.read().decode()


def test_one_health_check_reads_the_batched_server_moshi_server_and_a_dead_port(batched):
    """myca_ops.voice.health.check: what the bridge, the MAS, `myca-moshi alive` and the container's
    health check read.  It opens no session (the batched server's slots stay free)."""
    from myca_ops.voice.health import check

    base, _ = batched
    health = check(f"ws://{base}/api/chat")
    assert health["up"] is True and health["source"] == "healthz" and health["slots_used"] == 0
    assert health["status"] in ("ready", "over budget") and health["url"] == f"http://{base}"
    # moshi.server has no /healthz: its 404 says it is up, and the answer says how it was judged.
    import http.server
    import socket
    import threading

    class NoHealthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - moshi.server's answer to a path it does not serve
            self.send_error(404)

    server = http.server.HTTPServer(("127.0.0.1", 0), NoHealthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        upstream = check(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert (upstream["up"], upstream["status"], upstream["source"]) == (True, "answering", "http")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = check(f"http://127.0.0.1:{port}")
    assert (dead["up"], dead["status"]) == (False, "down")
    assert dead["error"].startswith(f"no answer from http://127.0.0.1:{port}")
    alive = subprocess.run(
        [sys.executable, "-m", "myca_ops.voice.launcher", "alive", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
    )
    assert alive.returncode == 1 and json.loads(alive.stdout)["status"] == "down"


def test_the_answers_follow_the_input(solo_answers):
    speech, tone_ = audio_of(solo_answers["speech"]), audio_of(solo_answers["tone"])
    assert len(speech) >= 30 and len(tone_) >= 30
    assert speech != tone_


def test_two_callers_at_once_each_hear_what_they_would_alone(batched, solo_answers):
    base, _ = batched

    async def both():
        # The tone arrives in bursts: some ticks step one slot only, the other waits masked out.
        return await asyncio.gather(converse(base, SPEECH), converse(base, TONE, start_delay=0.37, stutter=True))

    speech, tone_ = asyncio.run(both())
    assert audio_of(speech) == audio_of(solo_answers["speech"])
    assert audio_of(tone_) == audio_of(solo_answers["tone"])
    assert speech == solo_answers["speech"]  # the text pieces too


def test_a_reused_slot_starts_clean_and_a_third_caller_is_told_busy(batched, solo_answers):
    import aiohttp

    base, _ = batched

    async def scenario():
        hold = asyncio.Event()
        # Two callers fill both slots; the first to finish keeps its slot until `hold` is set.
        tone_task = asyncio.create_task(converse(base, TONE, hold=hold))
        speech_task = asyncio.create_task(converse(base, SPEECH))
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://{base}/api/chat") as ws:
            msg = await ws.receive(timeout=5)
        busy = (msg.type, ws.close_code, msg.extra)
        full = await asyncio.to_thread(health, base)
        await speech_task  # its slot, used for a whole conversation, is free again
        hold.set()
        await tone_task
        again = await converse(base, SPEECH)  # a new caller in a used slot
        return busy, full, again

    (kind, code, reason), full, again = asyncio.run(scenario())
    assert kind == aiohttp.WSMsgType.CLOSE and code == 1013, (kind, code, reason)
    # Full is healthy, and says so: 200 (the load balancer keeps it), both slots used, status full
    # (unless the ticks ran over budget, which is said first: on these CPUs 2 slots may be).
    expected = "over budget" if full[1]["tick_ms"]["p99"] > 80.0 else "full"
    assert (full[0], full[1]["status"], full[1]["slots_used"]) == (200, expected, SLOTS), full
    assert reason == f"all {SLOTS} slots busy"
    assert again == solo_answers["speech"]


def client_frame(payload: bytes) -> bytes:
    """One masked binary websocket frame (RFC 6455), as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_client_that_stops_reading_loses_its_answers_not_the_others_time(batched, solo_answers):
    base, _ = batched
    dropped_before = metric(base, 'myca_moshi_dropped_frames_total{direction="out"}')
    slow = raw_websocket(base, rcvbuf=2048)
    assert slow.recv(3) == bytes([0x82, 1, HANDSHAKE])  # a binary frame holding the handshake byte
    slow_pages = pages(speech_like(12.0, seed=9))

    async def scenario():
        async def feed_slow():  # sends 12 s of speech in real time, reads nothing
            for page in slow_pages:
                await asyncio.get_running_loop().sock_sendall(slow, client_frame(page))
                await asyncio.sleep(SEND_FRAME / SAMPLE_RATE)

        slow.setblocking(False)
        feeder = asyncio.create_task(feed_slow())
        await asyncio.sleep(6.0)  # the slow client's buffers are full by now
        answers = await converse(base, SPEECH)
        await feeder
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        slow.close()
    assert answers == solo_answers["speech"]  # all of them, the same as alone
    assert metric(base, 'myca_moshi_dropped_frames_total{direction="out"}') > dropped_before


def test_a_load_test_of_three_callers_on_two_slots_names_the_refused_one(batched, run_module, tmp_path):
    """moshi_voice_probe with callers: two are served, the third is refused with the server's own words,
    and the timeline picture is drawn from the result."""
    from conftest import module_doc
    from myca_ops.runner import timeline

    base, _ = batched
    args = {"python": sys.executable, "url": f"ws://{base}/api/chat", "seconds": 2, "callers": 3, "stagger_s": 0.3}
    result = run_module("moshi_voice_probe", args)
    callers = result["callers"]
    assert [c["caller"] for c in callers] == [0, 1, 2]
    assert [c["outcome"] for c in callers[:2]] != ["refused", "refused"]
    assert all(c["outcome"] in ("real-time", "late") for c in callers[:2]), callers[:2]
    assert all(c["audio_messages"] > 0 and len(c["arrival_s"]) > 0 for c in callers[:2])
    refused = callers[2]
    assert refused["outcome"] == "refused" and refused["close_code"] == 1013 and refused["waited_ms"] >= 0
    assert refused["close_reason"] == f"all {SLOTS} slots busy"
    assert result["summary"]["refused"] == 1 and sum(result["summary"].values()) == 3
    assert result["realtime"] is False and "1 refused of 3 callers" in result["cause"]
    load_test = {k for k, doc in module_doc("moshi_voice_probe")["return"].items() if doc["returned"] == "a load test"}
    assert load_test <= set(result)

    # One clock: each caller connects 0.3 s after the one before, and its moments follow in order.
    starts = [c["start_s"] for c in callers]
    assert starts[0] == 0.0 and all(0.2 < b - a < 1.0 for a, b in zip(starts, starts[1:], strict=False)), starts
    for c in callers[:2]:
        assert c["start_s"] < c["handshake_s"] <= c["stream_s"] < c["first_audio_s"] < c["end_s"], c
    assert refused["start_s"] < refused["end_s"] and refused["handshake_s"] is None
    # The timeline draws each caller from the moment it connected: a later caller is drawn later.
    drawn = [timeline.bars(c) for c in callers]
    assert [d["waiting"][0] for d in drawn] == starts
    assert [d["talking"][0] for d in drawn[:2]] == [c["stream_s"] for c in callers[:2]]

    png = timeline.render(result, tmp_path / "loadtest.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = timeline.table(result)
    header, *rows, summary = text.splitlines()  # a row a caller, between the header and the summary
    assert header.split()[:2] == ["caller", "start"] and len(rows) == len(callers)
    assert rows[-1].split()[-2:] == ["1013", "refused"] and "1 refused of 3 callers" in summary


def test_verify_measures_the_served_engine_beside_a_caller_who_is_not_cut(batched, solo_answers, run_module, tmp_path):
    """moshi_step_latency with source server (the role's verify for the batched server): the running
    server times its own ticks with its free slot talking while a caller talks in the other; no
    second model is loaded, the caller hears exactly what they hear alone, and the verdict says it
    measured beside one caller.  A second measurement meanwhile is refused (409)."""
    from conftest import module_doc, undocumented

    base, _ = batched
    env = tmp_path / "moshi.env"
    env.write_text(f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_RECOMMENDED_MODE=cpu\nMYCA_MOSHI_PORT={base.split(':')[1]}\n")
    args = {"python": sys.executable, "env_file": str(env), "source": "server", "frames": 60, "warmup": 2}
    refused = {}

    async def scenario():
        caller = asyncio.create_task(converse(base, SPEECH))
        while health(base)[1].get("slots_used") != 1:
            await asyncio.sleep(0.05)
        measuring = asyncio.create_task(asyncio.to_thread(run_module, "moshi_step_latency", args))
        while not measuring.done():  # a second measurement, asked while the first runs, is refused
            if not health(base)[1].get("measuring"):
                await asyncio.sleep(0.02)
                continue
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://{base}/api/measure?ticks=1", method="POST"))
            except urllib.error.HTTPError as exc:
                refused[exc.code] = json.load(exc)["error"]
                break
            await asyncio.sleep(0.05)
        return await caller, await measuring

    heard, result = asyncio.run(scenario())
    assert result.get("failed") is not True, result
    assert heard == solo_answers["speech"]  # not cut, not disturbed: the same answers as alone
    row = result["results"][0]
    assert (result["slots"], result["slots_source"], result["callers"]) == (SLOTS, "the running service", 1)
    assert row["stages"]["total"]["count"] == 60 and len(row["samples_ms"]) == 60 and row["slot_mib"] > 0
    assert result["realtime"] is (row["stages"]["total"]["p99"] <= 80.0)
    assert result["capacity"] == (SLOTS if result["realtime"] else 0)
    assert f"at {SLOTS} slots, budget 80 ms" in result["cause"] and "beside 1 caller" in result["cause"]
    assert refused == {409: "another measurement is running: ask again when it ends"}
    assert "load_s" not in result  # nothing was loaded
    returns = module_doc("moshi_step_latency")["return"]
    always = {key for key, doc in returns.items() if doc["returned"] == "success"}
    assert always <= set(result) and undocumented("moshi_step_latency", result) == []
    # The slots the measurement talked in are free again, and /healthz says what a slot holds.
    status, body = health(base)
    assert status == 200 and (body["slots_used"], body["measuring"]) == (0, False)
    assert round(body["slot_bytes"] / 2**20, 1) == row["slot_mib"] > 0


# --- The session rules, for callers that reach the server directly (myca_ops.sessions) ----------
STALL_S, IDLE_S, SESSION_S, FRAMES_PER_S = 1.5, 2.0, 8.0, 100


@pytest.fixture(scope="module")
def strict(lab_weights, tmp_path_factory):
    """The batched server with one slot and short session rules: (base URL, log)."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    settings = {
        "MYCA_MOSHI_SLOTS": "1",
        "MYCA_MOSHI_WRITE_STALL_S": str(STALL_S),
        "MYCA_MOSHI_IDLE_TIMEOUT_S": str(IDLE_S),
        "MYCA_MOSHI_MAX_SESSION_S": str(SESSION_S),
        "MYCA_MOSHI_MAX_FRAMES_PER_S": str(FRAMES_PER_S),
    }
    with batched_moshi(lab_weights, log, **settings) as (_, url):
        yield url.removeprefix("http://"), log


def slot_free_within(base: str, seconds: float) -> float | None:
    """Seconds until /healthz says no slot is used, or None after `seconds`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if health(base)[1].get("slots_used") == 0:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


async def handshake_within(base: str, seconds: float = 1.0) -> bool:
    """A real caller: connected and given the handshake byte within `seconds`."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat") as ws:
        first = await ws.receive(timeout=seconds)
        return first.type == aiohttp.WSMsgType.BINARY and first.data == bytes([HANDSHAKE])


async def until_closed(base: str, send, within_s: float):
    """A caller that reads everything (answering pings) while `send(ws)` runs: the close it gets
    and the seconds from its handshake to it."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat") as ws:
        assert (await ws.receive(timeout=5)).data == bytes([HANDSHAKE])
        t0 = time.monotonic()
        sender = asyncio.create_task(send(ws))
        try:
            while True:
                msg = await ws.receive(timeout=within_s)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return msg, time.monotonic() - t0
        finally:
            sender.cancel()


def test_the_server_aborts_a_client_that_reads_nothing_while_it_keeps_its_socket(strict):
    """It sends audio in real time (never idle) and never reads a byte, so it never answers a
    ping: the slot is free within the write-stall bound, though its socket stays open."""
    base, log = strict
    attacker = raw_websocket(base, rcvbuf=2048)
    feed = pages(speech_like(8.0, seed=4))
    t0, freed_at = time.monotonic(), None
    for page in feed:
        try:
            attacker.sendall(client_frame(page))
        except OSError:  # aborted by the server: what a client that reads nothing gets
            break
        if freed_at is None and time.monotonic() - t0 > 0.5 and health(base)[1].get("slots_used") == 0:
            freed_at = time.monotonic() - t0
            break
        time.sleep(SEND_FRAME / SAMPLE_RATE)
    try:
        freed_at = freed_at or slot_free_within(base, 3.0)
        assert freed_at is not None and freed_at < STALL_S + 2.0, freed_at
        assert asyncio.run(handshake_within(base)), "a real caller was not served after the stall"
    finally:
        attacker.close()
    assert "write_stall: write stall: the client read nothing for" in log.read_text()


def test_junk_frames_do_not_keep_a_slot(strict):
    """A client that reads (and answers pings) but sends only frames of an unknown kind: idle, 4408."""
    base, _ = strict

    async def junk(ws):
        while True:
            await ws.send_bytes(b"\x09")
            await asyncio.sleep(0.2)

    msg, after = asyncio.run(until_closed(base, junk, IDLE_S + 5))
    assert (msg.data, msg.extra) == (4408, f"idle: no audio from the client for {IDLE_S:g} s")
    assert IDLE_S <= after < IDLE_S + 2.0
    assert slot_free_within(base, 1.0) is not None


def test_a_flood_is_cut_and_the_slot_freed_while_the_flooder_keeps_its_socket(strict):
    base, log = strict
    attacker = raw_websocket(base)
    try:
        with contextlib.suppress(OSError):
            for _ in range(FRAMES_PER_S * 3):
                attacker.sendall(client_frame(b"\x09"))
        assert slot_free_within(base, 2.0) is not None
        assert asyncio.run(handshake_within(base))
    finally:
        attacker.close()
    assert f"flood: over {FRAMES_PER_S} frames in a second" in log.read_text()


@pytest.mark.lab  # its servers come by name (getfixturevalue), so conftest cannot see they need the weights
@pytest.mark.parametrize("server", ["strict", "batched"], ids=["opus-on-the-loop", "opus-in-a-worker"])
def test_audio_that_is_not_ogg_opus_ends_the_session_with_the_cause(server, request):
    """Kind 1 with bytes no Opus reader can take: 1007 naming the cause, the slot free at once."""
    base, _ = request.getfixturevalue(server)

    async def garbage(ws):
        await ws.send_bytes(bytes([AUDIO]) + b"garbage" * 20)
        await asyncio.sleep(60)

    msg, after = asyncio.run(until_closed(base, garbage, 5))
    assert msg.data == 1007 and msg.extra.startswith("audio is not Ogg/Opus: unexpected ogg capture pattern"), msg
    assert after < 2.0 and slot_free_within(base, 1.0) is not None


def test_a_session_ends_at_the_limit_with_the_reason(strict):
    """A well-behaved caller talking without a pause is closed at max_session_s, with 4410."""
    base, _ = strict
    talk = pages(speech_like(SESSION_S + 6, seed=6))

    async def speak(ws):
        for page in talk:
            await ws.send_bytes(page)
            await asyncio.sleep(SEND_FRAME / SAMPLE_RATE)

    msg, after = asyncio.run(until_closed(base, speak, SESSION_S + 5))
    assert (msg.data, msg.extra) == (4410, f"session limit: {SESSION_S:g} s")
    assert SESSION_S <= after < SESSION_S + 3.0


def test_a_dead_opus_worker_ends_the_server_with_the_cause(lab_weights, tmp_path):
    """Its sessions could never be answered again: the process ends (systemd restarts it), the log says why."""
    import signal
    from pathlib import Path

    log = tmp_path / "server.log"
    with batched_moshi(lab_weights, log, MYCA_MOSHI_SLOTS="1", MYCA_MOSHI_CODEC_WORKERS="1") as (server, _):
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1, children
        os.kill(int(workers[0]), signal.SIGKILL)
        assert server.wait(10) == 2
    assert "Opus worker 0 died" in log.read_text()


def test_a_callers_own_prompt_is_refused_where_client_prompts_are_off(strict):
    """PersonaPlex's text_prompt, on a server with no moshi_allow_client_prompts: closed before the
    handshake with the reason and what to ask for instead; the slot is not taken."""
    import aiohttp

    base, _ = strict

    async def call():
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat?text_prompt=Obey") as ws:
            return await ws.receive(timeout=10)

    msg = asyncio.run(call())
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
    assert msg.extra == "client prompts are off on this server; ask for a persona (?persona=NAME)"
    assert health(base)[1]["slots_used"] == 0
