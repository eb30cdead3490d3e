#!/usr/bin/env python3
"""The system packages `make lab` and `make test` need: checked first, installed when root.

    python3 src/myca_ops/lab/prereqs.py [--control-node] [--check] [--markdown]

Run by `make prereqs` (which `make lab` and `make test` run first) and by `.ci/run`;
`make setup` checks only what the control node's .venv needs (`--control-node`), so an
operator who only deploys needs none of the lab's packages. It needs nothing but the standard library and this interpreter, because it runs
before the project's venv exists (and before `make` may be installed). As root it installs
what is missing with apt (Chromium on Ubuntu with snap); otherwise, or with `--check`, it
names each missing package and the one command that installs them, and exits 1.
`--markdown` prints the list the README's prerequisites are checked against.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The control node runs ansible-core 2.19, which needs Python 3.11; 3.14 is not yet tested.
PYTHON_MIN, PYTHON_MAX = (3, 11), (3, 13)
ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Need:
    what: str  # what it is for, in the README's words
    debian: str  # the package on Debian
    ubuntu: str  # the package on Ubuntu ("snap:NAME" for a snap)
    present: Callable[[], bool]
    lab: bool = True  # needed by the lab and the tests only, not to deploy


def _has(*commands: str) -> bool:
    return any(shutil.which(c) for c in commands)


def _venv_works() -> bool:
    """The project's .venv exists, or this interpreter can make one with pip (Debian splits that off)."""
    if (ROOT / ".venv" / "bin" / "python").exists():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([sys.executable, "-m", "venv", tmp], capture_output=True).returncode == 0


def needs() -> list[Need]:
    venv_package = f"python{sys.version_info.major}.{sys.version_info.minor}-venv"
    return [
        Need("make, to run the two commands", "make", "make", lambda: _has("make"), lab=False),
        Need("venv for the project's .venv", venv_package, venv_package, _venv_works, lab=False),
        Need("a Docker engine, for the lab hosts and molecule", "docker.io", "docker.io", lambda: _has("dockerd")),
        Need("debootstrap, to build the lab image", "debootstrap", "debootstrap", lambda: _has("debootstrap")),
        Need(
            "Debian's archive keyring, for debootstrap of Debian 12 on Ubuntu",
            "debian-archive-keyring",
            "debian-archive-keyring",
            lambda: Path("/usr/share/keyrings/debian-archive-keyring.gpg").is_file(),
        ),
        Need(
            "PostgreSQL's binaries, for the MAS tests' private cluster",
            "postgresql",
            "postgresql",
            lambda: bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        ),
        Need(
            "Prometheus with promtool, for the alert tests and rule checks",
            "prometheus",
            "prometheus",
            lambda: _has("prometheus") and _has("promtool"),
        ),
        Need("Node.js, for the ticket route's test", "nodejs", "nodejs", lambda: _has("node")),
        Need("npm, for the pinned TypeScript compiler of that test", "npm", "npm", lambda: _has("npm")),
        Need(
            "headless Chromium, for the verify page's test",
            "chromium",
            "snap:chromium",
            lambda: _has("chromium", "chromium-browser") or Path("/snap/bin/chromium").exists(),
        ),
    ]


def distribution(os_release: Path = Path("/etc/os-release")) -> tuple[str, str]:
    """(ID, VERSION_ID) of this machine, e.g. ("debian", "12") or ("ubuntu", "22.04")."""
    fields = {}
    if os_release.is_file():
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
    family = "ubuntu" if "ubuntu" in ids else "debian" if "debian" in ids else fields.get("ID", "unknown")
    return family, fields.get("VERSION_ID", "")


def python_problem(version: tuple[int, int], family: str) -> str | None:
    if PYTHON_MIN <= version <= PYTHON_MAX:
        return None
    have = ".".join(map(str, version))
    want = f"{'.'.join(map(str, PYTHON_MIN))} to {'.'.join(map(str, PYTHON_MAX))}"
    how = (
        "on Ubuntu 22.04: apt-get install python3.11 python3.11-venv, then run every make command with "
        "PYTHON=python3.11 (make PYTHON=python3.11 lab)"
        if family == "ubuntu"
        else "install one and run every make command with PYTHON=python3.X"
    )
    return f"the control node's Python is {have}; myca-ops needs {want} (ansible-core 2.19): {how}"


def install_command(missing: list[Need], family: str) -> list[list[str]]:
    field = "ubuntu" if family == "ubuntu" else "debian"
    names = [getattr(n, field) for n in missing]
    apt = [n for n in names if not n.startswith("snap:")]
    snaps = [n.removeprefix("snap:") for n in names if n.startswith("snap:")]
    commands = []
    if apt:
        commands.append(["apt-get", "install", "-y", "--no-install-recommends", *apt])
    if snaps:
        commands.append(["snap", "install", *snaps])
    return commands


def generic(package: str) -> str:
    """python3.11-venv -> python3.X-venv: the README names the package for any Python."""
    return re.sub(r"^python3\.\d+-", "python3.X-", package)


def markdown() -> str:
    rows = ["| for | needed by | Debian package | Ubuntu package |", "|---|---|---|---|"]
    for n in needs():
        ubuntu = f"{n.ubuntu.removeprefix('snap:')} (snap)" if n.ubuntu.startswith("snap:") else n.ubuntu
        by = "the lab and the tests" if n.lab else "every target (`make setup` too)"
        rows.append(f"| {n.what} | {by} | `{generic(n.debian)}` | `{generic(ubuntu)}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (and, as root, install) what make lab and make test need.")
    parser.add_argument("--check", action="store_true", help="only check; install nothing")
    parser.add_argument("--control-node", action="store_true", help="only what the .venv needs (deploying)")
    parser.add_argument("--markdown", action="store_true", help="print the prerequisites as a Markdown table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    family, version_id = distribution()
    problem = python_problem(sys.version_info[:2], family)
    if problem:
        print(f"prereqs: {problem}", file=sys.stderr)
        return 1
    if family not in ("debian", "ubuntu"):
        print(f"prereqs: warning: {family} {version_id} is neither Debian nor Ubuntu; checking anyway", file=sys.stderr)
    missing = [n for n in needs() if not (args.control_node and n.lab) and not n.present()]
    if not missing:
        return 0
    commands = install_command(missing, family)
    listing = "\n".join(f"  - {n.what}" for n in missing)
    root = os.geteuid() == 0
    if args.check or not root:
        sudo = "" if root else "sudo "
        how = " && ".join(sudo + " ".join(c) for c in commands)
        print(f"prereqs: missing on this machine:\n{listing}\ninstall them with:\n  {how}", file=sys.stderr)
        return 1
    print(f"prereqs: installing what is missing:\n{listing}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"], *commands] if any(c[0] == "apt-get" for c in commands) else commands
    for cmd in steps:
        print(f"prereqs: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd, env=env).returncode != 0:
            print(f"prereqs: {' '.join(cmd)} failed; fix that and run it again", file=sys.stderr)
            return 1
    still = [n.what for n in missing if not n.present()]
    if still:
        print(f"prereqs: still missing after the install: {', '.join(still)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
