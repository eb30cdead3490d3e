"""The roles' templates rendered with the roles' own defaults, as a host would get them."""

import subprocess
import sys

import pytest
import yaml

from conftest import BIN, ROOT, ansible_env, ini

# (role, template, extra variables): the unit files (one template, each role's programs) and
# the shared hardening drop-in.
UNIT = ("python_service", "unit.service.j2")
RENDERED = {
    "moshi.service": (*UNIT, {"item": "{{ moshi_service.programs[0] }}"}, "moshi"),
    "myca-bridge.service": (*UNIT, {"item": "{{ bridge_service.programs[0] }}"}, "bridge"),
    "myca-mas.service": (*UNIT, {"item": "{{ mas_service.programs[0] }}"}, "mas"),
    "myca-collector@.service": (*UNIT, {"item": "{{ mas_service.programs[1] }}"}, "mas"),
    "myca-mas-backup.service": (*UNIT, {"item": "{{ mas_service.programs[2] }}"}, "mas"),
    "myca-mas-backup.timer": ("python_service", "unit.timer.j2", {"item": "{{ mas_service.programs[2] }}"}, "mas"),
    "mas.env": (
        "mas",
        "mas.env.j2",
        {"mas_db_password": "p@ss/w:rd", "mas_moshi_url": "", "mas_bridge_url": "", "mas_prometheus_url": ""},
    ),
    "hardening-moshi.conf": (
        "python_service",
        "hardening.conf.j2",
        {"python_service_record": "{{ moshi_service }}"},
        "moshi",
    ),
    "hardening-bridge.conf": (
        "python_service",
        "hardening.conf.j2",
        {"python_service_record": "{{ bridge_service }}"},
        "bridge",
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every template of RENDERED, rendered by ansible-playbook with its role's defaults and vars."""
    tmp_path = tmp_path_factory.mktemp("rendered")
    tasks = []
    for name, (role, template, extra, *_) in RENDERED.items():
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
    # stack: the topology the roles' defaults read, here of one host in every group (a pod).
    roles = (
        {"stack"} | {spec[0] for spec in RENDERED.values()} | {spec[3] for spec in RENDERED.values() if len(spec) > 3}
    )
    vars_files = [
        str(p)
        for r in sorted(roles)
        for p in (ROOT / "roles" / r).glob("*/main.yml")
        if p.parent.name in ("defaults", "vars")
    ]
    play = [{"hosts": "pod", "gather_facts": False, "vars_files": vars_files, "tasks": tasks}]
    path = tmp_path / "render.yml"
    path.write_text(yaml.safe_dump(play))
    pod = {"hosts": {"pod": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    inventory = tmp_path / "pod.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"children": {g: pod for g in ("gpu_hosts", "bridge_hosts", "mas_hosts")}}})
    )
    out = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(path),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(),
    )
    assert out.returncode == 0, out.stdout
    return {name: (tmp_path / name).read_text() for name in RENDERED}


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

    # The backup, a scheduled job: one run each time its timer fires, never restarted, not started at boot itself.
    backup = ini(files["myca-mas-backup.service"])
    assert backup["Service"]["Type"] == "oneshot" and "Restart" not in backup["Service"]
    assert backup["Service"]["ExecStart"] == "/opt/myca-mas/venv/bin/myca-mas backup" and "Install" not in backup
    timer = ini(files["myca-mas-backup.timer"])
    assert (timer["Timer"]["OnActiveSec"], timer["Timer"]["OnUnitActiveSec"]) == ("60", "86400")
    assert timer["Install"]["WantedBy"] == "timers.target"

    moshi = ini(files["hardening-moshi.conf"])["Service"]
    assert moshi["ProtectSystem"] == "strict" and moshi["NoNewPrivileges"] == "true"
    assert moshi["ReadWritePaths"] == "/var/lib/moshi"
    assert moshi["PrivateDevices"] == "false"  # the GPU's device files
    bridge = ini(files["hardening-bridge.conf"])["Service"]
    assert bridge["PrivateDevices"] == "true" and "ReadWritePaths" not in bridge
    # Every connection (4096), a socket upstream per session (the pod's 64 slots), 256 for its own files.
    assert (bridge["MemoryMax"], bridge["LimitNOFILE"]) == ("256M", "4416")


def test_the_mas_env_file_escapes_the_password_in_the_dsn(files):
    lines = files["mas.env"].splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert env["MYCA_MAS_DSN"] == "postgresql://myca_mas:p%40ss%2Fw%3Ard@127.0.0.1:5432/myca"
    assert env["MYCA_MAS_COLLECTORS"] == "host,voice"


def render_for(tmp_path, hosts_yml: str, host: str, role: str, templates: list[str], extra: dict | None = None) -> dict:
    """`role`'s templates as `host` of an inventory gets them (with roles/stack's defaults): {template: text}."""
    (tmp_path / "hosts.yml").write_text(hosts_yml)
    (tmp_path / "extra.yml").write_text(yaml.safe_dump({"ansible_python_interpreter": sys.executable, **(extra or {})}))
    roles = [ROOT / "roles" / "stack", ROOT / "roles" / role]
    vars_files = [str(p) for r in roles for p in (r / "defaults/main.yml", r / "vars/main.yml") if p.exists()]
    play = [
        {
            "hosts": host,
            "gather_facts": False,
            "connection": "local",
            "vars_files": [*vars_files, str(tmp_path / "extra.yml")],  # the last one wins
            "tasks": [
                {
                    "name": f"Render {t}",
                    "ansible.builtin.template": {
                        "src": str(ROOT / "roles" / role / "templates" / t),
                        "dest": str(tmp_path / t.removesuffix(".j2")),
                        "mode": "0644",
                    },
                }
                for t in templates
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    cmd = [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env())
    assert out.returncode == 0 and f"{host} " in out.stdout.split("PLAY RECAP")[-1], out.stdout + out.stderr
    return {t: (tmp_path / t.removesuffix(".j2")).read_text() for t in templates}


def firewall_rules_for(tmp_path, hosts_yml: str, host: str, moshi_host: str = "0.0.0.0") -> str:
    """The nftables rules the firewall role writes for `host` of an inventory (addresses, no lookup)."""
    return render_for(tmp_path, hosts_yml, host, "firewall", ["myca-ops.nft.j2"], {"moshi_host": moshi_host})[
        "myca-ops.nft.j2"
    ]


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


POOL_WITH_MONITORING = """
all:
  children:
    gpu_hosts:
      hosts:
        gpu-a: {ansible_host: 10.0.1.1, moshi_slots: 2}
        gpu-b: {ansible_host: 10.0.1.2, moshi_slots: 2, moshi_server: upstream}
    bridge_hosts: {hosts: {bridge: {ansible_host: 10.0.1.3, bridge_tls: true}}}
    mas_hosts: {hosts: {mas: {ansible_host: 10.0.1.4}}}
    monitoring_hosts: {hosts: {mon: {ansible_host: 10.0.1.5}}}
"""


def test_prometheus_scrapes_what_the_inventory_describes(tmp_path):

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    extra = {"monitoring_rules_dir": str(rules_dir)}
    out = render_for(tmp_path, POOL_WITH_MONITORING, "mon", "monitoring", ["prometheus.yml.j2", "alerts.yml.j2"], extra)
    (rules_dir / "alerts.yml").write_text(out["alerts.yml.j2"])
    config = yaml.safe_load(out["prometheus.yml.j2"])
    jobs = {
        j["job_name"]: [(t, c["labels"]) for c in j["static_configs"] for t in c["targets"]]
        for j in config["scrape_configs"]
    }
    assert jobs["node"] == [
        (f"10.0.1.{i}:9100", {"host": h}) for i, h in ((1, "gpu-a"), (2, "gpu-b"), (4, "mas"), (3, "bridge"))
    ] + [("127.0.0.1:9100", {"host": "mon"})]
    assert jobs["moshi"] == [("10.0.1.1:8998", {"host": "gpu-a"})]  # gpu-b runs moshi.server: no /metrics
    assert jobs["bridge"] == [("10.0.1.3:8999", {"host": "bridge", "__scheme__": "https"})]
    assert jobs["haproxy"] == [("10.0.1.3:8404", {"host": "bridge"})]
    assert jobs["mas"] == [("10.0.1.4:8001", {"host": "mas"})]
    assert config["rule_files"] == [str(rules_dir / "alerts.yml")]
    # promtool is a prerequisite (make prereqs); the role runs the same check at deploy
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    "thresholds",
    [
        {},
        {
            "monitoring_alert_gpu_for_s": 0,
            "monitoring_alert_gpu_hot_celsius": 70,
            "monitoring_alert_target_down_for_s": 30,
        },
    ],
)
def test_the_alert_rules_pass_their_unit_tests_at_the_inventorys_thresholds(tmp_path, thresholds):
    """What the role runs at deploy: promtool test rules on the rules and tests rendered together."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    extra = {"monitoring_rules_dir": str(rules_dir), **thresholds}
    out = render_for(
        tmp_path, POOL_WITH_MONITORING, "mon", "monitoring", ["alerts.yml.j2", "alerts.test.yml.j2"], extra
    )
    (rules_dir / "alerts.yml").write_text(out["alerts.yml.j2"])
    (rules_dir / "alerts.test.yml").write_text(out["alerts.test.yml.j2"])
    run = subprocess.run(
        ["promtool", "test", "rules", str(rules_dir / "alerts.test.yml")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MycaGpuThrottled" in out["alerts.yml.j2"]


def test_the_monitoring_hosts_reach_each_port_the_firewall_guards(tmp_path):
    bridge = render_for(tmp_path, POOL_WITH_MONITORING, "bridge", "firewall", ["myca-ops.nft.j2"])["myca-ops.nft.j2"]
    assert "tcp dport 8404 ip saddr { 10.0.1.5 } accept\n        tcp dport 8404 reject" in bridge  # HAProxy's stats
    assert "tcp dport 9100 ip saddr { 10.0.1.5 } accept\n        tcp dport 9100 reject" in bridge
    assert "8999" not in bridge  # the public port
    gpu = render_for(tmp_path, POOL_WITH_MONITORING, "gpu-a", "firewall", ["myca-ops.nft.j2"])["myca-ops.nft.j2"]
    assert "tcp dport 8998 ip saddr { 10.0.1.3, 10.0.1.4, 10.0.1.5 } accept" in gpu


def test_a_monitoring_host_of_its_own_lets_only_the_mas_reach_prometheus(tmp_path):
    inventory = POOL_WITH_MONITORING.replace(
        "mon: {ansible_host: 10.0.1.5}", "mon: {ansible_host: 10.0.1.5, monitoring_prometheus_listen_address: 0.0.0.0}"
    )
    mon = render_for(tmp_path, inventory, "mon", "firewall", ["myca-ops.nft.j2"])["myca-ops.nft.j2"]
    assert "tcp dport 9090 ip saddr { 10.0.1.4, 10.0.1.5 } accept\n        tcp dport 9090 reject" in mon
    assert "tcp dport 9100 ip saddr { 10.0.1.5 } accept" in mon
    loopback = render_for(tmp_path, POOL_WITH_MONITORING, "mon", "firewall", ["myca-ops.nft.j2"])["myca-ops.nft.j2"]
    assert "9090" not in loopback  # on loopback only: no rule needed


@pytest.mark.parametrize(
    ("workers", "line"), [("auto", "MYCA_MOSHI_CODEC_WORKERS=\n"), (3, "MYCA_MOSHI_CODEC_WORKERS=3\n")]
)
def test_the_opus_workers_reach_the_server_auto_as_its_own_choice(tmp_path, workers, line):
    facts = {
        "gpu_facts": {
            "recommended_moshi_mode": "cpu",
            "recommended_moshi_mode_reason": "no CUDA device",
            "recommended_moshi_mode_limit": "no_cuda",
            "triton_libcuda_path": None,
        },
        "moshi_device_resolved": "cpu",
        "moshi_codec_workers": workers,
    }
    env = render_for(tmp_path, POOL_WITH_MONITORING, "gpu-a", "moshi", ["moshi.env.j2"], facts)["moshi.env.j2"]
    assert line in env
