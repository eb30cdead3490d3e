"""The gpu_facts module, run by Ansible for real on the control node."""

import shutil

from conftest import module_doc


def test_module_on_this_machine(run_module):
    result = run_module("gpu_facts", {"python": "/usr/bin/python3"})
    facts = result["ansible_facts"]["gpu_facts"]
    assert result["changed"] is False
    # The GPU-dependent figures follow what this machine has (CI has no GPU; a lent machine does).
    assert facts["gpu_count"] == len(facts["gpus"])
    # The system Python has no myca_ops: no mode, and the reason says so.
    assert facts["recommended_moshi_mode"] is None and "has no myca_ops" in facts["recommended_moshi_mode_reason"]
    # The compiler inductor would use is this machine's cc (a fresh container has none: null then).
    assert facts["c_compiler"] == (shutil.which("cc") or shutil.which("gcc"))
    documented = module_doc("gpu_facts")["return"]["ansible_facts"]["contains"]["gpu_facts"]["contains"]
    assert set(documented) <= set(facts), "a documented fact is missing"


def test_module_sees_a_wsl2_kernel_in_check_mode(run_module, tmp_path):
    proc = tmp_path / "proc_version"
    proc.write_text("Linux version 5.15.167.4-microsoft-standard-WSL2 (root@x) #1 SMP\n")
    result = run_module("gpu_facts", {"proc_version_path": str(proc), "probe_torch": False}, check=True)
    assert result["changed"] is False
    assert result["ansible_facts"]["gpu_facts"]["is_wsl2"] is True


def test_module_rejects_an_unknown_option(run_module):
    result = run_module("gpu_facts", {"pyhton": "/usr/bin/python3"})
    assert result.get("failed") is True
    assert "pyhton" in result["msg"]
