"""The scenario's YAML checks (verify.yml beside this folder: the verify play, the voice, the
bridge and website, the MAS's outage and restore, hardening, the firewall, monitoring), first."""

from conftest import SCENARIO
from myca_ops.lab.scenario import yaml_checks


def test_the_yaml_checks_pass():
    yaml_checks(SCENARIO / "verify.yml")
