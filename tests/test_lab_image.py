"""The lab image recipe: mirror found in this machine's apt sources, stable tag."""

import pytest

from myca_ops.lab import image

NO_ENV: dict = {}


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert image.debian_mirror((tmp_path / "sources.list", d), NO_ENV) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    f = tmp_path / "sources.list"
    f.write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n")
    assert image.debian_mirror((f,), NO_ENV) == "http://mirror.example/debian"


def test_no_mirror_says_what_to_do(tmp_path):
    with pytest.raises(image.LabError, match="name no Debian archive.*set MYCA_LAB_DEBIAN_MIRROR"):
        image.debian_mirror((tmp_path / "nothing",), NO_ENV)


def ubuntu_sources(tmp_path, release: str):
    """Ubuntu 22.04 keeps one-line sources.list; 24.04 has deb822 ubuntu.sources."""
    d = tmp_path / "sources.list.d"
    d.mkdir()
    f = tmp_path / "sources.list"
    if release == "22.04":
        f.write_text(
            "deb http://archive.mirror.example/ubuntu jammy main restricted\n"
            "deb http://security.mirror.example/ubuntu jammy-security main\n"
        )
    else:
        f.write_text("# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n")
        (d / "ubuntu.sources").write_text(
            "Types: deb\nURIs: http://archive.mirror.example/ubuntu/\nSuites: noble noble-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"
        )
    return (f, d)


@pytest.mark.parametrize("release", ["22.04", "24.04"])
def test_ubuntu_needs_a_named_debian_mirror(tmp_path, release):
    sources = ubuntu_sources(tmp_path, release)
    with pytest.raises(image.LabError, match="an Ubuntu archive cannot bootstrap them.*MYCA_LAB_DEBIAN_MIRROR"):
        image.debian_mirror(sources, NO_ENV)
    env = {"MYCA_LAB_DEBIAN_MIRROR": "http://mirror.example/debian"}
    assert image.debian_mirror(sources, env) == "http://mirror.example/debian"


def test_the_operators_mirror_wins_over_the_hosts(tmp_path):
    f = tmp_path / "sources.list"
    f.write_text("deb http://mirror.example/debian bookworm main\n")
    env = {"MYCA_LAB_DEBIAN_MIRROR": "http://other.example/debian"}
    assert image.debian_mirror((f,), env) == "http://other.example/debian"


def test_debootstrap_checks_against_debians_keyring(tmp_path):
    keyring = tmp_path / "debian-archive-keyring.gpg"
    with pytest.raises(image.LabError, match="apt-get install debian-archive-keyring"):
        image.debootstrap_command(tmp_path / "rootfs", "http://mirror.example/debian", keyring)
    keyring.write_bytes(b"keys")
    cmd = image.debootstrap_command(tmp_path / "rootfs", "http://mirror.example/debian", keyring)
    assert f"--keyring={keyring}" in cmd
    assert cmd[-3:] == ["bookworm", str(tmp_path / "rootfs"), "http://mirror.example/debian"]


def test_recipe_hash_changes_with_the_recipe(monkeypatch):
    before = image.recipe_hash()
    assert before == image.recipe_hash()
    monkeypatch.setattr(image, "PACKAGES", image.PACKAGES + ("curl",))
    assert image.recipe_hash() != before


@pytest.mark.lab  # needs the Docker engine, which `make lab-image` starts
def test_the_lab_image_exists_and_boots_systemd():
    """`make pytest` builds the image first; a container of it must boot systemd."""
    import subprocess
    import time

    name = "myca-pytest-boot"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    run = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--cap-add",
            "SYS_ADMIN",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--cgroupns=host",
            "myca-lab:debian12",
        ],
        capture_output=True,
        text=True,
    )
    try:
        assert run.returncode == 0, run.stderr
        for _ in range(60):  # until systemd's bus answers
            state = subprocess.run(
                ["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if state.stdout.strip():
                break
            time.sleep(1)
        assert state.stdout.strip() in ("running", "degraded")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_stale_engine_pidfiles_are_removed_live_ones_kept(tmp_path):
    """dockerd refuses to start while a docker.pid names no running dockerd: a stopped
    machine leaves one. The file is removed only when its process is gone or is another program."""
    import os
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    own = open(f"/proc/{os.getpid()}/comm").read().strip()
    dead = tmp_path / "dead.pid"
    dead.write_text(f"{gone.pid}\n")
    reused = tmp_path / "reused.pid"  # a live pid, but not the engine's program
    reused.write_text(str(os.getpid()))
    live = tmp_path / "live.pid"
    live.write_text(str(os.getpid()))
    junk = tmp_path / "junk.pid"
    junk.write_text("")
    removed = image.clear_stale_pidfiles(
        {dead: "dockerd", reused: "dockerd", live: own, junk: "dockerd", tmp_path / "absent.pid": "dockerd"}
    )
    assert sorted(removed) == sorted([dead, reused, junk])
    assert live.exists() and not dead.exists() and not reused.exists()


def test_an_engine_that_exits_is_reported_with_its_reason(tmp_path, monkeypatch):
    """A dockerd that ends at start (here a stand-in that prints dockerd's refusal) fails
    at once with the log's last line, not after the whole wait."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "dockerd").write_text("#!/bin/sh\necho 'failed to start daemon: a reason' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(image, "DOCKERD_LOG", tmp_path / "dockerd.log")
    monkeypatch.setattr(image, "DOCKER_PIDFILES", {})
    (tmp_path / "dockerd.log").write_text("an older run's line\n")
    with pytest.raises(image.LabError, match=r"dockerd exited with status 1:\nfailed to start daemon: a reason$"):
        image.ensure_engine(timeout=30)
