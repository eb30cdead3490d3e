"""Talk to Moshi's /api/chat like the browser does, and measure what a listener would hear.

Handshake byte, then speech-like audio streamed in real time as Opus (24 kHz, 20 ms
frames), while every audio (0x01) and text (0x02) message is timed and its audio decoded.
Underruns are counted against the web client's playback: 48 kHz, a buffer of 1920 samples
that must fill before playing and stalls when it runs dry.

    python -m myca_ops.voice.probe --url ws://127.0.0.1:8998/api/chat --seconds 10

A caller whose own sends ran over ``OWN_LAG_LIMIT_MS`` late at p99 measured itself, not the server
(:func:`lagged`).  ``--timing-only`` counts what comes back from the Ogg pages' granule positions
instead of decoding it (a tenth of the CPU; the audio itself is not checked).  Many callers at
once: :mod:`myca_ops.voice.loadtest`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from myca_ops.voice.protocol import AUDIO, HANDSHAKE, SAMPLE_RATE, TEXT, client_ssl
from myca_ops.voice.stats import summary

SEND_FRAME = 480  # 20 ms at 24 kHz, what the web client sends
PLAYBACK_RATE = 48000
PLAYBACK_BUFFER = 1920  # samples at 48 kHz the web client buffers before playing
REALTIME_MIN_RATIO = 0.95  # audio received / wall time, once audio flows
LEAD_S = 0.24  # audio the server never answers: its first input frame and the LM's 2-step delay
MAX_FIRST_AUDIO_MS = 1000  # Kyutai: 160 ms in theory, about 200 ms in practice
OWN_LAG_LIMIT_MS = 20.0  # a caller whose sends run a page late is measuring itself, not the server


def speech_like(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0):
    """Voiced syllables (harmonics of a gliding pitch, amplitude-shaped) with short pauses."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2  # ~4 syllables per second
    pauses = np.repeat(rng.random(int(seconds * 2) + 1) > 0.2, rate // 2)[:n]
    audio = 0.3 * voice * syllables * pauses + 0.003 * rng.standard_normal(n)
    return audio.astype(np.float32)


class GranuleClock:
    """Samples (at 24 kHz) that Ogg/Opus bytes carry, from their pages' granule positions (48 kHz,
    cumulative), without decoding them."""

    def __init__(self) -> None:
        self.granule = 0

    def samples(self, data: bytes) -> int:
        before, at = self.granule, 0
        while at + 27 <= len(data) and data[at : at + 4] == b"OggS":
            granule = struct.unpack_from("<q", data, at + 6)[0]
            segments = data[at + 27 : at + 27 + data[at + 26]]
            if granule >= 0:  # -1: no packet ends on this page
                self.granule = max(self.granule, granule)
            at += 27 + len(segments) + sum(segments)
        return (self.granule - before) * SAMPLE_RATE // 48000


class Refused(ConnectionError):
    """The server closed the websocket instead of sending the handshake (busy, loading)."""

    def __init__(self, url: str, code: int | None, reason: str) -> None:
        super().__init__(f"{url} refused the session: close {code} {reason!r}")
        self.code, self.reason = code, reason


def count_underruns(
    arrivals: Sequence[tuple[float, int]], prebuffer: int = PLAYBACK_BUFFER, rate: int = PLAYBACK_RATE
) -> int:
    return len(underrun_times(arrivals, prebuffer, rate))


def underrun_times(
    arrivals: Sequence[tuple[float, int]], prebuffer: int = PLAYBACK_BUFFER, rate: int = PLAYBACK_RATE
) -> list[float]:
    """When playback runs dry.  `arrivals`: (seconds, samples at `rate`) in arrival order.

    Like the web client: once `prebuffer` samples are queued, playback starts after that
    cushion (1920 samples = 40 ms at 48 kHz) and drains at `rate`.  Running dry before the
    next arrival is one underrun; playback then waits to refill the same way.  The end of
    the stream is not an underrun.
    """
    underruns = []
    playing = False
    queued = 0.0  # samples queued when not playing
    play_end = 0.0  # when playing: the time the queue runs dry
    for t, samples in arrivals:
        if playing and t > play_end:
            underruns.append(play_end)
            playing, queued = False, 0.0
        if playing:
            play_end += samples / rate
        else:
            queued += samples
            if queued >= prebuffer:
                playing, play_end = True, t + (prebuffer + queued) / rate
    return underruns


def lagged(result: dict) -> bool:
    """The caller fell behind its own clock: its figures are its own, not the server's."""
    return ((result.get("own_lag_ms") or {}).get("p99") or 0.0) > OWN_LAG_LIMIT_MS


def verdict(result: dict) -> tuple[bool, str]:
    if result.get("error"):
        return False, result["error"]
    if lagged(result):
        lag = result["own_lag_ms"]
        return False, (
            f"the caller lagged: its own sends ran up to {lag['max']:.0f} ms late (p99 {lag['p99']:.0f} ms, "
            f"limit {OWN_LAG_LIMIT_MS:.0f}), so what it heard measures this machine, not the server"
        )
    if result.get("close_code") is not None:
        return False, (
            f"the server ended the session: close {result['close_code']} {result['close_reason']!r} "
            f"after {result['audio_received_s']:.2f}s of audio"
        )
    if result["audio_messages"] == 0:
        return False, f"no audio came back in {result['wall_s']:.1f}s of streaming"
    expected = max(result["sent_s"] - LEAD_S, 0.08)
    if result["audio_received_s"] < REALTIME_MIN_RATIO * expected:
        return False, (
            f"only {result['audio_received_s']:.2f}s of audio came back for {result['sent_s']:.2f}s sent "
            f"(first audio after {result['first_audio_ms']:.0f} ms)"
        )
    if result["underruns"]:
        return False, (
            f"{result['underruns']} playback underrun(s): {result['audio_received_s']:.2f}s of audio "
            f"in {result['audio_wall_s']:.2f}s, gaps up to {result['gap_ms']['max']:.0f} ms"
        )
    if result["realtime_ratio"] < REALTIME_MIN_RATIO:
        return False, (
            f"audio arrives slower than real time: {result['realtime_ratio']:.2f}x "
            f"({result['audio_received_s']:.2f}s of audio in {result['audio_wall_s']:.2f}s)"
        )
    if result["first_audio_ms"] > MAX_FIRST_AUDIO_MS:
        return False, f"first audio after {result['first_audio_ms']:.0f} ms (over {MAX_FIRST_AUDIO_MS} ms)"
    return True, (
        f"{result['audio_received_s']:.2f}s of audio in {result['audio_wall_s']:.2f}s, "
        f"no underrun, first audio after {result['first_audio_ms']:.0f} ms"
    )


@contextlib.asynccontextmanager
async def chat_session(
    url: str,
    timeout: float = 30,
    cafile: str | None = None,
    verify_tls: bool = True,
    token: str | None = None,
    ticket: str | None = None,
    origin: str | None = None,
):
    """Open /api/chat and wait for the handshake byte; yield the websocket.  Through the bridge:
    with a service token (a bearer header), or as a browser would, with a ticket (``?ticket=``)
    and the Origin of the page it was minted for."""
    import aiohttp
    import yarl

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if origin:
        headers["Origin"] = origin
    target = yarl.URL(url).update_query(ticket=ticket) if ticket else url

    # aiohttp<3.11 (in NVIDIA's PersonaPlex server's venv) takes the close timeout in seconds
    ws_timeout: Any = aiohttp.ClientWSTimeout(ws_close=timeout) if hasattr(aiohttp, "ClientWSTimeout") else timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout)) as session:
        async with session.ws_connect(
            target,
            ssl=client_ssl(url, cafile, verify_tls),
            max_msg_size=0,
            timeout=ws_timeout,
            headers=headers or None,
        ) as ws:
            first = await ws.receive(timeout=timeout)
            if first.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                raise Refused(url, ws.close_code, str(first.extra or ""))
            if first.type != aiohttp.WSMsgType.BINARY or first.data[:1] != bytes([HANDSHAKE]):
                raise ConnectionError(f"no handshake from {url}: got {first.type.name} {str(first.data)[:60]}")
            yield ws


async def probe(
    url: str,
    seconds: float = 10,
    cafile: str | None = None,
    verify_tls: bool = True,
    handshake_only: bool = False,
    connect_timeout: float = 30,
    drain_s: float = 1.0,
    token: str | None = None,
    timing_only: bool = False,
    ticket: str | None = None,
    origin: str | None = None,
) -> dict:
    import aiohttp

    result: dict = {"url": url, "seconds": seconds, "error": None}
    start, connect_at = time.perf_counter(), time.time()
    try:
        async with chat_session(url, connect_timeout, cafile, verify_tls, token, ticket, origin) as ws:
            result["handshake_ms"] = result["waited_ms"] = round((time.perf_counter() - start) * 1000, 1)
            if not handshake_only:
                import sphn  # the audio codec: a handshake-only wait needs none

                result.update(await _stream(ws, sphn, seconds, drain_s, timing_only))
    except Refused as exc:
        waited = round((time.perf_counter() - start) * 1000, 1)  # a queue's time included
        result.update(error=str(exc), close_code=exc.code, close_reason=exc.reason, waited_ms=waited)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
        result["error"] = f"cannot talk to {url}: {type(exc).__name__}: {exc}"
    result["clock"] = {"connect": connect_at, **result.get("clock", {}), "end": time.time()}
    return result


def wait_for_handshake(
    url: str, timeout: float, cafile: str | None = None, verify_tls: bool = True, broken=lambda: None
) -> float:
    """Retry the handshake until it answers or `timeout` seconds pass; return the total wait.

    `broken()` returns why waiting longer is pointless (a crash-looping service), or None.
    """
    start = time.monotonic()
    while True:
        why = broken()
        if why:
            raise TimeoutError(f"no handshake from {url}: {why}")
        result = asyncio.run(
            probe(url, cafile=cafile, verify_tls=verify_tls, handshake_only=True, connect_timeout=min(10.0, timeout))
        )
        if result["error"] is None:
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            raise TimeoutError(f"no handshake from {url} within {timeout:.0f}s (last error: {result['error']})")
        time.sleep(1)


async def _stream(ws, sphn, seconds: float, drain_s: float, timing_only: bool = False) -> dict:
    # Encode before the clock starts: streaming then only sends bytes on time, so the
    # probe's own CPU cost stays far below the server's.
    audio = speech_like(seconds)
    # sphn<0.2 (in the venv of NVIDIA's PersonaPlex server, where the role's checks run) queues what
    # it encodes (read_bytes) and decodes on a thread of its own: there the answer is counted from
    # its Ogg pages, as with timing_only.
    queued = hasattr(sphn.OpusStreamWriter, "read_bytes")
    timing_only = timing_only or queued
    writer = sphn.OpusStreamWriter(SAMPLE_RATE)

    def encode(pcm) -> bytes:
        page = writer.append_pcm(pcm)
        return writer.read_bytes() if queued else page

    pages = [
        (i / SAMPLE_RATE, encode(audio[i : i + SEND_FRAME])) for i in range(0, len(audio) - SEND_FRAME + 1, SEND_FRAME)
    ]
    pages = [(t, bytes([AUDIO]) + page) for t, page in pages if page]
    received: Callable[[bytes], int]
    if timing_only:
        clock = GranuleClock()
        received = clock.samples
    else:
        reader = sphn.OpusStreamReader(SAMPLE_RATE)

        def received(payload: bytes) -> int:
            return int(reader.append_bytes(payload).shape[-1])

    lateness: list[float] = []  # ms each page was sent after its moment: this caller's own lag
    arrivals: list[tuple[float, int]] = []  # (seconds since first send, samples at 24 kHz)
    texts: list[str] = []
    other_kinds: dict[int, int] = {}
    t0, cpu0, stream_at = time.perf_counter(), time.process_time(), time.time()

    closed: list = []  # (code, reason) when the server ends the session first

    async def receive() -> None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                closed.append((msg.data, str(msg.extra or "")))
                return
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                closed.append((ws.close_code, str(msg.type.name)))
                return
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            now = time.perf_counter() - t0
            kind, payload = msg.data[0], msg.data[1:]
            if kind == AUDIO:
                arrivals.append((now, received(payload)))
            elif kind == TEXT:
                texts.append(payload.decode("utf-8", errors="replace"))
            else:
                other_kinds[kind] = other_kinds.get(kind, 0) + 1

    import aiohttp

    receiver = asyncio.create_task(receive())
    for offset, page in pages:
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append(max(0.0, -(t0 + offset - time.perf_counter()) * 1000))
        if closed:  # the server is gone: nothing more to send
            break
        try:
            await ws.send_bytes(page)
        except (ConnectionError, aiohttp.ClientError):
            break
    # Keep reading while answers still come (a slow server works through its backlog),
    # until `drain_s` passes without one, or a hard cap.
    hard_stop = time.perf_counter() + max(5.0, seconds)
    seen = -1
    while not receiver.done() and time.perf_counter() < hard_stop and seen != len(arrivals) + len(texts):
        seen = len(arrivals) + len(texts)
        await asyncio.sleep(drain_s)
    receiver.cancel()
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    sent_bytes = sum(len(page) for _, page in pages)

    audio_samples = sum(n for _, n in arrivals)
    decoded = [(t, n) for t, n in arrivals if n > 0]
    underruns = underrun_times([(t, n * PLAYBACK_RATE // SAMPLE_RATE) for t, n in decoded])
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(decoded, decoded[1:], strict=False)]
    first = decoded[0][0] if decoded else None
    audio_wall = (decoded[-1][0] - decoded[0][0]) + decoded[-1][1] / SAMPLE_RATE if decoded else 0.0
    received_s = audio_samples / SAMPLE_RATE
    return {
        "wall_s": round(wall, 3),
        "sent_s": round(len(audio) / SAMPLE_RATE, 3),
        "sent_bytes": sent_bytes,
        "audio_messages": len(arrivals),
        "audio_received_s": round(received_s, 3),
        "audio_wall_s": round(audio_wall, 3),
        "realtime_ratio": round(received_s / audio_wall, 3) if audio_wall else 0.0,
        "first_audio_ms": round(first * 1000, 1) if first is not None else None,
        "gap_ms": summary(gaps, 1),
        "underruns": len(underruns),
        "underrun_s": [round(t, 3) for t in underruns],
        "arrival_s": [round(t, 3) for t, _ in decoded],
        # Set when the server ended the session before the caller did (a Moshi that died).
        "close_code": closed[0][0] if closed else None,
        "close_reason": closed[0][1] if closed else None,
        "text_pieces": len(texts),
        "text": "".join(texts)[:200],
        "other_kinds": other_kinds,
        "probe_cpu_ms": round(cpu_s * 1000, 1),  # this process, while streaming (sending, receiving, decoding)
        "own_lag_ms": summary(lateness, 1),
        "timing_only": timing_only,
        "clock": {"stream": stream_at},  # wall clock: a load test's processes (and hosts) share it
    }


def run(url: str, seconds: float = 10, **kwargs) -> dict:
    result = asyncio.run(probe(url, seconds, **kwargs))
    result.pop("clock", None)  # a single probe's moments are its own: in ms, above
    if not kwargs.get("handshake_only"):
        result["realtime"], result["cause"] = verdict(result)
    else:
        result["realtime"], result["cause"] = None, result["error"] or "handshake only"
    return result


def add_caller_options(parser: argparse.ArgumentParser) -> None:
    """What a caller is told on the command line (this probe's and the load test's)."""
    parser.add_argument("--url", default="ws://127.0.0.1:8998/api/chat")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cafile")
    parser.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    parser.add_argument(
        "--timing-only", action="store_true", help="count what comes back from Ogg granules, do not decode it"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_caller_options(parser)
    parser.add_argument("--handshake-only", action="store_true")
    parser.add_argument("--origin", help="the page's Origin, sent as a browser does (with a ticket)")
    args = parser.parse_args(argv)
    # Credentials from the environment: argv is visible to every user.
    result = run(
        args.url,
        args.seconds,
        cafile=args.cafile,
        verify_tls=not args.insecure,
        handshake_only=args.handshake_only,
        token=os.environ.get("MYCA_PROBE_TOKEN") or None,
        timing_only=args.timing_only,
        ticket=os.environ.get("MYCA_PROBE_TICKET") or None,
        origin=args.origin,
    )
    print(json.dumps(result, indent=2))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
