"""The production shape as the hosts hold it: ssh on the operator's port, TLS with the operator's
CA on the public and the bridge-to-Moshi hops, the vault's secrets in the services' files only and
nowhere else, each unit confined by the shared hardening drop-in."""

import re

import pytest

from conftest import EPHEMERAL, vaulted

CA = "/usr/local/share/ca-certificates/myca-extra-ca.crt"  # roles/common: the bundle with the scenario's CA


def test_the_gpu_hosts_sshd_listens_on_its_own_port_only(gpu_host):
    assert gpu_host.socket("tcp://0.0.0.0:2200").is_listening
    assert not gpu_host.socket("tcp://0.0.0.0:22").is_listening


@pytest.mark.parametrize(
    "fixture, name, port", [("gpu_host", "myca-mol-gpu-host", 8998), ("bridge_host", "myca-mol-bridge", 8999)]
)
def test_moshi_and_the_bridge_serve_tls_with_the_operators_ca(request, fixture, name, port):
    """Checked against the CA alone, by the name the other hosts use (the bridge reaches Moshi by it)."""
    host = request.getfixturevalue(fixture)
    out = host.run(
        f"openssl s_client -connect 127.0.0.1:{port} -servername {name} -verify_hostname {name} "
        f"-CAfile {CA} -verify_return_error </dev/null"
    )
    assert out.rc == 0 and "Verify return code: 0 (ok)" in out.stdout, out.stderr


def test_the_bridges_tls_key_is_readable_by_its_service_alone(bridge_host):
    key = bridge_host.file("/etc/myca-bridge/tls/key.pem")
    assert (key.user, key.group, key.mode) == ("root", "myca-bridge", 0o640)
    assert key.contains("PRIVATE KEY")


def test_the_vaulted_database_password_is_in_the_mas_env_file_only(mas_host):
    env = mas_host.file("/etc/myca-mas/mas.env")
    assert env.contains("molecule-vaulted-mas-password-7e21") and not env.contains("lab-only-mas-password")
    assert (env.user, env.group, env.mode) == ("root", "myca-mas", 0o640)


def test_the_website_host_holds_a_ticket_key_and_no_service_token(bridge_host):
    env = bridge_host.file("/srv/myca-website/.env.local")
    assert env.contains("^MYCA_VOICE_TICKET_KEY=molecule-vaulted-ticket-key-3c8f0a2e7d41b96f$")
    assert not env.contains("molecule-vaulted-bridge-token") and not env.contains("token=")
    assert env.contains("^NEXT_PUBLIC_PERSONAPLEX_WS_URL=wss://myca-mol-bridge:8999/api/chat")


# Exposure ceilings (systemd-analyze security: 0 best, 10 worst) of the shared hardening drop-in;
# Moshi keeps the GPU's device files; myca-website-dev is the lab's stand-in website.
CEILINGS = [
    ("gpu_host", "moshi", 5.0),
    ("bridge_host", "myca-bridge", 4.0),
    ("bridge_host", "myca-website-dev", 4.0),
    ("mas_host", "myca-mas", 4.0),
    ("mas_host", "myca-collector@host", 4.0),
    ("mas_host", "myca-mas-backup", 4.0),
]


@pytest.mark.parametrize("fixture, unit, ceiling", CEILINGS)
def test_systemd_confines_each_service_within_its_exposure_ceiling(request, fixture, unit, ceiling):
    out = request.getfixturevalue(fixture).run(f"systemd-analyze security --no-pager {unit}")
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert out.rc == 0 and exposure, out.stdout + out.stderr
    assert float(exposure.group(1)) <= ceiling, f"{unit}: exposure {exposure.group(1)} is over {ceiling}"


def test_no_vaulted_secret_is_in_the_deploys_verbose_output_or_a_command_line(gpu_host, bridge_host, mas_host):
    """Every value of the scenario's vault files, looked for in the converge's and the idempotence
    step's deploys (converge.yml: myca-ops at -vvv, every task's arguments and results) and in
    every process's command line on the hosts (what `ps` shows any user)."""
    secrets = vaulted()
    assert len(secrets) == 4  # the bridge's token, the ticket key, the events token, the database password
    outputs = sorted((EPHEMERAL / "deploys").glob("*/stdout"))
    assert len(outputs) == 2, outputs
    deploy = "".join(p.read_text(errors="replace") for p in outputs)
    assert "SSH: EXEC ssh" in deploy  # really -vvv, over ssh
    lines = [
        host.check_output("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done")
        for host in (gpu_host, bridge_host, mas_host)
    ]
    seen = deploy + "\n".join(lines)
    assert [name for name, value in secrets.items() if value in seen] == []
