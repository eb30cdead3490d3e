"""The lab image recipe: mirror found in this machine's apt sources, stable tag."""

import pytest

from myca_ops.lab import image


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert image.debian_mirror((tmp_path / "sources.list", d)) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    f = tmp_path / "sources.list"
    f.write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n")
    assert image.debian_mirror((f,)) == "http://mirror.example/debian"


def test_no_mirror_says_what_to_do(tmp_path):
    with pytest.raises(image.LabError, match="no Debian archive"):
        image.debian_mirror((tmp_path / "nothing",))


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
