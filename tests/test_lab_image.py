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
