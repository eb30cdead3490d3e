"""Each session's Opus work (decoding what a caller says, encoding what the model answers), on
the batched server's event loop or in worker processes.

sphn holds the GIL while it codes, so threads would not take this work off the event loop: at
64 callers it is most of a core (about 0.8 ms to encode one 80 ms frame, measured in
docs/PERFORMANCE.md), on the one thread that also reads and writes every websocket.  With
``MYCA_MOSHI_CODEC_WORKERS=N`` (N > 0) it runs in N processes: a session's streams live in one
worker (Ogg/Opus streams are stateful), which answers in order over a pipe; one thread per worker
hands the answers on.  With 0 it runs inline, on the event loop (a CPU host, where the model
needs every core).

Both ways take the same calls and answer through the same callbacks, so the server has one path:
``decoded(session, frames)`` (whole 80 ms frames of samples at 24 kHz), ``encoded(session, opus, text)``,
``refused(session, why)`` (the caller's audio is not Ogg/Opus).  ``decoded`` may run on a worker's
thread; ``encoded`` and ``refused`` always run on the event loop.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable

from myca_ops.voice.protocol import FRAME_SAMPLES, SAMPLE_RATE


class Streams:
    """One session's Opus streams: the caller's (read, and cut into the model's frames) and the
    answers' (written)."""

    def __init__(self) -> None:
        import numpy as np
        import sphn

        self.reader, self.writer = sphn.OpusStreamReader(SAMPLE_RATE), sphn.OpusStreamWriter(SAMPLE_RATE)
        self.np, self.rest = np, np.zeros(0, dtype=np.float32)  # samples not yet a whole frame

    def decode(self, data: bytes):
        """The whole 80 ms frames these Ogg/Opus bytes complete, as one array of samples (often
        none: a 20 ms page is a quarter of a frame); ValueError when they are not Ogg/Opus."""
        pcm = self.np.concatenate((self.rest, self.reader.append_bytes(data)))
        whole = len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES
        self.rest = pcm[whole:]
        return pcm[:whole]

    def encode(self, pcm) -> bytes:
        return bytes(self.writer.append_pcm(pcm))


def serve_worker(conn) -> None:
    """A worker process: the streams of the sessions given to it, one request after another.  A
    session's streams are made by its first request and dropped by its "close", its last."""
    streams: dict[int, Streams] = {}
    while True:
        try:
            op, sid, payload, text = conn.recv()
        except EOFError:  # the server is gone
            return
        if op == "close":
            streams.pop(sid, None)
            continue
        session = streams.get(sid) or streams.setdefault(sid, Streams())
        if op == "decode":
            try:
                frames = session.decode(payload)
            except ValueError as exc:
                conn.send(("refused", sid, str(exc), None))
                continue
            if len(frames):  # three pages in four complete no frame: nothing to say
                conn.send(("decoded", sid, frames, None))
        else:
            conn.send(("encoded", sid, session.encode(payload), text))


class Codec:
    """The sessions' Opus work, inline (``workers=0``) or in ``workers`` processes."""

    def __init__(self, workers: int, decoded: Callable, encoded: Callable, refused: Callable, loop, died: Callable):
        self.decoded, self.encoded, self.refused, self.loop, self.died = decoded, encoded, refused, loop, died
        self.sessions: dict[int, object] = {}  # sid -> session, for the workers' answers
        self.inline: dict[int, Streams] = {}
        self.pipes: list = []
        self.next_sid = 0
        self.stopping = False
        # spawn, not fork: the server process holds torch's threads (and CUDA's) by the time a
        # session starts; a worker needs only sphn.
        context = multiprocessing.get_context("spawn")
        for i in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=serve_worker, args=(theirs,), name=f"moshi-opus-{i}", daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(ours)
            threading.Thread(target=self._answers, args=(ours, i), name=f"moshi-opus-{i}", daemon=True).start()

    @property
    def workers(self) -> int:
        return len(self.pipes)

    def stop(self) -> None:
        """The server is ending: the workers end with their pipes, and that is no failure."""
        self.stopping = True
        for conn in self.pipes:
            conn.close()

    def open(self, session) -> int:
        """Streams for a new session; its id for the calls below.  Sends nothing (it is called under
        the server's lock, which a worker's answer thread may be waiting for)."""
        sid, self.next_sid = self.next_sid, self.next_sid + 1
        if self.pipes:
            self.sessions[sid] = session
        else:
            self.inline[sid] = Streams()
        return sid

    def close(self, sid: int) -> None:
        if self.pipes:
            self.sessions.pop(sid, None)
            self._send(sid, "close", None)
        else:
            self.inline.pop(sid, None)

    def decode(self, sid: int, session, data: bytes) -> None:
        if not self.pipes:
            try:
                pcm = self.inline[sid].decode(data)
            except ValueError as exc:  # not Ogg/Opus: the stream cannot be read past it
                self.refused(session, str(exc))
                return
            if len(pcm):
                self.decoded(session, pcm)
            return
        self._send(sid, "decode", data)

    def encode(self, sid: int, session, pcm, text: bytes | None) -> None:
        """Opus for `pcm`, then `text` (a text piece to send after it, or None), to ``encoded``."""
        if not self.pipes:
            self.encoded(session, self.inline[sid].encode(pcm), text)
            return
        self._send(sid, "encode", pcm, text)

    def _send(self, sid: int, op: str, payload, text: bytes | None = None) -> None:
        """From the event loop only: a session's requests all go to one worker, in order."""
        self.pipes[sid % len(self.pipes)].send((op, sid, payload, text))

    def _answers(self, conn, index: int) -> None:
        while True:
            try:
                kind, sid, payload, text = conn.recv()
            except (EOFError, OSError):
                if not self.stopping:
                    self.died(f"Opus worker {index} died")
                return
            session = self.sessions.get(sid)
            if session is None:  # the session ended while its request was in flight
                continue
            if kind == "decoded":
                self.decoded(session, payload)
            elif kind == "encoded":
                self.loop.call_soon_threadsafe(self.encoded, session, payload, text)
            else:
                self.loop.call_soon_threadsafe(self.refused, session, payload)
