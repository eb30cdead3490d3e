"""A wrongly typed role variable fails at role start, naming the variable."""

import subprocess
import sys

from conftest import BIN, ROOT, ansible_env


def run_role(tmp_path, role: str, variables: str) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(
        f"- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: {role}\n      vars:\n{variables}"
    )
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            str(play),
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(),
    )


def test_wrong_type_names_the_variable(tmp_path):
    out = run_role(tmp_path, "gpu_host", "        gpu_host_min_free_gb: plenty\n")
    assert out.returncode != 0
    assert "gpu_host_min_free_gb" in out.stdout
    assert "Validating arguments against arg spec" in out.stdout
    assert "Install the C compiler" not in out.stdout  # failed before any task of the role


def test_wrong_bool_names_the_variable(tmp_path):
    out = run_role(tmp_path, "gpu_host", "        gpu_host_require_gpu: sometimes\n")
    assert out.returncode != 0
    assert "gpu_host_require_gpu" in out.stdout
