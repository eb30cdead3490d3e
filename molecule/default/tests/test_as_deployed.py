"""The scenario's YAML checks (verify.yml beside this folder: the verify play, the voice, the
bridge and website, the MAS's outage and restore, hardening, the firewall, monitoring), first."""

import subprocess

from conftest import INVENTORY, SCENARIO


def test_the_yaml_checks_pass():
    out = subprocess.run(["ansible-playbook", "-i", str(INVENTORY), str(SCENARIO / "verify.yml")])
    assert out.returncode == 0, "verify.yml failed: its output is above"
