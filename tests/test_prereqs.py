"""The prerequisite step: what it checks, what it tells a user who is not root, and the README's list."""

from pathlib import Path

import pytest

from myca_ops.lab import prereqs

ROOT = Path(__file__).resolve().parents[1]

OS_RELEASE = {
    "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "ubuntu": 'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n',
}


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
def test_distribution_from_os_release(tmp_path, family):
    f = tmp_path / "os-release"
    f.write_text(OS_RELEASE[family])
    assert prereqs.distribution(f) == (family, {"debian": "12", "ubuntu": "22.04"}[family])


def test_chromium_is_a_package_on_debian_and_a_snap_on_ubuntu():
    chromium = [n for n in prereqs.needs() if n.debian == "chromium"]
    assert prereqs.install_command(chromium, "debian") == [
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    ]
    assert prereqs.install_command(chromium, "ubuntu") == [["snap", "install", "chromium"]]


def test_python_outside_the_supported_range_says_how_to_get_311():
    assert prereqs.python_problem((3, 11), "debian") is None
    assert prereqs.python_problem((3, 13), "ubuntu") is None
    problem = prereqs.python_problem((3, 10), "ubuntu")
    assert "3.10" in problem and "apt-get install python3.11 python3.11-venv" in problem
    assert "PYTHON=python3.11" in problem
    assert "3.14" in prereqs.python_problem((3, 14), "debian")


def test_a_user_who_is_not_root_is_told_each_missing_package_and_the_one_command(monkeypatch, capsys):
    missing = [
        prereqs.Need("PostgreSQL's binaries", "postgresql", "postgresql", lambda: False),
        prereqs.Need("headless Chromium", "chromium", "snap:chromium", lambda: False),
        prereqs.Need("make", "make", "make", lambda: True),
    ]
    monkeypatch.setattr(prereqs, "needs", lambda: missing)
    monkeypatch.setattr(prereqs, "distribution", lambda: ("ubuntu", "24.04"))
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(prereqs.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert prereqs.main([]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL's binaries" in err and "headless Chromium" in err and "make" not in err.split("install them")[0]
    assert "sudo apt-get install -y --no-install-recommends postgresql && sudo snap install chromium" in err


def test_the_readme_lists_exactly_the_prerequisites():
    assert prereqs.markdown() in (ROOT / "README.md").read_text()
