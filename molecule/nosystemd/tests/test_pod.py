"""A GPU pod (PID 1 is not systemd): every service under supervisord, the verify table's rows,
a killed Moshi brought back, and the status read back through myca-ops."""

import time

from myca_ops.lab.scenario import container, myca_ops

POD = container("myca-nosd-pod")

PROGRAMS = [
    "moshi",
    "myca-bridge",
    "myca-collector:myca-collector-host",
    "myca-collector:myca-collector-voice",
    "myca-mas",
    "myca-mas-backup",
]


def running() -> list[str]:
    status = POD.run("supervisorctl status")  # exit 3: a program not running (then it is not listed)
    return sorted(line.split()[0] for line in status.stdout.splitlines() if " RUNNING " in line)


def test_there_is_no_systemd_and_every_service_runs_under_supervisord():
    assert POD.file("/proc/1/comm").content_string.strip() == "sleep"
    assert running() == PROGRAMS


def test_verify_measures_the_voice_through_the_bridge_and_finds_the_mas_ok():
    report = myca_ops("verify", {"verify_frames": 30, "verify_probe_seconds": 4})["verify"]
    gpu, bridge, mas = report["gpu_hosts"][0], report["bridge_hosts"][0], report["mas_hosts"][0]
    assert gpu["host"] == "myca-nosd-pod" and float(gpu["step_p99_ms"]) > 0, gpu
    assert float(bridge["first_audio_ms"]) > 0, bridge
    assert mas["status"] == "ok" and int(mas["collectors_running"]) == 2, mas


def test_a_killed_moshi_is_brought_back_and_answers_again():
    before = POD.check_output("supervisorctl pid moshi")
    POD.run_expect([0], f"python3 -c 'import os, signal; os.kill({before}, signal.SIGKILL)'")  # a crash
    deadline = time.monotonic() + 30
    while POD.run("supervisorctl pid moshi").stdout.strip() in ("0", before) and time.monotonic() < deadline:
        time.sleep(1)
    assert POD.check_output("supervisorctl pid moshi") not in ("0", before)
    POD.run_expect([0], "/opt/moshi/venv/bin/myca-moshi wait --url ws://127.0.0.1:8998/api/chat --timeout 120")
    # Its output goes to its log file: a line per start, the first and the one after the kill.
    assert POD.file("/var/log/myca-ops/moshi.log").content_string.count("myca-moshi:") >= 2


def test_status_has_a_row_per_group_every_service_active_under_supervisord():
    rows = myca_ops("status")["status_report"]["hosts"]
    assert sorted(r["group"] for r in rows) == ["bridge_hosts", "gpu_hosts", "mas_hosts"], rows
    assert {state for r in rows for state in r["services"].values()} == {"active"}, rows
    mas = next(r for r in rows if r["group"] == "mas_hosts")
    assert sorted(mas["services"]) == [
        "myca-collector@host",
        "myca-collector@voice",
        "myca-mas",
        "myca-mas-backup.timer",
        "postgresql",
    ]
    assert mas["health"]["status"] == "ok", mas
