"""What the molecule scenarios' testinfra tests share (molecule/*/tests): a container of the
scenario through testinfra's docker connection, and myca-ops, the operator's command, run on the
scenario's inventory through the runner, its progress shown as it runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def inventory() -> Path:
    """The inventory molecule wrote for the scenario under test."""
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"


def container(name: str):
    """A container of the scenario (a host, or a service's container beside it) as testinfra sees it."""
    import testinfra

    return testinfra.get_host(f"docker://{name}")


def myca_ops(command: str, extravars: dict | None = None) -> dict:
    """`myca-ops COMMAND` (verify, status, loadtest) on the scenario's inventory through the runner,
    its progress on the test's output as it runs (molecule shows it), expected to succeed: its result."""
    from myca_ops.runner import deploy
    from myca_ops.runner.cli import PLAYBOOKS, Progress

    progress = Progress(stream=sys.stdout)
    try:
        result = deploy(
            str(inventory()), playbook=PLAYBOOKS[command], extravars=extravars, on_event=progress, project=PROJECT
        )
    finally:
        progress.stop()
    body = result.to_dict()
    assert result.exit_code() == 0, (
        f"myca-ops {command}: exit {result.exit_code()}: {body['failures'] or body['errors']}"
    )
    return body


def yaml_checks(playbook: Path) -> None:
    """A scenario's verify.yml (what only Ansible's modules read), on its inventory, its output as it runs."""
    out = subprocess.run(["ansible-playbook", "-i", str(inventory()), str(playbook)], cwd=PROJECT)
    assert out.returncode == 0, f"{playbook.name} failed: its output is above"


def http_text(host, url: str) -> str:
    """The body at `url` as `host` (a testinfra host) reaches it, an error status's too (a 503's
    JSON says why): the lab's hosts have no curl."""
    fetch = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n    answer = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
        "except urllib.error.HTTPError as error:\n    answer = error\n"
        "sys.stdout.write(answer.read().decode())"
    )
    return host.check_output(f"python3 -c {shlex.quote(fetch)} {shlex.quote(url)}")
