"""What the scenario's tests share: its inventory (ssh, the vault), its hosts through testinfra,
and myca-ops from the venv that `make setup` alone made (prepare.yml)."""

import os
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INVENTORY = EPHEMERAL / "inventory"
SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
VAULT_PASSWORD_FILE = SCENARIO / "vault-password"


def on(name: str):
    """A host of the scenario over ssh as Ansible reaches it: its published port (host_vars), the
    operator's key, the host keys learnt at the deploy (operator_ssh.yml)."""
    port = yaml.safe_load((SCENARIO / "host_vars" / name / "host.yml").read_text())["ansible_port"]
    pki = EPHEMERAL / "pki"
    return testinfra.get_host(
        f"ssh://root@127.0.0.1:{port}",
        ssh_identity_file=str(pki / "id_ed25519"),
        ssh_extra_args=f"-o UserKnownHostsFile={pki / 'known_hosts'} -o StrictHostKeyChecking=yes",
    )


@pytest.fixture(scope="session")
def gpu_host():
    return on("myca-mol-gpu-host")


@pytest.fixture(scope="session")
def bridge_host():
    return on("myca-mol-bridge")


@pytest.fixture(scope="session")
def mas_host():
    return on("myca-mol-mas-vm")


def myca_ops(command: str, *args: str) -> subprocess.CompletedProcess:
    """The operator's command, with the vault opened by the password file named on its command line."""
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_VAULT_PASSWORD_FILE"}
    argv = [str(EPHEMERAL / "setup-venv" / "bin" / "myca-ops"), command, str(INVENTORY), *args]
    argv += ["--vault-password-file", str(VAULT_PASSWORD_FILE)]
    return subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, env=env)


def vaulted() -> dict[str, str]:
    """The scenario's secrets: every value of its vault files, opened with its password file."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(VAULT_PASSWORD_FILE.read_bytes().strip()))])
    secrets: dict[str, str] = {}
    for path in sorted(SCENARIO.glob("group_vars/*/vault.yml")):
        secrets |= yaml.safe_load(vault.decrypt(path.read_bytes()))
    return secrets
