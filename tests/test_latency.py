"""Step latency: the service log parser, the verdicts, and the modules run by Ansible for real."""

import sys

import pytest

from conftest import module_doc, undocumented
from myca_ops.envfile import read_env_file
from myca_ops.voice import latency

SERVICE_LOG = (
    "\x1b[1;34m[Info]\x1b[0m accepted connection\n"
    "\x1b[1;34m[Info]\x1b[0m frame handled in 116.0ms\n"
    "\x1b[1;34m[Info]\x1b[0m text token ' hello'\n"
    "\x1b[1;34m[Info]\x1b[0m frame handled in 28.4ms\n"
    "[Info] frame handled in 31.0 ms\n"
)


def test_service_log_frames_with_ansi_colours():
    assert latency.parse_service_log(SERVICE_LOG) == [116.0, 28.4, 31.0]
    assert latency.parse_service_log("nothing here") == []


@pytest.mark.parametrize(
    "p99, device, mode, reason, realtime, cause_part",
    [
        (55.0, "cpu", "cpu", "device cpu", True, "CPU only: fine for this checkpoint"),
        (175.0, "cpu", "cpu", "device cpu", False, "no CUDA device: p99 175.0 ms"),
        (24.0, "cuda", "compile+graphs", "ok", True, "p99 24.0 ms per frame against a 80 ms budget"),
        (210.0, "cuda", "eager", "forced by moshi_force_no_cuda_graph", False, "slow mode forced"),
        (95.0, "cuda", "graphs", "CUDA graphs on, torch.compile off: Triton is not installed", False, "Triton missing"),
        (95.0, "cuda", "compile+graphs", "ok", False, "over budget on this GPU (NVIDIA L4)"),
        (None, "cuda", "graphs", "", False, "no frame was measured"),
    ],
)
def test_verdict_follows_the_measurement(p99, device, mode, reason, realtime, cause_part):
    got, cause = latency.verdict(p99, device, mode, reason, "NVIDIA L4")
    assert got is realtime
    assert cause_part in cause


def test_env_file_is_read_like_systemd(tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text('# comment\nMYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_RECOMMENDED_REASON="torch 2.13 sees no CUDA device"\n')
    assert read_env_file(env) == {
        "MYCA_MOSHI_DEVICE": "cpu",
        "MYCA_MOSHI_RECOMMENDED_REASON": "torch 2.13 sees no CUDA device",
    }


def test_step_latency_module_measures_the_lab_checkpoint(run_module, lab_weights, tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text(f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_WEIGHTS_DIR={lab_weights}\nMYCA_MOSHI_RECOMMENDED_MODE=cpu\n")
    result = run_module(
        "moshi_step_latency", {"python": sys.executable, "env_file": str(env), "frames": 4, "warmup": 2}
    )
    assert result.get("failed") is not True, result
    total = result["results"][0]["stages"]["total"]
    assert total["count"] == 4 and result["mode"] == "cpu"
    assert result["realtime"] is (total["p99"] <= 80.0)  # the verdict follows the figure
    assert set(result["results"][0]["stages"]) == {"encode", "lm_step", "decode", "total"}
    returns = module_doc("moshi_step_latency")["return"]
    assert set(returns) <= set(result), "a documented return value is missing"
    assert set(returns["results"]["contains"]) <= set(result["results"][0])
    assert undocumented("moshi_step_latency", result) == []


def test_step_latency_module_rejects_bad_arguments(run_module):
    assert "frames must be at least 1" in run_module("moshi_step_latency", {"frames": 0})["msg"]
    assert "value of mode must be one of" in run_module("moshi_step_latency", {"mode": "fast"})["msg"]


def test_step_latency_module_reports_a_missing_venv(run_module, tmp_path):
    result = run_module("moshi_step_latency", {"python": str(tmp_path / "venv/bin/python")})
    assert result["failed"] and "converge the role that installs this venv first" in result["msg"]


def test_step_latency_module_names_missing_weights(run_module, tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text(f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_WEIGHTS_DIR={tmp_path}\n")
    result = run_module("moshi_step_latency", {"python": sys.executable, "env_file": str(env), "frames": 1})
    assert result["failed"] and "missing weight file(s)" in result["msg"]


def test_voice_probe_module_in_check_mode_only_shakes_hands(run_module, moshi_server):
    url, _ = moshi_server
    result = run_module("moshi_voice_probe", {"python": sys.executable, "url": url}, check=True)
    assert result.get("failed") is not True, result
    assert result["handshake_ms"] > 0 and "audio_messages" not in result and result["realtime"] is None


def test_voice_probe_module_streams_voice(run_module, moshi_server):
    url, _ = moshi_server
    result = run_module("moshi_voice_probe", {"python": sys.executable, "url": url, "seconds": 2})
    assert result["audio_messages"] > 0
    assert isinstance(result["realtime"], bool) and result["cause"]
    returns = module_doc("moshi_voice_probe")["return"]
    single = {key for key, doc in returns.items() if doc["returned"] != "a load test"}
    assert single <= set(result), "a documented return value is missing"
    assert set(returns["gap_ms"]["contains"]) == set(result["gap_ms"])
    assert undocumented("moshi_voice_probe", result) == []


def test_voice_probe_module_rejects_bad_arguments(run_module):
    assert "must start with ws:// or wss://" in run_module("moshi_voice_probe", {"url": "http://x/api/chat"})["msg"]


@pytest.mark.lab  # the probe runs in a venv with the Opus codec (sphn)
def test_voice_probe_module_names_an_unreachable_server(run_module):
    result = run_module("moshi_voice_probe", {"python": sys.executable, "url": "ws://127.0.0.1:9/api/chat"})
    assert result["failed"] and "cannot talk to ws://127.0.0.1:9/api/chat" in result["msg"]
