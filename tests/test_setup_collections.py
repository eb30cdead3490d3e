from pathlib import Path

from myca_ops.setup_collections import missing

ROOT = Path(__file__).resolve().parent.parent


def test_nothing_missing_when_pins_are_installed():
    installed = {
        "community.docker": {"4.8.5"},
        "community.postgresql": {"4.2.0"},
        "community.general": {"11.4.2"},
        "community.crypto": {"3.0.5"},
    }
    assert missing(ROOT / "requirements.yml", installed) == []


def test_absent_or_other_version_is_missing():
    installed = {"community.docker": {"3.0.0"}}
    todo = missing(ROOT / "requirements.yml", installed)
    assert "community.docker:==4.8.5" in todo and "community.crypto:==3.0.5" in todo
