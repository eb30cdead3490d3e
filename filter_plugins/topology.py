"""The stack's topology, computed from the inventory in one place: which host of each group the
stack's URLs point at, each host's address and ports, Moshi's URL, the bridge's upstream and
session count, the MAS's and Prometheus's URLs, and who may reach which port (the firewall's
rules). roles/stack's `stack_topology` calls it; the roles read that.

A host's value is the inventory's (hostvars), else its role's default: the defaults are read
from roles/*/defaults/main.yml, so each default port is written once, there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

# The control node's venv (`make setup`) holds myca_ops, as filter_plugins/myca.py reads it too.
from myca_ops.voice.model import MAX_SLOTS_AUTO  # the batched server's own cap

ROOT = Path(__file__).resolve().parent.parent

GROUPS = ["gpu_hosts", "bridge_hosts", "website_hosts", "mas_hosts", "monitoring_hosts"]
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@functools.cache
def role_defaults() -> dict:
    """The literal defaults (no Jinja) of the roles whose values other hosts read."""
    out = {}
    for role in ("moshi", "bridge", "mas", "monitoring", "moshi_lb"):
        for key, value in (yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}).items():
            if not (isinstance(value, str) and "{{" in value):
                out[key] = value
    return out


class Topology:
    def __init__(self, hostvars, groups: dict, here: str, chosen: dict):
        self.hostvars, self.groups, self.here = hostvars, groups, here
        self.gpu, self.bridge, self.mas, self.monitoring = (chosen[k] for k in ("gpu", "bridge", "mas", "monitoring"))

    def group(self, name: str) -> list:
        return list(self.groups.get(name) or [])

    @functools.cache  # noqa: B019 - one Topology per call: each host's variables are merged once, not per lookup
    def vars_of(self, host: str):
        return self.hostvars[host] if host in self.hostvars else {}

    def value(self, host: str, name: str):
        """The inventory's value for `host`, else the role's default."""
        return self.value_or(host, name, role_defaults()[name]) if name in role_defaults() else self.vars_of(host)[name]

    def address(self, host: str) -> str:
        """Where the stack's other hosts reach `host` and see its connections come from: its
        stack_lan_address (a WSL2 host: the Windows box's LAN address, since its ansible_host is
        127.0.0.1 and its traffic leaves through Windows), else its ansible_host, else its name."""
        return self.vars_of(host).get("stack_lan_address") or self.value_or(host, "ansible_host", host)

    def value_or(self, host: str, name: str, default):
        host_vars = self.vars_of(host)
        return host_vars[name] if name in host_vars else default

    def addresses(self, group: str) -> list:
        return [self.address(h) for h in self.group(group)]

    def moshi_local_only(self) -> bool:
        """Moshi listens on loopback only when its one client, the bridge, shares its host."""
        return bool(self.gpu) and self.group("bridge_hosts") == [self.gpu]

    def moshi_listens_on_loopback(self, host: str) -> bool:
        default = "127.0.0.1" if self.group("bridge_hosts") == [host] else "0.0.0.0"  # the moshi role's rule
        return self.value_or(host, "moshi_host", default) in LOOPBACK

    def moshi_url(self) -> str:
        if not self.gpu:
            return ""
        scheme = "wss" if self.value(self.gpu, "moshi_tls") else "ws"
        address = "127.0.0.1" if self.moshi_local_only() else self.address(self.gpu)
        return f"{scheme}://{address}:{self.value(self.gpu, 'moshi_port')}/api/chat"

    def moshi_slots(self) -> list:
        return [int(self.value(h, "moshi_slots")) for h in self.group("gpu_hosts")]

    def bridge_sessions(self, lb: bool, slots: int) -> int:
        """Sessions the bridge takes at once: with a pool, its slots plus as many waiting in
        HAProxy's queue; one batched Moshi, its slots (or the server's own cap when it counts
        them at start: past them it says "busy" itself); moshi.server, one."""
        if lb:
            return slots * 2
        batched = not self.gpu or self.value(self.gpu, "moshi_server") == "batched"
        return (slots or MAX_SLOTS_AUTO) if batched else 1

    def url(self, host: str, port_name: str, tls_name: str | None = None) -> str:
        if not host:
            return ""
        scheme = "https" if tls_name and self.value(host, tls_name) else "http"
        return f"{scheme}://{self.address(host)}:{self.value(host, port_name)}"

    def prometheus_url(self) -> str:
        """Prometheus as `here` reaches it: loopback on its own host, by address when it listens
        beyond loopback, else none."""
        host = self.monitoring
        if not host:
            return ""
        port = self.value(host, "monitoring_prometheus_port")
        if host == self.here:
            return f"http://127.0.0.1:{port}"
        if self.value(host, "monitoring_prometheus_listen_address") in LOOPBACK:
            return ""
        return f"http://{self.address(host)}:{port}"

    def node_exporter_hosts(self) -> list:
        """Where the node exporter runs: with monitoring hosts, every host of every group but the websites'."""
        if not self.group("monitoring_hosts"):
            return []
        groups = ("gpu_hosts", "mas_hosts", "bridge_hosts", "monitoring_hosts")
        return list(dict.fromkeys(h for g in groups for h in self.group(g)))

    def firewall_rules(self, lb: bool) -> list:
        """The ports `here` opens and to whom (addresses or names; the firewall role resolves names)."""
        here, monitoring = self.here, self.addresses("monitoring_hosts")
        rules = []
        # PersonaPlex's own server listens on every address whatever --host says: its port always gets one.
        personaplex_server = (self.value(here, "moshi_flavour"), self.value(here, "moshi_server")) == (
            "personaplex",
            "upstream",
        )
        if here in self.group("gpu_hosts") and (not self.moshi_listens_on_loopback(here) or personaplex_server):
            clients = self.addresses("bridge_hosts") + self.addresses("mas_hosts") + monitoring
            rules.append({"name": "moshi", "port": self.value(here, "moshi_port"), "clients": clients})
        if here in self.group("mas_hosts"):
            clients = self.addresses("bridge_hosts") + self.addresses("website_hosts") + monitoring
            rules.append({"name": "mas-api", "port": self.value(here, "mas_port"), "clients": clients})
            db_clients = list(self.value(here, "mas_db_allowed_hosts"))
            rules.append({"name": "postgresql", "port": self.value(here, "mas_db_port"), "clients": db_clients})
        if here in self.group("bridge_hosts") and lb and monitoring:
            rules.append(
                {"name": "haproxy-stats", "port": self.value(here, "moshi_lb_stats_port"), "clients": monitoring}
            )
        if here in self.node_exporter_hosts():
            rules.append(
                {
                    "name": "node-exporter",
                    "port": self.value(here, "monitoring_node_exporter_port"),
                    "clients": monitoring,
                }
            )
        if here in self.group("monitoring_hosts") and (
            self.value(here, "monitoring_prometheus_listen_address") not in LOOPBACK
        ):
            clients = self.addresses("mas_hosts") + monitoring
            rules.append(
                {"name": "prometheus", "port": self.value(here, "monitoring_prometheus_port"), "clients": clients}
            )
        return rules

    def as_dict(self) -> dict:
        lb = len(self.group("gpu_hosts")) > 1
        moshi_url, slots = self.moshi_url(), self.moshi_slots()
        # HAProxy on this (the bridge's) host, in front of the pool.
        lb_url = (
            f"ws://{self.value(self.here, 'moshi_lb_listen_address')}:{self.value(self.here, 'moshi_lb_port')}/api/chat"
        )
        batched = [h for h in self.group("gpu_hosts") if self.value(h, "moshi_server") == "batched"]
        return {
            "gpu_host": self.gpu,
            "bridge_host": self.bridge,
            "mas_host": self.mas,
            "monitoring_host": self.monitoring,
            "addresses": {group: self.addresses(group) for group in GROUPS},
            "moshi_local_only": self.moshi_local_only(),
            "moshi_url": moshi_url,
            "moshi_slots": slots,
            "moshi_pool_slots": sum(slots),
            "moshi_lb": lb,
            "moshi_client_prompts": bool(self.gpu) and bool(self.value(self.gpu, "moshi_allow_client_prompts")),
            # Moshi's /metrics readable from here: loopback behind its own bridge is, only from its host.
            "moshi_metrics_hosts": batched if not self.moshi_local_only() else [h for h in batched if h == self.here],
            "bridge_upstream": lb_url if lb else moshi_url,
            "bridge_sessions": self.bridge_sessions(lb, sum(slots)),
            "bridge_url": self.url(self.bridge, "bridge_port", "bridge_tls"),
            # The bridge's /api/chat as a browser opens it (this host's own bridge when none is named).
            "bridge_chat_url": self.url(self.bridge or self.here, "bridge_port", "bridge_tls").replace("http", "ws", 1)
            + "/api/chat",
            "mas_url": self.url(self.mas, "mas_port"),
            "prometheus_url": self.prometheus_url(),
            "firewall_rules": self.firewall_rules(lb),
            "node_exporter_hosts": self.node_exporter_hosts(),
            # Every host of the stack's groups and this one, each with the ports others reach it on.
            "hosts": {
                h: {
                    "address": self.address(h),
                    "moshi_port": self.value(h, "moshi_port"),
                    "moshi_tls": bool(self.value(h, "moshi_tls")),
                    "bridge_port": self.value(h, "bridge_port"),
                    "bridge_tls": bool(self.value(h, "bridge_tls")),
                    "mas_port": self.value(h, "mas_port"),
                    "node_exporter_port": self.value(h, "monitoring_node_exporter_port"),
                    "haproxy_stats_port": self.value(h, "moshi_lb_stats_port"),
                    "prometheus_port": self.value(h, "monitoring_prometheus_port"),
                }
                for h in [*(h for group in GROUPS for h in self.group(group)), self.here]
            },
        }


def topology(hostvars, groups, here, gpu="", bridge="", mas="", monitoring="") -> dict:
    """`hostvars | myca_topology(groups, inventory_hostname, gpu=..., bridge=..., mas=..., monitoring=...)`:
    the hosts named are the ones the stack's URLs point at (roles/stack: the first of each group; "": none)."""
    chosen = {"gpu": gpu, "bridge": bridge, "mas": mas, "monitoring": monitoring}
    return Topology(hostvars, groups, here, chosen).as_dict()


class FilterModule:
    def filters(self):
        return {"myca_topology": topology}
