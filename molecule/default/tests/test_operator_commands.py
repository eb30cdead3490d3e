"""What an operator runs after the first deploy, with myca-ops from the `make setup` venv: one
host alone, a dry run that shows its diff, and the status while the GPU host is down (last: it
stops that host)."""

import json
import subprocess

from conftest import myca_ops


def test_a_deploy_limited_to_the_bridge_host_converges_it_alone():
    out = myca_ops("deploy", "--limit", "myca-mol-bridge", "--skip-tags", "verify", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    body = json.loads(out.stdout)
    assert set(body["hosts"]) == {"myca-mol-bridge"} and body["changed"] == 0, body["hosts"]


def test_check_prints_the_diff_of_a_changed_setting_and_changes_nothing(gpu_host):
    out = myca_ops("deploy", "--check", "--limit", "myca-mol-gpu-host", "--tags", "moshi", "-e", "moshi_slots=3")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "-MYCA_MOSHI_SLOTS=2" in out.stderr and "+MYCA_MOSHI_SLOTS=3" in out.stderr, out.stderr[-3000:]
    assert gpu_host.file("/etc/moshi/moshi.env").contains("^MYCA_MOSHI_SLOTS=2$")


def test_status_with_the_gpu_host_down_still_shows_the_bridge_and_mas_rows():
    subprocess.run(["docker", "stop", "myca-mol-gpu-host"], check=True, capture_output=True)
    out = myca_ops("status", "--json")
    assert out.returncode == 4, out.stderr[-3000:]  # the GPU host unreachable
    rows = {(r["host"], r["group"]): r for r in json.loads(out.stdout)["status_report"]["hosts"]}
    assert rows[("myca-mol-gpu-host", "gpu_hosts")]["health_error"].startswith("no answer from the host: ")
    assert rows[("myca-mol-bridge", "bridge_hosts")]["services"]["myca-bridge"] == "active"
    assert rows[("myca-mol-mas-vm", "mas_hosts")]["services"]["myca-mas"] == "active"
