"""The scenario's YAML checks (verify.yml beside this folder: the verify play, the voice, the
bridge and website, the MAS's outage and restore, the certificate, the firewall, the status as
an operator reads it, monitoring), first."""

from conftest import SCENARIO
from myca_ops.lab.scenario import yaml_checks


def test_the_yaml_checks_pass():
    yaml_checks(SCENARIO / "verify.yml")
