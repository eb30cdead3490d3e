"""myca_ops.runner and the myca-ops CLI, for real, against the lab hosts (ansible-runner)."""

import json
import subprocess
import sys
import threading
import time

import pytest

from conftest import BIN, ROOT, ansible_env
from myca_ops.runner import DeployResult, HostResult, RunnerError, deploy

COMMON_ON_BRIDGE = {"tags": ["common"], "limit": "bridge"}


@pytest.fixture(scope="module")
def lab_hosts():
    """The lab's containers, started (or left as they are) by playbooks/lab.yml."""
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "playbooks/lab.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:]


def myca_ops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "myca-ops"), *args], cwd=ROOT, capture_output=True, text=True, env=ansible_env())


def test_a_tagged_run_reports_hosts_and_events_in_order_then_check_mode_changes_nothing(lab_hosts):
    events = []
    result = deploy("lab", on_event=events.append, project=ROOT, **COMMON_ON_BRIDGE)
    assert (result.rc, result.status) == (0, "successful")
    assert result.hosts["bridge"].ok > 0 and result.hosts["bridge"].failed == 0
    assert list(result.hosts) == ["bridge"]
    counters = [e["counter"] for e in events]
    assert counters == sorted(counters) and len(counters) == result.events
    kinds = [e["event"] for e in events if e["event"] != "verbose"]  # verbose: warnings, plain output lines
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats"
    assert kinds.index("runner_on_start") < kinds.index("runner_on_ok")
    assert any(e["event_data"].get("task", "").startswith("Install the CA") for e in events if "event_data" in e)

    checked = deploy("lab", check=True, project=ROOT, **COMMON_ON_BRIDGE)
    assert (checked.rc, checked.changed) == (0, 0)
    assert checked.exit_code() == 0


def test_cancel_stops_a_run(lab_hosts):
    cancel = threading.Event()

    def on_event(event):
        if event["event"] == "runner_on_start":
            cancel.set()

    t0 = time.monotonic()
    result = deploy("lab", on_event=on_event, cancel=cancel, project=ROOT, **COMMON_ON_BRIDGE)
    assert result.status == "canceled"
    assert time.monotonic() - t0 < 60


def test_cli_json_and_exit_0_with_progress_lines_when_not_a_terminal(lab_hosts):
    out = myca_ops("deploy", "lab", "--tags", "common", "--limit", "bridge", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "successful" and body["hosts"]["bridge"]["failed"] == 0

    plain = myca_ops("deploy", "lab", "--tags", "common", "--limit", "bridge")
    assert plain.returncode == 0
    assert "bridge         Install the CA certificates tooling: ok" in plain.stderr
    assert "successful (exit 0)" in plain.stdout


def test_cli_exit_2_names_the_failed_task(lab_hosts):
    out = myca_ops(
        "deploy",
        "lab",
        "--tags",
        "common",
        "--limit",
        "bridge",
        "-e",
        "common_extra_ca_bundle=/nonexistent.pem",
        "--json",
    )
    assert out.returncode == 2
    body = json.loads(out.stdout)
    assert body["hosts"]["bridge"]["failed"] == 1
    assert any("/nonexistent.pem" in f for f in body["failures"])


def test_cli_exit_4_for_an_unreachable_host(lab_hosts, tmp_path):
    inventory = tmp_path / "ghost"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  vars:\n    ansible_connection: community.docker.docker\n"
        "  children:\n    bridge_hosts:\n      hosts:\n        ghost:\n          ansible_host: myca-lab-no-such-host\n"
    )
    out = myca_ops("deploy", str(inventory), "--tags", "common", "--json")
    assert out.returncode == 4
    assert json.loads(out.stdout)["hosts"]["ghost"]["unreachable"] == 1


def test_cli_names_the_known_environments_for_an_unknown_one():
    out = myca_ops("deploy", "staging")
    assert out.returncode == 1
    assert "no inventory 'staging': choose one of cloud, lab, production, wsl2" in out.stderr


def test_exit_codes_follow_the_result():
    def result(hosts, verify=None, rc=0, status="successful"):
        return DeployResult(rc, status, hosts, ROOT, verify)

    row = {"host": "gpu", "require_realtime": True, "realtime": False}
    assert result({"a": HostResult(ok=3)}).exit_code() == 0
    assert result({"a": HostResult(failed=1)}, rc=2, status="failed").exit_code() == 2
    assert result({"a": HostResult(ok=1)}, {"gpu_hosts": [row]}, rc=2, status="failed").exit_code() == 3
    assert result({"a": HostResult(ok=1)}, {"gpu_hosts": [dict(row, require_realtime=False)]}).exit_code() == 0
    assert result({"a": HostResult(unreachable=1), "b": HostResult(failed=1)}, rc=4).exit_code() == 4
    assert result({}, rc=1, status="failed").exit_code() == 5  # a --limit that matched no host
    assert result({"a": HostResult(skipped=2)}).exit_code() == 5  # --tags that matched no task


def test_an_unknown_environment_raises_with_the_choices():
    with pytest.raises(RunnerError, match="choose one of cloud, lab, production, wsl2"):
        deploy("nope", project=ROOT)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--callers", "0"], "--callers must be at least 1 and --seconds positive"),
        (["--seconds", "-1"], "--callers must be at least 1 and --seconds positive"),
    ],
)
def test_loadtest_refuses_nonsense_before_running_anything(args, message, capsys):
    from myca_ops.runner import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["loadtest", "lab", *args])
    assert exit_.value.code == 64 and message in capsys.readouterr().err


def test_the_summary_prints_the_load_test_table(tmp_path):
    from myca_ops.runner.cli import summary

    load = {
        "url": "ws://bridge:8999/api/chat",
        "cause": "1 real-time, 0 late, 0 cut off, 1 refused of 2 callers",
        "callers": [
            {
                "caller": 0,
                "start_s": 0.0,
                "waited_ms": 5.0,
                "first_audio_ms": 230.0,
                "gap_ms": {"p99": 90.0},
                "underruns": 0,
                "close_code": None,
                "outcome": "real-time",
            },
            {"caller": 1, "start_s": 0.5, "waited_ms": 3004.0, "close_code": 1013, "outcome": "refused"},
        ],
    }
    text = summary(DeployResult(0, "successful", {}, tmp_path, loadtest=load))
    row = next(line for line in text.splitlines() if line.lstrip().startswith("1 "))
    assert row.split() == ["1", "0.5s", "3004", "ms", "-", "-", "-", "1013", "refused"], row
    assert "1 refused of 2 callers" in text and f"timeline: {tmp_path / 'report' / 'loadtest.png'}" in text


def test_the_status_table_names_down_targets_and_firing_alerts_by_host():
    from myca_ops.runner.status import table

    firing = {"labels": {"alertname": "MycaTargetDown", "host": "gpu-host", "job": "moshi"}, "state": "firing"}
    report = {
        "hosts": [
            {
                "host": "mas-vm",
                "group": "mas_hosts",
                "services": {"myca-mas": "active"},
                "health": {
                    "status": "degraded",
                    "components": {"prometheus": {"ok": True, "error": None}},
                    "alerts": [{"name": "MycaTargetDown", "labels": firing["labels"]}],
                },
            },
            {
                "host": "mas-vm",
                "group": "monitoring_hosts",
                "services": {"prometheus": "active", "prometheus-alertmanager": "active"},
                "health": {
                    "up": [
                        {"metric": {"job": "moshi", "host": "gpu-host"}, "value": [1.0, "0"]},
                        {"metric": {"job": "mas", "host": "mas-vm"}, "value": [1.0, "1"]},
                    ],
                    "alerts": [firing],
                    # Alertmanager's counters: the webhook told twice and failed once; no mail configured.
                    "notifications": [
                        {"metric": {"__name__": n, "integration": i}, "value": [1.0, v]}
                        for n, i, v in [
                            ("alertmanager_notifications_total", "webhook", "2"),
                            ("alertmanager_notifications_failed_total", "webhook", "1"),
                            ("alertmanager_notifications_total", "email", "0"),
                            ("alertmanager_notifications_failed_total", "email", "0"),
                        ]
                    ],
                },
            },
        ]
    }
    lines = table(report).splitlines()
    assert any(
        "prometheus active" in line
        and "prometheus-alertmanager active" in line
        and "1/2 targets up (down: moshi on gpu-host); firing: MycaTargetDown (gpu-host); told: webhook 2 sent, 1 FAILED"
        in line
        for line in lines
    ), lines
    assert "  alerts               MycaTargetDown (gpu-host)" in lines


def test_the_status_table_shows_a_wsl2_hosts_windows_side_and_a_stale_lan_rule():
    from myca_ops.runner.status import table

    windows = {
        "task": {"present": True, "status": "Running", "last_run": "11/29/2026 9:30:00 AM", "last_result": "267009"},
        "wslconfig": {"memory": "32GB", "vmIdleTimeout": "-1"},
        "portproxy_to": "172.31.9.9",
        "wsl_address": "172.20.1.2",
    }
    row = {"host": "wsl-gpu", "group": "gpu_hosts", "services": {"moshi": "active"}, "health": None, "windows": windows}
    lines = table({"hosts": [row]}).splitlines()
    assert lines[2] == (
        "wsl-gpu: Windows side: start task Running, last run 11/29/2026 9:30:00 AM (result 267009); "
        ".wslconfig memory=32GB vmIdleTimeout=-1; portproxy to 172.31.9.9 (WSL is at 172.20.1.2)"
    )
    no_task = {**windows, "task": {"present": False}, "wslconfig": {}, "portproxy_to": ""}
    assert table({"hosts": [{**row, "windows": no_task}]}).splitlines()[2] == (
        "wsl-gpu: Windows side: no start task; .wslconfig none of the stack's keys; no portproxy rule"
    )


def test_passwords_answer_the_prompts_and_never_reach_the_run_folder(tmp_path):
    """A vault secret is decrypted with the asked vault password and the become prompt is answered,
    while neither password is in any file of the run's folder (command line, events, stdout)."""
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault_pw, become_pw = "vault-pw-7f3a9c", "become-pw-41d2e8"
    secret = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(vault_pw.encode()))]).encrypt("the secret").decode()
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    (tmp_path / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.assert:\n        that: stack_secret == 'the secret'\n"
    )
    inventory = tmp_path / "inventory" / "t"
    inventory.mkdir(parents=True)
    indented = "\n".join("        " + line for line in secret.splitlines())
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
        f"      stack_secret: !vault |\n{indented}\n"
    )
    result = deploy("t", project=tmp_path, vault_password=vault_pw, become_password=become_pw)
    assert result.status == "successful" and result.hosts["here"].ok == 1, result.failures
    assert result.artifact_dir.parent == tmp_path / "reports" / "runs"
    for path in result.artifact_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert vault_pw.encode() not in text and become_pw.encode() not in text, path


def test_old_run_folders_are_cleaned(tmp_path):
    from myca_ops.runner import KEEP_RUNS, new_run_folder

    made = []
    for _ in range(KEEP_RUNS + 3):
        made.append(new_run_folder(tmp_path, "lab"))
        time.sleep(0.01)
    left = sorted(tmp_path.iterdir())
    assert len(left) == KEEP_RUNS and set(left) == set(made[-KEEP_RUNS:])


def test_a_missing_password_file_is_bad_input(tmp_path):
    with pytest.raises(RunnerError, match="--become-password-file .*: no such file"):
        deploy("lab", project=ROOT, become_password_file=str(tmp_path / "nope"))


def test_status_with_every_gpu_host_down_still_shows_the_bridge_and_mas_rows(lab_hosts, tmp_path):
    """The moment an operator needs `status` most: the GPU host does not answer. Its row says why
    and the other groups' rows still come (an all-failed play used to end the run)."""
    inventory = tmp_path / "gpu-down"
    inventory.mkdir()
    hosts = (ROOT / "inventory" / "lab" / "hosts.yml").read_text()
    (inventory / "hosts.yml").write_text(hosts.replace("myca-lab-gpu-host", "myca-lab-no-such-host"))
    (inventory / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
    out = myca_ops("status", str(inventory), "--json")
    body = json.loads(out.stdout)
    assert out.returncode == 2 and any(
        f.startswith("localhost:") and "gpu-host: no answer" in f for f in body["failures"]
    )
    rows = {(r["host"], r["group"]): r for r in body["status_report"]["hosts"]}
    assert rows[("gpu-host", "gpu_hosts")]["health_error"] == (
        "no answer from the host: Error response from daemon: No such container: myca-lab-no-such-host"
    )
    assert {("bridge", "bridge_hosts"), ("mas-vm", "mas_hosts"), ("mas-vm", "monitoring_hosts")} <= set(rows)
    assert rows[("bridge", "bridge_hosts")]["services"] and rows[("mas-vm", "mas_hosts")]["services"]


def test_the_status_table_names_the_version_each_host_runs():
    from myca_ops.runner.status import table

    moshi = {"status": "ready", "slots_used": 0, "slots_total": 2, "tick_ms": {}, "version": "0.1.0+3f9c2a71be04"}
    rows = [
        {"host": "gpu-1", "group": "gpu_hosts", "services": {"moshi": "active"}, "health": moshi},
        {"host": "bridge-1", "group": "bridge_hosts", "services": {"myca-bridge": "active"}, "health": {"ok": True}},
    ]
    lines = table({"hosts": rows}).splitlines()
    assert lines[1].endswith("ready: 0/2 slots, no tick in the last minute; myca_ops 0.1.0+3f9c2a71be04")
    assert lines[2].endswith("  ok")  # a health without a version (moshi.server's, an older bridge) as before
