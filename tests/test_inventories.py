"""Every environment's inventory renders and site.yml syntax-checks against it, so none rots."""

import json
import subprocess

import pytest

from conftest import BIN, ROOT, ansible_env

ENVIRONMENTS = ["lab", "wsl2", "cloud", "production"]
GROUPS = {"gpu_hosts", "mas_hosts", "bridge_hosts", "website_hosts"}
EXAMPLE_VAULT_PASSWORD = "myca-ops-example-vault-password"  # documented in the README, to be replaced


@pytest.fixture(scope="module")
def vault_password_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vault") / "pass"
    path.write_text(EXAMPLE_VAULT_PASSWORD)
    return path


def ansible(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=ansible_env()
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_inventory_renders_with_every_group(env, vault_password_file):
    out = ansible("ansible-inventory", "-i", f"inventory/{env}", "--list", "--vault-password-file", vault_password_file)
    assert out.returncode == 0, out.stderr
    inventory = json.loads(out.stdout)
    for group in GROUPS:
        assert inventory.get(group, {}).get("hosts"), f"{env}: no host in {group}"


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/status.yml"])
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_playbooks_syntax_check_against_the_inventory(env, playbook, vault_password_file):
    out = ansible(
        "ansible-playbook",
        playbook,
        "-i",
        f"inventory/{env}",
        "--syntax-check",
        "--vault-password-file",
        vault_password_file,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_production_secrets_are_vault_encrypted_and_open_with_the_example_password(vault_password_file):
    vaults = sorted((ROOT / "inventory/production/group_vars").glob("*/vault.yml"))
    assert len(vaults) == 5
    for vault in vaults:
        assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    out = ansible(
        "ansible-inventory",
        "-i",
        "inventory/production",
        "--host",
        "mas-1",
        "--vault-password-file",
        vault_password_file,
    )
    assert json.loads(out.stdout)["vault_mas_db_password"] == "example-mas-password-replace-me"
