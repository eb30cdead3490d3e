"""The roles' templates rendered with the roles' own defaults, as a host would get them."""

import configparser
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, ROOT, ansible_env

# (role, template, extra variables): the unit files and the shared hardening drop-in.
RENDERED = {
    "moshi.service": ("moshi", "moshi.service.j2", {}),
    "myca-bridge.service": ("bridge", "myca-bridge.service.j2", {}),
    "myca-mas.service": ("mas", "myca-mas.service.j2", {}),
    "myca-collector@.service": ("mas", "myca-collector@.service.j2", {}),
    "mas.env": ("mas", "mas.env.j2", {"mas_db_password": "p@ss/w:rd", "mas_moshi_url": "", "mas_bridge_url": ""}),
    "hardening-moshi.conf": (
        "python_service",
        "hardening.conf.j2",
        {"python_service_write_paths": ["/var/lib/moshi"], "python_service_private_devices": False},
    ),
    "hardening-bridge.conf": ("python_service", "hardening.conf.j2", {"python_service_memory_max": "256M"}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every template of RENDERED, rendered by ansible-playbook with its role's defaults and vars."""
    tmp_path = tmp_path_factory.mktemp("rendered")
    tasks = []
    for name, (role, template, extra) in RENDERED.items():
        tasks.append(
            {
                "name": f"Render {name}",
                "ansible.builtin.template": {
                    "src": str(ROOT / "roles" / role / "templates" / template),
                    "dest": str(tmp_path / name),
                    "mode": "0644",
                },
                "vars": extra,
            }
        )
    roles = {role for role, _, _ in RENDERED.values()}
    vars_files = [
        str(p)
        for r in sorted(roles)
        for p in (ROOT / "roles" / r).glob("*/main.yml")
        if p.parent.name in ("defaults", "vars")
    ]
    play = [{"hosts": "localhost", "gather_facts": False, "vars_files": vars_files, "tasks": tasks}]
    path = tmp_path / "render.yml"
    path.write_text(yaml.safe_dump(play))
    out = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(path),
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        env=ansible_env(),
    )
    assert out.returncode == 0, out.stdout
    return {name: (tmp_path / name).read_text() for name in RENDERED}


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_units_say_what_runs_and_the_drop_in_how_it_is_confined(files):
    for unit, user, start in [
        ("moshi.service", "moshi", "/opt/moshi/venv/bin/myca-moshi serve"),
        (
            "myca-bridge.service",
            "myca-bridge",
            "/opt/myca-bridge/venv/bin/myca-bridge serve --config /etc/myca-bridge/bridge.json",
        ),
        ("myca-mas.service", "myca-mas", "/opt/myca-mas/venv/bin/myca-mas serve"),
        ("myca-collector@.service", "myca-mas", "/opt/myca-mas/venv/bin/myca-mas collector %i"),
    ]:
        service = ini(files[unit])["Service"]
        assert (service["User"], service["ExecStart"], service["Restart"]) == (user, start, "on-failure"), unit
        assert "ProtectSystem" not in service, f"{unit} repeats the hardening that lives in the drop-in"

    moshi = ini(files["hardening-moshi.conf"])["Service"]
    assert moshi["ProtectSystem"] == "strict" and moshi["NoNewPrivileges"] == "true"
    assert moshi["ReadWritePaths"] == "/var/lib/moshi"
    assert moshi["PrivateDevices"] == "false"  # the GPU's device files
    bridge = ini(files["hardening-bridge.conf"])["Service"]
    assert bridge["PrivateDevices"] == "true" and "ReadWritePaths" not in bridge
    assert (bridge["MemoryMax"], bridge["LimitNOFILE"]) == ("256M", "4096")


def test_the_mas_env_file_escapes_the_password_in_the_dsn(files):
    lines = files["mas.env"].splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert env["MYCA_MAS_DSN"] == "postgresql://myca_mas:p%40ss%2Fw%3Ard@127.0.0.1:5432/myca"
    assert env["MYCA_MAS_COLLECTORS"] == "host,voice"


def firewall_rules_for(tmp_path, hosts_yml: str, host: str, moshi_host: str = "0.0.0.0") -> str:
    """The nftables rules the firewall role writes for `host` of an inventory (addresses, no lookup)."""
    (tmp_path / "hosts.yml").write_text(hosts_yml)
    role = ROOT / "roles" / "firewall"
    play = [
        {
            "hosts": host,
            "gather_facts": False,
            "connection": "local",
            "vars_files": [str(role / "defaults/main.yml"), str(role / "vars/main.yml")],
            "vars": {"moshi_host": moshi_host, "ansible_python_interpreter": sys.executable},
            "tasks": [
                {
                    "name": "Render the rules",
                    "ansible.builtin.template": {
                        "src": str(role / "templates/myca-ops.nft.j2"),
                        "dest": str(tmp_path / "rules.nft"),
                        "mode": "0644",
                    },
                }
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    cmd = [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env())
    assert out.returncode == 0 and f"{host} " in out.stdout.split("PLAY RECAP")[-1], out.stdout + out.stderr
    return (tmp_path / "rules.nft").read_text()


INVENTORY = """
all:
  children:
    gpu_hosts: {hosts: {gpu: {ansible_host: 10.0.0.1}}}
    bridge_hosts: {hosts: {bridge: {ansible_host: 10.0.0.2}}}
    website_hosts: {hosts: {web: {ansible_host: 10.0.0.3}}}
    mas_hosts: {hosts: {mas: {ansible_host: 10.0.0.4}}}
"""


def test_the_firewall_lets_in_only_each_ports_clients(tmp_path):
    gpu = firewall_rules_for(tmp_path, INVENTORY, "gpu")
    assert "tcp dport 8998 ip saddr { 10.0.0.2, 10.0.0.4 } accept\n        tcp dport 8998 reject with tcp reset" in gpu
    assert "8001" not in gpu and "5432" not in gpu
    mas = firewall_rules_for(tmp_path, INVENTORY, "mas")
    assert "tcp dport 8001 ip saddr { 10.0.0.2, 10.0.0.3 } accept" in mas
    assert "tcp dport 5432 ip saddr { 127.0.0.1/32 } accept" in mas and "ip6 saddr { ::1/128 }" in mas
    assert mas.count("reject with tcp reset") == 2


def test_moshi_on_loopback_behind_its_own_bridge_needs_no_rule(tmp_path):
    shared = INVENTORY.replace("bridge: {ansible_host: 10.0.0.2}", "gpu: {}")
    rules = firewall_rules_for(tmp_path, shared, "gpu", moshi_host="127.0.0.1")
    assert "dport" not in rules
