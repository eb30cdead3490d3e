"""Step latency: the service log parser, the verdicts, and the modules run by Ansible for real."""

import sys

import pytest

from conftest import module_doc, undocumented
from myca_ops.envfile import read_env_file
from myca_ops.lab.processes import free_port
from myca_ops.voice import latency, model

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


def row(slots: int, p99: float) -> dict:
    return {"slots": slots, "stages": {"total": {"p99": p99}}, "realtime": p99 <= 80.0}


def decision(mode: str, limit: str | None, reason: str = "why") -> model.Decision:
    return model.Decision(mode, reason, limit)


@pytest.mark.parametrize(
    "capacity, rows, device, mode, limit, realtime, cause_part",
    [
        (
            2,
            [row(2, 55.0), row(1, 40.0)],
            "cpu",
            "cpu",
            "no_cuda",
            True,
            "carries 2 conversations in real time (tick p99 55.0 ms at 2 slots, budget 80 ms) in mode cpu; CPU only",
        ),
        (
            1,
            [row(2, 95.0), row(1, 60.0)],
            "cpu",
            "cpu",
            "no_cuda",
            False,
            "no CUDA device (CPU): carries 1 of 2 conversations in real time (tick p99 95.0 ms at 2 slots, budget 80 ms); 1 fit (tick p99 60.0 ms): set moshi_slots: 1",
        ),
        (
            0,
            [row(2, 195.0), row(1, 160.0)],
            "cpu",
            "cpu",
            "no_cuda",
            False,
            "not even one fits (tick p99 160.0 ms at 1 slot)",
        ),
        (64, [row(64, 48.9), row(1, 16.6)], "cuda", "compile+graphs", None, True, "carries 64 conversations"),
        (
            3,
            [row(8, 210.0), row(1, 50.0), row(4, 90.0), row(2, 60.0), row(3, 75.0)],
            "cuda",
            "eager",
            "forced",
            False,
            "slow mode forced (why): carries 3 of 8",
        ),
        (8, [row(16, 95.0), row(1, 20.0), row(8, 70.0)], "cuda", "graphs", "no_triton", False, "Triton missing (why)"),
        (
            8,
            [row(16, 95.0), row(1, 20.0), row(8, 70.0)],
            "cuda",
            "graphs",
            "triton_fails",
            False,
            "with CUDA graphs only",
        ),
        (
            8,
            [row(16, 95.0), row(1, 20.0), row(8, 70.0)],
            "cuda",
            "compile+graphs",
            None,
            False,
            "over budget on this GPU (NVIDIA L4) in mode compile+graphs",
        ),
    ],
)
def test_the_capacity_verdict_follows_the_measurement(capacity, rows, device, mode, limit, realtime, cause_part):
    got, cause = latency.verdict(capacity, rows, decision(mode, limit), device, "NVIDIA L4")
    assert got is realtime
    assert cause_part in cause


@pytest.mark.parametrize("fits_up_to, configured", [(0, 4), (1, 4), (5, 8), (7, 8), (8, 8), (1, 1), (0, 1), (23, 64)])
def test_the_largest_slot_count_that_fits_is_found(fits_up_to, configured):
    """Tick times grow with the slots; the search measures the configured count, then 1, then halves."""
    measured = []

    def measure(n):
        measured.append(n)
        return row(n, 30.0 + 50.0 * n / (fits_up_to + 0.5))

    capacity, rows = latency.find_capacity(measure, configured)
    assert capacity == fits_up_to
    assert measured[:2] == ([configured, 1] if configured > 1 else [1])
    assert len(measured) <= 2 + configured.bit_length()  # a search, not every count
    assert [r["slots"] for r in rows] == measured


def test_env_file_is_read_like_systemd(tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text('# comment\nMYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_RECOMMENDED_REASON="torch 2.13 sees no CUDA device"\n')
    assert read_env_file(env) == {
        "MYCA_MOSHI_DEVICE": "cpu",
        "MYCA_MOSHI_RECOMMENDED_REASON": "torch 2.13 sees no CUDA device",
    }


def test_step_latency_module_measures_the_served_engine_on_the_lab_checkpoint(run_module, lab_weights, tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text(
        f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_WEIGHTS_DIR={lab_weights}\nMYCA_MOSHI_RECOMMENDED_MODE=cpu\n"
        "MYCA_MOSHI_SLOTS=2\n"
    )
    result = run_module(
        "moshi_step_latency", {"python": sys.executable, "env_file": str(env), "frames": 4, "warmup": 2}
    )
    assert result.get("failed") is not True, result
    first = result["results"][0]
    assert (first["slots"], result["slots"], result["slots_source"]) == (2, 2, "moshi_slots")
    assert first["stages"]["total"]["count"] == 4 and result["mode"] == "cpu" and result["dtype"] == "float32"
    assert [r["slots"] for r in result["results"]][:2] == [2, 1]  # the configured count, then one session
    assert set(first["stages"]) == {"encode", "lm_step", "decode", "total"}
    # The verdict follows the figures: real-time exactly when the 2-slot tick fits; the capacity is
    # the largest measured count that fits.
    assert result["realtime"] is (first["stages"]["total"]["p99"] <= 80.0)
    fitting = [r["slots"] for r in result["results"] if r["stages"]["total"]["p99"] <= 80.0]
    assert result["capacity"] == max(fitting, default=0)
    assert "at 2 slots, budget 80 ms" in result["cause"]
    returns = module_doc("moshi_step_latency")["return"]
    always = {key for key, doc in returns.items() if doc["returned"] == "success"}
    assert always <= set(result), "a documented return value is missing"
    assert set(returns["results"]["contains"]) <= set(first)
    assert undocumented("moshi_step_latency", result) == []


def test_step_latency_module_rejects_bad_arguments(run_module):
    assert "frames must be at least 1" in run_module("moshi_step_latency", {"frames": 0})["msg"]
    assert "value of mode must be one of" in run_module("moshi_step_latency", {"mode": "fast"})["msg"]


def test_step_latency_module_reports_a_missing_venv(run_module, tmp_path):
    result = run_module("moshi_step_latency", {"python": str(tmp_path / "venv/bin/python")})
    assert result["failed"] and "converge the role that installs this venv first" in result["msg"]


def test_step_latency_module_in_check_mode_loads_nothing(run_module, tmp_path):
    """deploy --check: a second copy is never loaded, and a host without the venv yet (a fresh one) is
    skipped with the reason, not failed."""
    fresh = run_module(
        "moshi_step_latency", {"python": str(tmp_path / "venv/bin/python"), "source": "server"}, check=True
    )
    assert fresh.get("failed") is not True and fresh["skipped"] and "is not there yet" in fresh["msg"]
    second_copy = run_module("moshi_step_latency", {"python": sys.executable, "source": "measure"}, check=True)
    assert second_copy["skipped"] and "loads the model" in second_copy["msg"]


def test_step_latency_module_asks_a_server_that_is_down_to_be_started(run_module, tmp_path):
    env = tmp_path / "moshi.env"
    env.write_text(f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_RECOMMENDED_MODE=cpu\nMYCA_MOSHI_PORT={free_port()}\n")
    result = run_module("moshi_step_latency", {"python": sys.executable, "env_file": str(env), "source": "server"})
    assert result["failed"] and "the service does not answer at http://127.0.0.1:" in result["msg"]
    assert "start it" in result["msg"]
    compare = run_module("moshi_step_latency", {"source": "server", "mode": "compare"})
    assert compare["failed"] and "use source=measure" in compare["msg"]


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


def test_step_latency_module_names_a_bad_slot_count(run_module, lab_weights, tmp_path):
    """The measuring child's own error reaches the operator, not "exit 2, no result"."""
    env = tmp_path / "moshi.env"
    env.write_text(f"MYCA_MOSHI_DEVICE=cpu\nMYCA_MOSHI_WEIGHTS_DIR={lab_weights}\nMYCA_MOSHI_SLOTS=two\n")
    result = run_module("moshi_step_latency", {"python": sys.executable, "env_file": str(env), "frames": 1})
    assert result["failed"] and "MYCA_MOSHI_SLOTS must be a whole number, got 'two'" in result["msg"]
