"""Build the lab's Debian 12 systemd image locally (no registry is reachable).

The image is made with debootstrap from the Debian mirror this machine's own apt sources
name (on Ubuntu, or to choose another: ``MYCA_LAB_DEBIAN_MIRROR``), checked against
Debian's archive keyring,
imported into Docker and tagged with a hash of its recipe, so it is rebuilt only when the
recipe changes.  ``python -m myca_ops.lab.image`` also starts the Docker engine when it
is not running.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

IMAGE_REPO = "myca-lab"
IMAGE_TAG = "debian12"
SUITE = "bookworm"
# What every lab host needs before Ansible can manage it; the roles install the rest.
PACKAGES = (
    "python3",
    "python3-apt",
    "systemd",
    "systemd-sysv",
    "dbus",
    "sudo",
    "iproute2",
    "ca-certificates",
    "openssh-server",  # molecule default reaches its hosts over ssh, as an operator does
)
RECIPE_VERSION = 1  # bump when the build steps below change
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
MIRROR_VARIABLE = "MYCA_LAB_DEBIAN_MIRROR"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class LabError(RuntimeError):
    """A lab set-up step failed; the message says what to do."""


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def recipe_hash() -> str:
    recipe = json.dumps({"suite": SUITE, "packages": PACKAGES, "version": RECIPE_VERSION})
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES, environ: Mapping[str, str] | None = None) -> str:
    """The Debian archive to bootstrap from: the operator's MIRROR_VARIABLE, else the first
    Debian archive URI in this machine's apt sources (one-line or deb822)."""
    environ = os.environ if environ is None else environ
    if environ.get(MIRROR_VARIABLE):
        return environ[MIRROR_VARIABLE]
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            line = line.strip()
            m = re.match(r"^URIs:\s*(\S+)", line) or re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m and "security" not in m.group(1) and m.group(1).rstrip("/").endswith("debian"):
                return m.group(1)
    raise LabError(
        "this machine's apt sources name no Debian archive "
        f"({', '.join(map(str, sources))}), and the lab hosts are Debian 12 (an Ubuntu archive cannot "
        f"bootstrap them): set {MIRROR_VARIABLE} to the URL of a Debian mirror's debian folder "
        f"(for example {MIRROR_VARIABLE}=http://MIRROR/debian make lab)"
    )


def debootstrap_command(rootfs: Path, mirror: str, keyring: Path = DEBIAN_KEYRING) -> list[str]:
    """debootstrap of the lab image, checked against Debian's keyring (on Ubuntu, its own package)."""
    if not keyring.is_file():
        raise LabError(f"no Debian archive keyring at {keyring}: apt-get install debian-archive-keyring")
    return [
        "debootstrap",
        "--variant=minbase",
        f"--keyring={keyring}",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]


def docker_running() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


# A machine stopped without stopping dockerd keeps these; dockerd then refuses to start
# ("pid file found, ensure docker is not running").
DOCKER_PIDFILES = {
    Path("/var/run/docker.pid"): "dockerd",
    Path("/var/run/docker/containerd/containerd.pid"): "containerd",
}
DOCKERD_LOG = Path("/var/log/dockerd.log")


def clear_stale_pidfiles(pidfiles: dict[Path, str] | None = None) -> list[Path]:
    """Remove each pid file whose process is gone or is no longer the named program."""
    removed = []
    for path, program in (DOCKER_PIDFILES if pidfiles is None else pidfiles).items():
        try:
            pid = path.read_text().strip()
        except FileNotFoundError:
            continue
        try:
            running = Path(f"/proc/{int(pid)}/comm").read_text().strip()
        except (ValueError, OSError):
            running = None
        if running != program:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def ensure_engine(timeout: float = 120) -> None:
    """Start dockerd in the background when no engine answers, then wait for it."""
    if shutil.which("docker") is None:
        raise LabError("the docker client is not installed: apt-get install docker.io")
    if docker_running():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise LabError("no Docker engine answers and dockerd is not installed: apt-get install docker.io")
    for path in clear_stale_pidfiles():
        log(f"removed {path}: its process is gone (the engine was not stopped cleanly)")
    log(f"starting the Docker engine (log: {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as out:
        start = out.tell()
        engine = subprocess.Popen([dockerd], stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_running():
            return
        if engine.poll() is not None:
            with open(DOCKERD_LOG, "rb") as out:
                out.seek(start)
                tail = out.read().decode(errors="replace").strip().splitlines()[-5:]
            raise LabError(f"dockerd exited with status {engine.returncode}:\n" + "\n".join(tail))
        time.sleep(1)
    raise LabError(f"the Docker engine did not answer within {timeout:.0f}s: read /var/log/dockerd.log")


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def build_image(force: bool = False) -> str:
    """Make sure ``myca-lab:debian12`` is the image of the current recipe; return its name."""
    pinned = f"{IMAGE_REPO}:{IMAGE_TAG}-{recipe_hash()}"
    latest = f"{IMAGE_REPO}:{IMAGE_TAG}"
    if force or not image_exists(pinned):
        if shutil.which("debootstrap") is None:
            raise LabError("debootstrap is not installed: apt-get install debootstrap")
        mirror = debian_mirror()
        with tempfile.TemporaryDirectory(prefix="myca-lab-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            log(f"building {pinned} with debootstrap (about a minute)")
            run = subprocess.run(debootstrap_command(rootfs, mirror), capture_output=True, text=True)
            if run.returncode != 0:
                raise LabError(f"debootstrap failed (exit {run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
            # The hosts install no recommended packages: smaller and faster, as on minimal servers.
            (rootfs / "etc/apt/apt.conf.d/90myca-lab").write_text('APT::Install-Recommends "false";\n')
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imp = subprocess.run(
                ["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-c", "ENV container=docker", "-", pinned],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
            )
            tar.wait()
            if imp.returncode != 0 or tar.returncode != 0:
                raise LabError(f"docker import failed: {imp.stderr.strip()}")
    subprocess.run(["docker", "tag", pinned, latest], check=True)
    log(f"image {latest} is {pinned}")
    return latest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the Docker engine and build the lab image.")
    parser.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    args = parser.parse_args(argv)
    try:
        ensure_engine()
        build_image(force=args.force)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
