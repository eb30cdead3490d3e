"""The version of myca_ops: a release number and a hash of the package's files.

    0.1.0+3f9c2a71be04

The hash covers every file the wheel carries (the package's .py and .sql files, the lab's
tooling left out), so the version changes when the code changes and not otherwise: an
unchanged tree builds the same wheel and changes no host. The wheel's build reads it from
here (pyproject.toml, `[tool.hatch.version]`); `myca-ops --version` prints it for the
checkout; a host's services report the one they run (`installed()`).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

RELEASE = "0.1.0"
PACKAGE = Path(__file__).resolve().parent
LEFT_OUT = {"lab", "__pycache__"}  # the lab's tooling runs on the control node only


def tree_version(package: Path = PACKAGE) -> str:
    """RELEASE plus the first 12 hex digits of a SHA-256 over the package's files, in path order."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if path.suffix in (".py", ".sql") and path.is_file() and not LEFT_OUT & set(relative.parts):
            digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{RELEASE}+{digest.hexdigest()[:12]}"


@functools.cache  # read once per process: a health check asks often
def installed() -> str:
    """The version of the installed package (the wheel's metadata); "unknown" when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("myca-ops")
    except PackageNotFoundError:
        return "unknown"


def find_commit(version: str, repo: Path = PACKAGE.parent.parent) -> str | None:
    """The newest commit of the checkout `repo` whose package has `version` (for a rollback)."""
    import subprocess
    import tarfile
    import tempfile

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout

    for commit in git("rev-list", "HEAD", "--", "src/myca_ops").decode().split():
        with tempfile.TemporaryDirectory() as folder:
            archive = Path(folder) / "tree.tar"
            archive.write_bytes(git("archive", commit, "src/myca_ops"))
            with tarfile.open(archive) as tar:
                tar.extractall(folder, filter="data")
            if tree_version(Path(folder) / "src" / "myca_ops") == version:
                return commit
    return None


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--find"]:  # python3 src/myca_ops/version.py --find 0.1.0+3f9c2a71be04
        found = find_commit(sys.argv[2])
        print(found or f"no commit of this checkout builds {sys.argv[2]}")
        sys.exit(0 if found else 1)
    print(tree_version())  # playbooks/build_wheel.yml runs this file by path, before any install
