"""MYCA's personas exactly as NVIDIA's PersonaPlex builds its prompt: on the same checkpoint, text
prompt, voice and caller codes, this engine gives the tokens NVIDIA's own `LMGen` gave, frame for
frame, for a WAV voice and for the voice file NVIDIA's code made from it.  The reference was
recorded once by tests/personaplex_reference.py (NVIDIA's package in a venv of its pins); only
its tokens are kept here."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_personaplex import load_greedy

from myca_ops.voice.persona import SILENCE_TOKENS, ZERO_TEXT

pytestmark = pytest.mark.lab  # torch, the lab's weights

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "personaplex_reference.json").read_text())
VOICE_FILE = FIXTURES / "personaplex_reference_voice.pt"


@pytest.fixture(scope="module")
def recorded_on(lab_weights, tmp_path_factory):
    """The checkpoint the reference was recorded on, rebuilt from its recipe (the lab's PersonaPlex
    checkpoint), loaded greedy as the service loads it; and a voices folder with the WAV voice and
    NVIDIA's voice file.  A checkpoint other than the recorded one fails here, naming the files."""
    from myca_ops.lab.weights import generate

    recipe = REFERENCE["recipe"]
    folder = generate(
        lab_weights.parent / "weights-personaplex",
        seed=recipe["seed"],
        dim=recipe["dim"],
        layers=recipe["layers"],
        vocab=recipe["vocab"],
        flavour=recipe["flavour"],
    )
    voices = tmp_path_factory.mktemp("voices")
    shutil.copy(folder / "voices" / REFERENCE["voice"], voices)
    shutil.copy(VOICE_FILE, voices / "nvidia.pt")
    files = {name: folder / name for name in REFERENCE["sha256"]} | {VOICE_FILE.name: VOICE_FILE}
    other = [
        name
        for name, path in files.items()
        if hashlib.sha256(path.read_bytes()).hexdigest() != REFERENCE["sha256"][name]
    ]
    assert not other, (
        f"the reference was recorded on other files than these ({', '.join(other)}): remake it with "
        "tests/personaplex_reference.py on this checkpoint"
    )
    loaded = load_greedy(folder)
    return loaded, loaded.prompts(voices)


@pytest.mark.parametrize(("path", "voice"), [("wav", REFERENCE["voice"]), ("pt", "nvidia.pt")])
def test_the_answer_equals_nvidias_token_for_token(recorded_on, path, voice):
    loaded, prompts = recorded_on
    engine = loaded.engine(1, prefill_steps=4, replay=True)
    try:
        engine.reset([0])
        engine.prefill(0, prompts.make(REFERENCE["text_prompt"], voice, "reference"))
        while engine.prefilling:
            engine.tick({})
        got = [engine.tick_codes({0: codes})[0] for codes in REFERENCE["caller_codes"]]
    finally:
        engine.close()
    # NVIDIA's LMGen reads a step's input one position behind where it writes the caller's codes:
    # its first answer frame is the prompt's last frame (the zero text token and the silence frame),
    # which this engine steps before the handshake; from its second on, each is this engine's one
    # frame earlier.
    first, *want = REFERENCE["answers"][path]["tokens"]
    assert first == [ZERO_TEXT, *SILENCE_TOKENS]
    got = got[: len(want)]
    differ = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g is None or g.tolist() != w]
    assert not differ, (
        f"{path}: {len(want) - len(differ)} of {len(want)} frames equal NVIDIA's; the first that differs, "
        f"frame {differ[0]}: {None if got[differ[0]] is None else got[differ[0]].tolist()} against {want[differ[0]]}"
    )


def test_every_recorded_token_was_chosen_by_a_clear_margin():
    """The inputs were picked so that no near-tie decides a token (torches round differently)."""
    floor = REFERENCE["gap_floor"]
    for path, run in REFERENCE["answers"].items():
        assert len(run["tokens"]) == len(REFERENCE["caller_codes"]) >= 27
        assert min(run["gaps"]) > floor, f"{path}: a gap of {min(run['gaps'])} is under {floor}"
