"""Moshi and the MAS in containers on the host's engine: the verify table's rows, what each
container runs and holds, a caller heard, a killed Moshi brought back by the engine; then
PostgreSQL's outage, which only Ansible's modules read (verify.yml)."""

import json
import re
import time
from pathlib import Path

import testinfra

from myca_ops.lab.scenario import container, myca_ops, yaml_checks

DATA = "/var/tmp/myca-docker-lab/moshi/data"
ENGINE = testinfra.get_host("local://")  # the lab host shares this machine's Docker engine
LAB_HOST, MOSHI = container("myca-docker-host"), container("moshi")


def test_verify_measures_the_step_in_the_containers_mode_and_hears_the_voice():
    report = myca_ops("verify", {"verify_frames": 30, "verify_probe_seconds": 4})["verify"]
    gpu, mas = report["gpu_hosts"][0], report["mas_hosts"][0]
    assert gpu["host"] == "myca-docker-host" and gpu["mode"] == "cpu", gpu
    assert float(gpu["step_p99_ms"]) > 0 and float(gpu["first_audio_ms"]) > 0, gpu
    assert mas["status"] == "ok" and int(mas["collectors_running"]) == 2, mas


def test_moshi_runs_its_own_image_as_its_user_with_the_weights_read_only():
    deadline = time.monotonic() + 120
    while ENGINE.docker("moshi").inspect()["State"].get("Health", {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, "moshi's health check did not pass within 120 s"
        time.sleep(2)
    config, host_config = ENGINE.docker("moshi").inspect()["Config"], ENGINE.docker("moshi").inspect()["HostConfig"]
    assert re.fullmatch(r"myca-moshi:[0-9a-f]{12}", config["Image"]), config  # tagged by a hash of its inputs
    assert (config["Cmd"][-1], config["User"]) == ("serve", "moshi"), config
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert f"{DATA}/weights:{DATA}/weights:ro" in host_config["Binds"]


def test_the_image_fetched_the_weights_from_the_hub_and_the_host_has_no_moshi_venv():
    assert "myca-moshi: lab/moshi@1ab0000000000000000000000000000000000001 ready" in (
        LAB_HOST.file(f"{DATA}/fetch.log").content_string
    )
    model = LAB_HOST.file(f"{DATA}/weights/model.safetensors")
    assert model.is_symlink and model.linked_to.startswith(f"{DATA}/hf-cache/models--lab--moshi/blobs/")
    assert not LAB_HOST.file("/opt/moshi/venv").exists


def test_a_caller_hears_audio_and_text_opus_both_ways():
    out = MOSHI.check_output(
        "/opt/moshi/venv/bin/python -m myca_ops.voice.probe --url ws://127.0.0.1:8998/api/chat --seconds 2"
    )
    result = json.loads(out)
    assert result["error"] is None and result["close_code"] is None, result
    assert result["handshake_ms"] > 0 and result["audio_received_s"] > 1, result


def test_a_killed_moshi_is_started_again_by_the_engine_and_answers():
    before = ENGINE.docker("moshi").inspect()
    # The server, the child of the container's init, killed from the engine's side: a crash.
    ENGINE.run_expect([0], f"pkill -KILL --parent {before['State']['Pid']}")
    deadline = time.monotonic() + 60
    while True:
        state = ENGINE.docker("moshi").inspect()
        if state["RestartCount"] > before["RestartCount"] and state["State"]["Running"]:
            break
        assert time.monotonic() < deadline, f"not started again within 60 s: {state['State']}"
        time.sleep(2)
    MOSHI.run_expect([0], "/opt/moshi/venv/bin/myca-moshi wait --url ws://127.0.0.1:8998/api/chat --timeout 120")


def test_the_mas_runs_in_containers_with_asyncpg_beside_postgresql_on_the_host():
    assert LAB_HOST.service("postgresql").is_running
    for name in ("myca-mas", "myca-collector-host", "myca-collector-voice"):
        assert ENGINE.docker(name).is_running, name
    imports = json.loads(container("myca-mas").check_output("/opt/myca-mas/venv/bin/myca-mas import-check"))
    assert imports["asyncpg"] == "0.32.0", imports  # the field report's missing module


def test_the_status_and_postgresqls_outage_lose_nothing():
    """verify.yml: the status names the database and both collectors, then PostgreSQL goes away
    for 30 s and every sample taken meanwhile is stored exactly once."""
    yaml_checks(Path(__file__).resolve().parents[1] / "verify.yml")
