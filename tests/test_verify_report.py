"""The verify report (myca_ops.runner.verify_report): rows from the modules' own results, the table
and its budget, the failures; as a page: verify.yml's report play writes verify.html
with a picture per host, and headless Chromium shows the pictures and the run's figures."""

import asyncio
import json
import random
import re
import subprocess
import sys

import pytest
from report_in_browser import read_page

from conftest import BIN, ROOT, ansible_env
from myca_ops.runner import verify_report

rng = random.Random(7)
# A run as verify.yml's plays record it (the modules' own results): one GPU host whose 4 slots
# tick within the budget (and its single slot), its voice probe with one underrun, a bridge and a MAS.
GPU_RAW = {
    "host": "gpu-a",
    "step": {
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "mode": "graphs",
        "mode_reason": "Triton cannot compile (no C compiler): CUDA graphs need no Triton",
        "budget_ms": 80.0,
        "slots": 4,
        "capacity": 4,
        "realtime": True,
        "cause": "carries 4 conversations in real time (tick p99 41.2 ms at 4 slots, budget 80 ms) in mode graphs",
        "torch_version": "2.9.1+cu128",
        "triton_version": None,
        # The GPU's peaks while it was measured: hot enough to be slowed down.
        "gpu_state": [
            {
                "gpu": "0",
                "name": "NVIDIA H100 80GB HBM3",
                "samples": 9,
                "utilization_max": 0.97,
                "memory_used_max_bytes": 40 << 30,
                "memory_total_bytes": 80 << 30,
                "temperature_max_c": 88,
                "power_max_w": 612.5,
                "throttled": ["hw_thermal"],
            }
        ],
        "results": [
            {
                "label": "graphs, 4 slots",
                "stages": {"total": {"p50": 31.4, "p99": 41.2}},
                "slot_mib": 310.5,
                "samples_ms": [rng.gauss(32, 3) for _ in range(100)],
            },
            {
                "label": "graphs, 1 slot",
                "stages": {"total": {"p50": 19.0, "p99": 23.0}},
                "samples_ms": [rng.gauss(19, 2) for _ in range(100)],
            },
        ],
    },
    "voice": {
        "handshake_ms": 6.0,
        "first_audio_ms": 212.0,
        "underruns": 1,
        "realtime": False,
        "cause": "1 underrun",
        "arrival_s": [0.2 + 0.08 * i for i in range(40)] + [3.6 + 0.08 * i for i in range(40)],
        "underrun_s": [3.4],
    },
    "health": {
        "status": "ready",
        "slots_used": 0,
        "slots_total": 4,
        "default_persona": "myca",
        "tick_ms": {"p50": 33.3, "p99": 44.4, "count": 321},
    },
    "server": "batched",
    "require_realtime": False,
    "driver": "580.1",
}
BRIDGE_RAW = {
    "host": "bridge-a",
    "url": "ws://bridge-a:8999/api/chat",
    "credential": "ticket",
    "voice": {
        "handshake_ms": 17.0,
        "first_audio_ms": 230.0,
        "underruns": 0,
        "realtime": True,
        "cause": "3.9s of audio in 4.0s, no underrun",
        "arrival_s": [0.23 + 0.08 * i for i in range(50)],
        "underrun_s": [],
    },
    "require_realtime": False,
}
MAS_RAW = {
    "host": "mas-a",
    "status": {
        "status": "ok",
        "components": {
            "database": {"ok": True, "latency_ms": 1.9, "error": None},
            "collectors": {
                "host": {"state": "running", "last_heartbeat_age_s": 1.2, "backlog": 0},
                "voice": {"state": "running", "last_heartbeat_age_s": 0.4, "backlog": 0},
            },
            "voice": {"moshi": {"ok": True}, "bridge": {"ok": True}},
        },
    },
}
RAW = {"gpu_hosts": [GPU_RAW], "bridge_hosts": [BRIDGE_RAW], "mas_hosts": [MAS_RAW]}


def cells(table: str, start: str) -> list[str]:
    """The cells of the text table's row that starts with `start` (columns are two spaces apart at least)."""
    return re.split(r"\s{2,}", next(line for line in table.splitlines() if line.startswith(start)))


def test_rows_keep_numbers_and_booleans_and_the_table_reads_the_budget_from_the_results():
    doc = verify_report.build(RAW)
    gpu, bridge, mas = doc["gpu_hosts"][0], doc["bridge_hosts"][0], doc["mas_hosts"][0]
    assert (gpu["step_p99_ms"], gpu["capacity"], gpu["realtime"], gpu["step_realtime"]) == (41.2, 4, False, True)
    assert gpu["persona"] == "myca, handshake 6.0 ms" and gpu["tick_count"] == 321
    assert (bridge["realtime"], mas["collectors_running"], mas["database_ok"]) == (True, 2, True)
    assert cells(verify_report.text(doc), "gpu-a  NVIDIA")[6:] == ["80.0 ms", "212.0 ms", "1", "NOT real-time"]
    assert (
        "GPU during the measurement: GPU0 NVIDIA H100 80GB HBM3: busy 97%, memory 40.0 of 80.0 GiB, 88 °C, 612 W, "
        "throttled: hw_thermal (peaks of 9 readings)"
    ) in verify_report.text(doc)
    cpu = verify_report.build({"gpu_hosts": [{**GPU_RAW, "step": {**GPU_RAW["step"], "gpu_state": None}}]})
    assert "GPU during the measurement: not read (no NVML: no GPU, or no driver)" in verify_report.markdown(cpu)
    tighter = verify_report.build({**RAW, "gpu_hosts": [{**GPU_RAW, "step": {**GPU_RAW["step"], "budget_ms": 60.0}}]})
    assert cells(verify_report.text(tighter), "gpu-a  NVIDIA")[6] == "60.0 ms"
    assert "| 60.0 ms |" in verify_report.markdown(tighter)


def test_a_host_that_must_be_real_time_fails_with_its_causes_and_a_down_mas_with_its_database():
    must = {**GPU_RAW, "require_realtime": True}
    down = {
        "host": "mas-a",
        "status": {"status": "down", "components": {"database": {"ok": False, "error": "connection refused"}}},
    }
    doc = verify_report.build({"gpu_hosts": [must], "bridge_hosts": [BRIDGE_RAW], "mas_hosts": [down]})
    assert verify_report.failures(doc) == [
        "gpu-a is not real-time: " + GPU_RAW["step"]["cause"] + "; voice: 1 underrun",
        "mas-a: /api/myca/status is down: database: connection refused",
    ]
    assert verify_report.failures(verify_report.build(RAW)) == []


def test_a_check_run_on_a_fresh_host_is_reported_not_measured_and_does_not_fail():
    """deploy --check on a host the run has not deployed: the modules skip (no venv yet); the rows say
    why, and no verdict fails on a measurement that was not made."""
    why = "check mode: /opt/moshi/venv/bin/python is not there yet"
    fresh = {"host": "gpu-a", "step": {"skipped": True, "msg": why}, "voice": {"skipped": True, "msg": why}}
    bridge = {**BRIDGE_RAW, "voice": {"skipped": True, "msg": why}}
    doc = verify_report.build({"gpu_hosts": [fresh], "bridge_hosts": [bridge], "mas_hosts": []})
    assert [doc["gpu_hosts"][0]["skipped"], doc["bridge_hosts"][0]["skipped"]] == [why, why]
    assert doc["gpu_hosts"][0]["step_cause"] == why and verify_report.failures(doc) == []
    measured_late = {**GPU_RAW, "require_realtime": True, "step": {**GPU_RAW["step"], "realtime": False}}
    assert len(verify_report.failures(verify_report.build({**RAW, "gpu_hosts": [measured_late]}))) == 1


def test_an_upstream_server_without_healthz_has_no_ticks_in_the_table():
    doc = verify_report.build({"gpu_hosts": [{**GPU_RAW, "server": "upstream", "health": {}}]})
    assert cells(verify_report.text(doc), "gpu-a  upstream") == [
        *["gpu-a", "upstream", "1", "-", "-", "-"],
        "no /healthz (moshi.server)",
    ]
    assert "| gpu-a | upstream | 1 | - | - | - | no /healthz (moshi.server) |" in verify_report.markdown(doc)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """verify.yml's report play on the control node only, the hosts' results given as an extra variable."""
    folder = tmp_path_factory.mktemp("report")
    extra = folder / "rows.json"
    extra.write_text(json.dumps({"verify_raw_doc": RAW, "verify_report_dir": str(folder)}))
    run = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "playbooks/verify.yml", "-e", f"@{extra}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(ANSIBLE_PYTHON_INTERPRETER=sys.executable),
    )
    assert run.returncode == 0, run.stdout[-3000:]
    return folder, run.stdout


def test_the_playbook_names_the_page_and_draws_a_picture_per_host(report):
    folder, out = report
    assert f"verify report: {folder}/verify.html" in out
    assert sorted(p.name for p in folder.glob("*.png")) == ["verify-bridge-bridge-a.png", "verify-gpu-gpu-a.png"]


def test_the_page_shows_the_pictures_and_the_runs_figures(report):
    folder, _ = report
    page = asyncio.run(read_page(folder / "verify.html"))
    images = {i["src"]: i for i in page["images"]}
    assert set(images) == {"verify-gpu-gpu-a.png", "verify-bridge-bridge-a.png"}
    assert all(i["complete"] and i["width"] > 300 and i["height"] > 200 for i in images.values()), images
    assert images["verify-gpu-gpu-a.png"]["height"] > images["verify-bridge-bridge-a.png"]["height"]  # two panels

    gpu = page["tables"]["gpu-hosts"]
    assert gpu[0][:6] == ["host", "GPU", "mode", "tick p50", "tick p99", "carries"]
    assert gpu[1] == [
        "gpu-a",
        "NVIDIA H100 80GB HBM3",
        "graphs",
        "31.4 ms",
        "41.2 ms",
        "4 of 4",
        "80.0 ms",
        "212.0 ms",
        "1",
        "NOT real-time",
    ]
    assert page["tables"]["gpu-servers"][1] == ["gpu-a", "batched", "0/4", "33.3 ms", "44.4 ms", "321", "ready"]
    assert page["tables"]["bridges"][1][0] == "bridge-a" and page["tables"]["bridges"][1][-1] == "real-time"
    assert page["tables"]["mas"][1][:4] == ["mas-a", "ok", "ok, 1.9 ms", "2/2"]


def test_a_missing_picture_shows_as_not_loaded(report, tmp_path):
    """The check above can fail: a page whose picture is gone reports it unloaded."""
    folder, _ = report
    (tmp_path / "verify.html").write_text((folder / "verify.html").read_text())
    (tmp_path / "verify-gpu-gpu-a.png").write_bytes((folder / "verify-gpu-gpu-a.png").read_bytes())
    page = asyncio.run(read_page(tmp_path / "verify.html"))
    widths = {i["src"]: i["width"] for i in page["images"]}
    assert widths["verify-gpu-gpu-a.png"] > 0 and widths["verify-bridge-bridge-a.png"] == 0
