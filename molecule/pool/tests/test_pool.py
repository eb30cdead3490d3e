"""Two GPU hosts behind HAProxy on the bridge host: the bridge's settings, HAProxy's view of
both servers, the load test through myca-ops, and the queue; then what only Ansible drives
(verify.yml: Prometheus's targets, a Moshi killed mid-call, a rolling deploy under callers)."""

import json
import time
from pathlib import Path

import yaml

from myca_ops.lab.scenario import PROJECT, container, http_text, myca_ops, yaml_checks

BRIDGE, GPU_A = container("myca-pool-bridge"), container("myca-pool-gpu-a")
SCENARIO = Path(__file__).resolve().parents[1]
TOKEN = yaml.safe_load((PROJECT / "inventory/lab/group_vars/all.yml").read_text())["lab_bridge_token"]


def moshi_servers() -> list[list[str]]:
    """HAProxy's stats rows of the moshi backend's two servers (CSV fields)."""
    stats = http_text(BRIDGE, "http://127.0.0.1:8404/stats;csv").splitlines()
    return [row.split(",") for row in stats if row.startswith(("moshi,myca-pool-gpu-a,", "moshi,myca-pool-gpu-b,"))]


def test_the_bridge_relays_to_haproxy_and_knows_the_pools_slots():
    settings = json.loads(BRIDGE.file("/etc/myca-bridge/bridge.json").content_string)
    assert settings["upstream"] == "ws://127.0.0.1:8990/api/chat"
    assert settings["upstream_slots"] == 4
    assert settings["max_sessions"] == 8  # the slots plus as many waiting in HAProxy's queue


def test_haproxy_has_both_servers_up_each_taking_as_many_sessions_as_it_has_slots():
    deadline = time.monotonic() + 60
    while [row[17] for row in moshi_servers()] != ["UP", "UP"]:
        assert time.monotonic() < deadline, f"not both UP within 60 s: {moshi_servers()}"
        time.sleep(1)
    assert [row[6] for row in moshi_servers()] == ["2", "2"]  # slim: each server's session limit
    assert "haproxy_server_current_sessions" in http_text(BRIDGE, "http://127.0.0.1:8404/metrics")


def test_four_callers_one_per_slot_are_all_served_two_from_each_gpu_host():
    body = myca_ops(
        "loadtest",
        {
            "loadtest_callers": 4,
            "loadtest_seconds": 3,
            "loadtest_from": ["myca-pool-gpu-a", "myca-pool-gpu-b"],
            "loadtest_stagger_s": 0.3,
        },
    )
    load = body["loadtest"]
    callers = load["callers"]
    assert [c["caller"] for c in callers] == [0, 1, 2, 3] and load["shares"] == 2, load["cause"]
    # One clock across the hosts: each caller connected about 0.3 s after the one before.
    starts = [c["start_s"] for c in callers]
    assert starts == sorted(starts) and starts[3] - starts[0] > 0.6, starts
    assert load["summary"]["refused"] == 0 and load["summary"]["cut off"] == 0, load["cause"]
    assert min(c["audio_messages"] for c in callers) > 0
    assert (Path(body["artifact_dir"]) / "report" / "loadtest.png").stat().st_size > 10000  # the timeline


def test_a_caller_more_waits_for_a_slot_and_one_past_the_queue_time_is_told_busy():
    script = (SCENARIO / "hold_sessions.py").read_text()
    out = GPU_A.check_output(
        f"/opt/moshi/venv/bin/python - ws://myca-pool-bridge:8999/api/chat {TOKEN} 4 3 <<'EOF'\n{script}\nEOF"
    )
    result = json.loads(out)
    assert [held["served"] for held in result["held"]] == [True] * 4, result
    assert result["queued_while_full"] and result["queued"]["served"], result
    # Served, so within HAProxy's 3 s queue time by the server's clock; no upper bound on the
    # caller's own clock, which a busy machine stretches.
    assert result["queued"]["waited_s"] >= 0.9, result
    past = result["past_the_queue"]
    assert not past["served"] and past["waited_s"] >= 2.9 and past["close_code"] == 1013, result
    assert past["reason"] == "busy: all 4 slots in use; try again later"


def test_a_dead_moshi_and_a_rolling_deploy_under_callers():
    yaml_checks(SCENARIO / "verify.yml")
