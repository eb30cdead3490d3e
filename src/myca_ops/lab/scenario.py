"""What the molecule scenarios' testinfra tests share (molecule/*/tests): a container of the
scenario through testinfra's docker connection, and myca-ops, the operator's command, run on the
scenario's inventory with its progress shown as it runs."""

from __future__ import annotations

import json
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


def myca_ops(command: str, *args: str) -> dict:
    """`myca-ops COMMAND` on the scenario's inventory, expected to succeed: its JSON result."""
    argv = [str(Path(sys.executable).parent / "myca-ops"), command, str(inventory()), "--json", *args]
    # Its progress (stderr) onto the test's own output, which molecule shows as it comes; its result on stdout.
    out = subprocess.run(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=1, text=True)
    try:
        body = json.loads(out.stdout)
    except ValueError:
        raise AssertionError(
            f"myca-ops {command} exited {out.returncode} with no result (its stderr is above)"
        ) from None
    assert out.returncode == 0, f"myca-ops {command} exited {out.returncode}: {body['failures'] or body['errors']}"
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
