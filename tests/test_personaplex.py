"""PersonaPlex's checkpoint on the batched server: its depformer cut to the model's own codebooks
samples what the whole one samples for them, and its voice files (input embeddings, then a
token cache) put a slot in the very state the voice's audio does."""

from __future__ import annotations

import pytest
from test_personas import MYCA, SPEECH, identical, same, talk

from conftest import pinned_package
from myca_ops.voice import model as voice_model


def tiny_lm(dep_q: int, device: str = "cpu"):
    import torch
    from moshi.models import loaders

    from myca_ops.lab.weights import lm_config

    torch.manual_seed(0)
    config = lm_config(64, 1, 300) | {"dep_q": dep_q}
    return loaders.get_moshi_lm(None, lm_kwargs=config, device=device, dtype=torch.float32), config


# --- The checkpoint (no weights on disk) ----------------------------------------------------------
@pytest.mark.lab  # torch (the lab's wheelhouse)
def test_the_cut_depformer_samples_the_models_codebooks_as_the_whole_one_does():
    """PersonaPlex's 16-step depformer, stored in its layout, loaded with 8 steps: given the same
    temporal output and text token, its 8 tokens are the first 8 of the whole one's (greedy)."""
    import torch
    from moshi.models import LMGen, loaders

    from myca_ops.lab.weights import personaplex_layout

    whole, config = tiny_lm(16)
    stored = personaplex_layout(whole.state_dict())
    assert voice_model.depformer_steps(stored) == 16
    assert "depformer.layers.0.self_attn.in_proj_weight" in stored  # moshi's older, stacked layout
    cut = loaders.get_moshi_lm(None, lm_kwargs=config | {"dep_q": 8}, device="meta", dtype=torch.float32)
    cut.load_state_dict(voice_model.own_stream(stored), assign=True, strict=True)
    torch.set_grad_enabled(False)
    for seed in range(3):
        torch.manual_seed(seed)
        transformer_out = torch.randn(1, 1, config["dim"])
        text = torch.randint(0, config["text_card"], (1,))
        tokens = []
        for lm in (whole, cut):
            gen = LMGen(lm, use_sampling=False)
            with gen.streaming(1):
                tokens.append(gen.depformer_step(text, transformer_out)[0])
        assert len(tokens[0]) == 16 and len(tokens[1]) == 8
        assert torch.equal(tokens[0][:8], tokens[1]), f"seed {seed}: {tokens}"


def test_a_checkpoint_whose_depformer_has_fewer_steps_than_codebooks_is_refused():
    state = dict.fromkeys(f"linears.{i}.weight" for i in range(4))  # the keys are what counts
    with pytest.raises(ValueError, match="4 steps, fewer than the model's 8 audio codebooks.*moshi_flavour"):
        voice_model.own_stream(state)


@pytest.mark.lab  # torch (the lab's wheelhouse)
def test_a_voice_file_made_for_another_model_is_refused_naming_both(tmp_path):
    import torch

    from myca_ops.voice.persona import Prompts

    torch.save(
        {"embeddings": torch.zeros(5, 1, 1, 4096), "cache": torch.zeros(1, 17, 4, dtype=torch.long)}, tmp_path / "v.pt"
    )
    with pytest.raises(ValueError, match=r"v.pt was made for another model .*\(5, 4096\).*dim 256, 17 codebooks"):
        Prompts._read_replay(tmp_path / "v.pt", 256, 17)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt: not a PersonaPlex voice file"):
        Prompts._read_replay(tmp_path / "junk.pt", 256, 17)


# --- The lab's PersonaPlex checkpoint -------------------------------------------------------------
@pytest.fixture(scope="module")
def personaplex(lab_weights, tmp_path_factory):
    """A PersonaPlex checkpoint made like the lab's (voices .wav and .pt), loaded as the service
    loads it (MYCA_MOSHI_FLAVOUR=personaplex), greedy."""
    from myca_ops.lab.weights import generate

    folder = generate(lab_weights.parent / "weights-personaplex", dim=128, layers=1, flavour="personaplex")
    loaded = load_greedy(folder)
    return folder, loaded, loaded.prompts(folder / "voices")


def load_greedy(folder):
    """A PersonaPlex checkpoint loaded as the service loads it (MYCA_MOSHI_FLAVOUR=personaplex), on
    CPU, greedy."""
    env = {
        "MYCA_MOSHI_FLAVOUR": "personaplex",
        "MYCA_MOSHI_DEVICE": "cpu",
        "MYCA_MOSHI_WEIGHTS_DIR": str(folder),
        "MYCA_MOSHI_GREEDY": "1",
    }
    return voice_model.load(env)


def test_the_lab_personaplex_checkpoint_has_its_layout_and_voices(personaplex):
    import tarfile

    folder, loaded, prompts = personaplex
    assert loaded.lm.dep_q == 8 and loaded.lm.n_q == 16  # the model's own codebooks; the caller's are given
    assert sorted(prompts.replays) == ["field.pt", "myca.pt"] and sorted(prompts.voices) == ["field.wav", "myca.wav"]
    with tarfile.open(folder / "voices.tgz") as archive:
        assert sorted(archive.getnames()) == ["voices/field.pt", "voices/myca.pt"]


def test_a_voice_file_puts_the_slot_in_the_state_its_audio_does(personaplex):
    """Same persona text, voice myca.wav (Mimi codes stepped) against myca.pt (its embeddings
    replayed, its token cache restored), in one batch: the same tokens and audio for 50 frames
    after the handshake; field.pt, another voice, answers otherwise."""
    _, loaded, prompts = personaplex
    eng = loaded.engine(3, prefill_steps=4, replay=True)
    eng.reset([0, 1, 2])
    for slot, voice in enumerate(("myca.wav", "myca.pt", "field.pt")):
        eng.prefill(slot, prompts.make(MYCA, voice, voice))
    assert eng.prefilling[1].replay is not None and eng.prefilling[0].replay is None
    while eng.prefilling:
        eng.tick({})
    got = talk(eng, dict.fromkeys(range(3), SPEECH))
    eng.close()
    assert identical(got[1], got[0])
    assert same(got[2], got[0]) <= len(got[0]) // 4, "another voice, same text and audio: the tokens should differ"


def test_a_voice_file_needs_an_engine_that_replays(personaplex):
    _, loaded, prompts = personaplex
    eng = loaded.engine(1)
    with pytest.raises(ValueError, match="needs an engine made with replay=True"):
        eng.prefill(0, prompts.make(MYCA, "myca.pt", "myca"))
    eng.close()


# NVIDIA's server's venv pins huggingface-hub<0.25 and sphn<0.2 (its moshi/pyproject.toml); the
# fetch and the role's checks run in it.
OLDEST_HUB = "huggingface-hub==0.24.7"
OLDEST_SPHN = "sphn==0.1.12"
OLDEST_AIOHTTP = "aiohttp==3.10.11"


def version_in(env: dict, module: str) -> str:
    import subprocess
    import sys

    argv = [sys.executable, "-c", f"from importlib.metadata import version; print(version({module!r}))"]
    return subprocess.run(argv, capture_output=True, text=True, env=env).stdout.strip()


def test_the_fetch_runs_under_personaplexs_own_pins(personaplex, tmp_path):
    """`myca-moshi fetch --voices` with the huggingface-hub NVIDIA's server's venv has, against a hub
    that holds the lab's PersonaPlex checkpoint: the weights linked, the voices unpacked, the hub
    cache's main set to the revision (that server reads config.json from there offline)."""
    import subprocess
    import sys
    import threading

    from myca_ops.lab import hub

    folder = personaplex[0]
    env = pinned_package(OLDEST_HUB)
    assert version_in(env, "huggingface-hub") == OLDEST_HUB.split("==")[1]  # the fetch runs with that version
    server = hub.serve("nvidia/personaplex-7b-v1", folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_DISABLE_TELEMETRY": "1"}
    commit = hub.commit_of(folder)
    argv = [sys.executable, "-m", "myca_ops.voice.launcher", "fetch", "--repo", "nvidia/personaplex-7b-v1"]
    argv += ["--revision", commit, "--dest", str(tmp_path / "weights"), "--voices"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "weights" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "weights" / "voices").iterdir()) == ["field.pt", "myca.pt"]
    refs = tmp_path / "hf-cache" / "models--nvidia--personaplex-7b-v1" / "refs" / "main"
    assert refs.read_text() == commit


def test_the_voice_probe_runs_under_personaplexs_own_pins(moshi_server):
    """The role's handshake wait and verify's voice probe run in the server's venv: with NVIDIA's
    sphn<0.2 (which queues what it encodes and decodes on a thread) and aiohttp<3.11 the probe still
    streams speech and counts the answer's audio (from its Ogg pages)."""
    import json
    import subprocess
    import sys

    env = pinned_package(OLDEST_SPHN, OLDEST_AIOHTTP)
    assert version_in(env, "sphn") == "0.1.12" and version_in(env, "aiohttp") == "3.10.11"
    url, log = moshi_server
    argv = [sys.executable, "-m", "myca_ops.voice.probe", "--url", url, "--seconds", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["error"] is None, log.read_text()[-2000:]
    assert result["audio_messages"] > 0 and result["audio_received_s"] > 0 and result["timing_only"]
