"""Personas on the batched server: a prompt changes what the model says, a kept state says exactly
what a prefill says, callers with different personas do not disturb each other, and what a caller
may ask for is checked before the handshake."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
from test_voice_server import audio_of, converse, health, metric, tone

from myca_ops.lab.processes import batched_moshi
from myca_ops.voice.persona import ZERO_TEXT, Persona, check_voice_name, parse, wrap
from myca_ops.voice.probe import speech_like
from myca_ops.voice.protocol import FRAME_SAMPLES, HANDSHAKE

MYCA = "You are MYCA, the voice of a mycology lab. Answer questions about fungi."
FIELD = "You are a field guide who only talks about the weather."


# --- The configuration (no model) ----------------------------------------------------------
def test_personas_are_read_from_the_roles_json_and_bad_ones_name_the_fix():
    got = parse(json.dumps([{"name": "myca", "text": MYCA, "voice": "myca.wav"}, {"name": "plain", "text": "Hi."}]))
    assert got == {"myca": Persona("myca", MYCA, "myca.wav"), "plain": Persona("plain", "Hi.", None)}
    assert parse("") == {}
    for bad, says in [
        ("[{", "not JSON"),
        ('[{"name": "x"}]', "needs a name and a text prompt"),
        ('[{"name": "a b", "text": "t"}]', "letters, digits"),
        ('[{"name": "x", "text": "t"}, {"name": "x", "text": "u"}]', "named twice"),
        ('[{"name": "x", "text": "t", "voice": "../x.wav"}]', "no path"),
    ]:
        with pytest.raises(ValueError, match=says) as err:
            parse(bad)
        assert "moshi_personas" in str(err.value) or "path" in str(err.value)


def test_a_voice_name_with_a_path_in_it_is_refused_and_prompts_get_their_system_tags():
    assert check_voice_name("NATF0.wav") == "NATF0.wav"
    for bad in ("../secret.wav", "/etc/passwd", "a/b.wav", "", ".hidden", "x..wav"):
        with pytest.raises(ValueError, match="plain file name"):
            check_voice_name(bad)
    assert wrap("  Be kind. ") == "<system> Be kind. <system>"
    assert wrap("<system> Be kind. <system>") == "<system> Be kind. <system>"


# --- The engine: prompts stepped in ticks, states kept and restored -----------------------
FRAMES = 50


@pytest.fixture(scope="module")
def model(lab_weights):
    """The lab's model, greedy, float32 on CPU, and what makes its prompts."""
    import torch
    from moshi.models import LMGen, loaders

    from myca_ops.voice.model import config_or_default, resolve_weights
    from myca_ops.voice.persona import Prompts

    torch.set_grad_enabled(False)
    paths = resolve_weights(lab_weights)
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/unused", paths["moshi"], paths["mimi"], paths["tokenizer"], config_path=config_or_default(paths)
    )
    mimi, lm = info.get_mimi(device="cpu"), info.get_moshi(device="cpu", dtype=torch.float32)
    prompts = Prompts(mimi, info.get_text_tokenizer(), lm.delays, lm.context, lab_weights / "voices")
    gen = LMGen(lm, use_sampling=False, support_out_of_sync=True, **info.lm_gen_config)
    return mimi, gen, prompts


def engine(model, slots: int):
    from myca_ops.voice.engine import SlotEngine

    mimi, gen, _ = model
    return SlotEngine(mimi, gen, slots, "cpu", prefill_steps=4)


def talk(eng, inputs: dict, starts: dict | None = None, at: dict | None = None, frames: int = FRAMES) -> dict:
    """Tick until every slot in `inputs` ({slot: audio}) has sent `frames` frames, slot k from tick
    `starts[k]` on (prefilling slots wait for their prompt), calling `at[tick]()` before that tick;
    each slot's (tokens, pcm) per frame."""
    starts, at = starts or {}, at or {}
    sent, got, tick = dict.fromkeys(inputs, 0), {k: [] for k in inputs}, 0
    while any(n < frames for n in sent.values()):
        if tick in at:
            at[tick]()
        wanted = [k for k in inputs if sent[k] < frames and tick >= starts.get(k, 0) and k not in eng.prefilling]
        batch = {k: inputs[k][sent[k] * FRAME_SAMPLES : (sent[k] + 1) * FRAME_SAMPLES] for k in wanted}
        outputs, _ = eng.tick(batch, {k for k in wanted if sent[k] == 0})
        for k in wanted:
            sent[k] += 1
            got[k].append((outputs[k].tokens, outputs[k].pcm))
        tick += 1
    return got


def same(a: list, b: list) -> int:
    """Frames where both have tokens and they are equal."""
    return sum(
        ta is not None and tb is not None and np.array_equal(ta, tb) for (ta, _), (tb, _) in zip(a, b, strict=True)
    )


def identical(a: list, b: list) -> bool:
    """Every frame's tokens equal and its audio equal to 1e-5 (float32 batched matmuls round
    differently in the last bits)."""
    return same(a, b) == len(a) and all(np.abs(pa - pb).max() < 1e-5 for (_, pa), (_, pb) in zip(a, b, strict=True))


SPEECH = speech_like(FRAMES * FRAME_SAMPLES / 24000 + 0.5, seed=3)


def reordered(prompt):
    """The same prompt with its text tokens in reverse order: the same length, other content."""
    forced = prompt.forced.copy()
    text = np.flatnonzero((forced[:, 0] >= 0) & (forced[:, 0] != ZERO_TEXT))
    forced[text, 0] = forced[text[::-1], 0]
    assert not np.array_equal(forced, prompt.forced)
    return replace(prompt, key=("reordered", prompt.key), forced=forced)


@pytest.fixture(scope="module")
def prefilled(model):
    """The speech, answered alone in a slot prefilled by steps: for personas myca and field; for
    prompts of myca's length with other content (its text reordered; the other voice); for none;
    and myca's state after its prompt."""
    _, _, prompts = model
    myca = prompts.make(MYCA, "myca.wav", "myca")
    cases = {
        "myca": myca,
        "field": prompts.make(FIELD, "field.wav", "field"),
        "reordered text": reordered(myca),
        "other voice": prompts.make(MYCA, "field.wav", "other voice"),
        "none": None,
    }
    assert cases["other voice"].steps == cases["reordered text"].steps == myca.steps
    eng = engine(model, 1)
    out, state = {}, None
    for name, prompt in cases.items():
        eng.reset([0])
        if prompt is not None:
            eng.prefill(0, prompt)
            while eng.prefilling:
                eng.tick({})
            if name == "myca":
                state = eng.snapshot(0)
        out[name] = talk(eng, {0: SPEECH})[0]
    eng.close()
    return out, state


def spoken(frames: list) -> int:
    return sum(t is not None for t, _ in frames)


@pytest.mark.parametrize("other", ["reordered text", "other voice", "field", "none"])
def test_a_persona_changes_what_the_model_says(prefilled, other):
    """Against a prompt of the same length with other content, another persona, and no prompt."""
    out, _ = prefilled
    assert spoken(out["myca"]) == FRAMES  # after a prompt, the model's delay is behind it
    assert same(out["myca"], out[other]) <= FRAMES // 4, f"myca against {other}, same audio: the tokens should differ"


def test_a_slot_given_the_kept_state_says_exactly_what_a_prefilled_slot_says(model, prefilled):
    out, state = prefilled
    assert state.steps == model[2].make(MYCA, "myca.wav", "myca").steps
    eng = engine(model, 3)
    eng.reset([2])
    eng.restore(2, state)  # another slot of another engine: nothing is tied to where it was made
    got = talk(eng, {2: SPEECH})[2]
    eng.close()
    assert identical(got, out["myca"])


def test_callers_with_different_personas_in_one_batch_each_get_their_solo_result(model, prefilled):
    """myca (from the kept state) and field (prefilled in the same ticks as myca talks) in one batch;
    a third caller joins mid-conversation with a prefill of its own: the first two are unchanged."""
    out, state = prefilled
    _, _, prompts = model
    eng = engine(model, 3)
    eng.reset([0, 1, 2])
    eng.restore(0, state)
    eng.prefill(1, prompts.make(FIELD, "field.wav", "field"))
    late = prompts.make(MYCA + " Be brief.", None, "late")
    got = talk(eng, {0: SPEECH, 1: SPEECH, 2: tone(8, 200)}, starts={2: 30}, at={30: lambda: eng.prefill(2, late)})
    eng.close()
    assert spoken(got[2]) == FRAMES
    assert identical(got[0], out["myca"])
    assert identical(got[1], out["field"])


def test_a_prompt_longer_than_the_context_is_refused_with_its_length(model):
    _, _, prompts = model
    long = " ".join(["mushroom"] * (prompts.context + 10))
    with pytest.raises(ValueError, match=r"the prompt takes \d+ model steps, the model's context is \d+"):
        prompts.make(long, None, "verbose")
    with pytest.raises(ValueError, match="unknown voice 'nobody.wav'"):
        prompts.make(MYCA, "nobody.wav", "x")


# --- The server: personas by name, refusals before the handshake --------------------------
@pytest.fixture(scope="module")
def personas(lab_weights, tmp_path_factory):
    """The batched server with personas myca (the default) and field, each state kept after its
    first caller's prompt (not built at start), client prompts allowed up to 300 characters."""
    folder = tmp_path_factory.mktemp("personas")
    log, configured = folder / "server.log", folder / "personas.json"
    configured.write_text(
        json.dumps([{"name": "myca", "text": MYCA, "voice": "myca.wav"}, {"name": "field", "text": FIELD}])
    )
    settings = {
        "MYCA_MOSHI_SLOTS": "2",
        "MYCA_MOSHI_GREEDY": "1",
        "MYCA_MOSHI_PERSONAS_FILE": str(configured),
        "MYCA_MOSHI_DEFAULT_PERSONA": "myca",
        "MYCA_MOSHI_ALLOW_CLIENT_PROMPTS": "1",
        "MYCA_MOSHI_MAX_PROMPT_CHARS": "300",
        "MYCA_MOSHI_PERSONA_WARM": "0",
    }
    with batched_moshi(lab_weights, log, **settings) as (_, url):
        yield url.removeprefix("http://"), log


def test_a_persona_is_heard_and_a_client_prompt_equal_to_it_gives_the_same_answers(personas):
    """myca's first caller (by default) is prefilled by steps, the next (by name) and a client prompt
    of the same text and voice get the kept state: the same answers, audio and text.  field answers
    otherwise."""
    from urllib.parse import quote

    base, _ = personas
    prefills = metric(base, 'myca_moshi_handshake_seconds_count{prompt="prefill"}')
    kept = metric(base, 'myca_moshi_handshake_seconds_count{prompt="cache"}')
    speech = speech_like(3.0, seed=3)
    default = asyncio.run(converse(base, speech))
    by_name = asyncio.run(converse(base, speech, query="?persona=myca"))
    client = asyncio.run(converse(base, speech, query=f"?text_prompt={quote(MYCA)}&voice_prompt=myca.wav"))
    field = asyncio.run(converse(base, speech, query="?persona=field"))
    assert len(audio_of(default)) >= 20
    assert default == by_name == client
    assert audio_of(field) != audio_of(default)
    # Each persona is prefilled by its first caller on this server, whichever test called first.
    assert metric(base, 'myca_moshi_handshake_seconds_count{prompt="prefill"}') == 2  # myca, field
    made = metric(base, 'myca_moshi_handshake_seconds_count{prompt="prefill"}') - prefills
    assert metric(base, 'myca_moshi_handshake_seconds_count{prompt="cache"}') - kept == 4 - made


def test_health_names_the_personas_their_prompt_length_and_the_state_kept_after_the_first_caller(personas):
    base, _ = personas
    for name in ("myca", "field"):  # each persona's first caller (here or in an earlier test) keeps its state
        asyncio.run(converse(base, speech_like(0.5, seed=1), query=f"?persona={name}"))
    status, body = health(base)
    assert status == 200 and body["default_persona"] == "myca" and body["client_prompts"] is True
    assert set(body["personas"]) == {"myca", "field"}
    for persona in body["personas"].values():
        assert persona["cached"] is True and persona["steps"] > 12 and persona["state_mib"] > 0


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("?persona=pirate", "unknown persona 'pirate'"),
        ("?persona=a%20b", "persona must be 1 to 64 letters, digits"),
        ("?persona=myca&text_prompt=Hi", "not both"),
        (f"?text_prompt={'x' * 301}", "text_prompt has 301 characters, at most 300"),
        ("?text_prompt=Hi&voice_prompt=../../etc/passwd", "not a plain file name"),
        ("?text_prompt=Hi&voice_prompt=nobody.wav", "unknown voice 'nobody.wav'"),
    ],
)
def test_what_a_caller_may_not_ask_for_is_closed_with_the_reason_before_the_handshake(personas, query, says):
    code, reason = refusal(personas[0], query)
    assert code == 1008 and says in reason
    if "persona=" in query:
        assert "field" not in reason  # the operator's personas are not a caller's to list


def refusal(base: str, query: str) -> tuple[int, str]:
    """The close code and reason a caller gets for `query`; fails if it is given a handshake."""
    import aiohttp

    async def call():
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat{query}") as ws:
            msg = await ws.receive(timeout=10)
            assert msg.data != bytes([HANDSHAKE]), f"{query}: handshake given"
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            return msg.data, msg.extra

    return asyncio.run(call())


def test_a_bad_persona_setting_stops_the_server_with_the_cause(lab_weights, tmp_path):
    from myca_ops.lab.processes import launch_moshi

    log, bad = tmp_path / "server.log", tmp_path / "personas.json"
    bad.write_text(json.dumps([{"name": "myca", "text": MYCA, "voice": "nobody.wav"}]))
    server, _ = launch_moshi(lab_weights, log, MYCA_MOSHI_SERVER="batched", MYCA_MOSHI_PERSONAS_FILE=str(bad))
    assert server.wait(120) == 2
    assert "unknown voice 'nobody.wav' (voices: field.wav, myca.wav)" in log.read_text()


def test_personaplex_is_never_served_without_a_voice_prompt_or_in_fp16(tmp_path):
    """Its model was trained with a voice prompt before every conversation, and NVIDIA serves it in
    bf16: the server refuses to start otherwise, naming the setting (Kyutai's model takes both)."""
    from myca_ops.voice.settings import Settings

    configured = tmp_path / "personas.json"
    configured.write_text(
        json.dumps([{"name": "myca", "text": MYCA, "voice": "myca.wav"}, {"name": "plain", "text": "Hi"}])
    )
    env = {"MYCA_MOSHI_FLAVOUR": "personaplex", "MYCA_MOSHI_DEVICE": "cpu", "MYCA_MOSHI_PERSONAS_FILE": str(configured)}
    for extra, says in [
        ({}, r"needs a default persona with a voice \(MYCA_MOSHI_DEFAULT_PERSONA"),
        ({"MYCA_MOSHI_DEFAULT_PERSONA": "myca"}, r"persona\(s\) plain have no voice"),
        ({"MYCA_MOSHI_DEFAULT_PERSONA": "myca", "MYCA_MOSHI_HALF": "1"}, "bf16, never fp16"),
    ]:
        with pytest.raises(ValueError, match=says):
            Settings.from_env(env | extra, "cpu")
    kyutai = Settings.from_env(env | {"MYCA_MOSHI_FLAVOUR": "kyutai", "MYCA_MOSHI_HALF": "1"}, "cpu")
    assert not kyutai.voice_required and kyutai.default_persona == ""
    configured.write_text(json.dumps([{"name": "support.en", "text": MYCA, "voice": "myca.wav"}]))
    dotted = Settings.from_env(env | {"MYCA_MOSHI_DEFAULT_PERSONA": "support.en"}, "cpu")
    assert dotted.voice_required and dotted.default_persona == "support.en"


@pytest.mark.lab  # sphn, pyloudnorm (the lab's wheelhouse)
def test_a_wav_voice_is_read_as_personaplex_reads_one(tmp_path):
    """The first channel, normalised to -24 LUFS, its partial last frame zero-padded; a voice too
    short to feed (its first frame never is) or silent is refused naming the file."""
    import pyloudnorm
    import sphn

    from myca_ops.voice.persona import VOICE_LUFS, Prompts
    from myca_ops.voice.protocol import SAMPLE_RATE

    quiet = speech_like(1.0, seed=5)[: int(5.5 * FRAME_SAMPLES)] * 0.05
    sphn.write_wav(str(tmp_path / "stereo.wav"), np.stack([quiet, np.ones_like(quiet) * 0.5]), SAMPLE_RATE)
    voice = Prompts.read_voice(tmp_path / "stereo.wav")
    assert len(voice) == 6 * FRAME_SAMPLES and not voice[len(quiet) :].any()
    assert pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(voice[: len(quiet)]) == pytest.approx(VOICE_LUFS, abs=0.1)
    assert np.corrcoef(voice[: len(quiet)], quiet)[0, 1] > 0.999  # the first channel, only louder
    for name, audio, says in [
        ("short.wav", quiet[: FRAME_SAMPLES + 100], "shorter than two 80 ms frames"),
        ("brief.wav", quiet[: 3 * FRAME_SAMPLES], "too short to measure its loudness"),
        ("silent.wav", np.zeros(6 * FRAME_SAMPLES, np.float32), "silent"),
    ]:
        sphn.write_wav(str(tmp_path / name), audio, SAMPLE_RATE)
        with pytest.raises(ValueError, match=f"voice {name}: {says}"):
            Prompts.read_voice(tmp_path / name)
