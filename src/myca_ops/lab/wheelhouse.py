"""The lab's Moshi wheelhouse: CPU torch from this machine's pip set-up, plus moshi and its deps.

Lab hosts have no GPU, and the CUDA torch build is several GB, so the lab installs Moshi
from a wheelhouse (the moshi role's ``moshi_wheelhouse``, the same mechanism air-gapped
hosts use): the CPU torch wheel found at run time in the folders pip's configuration
names as find-links, moshi itself (installed without its ``torch<2.10`` pin) and the
serving requirements listed in ``roles/moshi/defaults/main.yml``.

    python -m myca_ops.lab.wheelhouse .lab/wheelhouse [--install]

``--install`` also installs them into this interpreter, so the control node can generate
the lab weights and run the tests that load moshi.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
MOSHI_DEFAULTS = ROOT / "roles" / "moshi" / "defaults" / "main.yml"
# The lab hosts run Debian 12's Python 3.11: wheels are chosen for it, whatever runs this.
TARGET = ["--python-version", "3.11", "--only-binary=:all:"] + [
    f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "linux")
]


class WheelhouseError(RuntimeError):
    pass


def pip_find_links() -> list[Path]:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    dirs = []
    for line in out.splitlines():
        m = re.match(r"^\S*find-links='?(.*?)'?$", line.strip())
        if m:
            dirs += [Path(p.removeprefix("file://")) for p in shlex.split(m.group(1))]
    return [d for d in dirs if d.is_dir()]


def find_cpu_torch(dirs: list[Path]) -> Path:
    wheels = sorted((w for d in dirs for w in d.glob("torch-*+cpu-cp311-*x86_64.whl")), key=lambda w: w.name)
    if not wheels:
        searched = ", ".join(map(str, dirs)) or "none configured"
        raise WheelhouseError(
            "no CPU torch wheel for Python 3.11 (torch-*+cpu-cp311-*x86_64.whl) in pip's find-links "
            f"({searched}). Put one in a find-links folder (pip config set global.find-links DIR)."
        )
    return wheels[-1]


def moshi_pins() -> tuple[str, list[str]]:
    defaults = yaml.safe_load(MOSHI_DEFAULTS.read_text())
    return f"moshi=={defaults['moshi_version']}", list(defaults["moshi_requirements"])


def build(dest: Path) -> list[str]:
    """Fill `dest`; return the requirement specs to install from it (torch first)."""
    dest.mkdir(parents=True, exist_ok=True)
    torch_wheel = find_cpu_torch(pip_find_links())
    if not (dest / torch_wheel.name).exists():
        shutil.copy2(torch_wheel, dest / torch_wheel.name)
    moshi, requirements = moshi_pins()
    version = torch_wheel.name.split("-")[1]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "-d", str(dest), *TARGET]
    print(f"[wheelhouse] torch {version}, {moshi} and {len(requirements)} requirements into {dest}", flush=True)
    for args in ([f"torch=={version}", *requirements], ["--no-deps", moshi]):
        if subprocess.run([*pip, "--find-links", str(dest), *args]).returncode != 0:
            raise WheelhouseError(f"pip download {' '.join(args)} failed: is PyPI reachable?")
    return [f"torch=={version}", *requirements, moshi]


def install(dest: Path, specs: list[str]) -> None:
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        str(dest),
    ]
    *deps, moshi = specs
    # The control node keeps its own aiohttp (the bridge's and the MAS's pin, newer than
    # moshi's <3.12, which only moshi's own venv on a host needs; moshi.server runs on both).
    deps = [d for d in deps if not d.startswith("aiohttp")]
    for args in (deps, ["--no-deps", moshi]):
        if subprocess.run([*pip, *args]).returncode != 0:
            raise WheelhouseError(f"pip install {' '.join(args)} from {dest} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the lab's Moshi wheelhouse.")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--install", action="store_true", help="also install it into this interpreter")
    args = parser.parse_args(argv)
    try:
        specs = build(args.dest)
        if args.install:
            install(args.dest, specs)
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
