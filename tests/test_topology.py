"""The stack's topology (filter_plugins/topology.py), from inventories a user would write."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "filter_plugins"))
from topology import role_defaults, topology  # noqa: E402


def stack(hostvars: dict, groups: dict, here: str) -> dict:
    first = {
        k: (groups.get(g) or [""])[0]
        for k, g in [
            ("gpu", "gpu_hosts"),
            ("bridge", "bridge_hosts"),
            ("mas", "mas_hosts"),
            ("monitoring", "monitoring_hosts"),
        ]
    }
    return topology(hostvars, groups, here, **first)


def rules(topo: dict) -> dict:
    return {r["name"]: (r["port"], r["clients"]) for r in topo["firewall_rules"]}


# The lab's shape: Moshi and its bridge on one host, the MAS (with Prometheus) on another.
LAB_GROUPS = {"gpu_hosts": ["gpu"], "bridge_hosts": ["gpu"], "mas_hosts": ["mas"], "monitoring_hosts": ["mas"]}
LAB_VARS = {"gpu": {"ansible_host": "10.0.0.2"}, "mas": {"ansible_host": "10.0.0.3"}}


def test_the_defaults_are_the_roles_own():
    assert role_defaults()["moshi_port"] == 8998 and role_defaults()["mas_port"] == 8001
    topo = stack(LAB_VARS, LAB_GROUPS, "gpu")
    assert topo["hosts"]["mas"] == {**topo["hosts"]["mas"], "address": "10.0.0.3", "mas_port": 8001, "moshi_port": 8998}


def test_moshi_behind_its_own_bridge_is_on_loopback_and_gets_no_rule():
    topo = stack(LAB_VARS, LAB_GROUPS, "gpu")
    assert topo["moshi_local_only"] and topo["moshi_url"] == "ws://127.0.0.1:8998/api/chat"
    assert topo["bridge_upstream"] == topo["moshi_url"]
    assert "moshi" not in rules(topo)
    assert rules(topo)["node-exporter"] == (9100, ["10.0.0.3"])  # for Prometheus on the MAS host
    # Only the GPU host reads its Moshi's /metrics.
    assert topo["moshi_metrics_hosts"] == ["gpu"] and stack(LAB_VARS, LAB_GROUPS, "mas")["moshi_metrics_hosts"] == []


def test_personaplexs_own_server_gets_a_rule_even_on_loopback():
    own = {**LAB_VARS["gpu"], "moshi_flavour": "personaplex", "moshi_server": "upstream"}
    assert rules(stack({**LAB_VARS, "gpu": own}, LAB_GROUPS, "gpu"))["moshi"] == (
        8998,
        ["10.0.0.2", "10.0.0.3", "10.0.0.3"],
    )
    batched = {**LAB_VARS["gpu"], "moshi_flavour": "personaplex"}  # its checkpoint on the batched server: --host holds
    assert "moshi" not in rules(stack({**LAB_VARS, "gpu": batched}, LAB_GROUPS, "gpu"))


def test_the_mas_host_lets_in_bridges_websites_and_prometheus_and_its_database_clients():
    groups = {**LAB_GROUPS, "website_hosts": ["web"]}
    hostvars = {**LAB_VARS, "web": {"ansible_host": "10.0.0.9"}, "mas": {**LAB_VARS["mas"], "mas_port": 9001}}
    topo = stack(hostvars, groups, "mas")
    assert rules(topo)["mas-api"] == (9001, ["10.0.0.2", "10.0.0.9", "10.0.0.3"])
    assert stack(hostvars, groups, "web")["firewall_rules"] == []  # no node exporter runs on a website host
    assert topo["node_exporter_hosts"] == ["gpu", "mas"]  # each once, and Prometheus scrapes them in this order
    assert rules(topo)["postgresql"] == (5432, ["127.0.0.1/32", "::1/128"])
    assert topo["mas_url"] == "http://10.0.0.3:9001"
    assert topo["prometheus_url"] == "http://127.0.0.1:9090"  # from its own host


def test_prometheus_on_loopback_is_reachable_only_from_its_host():
    assert stack(LAB_VARS, LAB_GROUPS, "gpu")["prometheus_url"] == ""
    hostvars = {**LAB_VARS, "mas": {**LAB_VARS["mas"], "monitoring_prometheus_listen_address": "0.0.0.0"}}
    assert stack(hostvars, LAB_GROUPS, "gpu")["prometheus_url"] == "http://10.0.0.3:9090"
    assert rules(stack(hostvars, LAB_GROUPS, "mas"))["prometheus"] == (9090, ["10.0.0.3", "10.0.0.3"])


def test_a_pool_puts_haproxy_in_front_and_queues_as_many_as_its_slots():
    groups = {"gpu_hosts": ["g1", "g2"], "bridge_hosts": ["edge"], "mas_hosts": ["mas"], "monitoring_hosts": ["mas"]}
    hostvars = {"g1": {"moshi_slots": 4}, "g2": {"moshi_slots": 6, "moshi_tls": True}, "edge": {}, "mas": {}}
    topo = stack(hostvars, groups, "edge")
    assert topo["moshi_lb"] and topo["moshi_slots"] == [4, 6] and topo["moshi_pool_slots"] == 10
    assert topo["bridge_upstream"] == "ws://127.0.0.1:8990/api/chat" and topo["bridge_sessions"] == 20
    assert rules(topo)["haproxy-stats"] == (8404, ["mas"])  # a name: the firewall role resolves it
    assert topo["hosts"]["g2"]["moshi_tls"] and topo["moshi_url"] == "ws://g1:8998/api/chat"


def test_bridge_sessions_follow_the_server():
    groups = {"gpu_hosts": ["gpu"], "bridge_hosts": ["edge"]}
    counted_at_start = stack({"gpu": {}, "edge": {}}, groups, "edge")
    assert counted_at_start["bridge_sessions"] == 64  # the batched server's own cap (MAX_SLOTS_AUTO)
    assert stack({"gpu": {"moshi_slots": 3}, "edge": {}}, groups, "edge")["bridge_sessions"] == 3
    assert stack({"gpu": {"moshi_server": "upstream"}, "edge": {}}, groups, "edge")["bridge_sessions"] == 1


def test_an_inventory_without_groups_has_no_urls():
    topo = stack({"solo": {}}, {"website_hosts": ["solo"]}, "solo")
    assert (topo["moshi_url"], topo["bridge_url"], topo["mas_url"], topo["prometheus_url"]) == ("", "", "", "")
    assert topo["bridge_chat_url"] == "ws://solo:8999/api/chat"  # the site's own host, when no bridge is named
    assert topo["firewall_rules"] == [] and topo["node_exporter_hosts"] == []  # no monitoring hosts: no exporter


def test_a_wsl2_hosts_peers_use_the_windows_boxs_lan_address():
    """Ansible reaches the WSL2 host on 127.0.0.1; the MAS VM sees its connections come from the
    Windows box and reaches its bridge there (portproxy)."""
    groups = {"gpu_hosts": ["wsl"], "bridge_hosts": ["wsl"], "website_hosts": ["wsl"], "mas_hosts": ["mas"]}
    wsl = {"ansible_host": "127.0.0.1", "ansible_connection": "local", "stack_lan_address": "192.168.1.20"}
    hostvars = {"wsl": wsl, "mas": {"ansible_host": "192.168.1.30"}}
    on_mas = stack(hostvars, groups, "mas")
    assert rules(on_mas)["mas-api"] == (8001, ["192.168.1.20", "192.168.1.20"])  # the bridge's events, the site
    assert on_mas["bridge_url"] == "http://192.168.1.20:8999"  # the MAS's check of the bridge
    on_wsl = stack(hostvars, groups, "wsl")
    assert on_wsl["moshi_url"] == "ws://127.0.0.1:8998/api/chat"  # the bridge beside it: loopback still
    without = stack({**hostvars, "wsl": {**wsl, "stack_lan_address": ""}}, groups, "mas")
    assert rules(without)["mas-api"][1] == ["127.0.0.1", "127.0.0.1"]  # what the variable fixes
