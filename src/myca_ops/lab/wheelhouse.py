"""The lab's Moshi wheelhouse: CPU torch at the lab's pin, plus moshi and its deps.

Lab hosts have no GPU, and the CUDA torch build is several GB, so the lab installs Moshi
from a wheelhouse (the moshi role's ``moshi_wheelhouse``, the same mechanism air-gapped
hosts use): torch at the version the lab inventory pins (``moshi_torch_package``), moshi
itself (installed without its ``torch<2.10`` pin) and the serving requirements listed in
``roles/moshi/defaults/main.yml``.

torch is found or fetched the ordinary way, in this order, never at another version:
1. a CPU wheel of the pinned version in the folders pip's configuration names as find-links;
2. pip from PyTorch's CPU wheel index, when ``MYCA_TORCH_CPU_INDEX`` names it (or a mirror);
3. pip from the default index: on Linux the CUDA build with its NVIDIA libraries, several GB
   (said, with the size, before the download starts).

    python -m myca_ops.lab.wheelhouse .lab/wheelhouse [--install]

The wheelhouse is for the lab hosts' Python (Debian 12: 3.11). ``--install`` also installs
the same pins into this interpreter, so the control node can generate the lab weights and
run the tests that load moshi; when this interpreter is not 3.11, its wheels go to a
wheelhouse of their own beside the first (``DEST-cp312``, say).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
MOSHI_DEFAULTS = ROOT / "roles" / "moshi" / "defaults" / "main.yml"
LAB_GPU_HOSTS = ROOT / "inventory" / "lab" / "group_vars" / "gpu_hosts.yml"
HOSTS_PYTHON = "3.11"  # Debian 12's, in the lab image
CPU_INDEX_VARIABLE = "MYCA_TORCH_CPU_INDEX"
# What pip fetches for a Linux x86_64 torch from the default index (torch 2.9, CUDA 12.8).
CUDA_BUILD_SIZE = "about 900 MB for torch plus about 2.8 GB of nvidia-* libraries"

Pip = Callable[[list[str]], int]


class WheelhouseError(RuntimeError):
    pass


def run_pip(args: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args]).returncode


def target(python: str) -> list[str]:
    """pip download options for wheels a given Python on x86_64 Linux can install."""
    return ["--python-version", python, "--only-binary=:all:"] + [
        f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "linux")
    ]


def pip_find_links() -> list[Path]:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    dirs = []
    for line in out.splitlines():
        m = re.match(r"^\S*find-links='?(.*?)'?$", line.strip())
        if m:
            dirs += [Path(p.removeprefix("file://")) for p in shlex.split(m.group(1))]
    return [d for d in dirs if d.is_dir()]


def torch_version(gpu_hosts_vars: Path = LAB_GPU_HOSTS) -> str:
    """The version in the lab inventory's ``moshi_torch_package: torch==X``."""
    spec = str(yaml.safe_load(gpu_hosts_vars.read_text()).get("moshi_torch_package", ""))
    m = re.fullmatch(r"torch==([\w.]+)", spec.strip())
    if not m:
        raise WheelhouseError(f"{gpu_hosts_vars}: moshi_torch_package must pin torch==VERSION, not {spec!r}")
    return m.group(1)


def _wheels(folder: Path, version: str, python: str, cpu_only: bool) -> list[Path]:
    """torch wheels of exactly `version` (any local build, or +cpu only) for `python` in `folder`."""
    tag = "cp" + python.replace(".", "")
    local = r"\+cpu" if cpu_only else r"(\+\w+)?"
    pattern = re.compile(rf"torch-{re.escape(version)}{local}-{tag}-{tag}-\S*x86_64\.whl")
    return sorted(w for w in folder.glob("torch-*.whl") if pattern.fullmatch(w.name))


def fetch_torch(
    dest: Path,
    version: str,
    python: str,
    find_links: list[Path],
    cpu_index: str | None,
    pip: Pip = run_pip,
    say: Callable[[str], None] = print,
) -> Path:
    """Put a torch wheel of exactly `version` for `python` into `dest`; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    if have := _wheels(dest, version, python, cpu_only=False):
        return have[-1]
    tried = []
    for folder in find_links:
        if found := _wheels(folder, version, python, cpu_only=True):
            shutil.copyfile(found[-1], dest / found[-1].name)
            say(f"[wheelhouse] torch {version} (CPU) for Python {python} from find-links {folder}")
            return dest / found[-1].name
    tried.append(f"pip's find-links ({', '.join(map(str, find_links)) or 'none configured'}): no CPU wheel")
    download = ["download", "--quiet", "-d", str(dest), *target(python)]
    if cpu_index:
        say(f"[wheelhouse] torch {version} (CPU) for Python {python} from {CPU_INDEX_VARIABLE}={cpu_index}")
        if pip([*download, "--no-deps", "--index-url", cpu_index, f"torch=={version}"]) == 0:
            if got := _wheels(dest, version, python, cpu_only=False):
                return got[-1]
        tried.append(f"{CPU_INDEX_VARIABLE} ({cpu_index}): no torch=={version} for Python {python} there")
    else:
        tried.append(f"{CPU_INDEX_VARIABLE}: not set (PyTorch's CPU wheel index, or a mirror of it)")
    say(
        f"[wheelhouse] WARNING: no CPU build of torch {version} found; downloading it from the default "
        f"index, which on Linux is the CUDA build: {CUDA_BUILD_SIZE}, into {dest}. To avoid that, "
        f"set {CPU_INDEX_VARIABLE} to PyTorch's CPU wheel index (or a mirror) and run again."
    )
    if pip([*download, f"torch=={version}"]) == 0 and (got := _wheels(dest, version, python, cpu_only=False)):
        return got[-1]
    tried.append(f"the default index: pip download torch=={version} for Python {python} failed (its words are above)")
    raise WheelhouseError(f"torch=={version} (the lab's pin) for Python {python} not found; tried " + "; ".join(tried))


def moshi_pins() -> tuple[str, list[str]]:
    defaults = yaml.safe_load(MOSHI_DEFAULTS.read_text())
    return f"moshi=={defaults['moshi_version']}", list(defaults["moshi_requirements"])


def build(dest: Path, python: str = HOSTS_PYTHON, pip: Pip = run_pip) -> list[str]:
    """Fill `dest` for `python`; return the requirement specs to install from it (torch first)."""
    version = torch_version()
    fetch_torch(dest, version, python, pip_find_links(), os.environ.get(CPU_INDEX_VARIABLE) or None, pip)
    moshi, requirements = moshi_pins()
    print(f"[wheelhouse] {moshi} and {len(requirements)} requirements for Python {python} into {dest}", flush=True)
    download = ["download", "--quiet", "-d", str(dest), *target(python), "--find-links", str(dest)]
    for args in ([f"torch=={version}", *requirements], ["--no-deps", moshi]):
        if pip([*download, *args]) != 0:
            raise WheelhouseError(f"pip download {' '.join(args)} failed: is PyPI reachable?")
    return [f"torch=={version}", *requirements, moshi]


# The control node's own, from the index: bitsandbytes makes and reads the lab's 8-bit checkpoint
# (moshi's own int8 layers). Lab hosts serve on CPU, where 8-bit weights are refused: not theirs.
CONTROL_ONLY = ["bitsandbytes==0.50.2"]


def install(dest: Path, specs: list[str], pip: Pip = run_pip) -> None:
    *deps, moshi = specs
    # The control node keeps its own aiohttp (the bridge's and the MAS's pin, newer than
    # moshi's <3.12, which only moshi's own venv on a host needs; moshi.server runs on both).
    deps = [d for d in deps if not d.startswith("aiohttp")]
    for args in (deps, ["--no-deps", moshi]):
        if pip(["install", "--quiet", "--no-index", "--find-links", str(dest), *args]) != 0:
            raise WheelhouseError(f"pip install {' '.join(args)} from {dest} failed")
    if pip(["install", "--quiet", "--no-deps", *CONTROL_ONLY]) != 0:
        raise WheelhouseError(f"pip install {' '.join(CONTROL_ONLY)} failed: is PyPI reachable?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the lab's Moshi wheelhouse.")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--install", action="store_true", help="also install the same pins into this interpreter")
    args = parser.parse_args(argv)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        specs = build(args.dest)
        if args.install:
            control = (
                args.dest
                if here == HOSTS_PYTHON
                else args.dest.with_name(f"{args.dest.name}-cp{here.replace('.', '')}")
            )
            install(control, specs if control == args.dest else build(control, here))
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
