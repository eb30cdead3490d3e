"""Each service as its host runs it (after verify.yml, which stops and starts some of them):
Moshi, the bridge, the website and the MAS, their users and ports, what a caller hears, a
killed Moshi brought back, the website's settings and the MAS's asyncpg."""

import json
import time

from myca_ops.bridge.tickets import Tickets
from myca_ops.lab.scenario import http_text

PROBE = "/opt/moshi/venv/bin/python -m myca_ops.voice.probe"
TICKET_KEY = "molecule-vaulted-ticket-key-3c8f0a2e7d41b96f"  # group_vars/all/vault.yml's
ORIGIN = "http://localhost:3010"  # the website's, which its tickets are minted for
BRIDGE = "wss://myca-mol-bridge:8999/api/chat"
WEBSITE = "/srv/myca-website"


def runs_as(host, unit: str, user: str) -> None:
    service = host.service(unit)
    assert service.is_running and service.is_enabled, unit
    assert host.check_output(f"systemctl show -p User --value {unit}") == user


def test_moshi_runs_as_its_user_and_a_caller_hears_it_over_tls(gpu_host):
    runs_as(gpu_host, "moshi", "moshi")
    assert gpu_host.socket("tcp://0.0.0.0:8998").is_listening  # every IPv4 address: the bridge is another host
    answer = json.loads(gpu_host.check_output(f"{PROBE} --url wss://127.0.0.1:8998/api/chat --seconds 2"))
    assert answer["error"] is None and answer["handshake_ms"] > 0, answer
    assert answer["audio_messages"] > 0 and answer["audio_received_s"] > 0, answer


def test_the_launcher_says_its_mode_and_never_sets_a_slow_switch(gpu_host):
    journal = gpu_host.check_output("journalctl -u moshi -o cat --no-pager")
    modes = [line for line in journal.splitlines() if line.startswith("myca-moshi: ") and " server, mode" in line]
    assert modes and "batched server, mode cpu on cpu" in modes[-1], modes[-3:]
    env = gpu_host.file("/etc/moshi/moshi.env")
    assert not env.contains("^NO_CUDA_GRAPH=") and not env.contains("^NO_TORCH_COMPILE=")


def test_a_killed_moshi_is_brought_back_by_systemd_and_answers_again(gpu_host):
    before = gpu_host.check_output("systemctl show -p MainPID --value moshi")
    gpu_host.run_expect([0], "systemctl kill --signal=SIGKILL --kill-whom=main moshi")
    deadline = time.monotonic() + 30
    while gpu_host.check_output("systemctl show -p MainPID --value moshi") in ("0", before):
        assert time.monotonic() < deadline, "systemd did not start Moshi again within 30 s"
        time.sleep(1)
    gpu_host.run_expect([0], "/opt/moshi/venv/bin/myca-moshi wait --url wss://127.0.0.1:8998/api/chat --timeout 300")


def test_the_bridge_runs_as_its_user_relays_to_moshi_and_refuses_a_caller_without_a_credential(bridge_host, gpu_host):
    runs_as(bridge_host, "myca-bridge", "myca-bridge")
    deadline = time.monotonic() + 10  # it keeps Moshi's health for 2 s: after the kill above it may say loading
    while not (health := json.loads(http_text(bridge_host, "https://127.0.0.1:8999/healthz")))["ok"]:
        assert time.monotonic() < deadline, health
        time.sleep(1)
    assert health["upstream"] == "wss://myca-mol-gpu-host:8998/api/chat"
    # A caller with a ticket, as the website's page is given one (single-use: harmless on a command line).
    ticket = Tickets((TICKET_KEY,), ttl_s=60, bridge="myca-mol-bridge").mint(ORIGIN)
    relayed = json.loads(
        gpu_host.check_output(f"MYCA_PROBE_TICKET={ticket} {PROBE} --url {BRIDGE} --origin {ORIGIN} --seconds 2")
    )
    assert relayed["error"] is None and relayed["audio_received_s"] > 0, relayed
    refused = gpu_host.run(f"{PROBE} --handshake-only --url {BRIDGE}")
    assert refused.rc == 1 and "401" in json.loads(refused.stdout)["error"], refused.stdout
    metrics = http_text(bridge_host, "https://127.0.0.1:8999/metrics")
    for series in (
        'myca_bridge_sessions_total{outcome="relayed"}',
        'myca_bridge_sessions_total{outcome="unauthorized"}',
        'myca_bridge_messages_total{direction="to_client",kind="audio"}',
    ):
        counted = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(series + " ")]
        assert counted and counted[0] >= 1, series


def test_the_website_points_at_the_bridge_keeps_the_operators_lines_and_a_backup(bridge_host):
    lines = bridge_host.file(f"{WEBSITE}/.env.local").content_string.splitlines()
    urls = [line for line in lines if line.startswith("NEXT_PUBLIC_PERSONAPLEX_WS_URL=")]
    assert urls == ["NEXT_PUBLIC_PERSONAPLEX_WS_URL=wss://myca-mol-bridge:8999/api/chat?persona=myca"]
    assert f"MYCA_VOICE_TICKET_KEY={TICKET_KEY}" in lines and f"MYCA_VOICE_TICKET_ORIGINS={ORIGIN}" in lines
    assert not [line for line in lines if line.startswith("NEXT_PUBLIC_") and TICKET_KEY in line]
    for kept in ("# MYCA website settings", "NEXT_PUBLIC_SITE_NAME=MYCA", "MAS_API_URL=http://localhost:8001"):
        assert kept in lines
    old_url = "^NEXT_PUBLIC_PERSONAPLEX_WS_URL=ws://localhost:8998/api/chat$"
    held = bridge_host.run(f"grep -l '{old_url}' {WEBSITE}/.env.local.*~").stdout.split()
    assert len(held) == 1, held  # one backup holds the operator's old URL


def test_the_websites_ticket_route_signs_with_a_server_side_key_and_the_dev_server_serves_public_pages(bridge_host):
    route = bridge_host.file(f"{WEBSITE}/app/api/voice/ticket/route.ts").content_string
    assert 'createHmac("sha256", key)' in route and "process.env.MYCA_VOICE_TICKET_KEY" in route
    assert TICKET_KEY not in route
    status = (
        "python3 -c 'import sys, urllib.error, urllib.request as u\ntry: print(u.urlopen(sys.argv[1], timeout=5).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)' http://127.0.0.1:3010/{}"
    )
    pages = ("index.html", ".env.local", "app/api/voice/ticket/route.ts", "package.json")
    assert [bridge_host.check_output(status.format(page)) for page in pages] == ["200", "404", "404", "404"]
    # Restarted after .env.local changed: started no earlier than the file's last change.
    started = bridge_host.check_output(
        'date -d "$(systemctl show -p ActiveEnterTimestamp --value myca-website-dev)" +%s'
    )
    assert int(started) >= int(bridge_host.check_output(f"stat -c %Y {WEBSITE}/.env.local"))


def test_the_mas_runs_from_its_venv_with_asyncpg_and_its_status_names_every_component(mas_host):
    for unit in ("postgresql", "myca-mas", "myca-collector@host", "myca-collector@voice"):
        assert mas_host.service(unit).is_running, unit
    pid = mas_host.check_output("systemctl show -p MainPID --value myca-mas")
    python = mas_host.file(f"/proc/{pid}/cmdline").content.split(b"\0")[0].decode()
    assert python.startswith("/opt/myca-mas/venv/bin/python"), python
    assert mas_host.check_output(f"{python} -c 'import asyncpg; print(asyncpg.__version__)'") == "0.32.0"
    deadline = time.monotonic() + 20
    while (status := json.loads(http_text(mas_host, "http://127.0.0.1:8001/api/myca/status")))["status"] != "ok":
        assert time.monotonic() < deadline, status
        time.sleep(2)
    parts = status["components"]
    assert parts["database"]["ok"] and parts["voice"]["moshi"]["ok"] and parts["voice"]["bridge"]["ok"], parts
    assert {name: c["state"] for name, c in parts["collectors"].items()} == {"host": "running", "voice": "running"}
