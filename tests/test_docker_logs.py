"""docker_container_logs: a failing container's last lines come back as it wrote them."""

import subprocess

import pytest

pytestmark = pytest.mark.lab  # needs the Docker engine, which `make lab-image` starts

# A line of 64 characters: with its newline, a frame of 65 bytes, whose size byte is "A" (the
# regex that stripped control bytes before kept it); a non-ASCII line; stderr between stdout.
SCRIPT = r"""
printf 'starting\n'
printf '%064d\n' 7
printf 'Température: 42 °C\n'
printf 'RuntimeError: CUDA out of memory\n' >&2
for i in $(seq 1 40); do printf 'line %s\n' "$i"; done
printf 'last\n'
"""


@pytest.fixture
def finished_container():
    name = "myca-pytest-logs"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    run = subprocess.run(
        ["docker", "run", "--name", name, "myca-lab:debian12", "bash", "-c", SCRIPT], capture_output=True
    )
    assert run.returncode == 0, run.stderr
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_the_whole_text_in_order(run_module, finished_container):
    result = run_module("docker_container_logs", {"name": finished_container, "tail": 50})
    assert result.get("failed") is not True, result
    lines = result["lines"]
    # The engine keeps each stream's order; between stdout and stderr, the order it read them in.
    assert lines.count("RuntimeError: CUDA out of memory") == 1 and len(lines) == 45
    stdout = [line for line in lines if not line.startswith("RuntimeError")]
    assert stdout[:3] == ["starting", "0" * 63 + "7", "Température: 42 °C"]
    assert stdout[-1] == "last"


def test_only_the_last_lines(run_module, finished_container):
    assert run_module("docker_container_logs", {"name": finished_container, "tail": 2})["lines"] == ["line 40", "last"]


def test_a_missing_container_is_named(run_module):
    result = run_module("docker_container_logs", {"name": "myca-pytest-no-such-container"})
    assert result["failed"] and "no container myca-pytest-no-such-container" in result["msg"]
