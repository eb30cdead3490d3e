"""myca-moshi: the mode decision, the weights layout, and the real moshi.server behind it."""

import json
import os
import subprocess
import sys

import pytest

from myca_ops.voice import launcher, probe


def test_an_unknown_server_is_refused_before_anything_loads(capsys, monkeypatch):
    monkeypatch.setattr(launcher.model, "resolve_weights", lambda _: pytest.fail("weights looked up"))
    monkeypatch.setenv("MYCA_MOSHI_SERVER", "vllm")
    assert launcher.main(["serve"]) == 2
    assert "MYCA_MOSHI_SERVER is 'vllm'; expected one of batched, upstream (moshi_server)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MYCA_MOSHI_SLOTS": "two"}, "MYCA_MOSHI_SLOTS must be a whole number, got 'two'"),
        ({"MYCA_MOSHI_SLOTS": "-1"}, "MYCA_MOSHI_SLOTS must be 0 or more, got -1"),
        ({"MYCA_MOSHI_PORT": "8998.5"}, "MYCA_MOSHI_PORT must be a whole number"),
        ({"MYCA_MOSHI_CODEC_WORKERS": "auto"}, "MYCA_MOSHI_CODEC_WORKERS must be a whole number, got 'auto'"),
    ],
)
def test_batched_server_settings_name_the_bad_variable(env, message):
    from myca_ops.voice.settings import Settings

    with pytest.raises(ValueError, match=message):
        Settings.from_env(env, "cpu")
    assert Settings.from_env({"MYCA_MOSHI_SLOTS": "3"}, "graphs").slots == 3


def test_the_opus_work_leaves_the_event_loop_on_a_gpu_host_and_stays_on_it_on_cpu(monkeypatch):
    from myca_ops.voice.settings import Settings

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cuda"}, "graphs").codec_workers == 4
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cuda", "MYCA_MOSHI_CODEC_WORKERS": ""}, "graphs").codec_workers == 4
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cpu"}, "cpu").codec_workers == 0
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cpu", "MYCA_MOSHI_CODEC_WORKERS": "2"}, "cpu").codec_workers == 2
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cuda"}, "graphs").codec_workers == 1
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    assert Settings.from_env({"MYCA_MOSHI_DEVICE": "cuda"}, "graphs").codec_workers == 8


def test_a_failing_model_loop_ends_the_batched_server_with_the_cause():
    """A tick that raises (CUDA out of memory) must end the process, not leave callers unanswered."""
    import subprocess
    import sys

    script = """
import asyncio, threading, numpy as np
from myca_ops.voice.server import VoiceServer
from myca_ops.voice.settings import Settings
class Engine:
    slots, prefilling = 1, {}
    def reset(self, slots): pass
    def state_bytes(self): return 0
    def tick(self, frames, first): raise RuntimeError("CUDA out of memory (simulated)")
server = VoiceServer(Settings(slots=1), lambda: (Engine(), None, None))
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


def test_fetch_takes_a_checkpoint_from_a_hub_pinned_and_refuses_what_it_lacks(lab_weights, tmp_path):
    """`myca-moshi fetch` as a host runs it, against a hub (myca_ops.lab.hub) that holds the lab's
    weights: the canonical names point at the downloaded files; a revision or repository the hub
    does not have is named in the error."""
    import threading

    from myca_ops.lab import hub

    server = hub.serve("lab/moshi", lab_weights)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_DISABLE_TELEMETRY": "1"}
    commit = hub.commit_of(lab_weights)

    def fetch(repo, revision):
        argv = [sys.executable, "-m", "myca_ops.voice.launcher", "fetch", "--repo", repo, "--revision", revision]
        return subprocess.run([*argv, "--dest", str(tmp_path / "weights")], capture_output=True, text=True, env=env)

    try:
        done = fetch("lab/moshi", commit)
        assert done.returncode == 0, done.stderr
        for name in ("model.safetensors", "mimi.safetensors", "tokenizer.model", "config.json"):
            assert (tmp_path / "weights" / name).read_bytes() == (lab_weights / name).read_bytes()
        assert "has no revision 0123" in fetch("lab/moshi", "0123" * 10).stderr
        assert "no repository lab/other" in fetch("lab/other", commit).stderr
    finally:
        server.shutdown()


def test_waiting_gives_up_at_once_on_a_crash_looping_service():
    from myca_ops.voice.probe import wait_for_handshake

    with pytest.raises(TimeoutError, match="moshi crashed and was restarted 3 times"):
        wait_for_handshake("ws://127.0.0.1:9/api/chat", 600, broken=lambda: "moshi crashed and was restarted 3 times")


def test_the_crash_watch_stays_quiet_where_systemd_does_not_run_the_service(monkeypatch, tmp_path):
    """In a container (no systemctl) the role's `wait --unit moshi` waits on the handshake alone."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl on it
    assert launcher.crash_watch("moshi")() is None


@pytest.mark.lab  # needs torch in this venv (make lab-assets installs the CPU wheel)
def test_probe_on_this_machine_finds_no_cuda_and_says_cpu():
    out = subprocess.run([sys.executable, "-m", "myca_ops.voice.launcher", "probe"], capture_output=True, text=True)
    facts = json.loads(out.stdout)
    assert out.returncode == 0 and facts["torch_cuda_available"] is False
    assert (facts["mode"], facts["limit"]) == ("cpu", "no_cuda")
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


def personaplex_parser():
    """NVIDIA PersonaPlex's moshi.server options, rebuilt from its documentation (its package cannot
    be installed here): an unknown flag ends it with exit 2, as that server does."""
    import argparse

    parser = argparse.ArgumentParser(prog="moshi.server (PersonaPlex)")
    for flag in (
        "--host",
        "--static",
        "--gradio-tunnel-token",
        "--tokenizer",
        "--moshi-weight",
        "--mimi-weight",
        "--hf-repo",
        "--device",
        "--voice-prompt-dir",
        "--ssl",
    ):
        parser.add_argument(flag)
    parser.add_argument("--port", type=int)
    parser.add_argument("--gradio-tunnel", action="store_true")
    parser.add_argument("--cpu-offload", action="store_true")
    return parser


def test_the_personaplex_flavour_gets_a_command_line_its_server_takes(tmp_path):
    weights = {"moshi": tmp_path / "m", "mimi": tmp_path / "mi", "tokenizer": tmp_path / "t", "config": None}
    env = {
        "MYCA_MOSHI_FLAVOUR": "personaplex",
        "MYCA_MOSHI_WEIGHTS_DIR": str(tmp_path),
        "MYCA_MOSHI_HF_REPO": "nvidia/personaplex-7b-v1",
        "MYCA_MOSHI_DEVICE": "cpu",
    }
    args = personaplex_parser().parse_args(launcher.server_argv(env, weights, tmp_path / "c.json")[1:])
    assert args.voice_prompt_dir == str(tmp_path / "voices") and args.static == "none"
    assert args.hf_repo == "nvidia/personaplex-7b-v1" and args.moshi_weight == str(tmp_path / "m")
    # Kyutai's command line (--config-path) is what that server refused with exit 2.
    kyutai = launcher.server_argv({**env, "MYCA_MOSHI_FLAVOUR": "kyutai"}, weights, tmp_path / "c.json")
    with pytest.raises(SystemExit) as err:
        personaplex_parser().parse_args(kyutai[1:])
    assert err.value.code == 2
    with pytest.raises(ValueError, match="PersonaPlex's server has no --half"):
        launcher.server_argv({**env, "MYCA_MOSHI_HALF": "1"}, weights, tmp_path / "c.json")
    with pytest.raises(ValueError, match="MYCA_MOSHI_FLAVOUR is 'nvidia'"):
        launcher.server_argv({**env, "MYCA_MOSHI_FLAVOUR": "nvidia"}, weights, tmp_path / "c.json")


def voices_archive(path, members: dict[str, bytes]):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_personaplex_voices_are_unpacked_and_an_archive_reaching_outside_is_refused(tmp_path):
    good = voices_archive(tmp_path / "good.tgz", {"voices/NATF0.pt": b"f0", "./voices/NATM1.pt": b"m1"})
    assert launcher.unpack_voices(good, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["NATF0.pt", "NATM1.pt"]
    assert (tmp_path / "out" / "NATF0.pt").read_bytes() == b"f0"
    for i, name in enumerate(["../evil.pt", "voices/../../evil.pt", "/etc/evil.pt", "voices/sub/x.pt", "other/x.pt"]):
        bad = voices_archive(tmp_path / f"bad{i}.tgz", {"voices/fine.pt": b"ok", name: b"x"})
        with pytest.raises(ValueError, match="is not a file in voices/"):
            launcher.unpack_voices(bad, tmp_path / f"bad{i}")
        assert not (tmp_path / f"bad{i}").exists()  # nothing written from a refused archive
    assert not any(tmp_path.rglob("evil.pt"))
    with pytest.raises(FileNotFoundError, match="no voices.tgz in the checkpoint"):
        launcher.unpack_voices(tmp_path / "voices.tgz", tmp_path / "none")
