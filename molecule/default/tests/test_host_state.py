"""The production shape as the hosts hold it: ssh on the operator's port, TLS with the operator's
CA on the public and the bridge-to-Moshi hops, the vault's secrets in the services' files only."""

import pytest

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
