"""myca-moshi: the mode decision, the weights layout, and the real moshi.server behind it."""

import json
import subprocess
import sys

import pytest

from myca_ops.voice import launcher, probe

GRAPHS_REASON = "CUDA graphs on, torch.compile off: Triton is not installed"


@pytest.mark.parametrize(
    "device, recommended, force_graph_off, force_compile_off, mode, env",
    [
        ("cuda", "compile+graphs", False, False, "compile+graphs", {}),
        ("cuda:1", "compile+graphs", False, False, "compile+graphs", {}),
        ("cuda", "graphs", False, False, "graphs", {"NO_TORCH_COMPILE": "1"}),
        ("cuda", "compile+graphs", False, True, "graphs", {"NO_TORCH_COMPILE": "1"}),
        ("cuda", "compile+graphs", True, False, "compile", {"NO_CUDA_GRAPH": "1"}),
        ("cuda", "compile+graphs", True, True, "eager", {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"}),
        ("cuda", "graphs", True, False, "eager", {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"}),
        ("cpu", "cpu", False, False, "cpu", {"NO_TORCH_COMPILE": "1"}),
        ("cpu", "compile+graphs", False, False, "cpu", {"NO_TORCH_COMPILE": "1"}),
    ],
)
def test_mode_decision(device, recommended, force_graph_off, force_compile_off, mode, env):
    decision = launcher.decide(device, recommended, GRAPHS_REASON, force_graph_off, force_compile_off)
    assert decision.mode == mode
    assert decision.env == env


def test_graphs_mode_keeps_the_facts_reason():
    decision = launcher.decide("cuda", "graphs", GRAPHS_REASON, False, False)
    assert decision.reason == GRAPHS_REASON and decision.warning is None


def test_forcing_graphs_off_warns_with_the_frame_budget():
    decision = launcher.decide("cuda", "compile+graphs", "ok", True, False)
    assert "moshi_force_no_cuda_graph" in decision.reason
    assert "200 ms" in decision.warning and "80 ms frame budget" in decision.warning


def test_cuda_asked_on_a_host_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="torch 2.13.0 sees no CUDA device"):
        launcher.decide("cuda", "cpu", "torch 2.13.0 sees no CUDA device", False, False)


def test_unknown_recommended_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown recommended mode 'fast'"):
        launcher.decide("cuda", "fast", "", False, False)


def test_missing_weight_file_names_it(tmp_path):
    (tmp_path / launcher.MOSHI_FILE).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        launcher.resolve_weights(tmp_path)
    assert launcher.MIMI_FILE in str(err.value) and launcher.TOKENIZER_FILE in str(err.value)
    assert launcher.MOSHI_FILE not in str(err.value).split("missing weight file(s): ")[1].split(";")[0]


def test_broken_config_names_the_file(tmp_path):
    for name in (launcher.MOSHI_FILE, launcher.MIMI_FILE, launcher.TOKENIZER_FILE):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / launcher.CONFIG_FILE).write_text('{"dim": 256,')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        launcher.resolve_weights(tmp_path)


def test_an_unknown_server_is_refused_before_anything_loads(capsys, monkeypatch):
    monkeypatch.setattr(launcher, "resolve_weights", lambda _: pytest.fail("weights looked up"))
    monkeypatch.setenv("MYCA_MOSHI_SERVER", "vllm")
    assert launcher.main(["serve"]) == 2
    assert "MYCA_MOSHI_SERVER is 'vllm'; expected one of batched, upstream (moshi_server)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MYCA_MOSHI_SLOTS": "two"}, "MYCA_MOSHI_SLOTS must be a whole number, got 'two'"),
        ({"MYCA_MOSHI_SLOTS": "-1"}, "MYCA_MOSHI_SLOTS must be 0 or more, got -1"),
        ({"MYCA_MOSHI_PORT": "8998.5"}, "MYCA_MOSHI_PORT must be a whole number"),
    ],
)
def test_batched_server_settings_name_the_bad_variable(env, message):
    from myca_ops.voice.server import Settings

    with pytest.raises(ValueError, match=message):
        Settings.from_env(env, "cpu")
    assert Settings.from_env({"MYCA_MOSHI_SLOTS": "3"}, "graphs").slots == 3


def test_a_failing_model_loop_ends_the_batched_server_with_the_cause():
    """A tick that raises (CUDA out of memory) must end the process, not leave callers unanswered."""
    import subprocess
    import sys

    script = """
import asyncio, threading, numpy as np
from myca_ops.voice.server import Settings, VoiceServer
class Engine:
    slots = 1
    def reset(self, slots): pass
    def tick(self, frames, first): raise RuntimeError("CUDA out of memory (simulated)")
server = VoiceServer(Settings(slots=1), lambda: (Engine(), None))
server.loop = asyncio.new_event_loop()
def a_frame_arrives():
    with server.lock:
        server.inbox.frames[0].append((np.zeros(1920, np.float32), 0.0))
        server.lock.notify()
threading.Timer(0.5, a_frame_arrives).start()
server.load()
print("still running")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "still running" not in out.stdout
    assert "the model loop failed" in out.stderr and "CUDA out of memory (simulated)" in out.stderr


def test_server_arguments(tmp_path):
    weights = {"moshi": tmp_path / "m", "mimi": tmp_path / "mi", "tokenizer": tmp_path / "t", "config": None}
    env = {
        "MYCA_MOSHI_PORT": "9000",
        "MYCA_MOSHI_DEVICE": "cuda",
        "MYCA_MOSHI_SSL_DIR": "/etc/moshi/tls",
        "MYCA_MOSHI_HALF": "1",
        "MYCA_MOSHI_EXTRA_ARGS": "--cfg-coef 1.5",
    }
    argv = launcher.server_argv(env, weights, tmp_path / "c.json")
    joined = " ".join(argv)
    assert "--port 9000" in joined and "--static none" in joined and "--ssl /etc/moshi/tls" in joined
    assert "--half" in argv and argv[-2:] == ["--cfg-coef", "1.5"]
    assert f"--config-path {tmp_path / 'c.json'}" in joined


def test_generated_checkpoint_loads_with_moshis_loaders(lab_weights):
    import sentencepiece
    from moshi.models import loaders

    config = json.loads((lab_weights / "config.json").read_text())
    info = loaders.CheckpointInfo.from_hf_repo(
        "unused/offline",
        lab_weights / config["moshi_name"],
        lab_weights / config["mimi_name"],
        lab_weights / config["tokenizer_name"],
        config_path=lab_weights / "config.json",
    )
    lm = info.get_moshi(device="cpu")
    mimi = info.get_mimi(device="cpu")
    tokenizer = sentencepiece.SentencePieceProcessor(str(info.tokenizer))
    assert lm.dim == 256 and lm.dep_q == 8 and lm.n_q == 16
    assert tokenizer.vocab_size() == config["text_card"] == lm.text_card
    assert sum(p.numel() for p in mimi.parameters()) > 79_000_000


@pytest.mark.lab  # generates weights with torch
def test_generation_is_deterministic_for_a_seed(tmp_path):
    from myca_ops.lab import weights

    a = weights.generate(tmp_path / "a", seed=7, dim=64, layers=1, vocab=300)
    b = weights.generate(tmp_path / "b", seed=7, dim=64, layers=1, vocab=300)
    for name in (weights.MOSHI_FILE, weights.TOKENIZER_FILE, weights.CONFIG_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    mtime = (a / weights.MOSHI_FILE).stat().st_mtime
    weights.generate(tmp_path / "a", seed=7, dim=64, layers=1, vocab=300)  # cached: not rewritten
    assert (a / weights.MOSHI_FILE).stat().st_mtime == mtime


def test_launcher_serves_real_moshi_on_cpu(moshi_server):
    """The real moshi.server behind the launcher: handshake, then Opus in, Opus audio out."""
    url, log = moshi_server
    result = probe.run(url, seconds=2)
    text = log.read_text()
    assert result["error"] is None, text[-2000:]
    assert result["audio_messages"] > 0 and result["audio_received_s"] > 0
    assert "myca-moshi: upstream server, mode cpu on cpu" in text
    assert "frame handled in" in text


@pytest.mark.lab  # huggingface_hub, from the lab's wheelhouse
def test_fetch_without_the_hub_says_what_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub is reachable here anyway: fail fast
    with pytest.raises(ValueError, match="download of kyutai/moshiko-pytorch-bf16@main failed .*re-run the role"):
        launcher.fetch("kyutai/moshiko-pytorch-bf16", "main", tmp_path / "weights", None)


def test_waiting_gives_up_at_once_on_a_crash_looping_service():
    from myca_ops.voice.probe import wait_for_handshake

    with pytest.raises(TimeoutError, match="moshi crashed and was restarted 3 times"):
        wait_for_handshake("ws://127.0.0.1:9/api/chat", 600, broken=lambda: "moshi crashed and was restarted 3 times")


# --auto, where no Ansible facts exist: `myca-moshi probe`'s facts -> (mode, the reason's start).
WINDOWS = {"system": "Windows", "torch_version": "2.9.1", "cuda": True, "triton_version": None, "compile_error": None}


@pytest.mark.parametrize(
    "facts,mode,reason",
    [
        ({**WINDOWS, "cuda": False}, "cpu", "torch 2.9.1 sees no CUDA device"),
        (
            WINDOWS,
            "graphs",
            'CUDA graphs on, torch.compile off: Triton is not installed: pip install "triton-windows>=3.5,<3.6" (torch 2.9.1)',
        ),
        ({**WINDOWS, "torch_version": "2.6.0"}, "graphs", 'pip install "triton-windows>=3.2,<3.3" (torch 2.6.0)'),
        ({**WINDOWS, "torch_version": "2.11.0"}, "graphs", "the triton-windows release made for torch 2.11.0"),
        (
            {**WINDOWS, "triton_version": "3.5.1", "compile_error": "RuntimeError: Failed to find C compiler"},
            "graphs",
            "CUDA graphs on, torch.compile off: Triton 3.5.1 cannot compile: RuntimeError: Failed to find C compiler",
        ),
        ({**WINDOWS, "triton_version": "3.5.1"}, "compile+graphs", "CUDA and Triton 3.5.1 compile a kernel"),
        ({**WINDOWS, "system": "Linux"}, "graphs", "Triton is not installed: pip install the triton release"),
    ],
)
def test_auto_picks_the_fastest_mode_that_works_from_the_probed_facts(facts, mode, reason):
    picked, why = launcher.recommend_here(facts)
    assert picked == mode and reason in why


def test_auto_never_turns_cuda_graphs_off_itself():
    """What --auto hands to the decision: graphs stay on whatever Triton does; only compile goes."""
    for facts in (
        WINDOWS,
        {**WINDOWS, "triton_version": "3.5.1"},
        {**WINDOWS, "compile_error": "x", "triton_version": "3"},
    ):
        decision = launcher.decide_from_env(launcher.auto_env({}, facts))
        assert "NO_CUDA_GRAPH" not in decision.env and decision.mode in ("graphs", "compile+graphs")
    cpu = launcher.decide_from_env(launcher.auto_env({}, {**WINDOWS, "cuda": False}))
    assert cpu.mode == "cpu"
    # A device the operator set is kept.
    assert launcher.auto_env({"MYCA_MOSHI_DEVICE": "cuda:1"}, WINDOWS)["MYCA_MOSHI_DEVICE"] == "cuda:1"


def test_an_environment_file_that_says_auto_is_decided_by_probing_here(monkeypatch):
    """A container's moshi.env (moshi_runtime: docker) says auto: the server and verify's measurement
    beside it both probe the image's torch, so they pick the same mode."""
    facts = {**WINDOWS, "system": "Linux", "triton_version": "3.6.0"}
    monkeypatch.setattr(launcher, "probe_here", lambda: facts)
    env = {"MYCA_MOSHI_DEVICE": "cuda", "MYCA_MOSHI_RECOMMENDED_MODE": "auto", "MYCA_MOSHI_RECOMMENDED_REASON": ""}
    decision = launcher.decide_from_env(env)
    assert decision.mode == "compile+graphs" and "Triton 3.6.0 compile a kernel" in decision.reason
    monkeypatch.setattr(launcher, "probe_here", lambda: {**facts, "triton_version": None})
    assert launcher.decide_from_env(env).mode == "graphs"  # Triton gone from the image: graphs stay on


@pytest.mark.lab  # needs torch in this venv (make lab-assets installs the CPU wheel)
def test_probe_on_this_machine_finds_no_cuda_and_says_cpu():
    out = subprocess.run([sys.executable, "-m", "myca_ops.voice.launcher", "probe"], capture_output=True, text=True)
    facts = json.loads(out.stdout)
    assert out.returncode == 0 and facts["cuda"] is False and facts["mode"] == "cpu"
    assert facts["reason"] == f"torch {facts['torch_version']} sees no CUDA device"


def test_envfile_runs_a_command_with_the_files_variables(tmp_path):
    """How supervisord starts a service with its systemd unit's EnvironmentFile."""
    env_file = tmp_path / "svc.env"
    env_file.write_text('# a comment\nMYCA_A=plain\nMYCA_B="with spaces = and quotes"\n')
    show = "import os; print(os.environ['MYCA_A'], '|', os.environ['MYCA_B'], '|', os.environ.get('HOME') is not None)"
    out = subprocess.run(
        [sys.executable, "-m", "myca_ops.envfile", str(env_file), sys.executable, "-c", show],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "plain | with spaces = and quotes | True"
    missing = subprocess.run(
        [sys.executable, "-m", "myca_ops.envfile", str(tmp_path / "none.env"), "true"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and f"cannot read {tmp_path / 'none.env'}" in missing.stderr
