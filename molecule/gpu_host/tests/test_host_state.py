"""The GPU host as converged (first: verify.yml's role runs change the fixture after): the
toolchain, no wsl.conf on a host that is not WSL2, and a WSL2 host's Windows side as the fake
Windows holds it (.wslconfig, the start task's definition, the LAN rule)."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from myca_ops.lab.scenario import PROJECT, container, yaml_checks

HOST = container("myca-mol-gpu-role")
FIXTURE = "/tmp/wsl-fixture"  # converge.yml's
PROFILE = f"{FIXTURE}/mnt/c/Users/lab"
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


@pytest.mark.parametrize(
    "package", yaml.safe_load((PROJECT / "roles/gpu_host/defaults/main.yml").read_text())["gpu_host_toolchain_packages"]
)
def test_the_torch_compile_toolchain_is_installed(package):
    assert HOST.package(package).is_installed


def test_no_wsl_conf_is_written_on_a_host_that_is_not_wsl2():
    assert not HOST.file("/etc/wsl.conf").exists


def test_wslconfig_has_the_stacks_keys_and_keeps_the_users_lines():
    text = HOST.file(f"{PROFILE}/.wslconfig").content_string
    for line in ("memory=32GB", "vmIdleTimeout=-1", "processors=8", "[experimental]", "autoMemoryReclaim=gradual"):
        assert line in text, text


def test_the_start_task_runs_at_boot_hidden_without_a_stored_password_and_never_times_out():
    raw = HOST.file(f"{PROFILE}/.myca-ops/keep-alive.xml").content  # UTF-16, as schtasks reads it
    assert raw.startswith(b"\xff\xfe")
    task = ET.fromstring(raw.decode("utf-16").split("?>", 1)[1])
    assert task.find(f".//{TASK}BootTrigger") is not None
    assert task.findtext(f".//{TASK}LogonType") == "S4U" and task.findtext(f".//{TASK}RunLevel") == "HighestAvailable"
    assert task.findtext(f".//{TASK}Exec/{TASK}Command") == "powershell.exe"
    arguments = task.findtext(f".//{TASK}Exec/{TASK}Arguments")
    assert "-WindowStyle Hidden" in arguments and ".myca-ops" in arguments and "keep-wsl.ps1" in arguments
    assert task.findtext(f".//{TASK}ExecutionTimeLimit") == "PT0S"
    assert task.findtext(f".//{TASK}RestartOnFailure/{TASK}Count") == "999"
    script = HOST.file(f"{PROFILE}/.myca-ops/keep-wsl.ps1").content.decode()
    assert "wsl.exe -d $distro --exec /bin/sleep infinity" in script and "\r\n" in script
    assert "portproxy add v4tov4 listenport=8999" in script


def test_windows_runs_the_task_and_sends_the_lan_to_wsls_address():
    windows = json.loads(HOST.file(f"{FIXTURE}/state.json").content_string)
    assert windows["task"] == {**windows["task"], "name": "myca-ops WSL keep-alive", "status": "Running"}
    assert windows["portproxy"]["8999"] == HOST.check_output("hostname -I").split()[0]
    rule = windows["firewall"]["myca-ops bridge"]
    assert (rule["remoteip"], rule["localport"]) == ("LocalSubnet,192.0.2.10", "8999")


def test_the_roles_failures_check_mode_and_status():
    """verify.yml: what only Ansible says (the roles' refusals, check mode, wsl2_windows's status)."""
    yaml_checks(Path(__file__).resolve().parents[1] / "verify.yml")
