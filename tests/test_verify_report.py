"""The verify report as a page: verify.yml's report play, given a run's rows, writes verify.html
with a picture per host, and headless Chromium shows the pictures and the run's figures."""

import asyncio
import json
import random
import subprocess
import sys

import pytest
from report_in_browser import read_page

from conftest import BIN, ROOT, ansible_env

rng = random.Random(7)
# A run as verify.yml's plays record it: one GPU host whose 4 slots tick within the budget (and its
# single slot), its voice probe with one underrun, a bridge and a MAS.
GPU_ROW = {
    "host": "gpu-a",
    "gpu": "NVIDIA H100 80GB HBM3",
    "mode": "graphs",
    "mode_reason": "Triton cannot compile (no C compiler): CUDA graphs need no Triton",
    "step_p50_ms": 31.4,
    "step_p99_ms": 41.2,
    "budget_ms": 80.0,
    "slots": 4,
    "capacity": 4,
    "slot_mib": 310.5,
    "step_realtime": True,
    "step_cause": "carries 4 conversations in real time (tick p99 41.2 ms at 4 slots, budget 80 ms) in mode graphs",
    "first_audio_ms": 212.0,
    "underruns": 1,
    "voice_realtime": False,
    "voice_cause": "1 underrun",
    "server": "batched",
    "slots_used": 0,
    "slots_total": 4,
    "tick_p50_ms": 33.3,
    "tick_p99_ms": 44.4,
    "tick_count": 321,
    "health_status": "ready",
    "realtime": False,
    "require_realtime": False,
    "torch": "2.9.1+cu128",
    "triton": None,
    "driver": "580.1",
    "step_samples_ms": {
        "graphs, 4 slots": [rng.gauss(32, 3) for _ in range(100)],
        "graphs, 1 slot": [rng.gauss(19, 2) for _ in range(100)],
    },
    "arrival_s": [0.2 + 0.08 * i for i in range(40)] + [3.6 + 0.08 * i for i in range(40)],
    "underrun_s": [3.4],
}
BRIDGE_ROW = {
    "host": "bridge-a",
    "url": "ws://bridge-a:8999/api/chat",
    "handshake_ms": 17.0,
    "first_audio_ms": 230.0,
    "underruns": 0,
    "realtime": True,
    "cause": "3.9s of audio in 4.0s, no underrun",
    "require_realtime": False,
    "arrival_s": [0.23 + 0.08 * i for i in range(50)],
    "underrun_s": [],
}
MAS_ROW = {
    "host": "mas-a",
    "status": "ok",
    "database_ok": True,
    "database_ms": 1.9,
    "database_error": None,
    "collectors_running": 2,
    "collectors": 2,
    "collectors_detail": "host running (beat 1.2 s ago, backlog 0), voice running (beat 0.4 s ago, backlog 0)",
    "moshi_ok": True,
    "bridge_ok": True,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """verify.yml run on the control node only, its rows given as extra variables."""
    folder = tmp_path_factory.mktemp("report")
    extra = folder / "rows.json"
    extra.write_text(
        json.dumps(
            {
                "verify_rows": [GPU_ROW],
                "verify_bridge_rows": [BRIDGE_ROW],
                "verify_mas_rows": [MAS_ROW],
                "verify_report_dir": str(folder),
            }
        )
    )
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
