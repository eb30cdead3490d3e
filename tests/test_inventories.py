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
    assert len(vaults) == 4  # the website host holds no secret: it signs tickets with the bridge's key
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


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_no_website_host_receives_a_service_token(env, vault_password_file):
    """A token on the website host ends up in NEXT_PUBLIC_PERSONAPLEX_WS_URL, readable by every
    visitor: browsers get tickets (the route), wherever the bridge takes credentials at all."""
    out = ansible("ansible-inventory", "-i", f"inventory/{env}", "--list", "--vault-password-file", vault_password_file)
    inventory = json.loads(out.stdout)
    hostvars = inventory["_meta"]["hostvars"]
    bridges = inventory["bridge_hosts"]["hosts"]
    credentials = any(hostvars[b].get("bridge_tokens") or hostvars[b].get("bridge_ticket_keys") for b in bridges)
    for host in inventory["website_hosts"]["hosts"]:
        assert not hostvars[host].get("website_bridge_token"), f"{env}: {host} gets website_bridge_token"
        if credentials or env in ("cloud", "production"):
            assert hostvars[host].get("website_ticket_route") is True, f"{env}: {host} has no ticket route"
