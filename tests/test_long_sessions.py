"""Sessions longer than the model's context: moshi's ring KV cache wraps, per slot.

The lab checkpoint with its context cut to 100 frames (8 s) instead of 3000 (4 minutes): one slot
talks through three wraps of it while another slot holds a whole session in the middle.  The long
slot keeps answering, the slots' state does not grow, and the other slot hears exactly what it
hears with the engine to itself.
"""

import json
import resource

import numpy as np
import pytest

from myca_ops.voice import model
from myca_ops.voice.probe import speech_like
from myca_ops.voice.protocol import FRAME_SAMPLES, SAMPLE_RATE

CONTEXT = 100
LONG = 3 * CONTEXT + 30  # frames: three wraps and then some
SHORT = 55  # the other slot's session
SHORT_FROM = 2 * CONTEXT + 40  # ...held while the long slot is past its second wrap


@pytest.fixture(scope="module")
def context_100(lab_weights, tmp_path_factory):
    """The lab weights (RoPE: no learned positions, so any context fits them) with context 100."""
    folder = tmp_path_factory.mktemp("context-100")
    for name in (model.MOSHI_FILE, model.MIMI_FILE, model.TOKENIZER_FILE, "voices"):
        (folder / name).symlink_to(lab_weights / name)
    config = json.loads((lab_weights / model.CONFIG_FILE).read_text())
    assert config["context"] > CONTEXT  # the test means something only if this cuts it
    (folder / model.CONFIG_FILE).write_text(json.dumps({**config, "context": CONTEXT}))
    return folder


@pytest.fixture(scope="module")
def small_context(context_100):
    return model.load(
        {"MYCA_MOSHI_DEVICE": "cpu", "MYCA_MOSHI_WEIGHTS_DIR": str(context_100), "MYCA_MOSHI_GREEDY": "1"}
    )


def frames(audio: np.ndarray, count: int) -> list[np.ndarray]:
    return [audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(count)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_a_slot_keeps_answering_through_three_wraps_with_flat_memory_and_a_neighbour_unharmed(small_context):
    long_in = frames(speech_like(LONG * FRAME_SAMPLES / SAMPLE_RATE + 0.1, seed=11), LONG)
    short_in = frames(speech_like(SHORT * FRAME_SAMPLES / SAMPLE_RATE + 0.1, seed=12), SHORT)

    engine = small_context.engine(2)
    assert engine.lm_gen.lm_model.transformer.layers[0].self_attn.context == CONTEXT
    long_out, short_out, state, rss = [], [], {}, {}
    for tick in range(LONG):
        batch = {0: long_in[tick]}
        first = {0} if tick == 0 else set()
        if SHORT_FROM <= tick < SHORT_FROM + SHORT:
            batch[1] = short_in[tick - SHORT_FROM]
            first |= {1} if tick == SHORT_FROM else set()
        outputs, _ = engine.tick(batch, first)
        long_out.append(outputs[0])
        if 1 in outputs:
            short_out.append(outputs[1])
        if tick + 1 in (CONTEXT + 10, 2 * CONTEXT, LONG):
            state[tick + 1], rss[tick + 1] = engine.state_bytes(), rss_mb()
    engine.close()

    # It keeps answering: every frame after the acoustic delay has tokens and audio, in every wrap.
    answered = long_out[engine.max_delay + 1 :]
    assert all(o.tokens is not None and o.pcm is not None and np.isfinite(o.pcm).all() for o in answered)
    for wrap in range(4):
        window = np.concatenate(
            [o.pcm for o in long_out[max(wrap * CONTEXT, engine.max_delay + 1) : (wrap + 1) * CONTEXT]]
        )
        assert window.std() > 1e-4, f"wrap {wrap}: the slot fell silent"
    tokens = np.stack([o.tokens for o in long_out[-CONTEXT:]])
    assert len({tuple(t) for t in tokens}) > 10, "the last wrap repeats one token over and over"

    # Its memory is flat: the streaming state is the same size after one wrap and after three, and
    # the process does not grow while the slot talks on.  (It did, by a megabyte a frame, while the
    # answers kept here shared the model's buffers: the engine now hands out copies.)
    assert len(set(state.values())) == 1, state
    assert rss[LONG] - rss[CONTEXT + 10] < 16, rss

    # The neighbour, whose session ran while the long slot wrapped, hears what it hears alone.
    engine = small_context.engine(2)
    alone = []
    for i, frame in enumerate(short_in):
        outputs, _ = engine.tick({1: frame}, {1} if i == 0 else set())
        alone.append(outputs[1])
    engine.close()
    assert len(short_out) == len(alone) == SHORT
    for i, (beside, solo) in enumerate(zip(short_out, alone, strict=True)):
        assert np.array_equal(beside.codes, solo.codes), f"frame {i}: codes differ"
        assert (beside.tokens is None) == (solo.tokens is None)
        if solo.tokens is not None:
            assert np.array_equal(beside.tokens, solo.tokens), f"frame {i}: tokens differ"
            assert np.abs(beside.pcm - solo.pcm).max() < 1e-5, f"frame {i}: audio differs"


def test_a_persona_session_that_fills_the_context_ends_with_the_reason_when_asked_to(context_100, tmp_path):
    """moshi_past_context: end. A persona of about 30 steps in a context of 100: after about 70
    frames (5.6 s) of talk the session is closed, normally, with the reason; the slot is free."""
    import asyncio
    import contextlib
    import time

    import aiohttp
    from test_voice_server import health, pages

    from myca_ops.lab.processes import batched_moshi
    from myca_ops.voice.probe import chat_session

    personas = tmp_path / "personas.json"
    personas.write_text(json.dumps([{"name": "myca", "text": "You are MYCA."}]))
    settings = {
        "MYCA_MOSHI_SLOTS": "1",
        "MYCA_MOSHI_PERSONAS_FILE": str(personas),
        "MYCA_MOSHI_DEFAULT_PERSONA": "myca",
        "MYCA_MOSHI_PAST_CONTEXT": "end",
    }

    async def talk(base: str):
        """Speech in real time until the server closes: (the close, seconds of talk)."""
        async with chat_session(f"ws://{base}/api/chat") as ws:
            t0 = time.monotonic()

            async def send():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    for i, page in enumerate(pages(speech_like(20.0, seed=4))):
                        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
                        await ws.send_bytes(page)

            sender = asyncio.create_task(send())
            try:
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        return msg, time.monotonic() - t0
            finally:
                sender.cancel()

    with batched_moshi(context_100, tmp_path / "server.log", **settings) as (_, url):
        base = url.removeprefix("http://")
        steps = health(base)[1]["personas"]["myca"]["steps"]
        msg, seconds = asyncio.run(talk(base))
        assert health(base)[1]["slots_used"] == 0
    assert msg.data == 1000
    assert msg.extra == "the conversation filled the model's context (8 s): call again to go on with myca"
    # Not before the context is full; well before the 20 s sent end on a slower CPU (ticks over 80 ms).
    assert (CONTEXT - steps) * 0.08 - 0.5 < seconds < 20.0
