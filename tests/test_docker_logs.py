"""python_service's last log lines of a container (roles/python_service/tasks/last_log_lines.yml,
what a failed wait shows): they come back as the container wrote them."""

import subprocess

import pytest
from test_role_arguments import run_play

pytestmark = pytest.mark.lab  # needs the Docker engine, which `make lab-image` starts

# A line of 64 characters: with its newline, a frame of 65 bytes, whose size byte is "A" (the
# regex that stripped control bytes before kept it); a non-ASCII line; stderr between stdout;
# more than the 30 lines the role reads.
SCRIPT = r"""
for i in $(seq 1 40); do printf 'line %s\n' "$i"; done
sleep 0.2  # the engine reads the two streams apart: pauses fix the order it keeps between them
printf '%064d\n' 7
sleep 0.2
printf 'RuntimeError: CUDA out of memory\n' >&2
sleep 0.2
printf 'Température: 42 °C\n'
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


def last_log_lines(tmp_path, container: str) -> list[str]:
    """The role's task file run against this machine's engine, as a docker service's failed wait runs it."""
    out = tmp_path / "lines.txt"
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars:
    stack_service_manager: systemd
  tasks:
    - ansible.builtin.include_role:
        name: python_service
        tasks_from: last_log_lines
      vars:
        python_service_record:
          name: pytest
          label: a docker service
          handler: Restart it
          user: nobody
          user_home: /nonexistent
          home: /nonexistent
          pip_steps: []
          wheel: unused.whl
          runtime: docker
          programs: [{{name: "{container}", description: its container, command: /bin/true, user: nobody}}]
    - ansible.builtin.copy: {{content: "{{{{ python_service_last_log_lines }}}}", dest: "{out}"}}
""")
    run = run_play(play)
    assert run.returncode == 0, run.stdout
    return out.read_text().splitlines()


def test_the_whole_text_in_order(tmp_path, finished_container):
    lines = last_log_lines(tmp_path, finished_container)
    assert lines == [f"line {i}" for i in range(15, 41)] + [
        "0" * 63 + "7",
        "RuntimeError: CUDA out of memory",
        "Température: 42 °C",
        "last",
    ]


def test_a_missing_container_is_named(tmp_path):
    assert last_log_lines(tmp_path, "myca-pytest-no-such-container") == [
        "Error response from daemon: No such container: myca-pytest-no-such-container"
    ]
