"""The stack's status as tables: per host its services and health, then each MAS's document.

    python -m myca_ops.runner.status reports/status.json

``playbooks/status.yml`` writes the JSON and prints these tables; ``myca-ops status`` too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from myca_ops.runner.tables import plain


def health(row: dict) -> str:
    h = row.get("health")
    if not isinstance(h, dict):
        return row.get("health_error") or "no /healthz (moshi.server)"
    said = status_of(row, h)
    # The myca_ops each service runs (a rollback names one: docs/operations.md).
    return f"{said}; myca_ops {h['version']}" if h.get("version") else said


def status_of(row: dict, h: dict) -> str:
    if row["group"] == "gpu_hosts":
        tick = h.get("tick_ms") or {}
        ticks = f"tick p50 {tick['p50']} / p99 {tick['p99']} ms" if tick.get("count") else "no tick in the last minute"
        return f"{h.get('status')}: {h.get('slots_used')}/{h.get('slots_total')} slots, {ticks}"
    if row["group"] == "bridge_hosts":
        sessions = f"{h['sessions']}/{h['max_sessions']} sessions" if "sessions" in h else ""
        state = "ok" if h.get("ok") else f"NOT ok: {h.get('error', '')}"
        return ", ".join(p for p in (state, sessions) if p)
    if row["group"] == "monitoring_hosts":
        down = [f"{t['metric'].get('job')} on {t['metric'].get('host')}" for t in h["up"] if t["value"][-1] != "1"]
        targets = f"{len(h['up']) - len(down)}/{len(h['up'])} targets up" + (
            f" (down: {', '.join(down)})" if down else ""
        )
        return (
            f"{targets}; firing: {', '.join(alert_names(h['alerts'])) or 'none'}; {told(h.get('notifications') or [])}"
        )
    return f"{h.get('status')} (details below)"


def told(samples: list) -> str:
    """What Alertmanager sent, per integration, from its counters as Prometheus scraped them."""
    counts: dict[str, list[int]] = {}
    for sample in samples:
        metric = sample["metric"]
        failed = metric.get("__name__", "").endswith("_failed_total")
        counts.setdefault(metric.get("integration", "?"), [0, 0])[failed] += int(float(sample["value"][-1]))
    told = [f"{name} {sent} sent" + (f", {failed} FAILED" if failed else "") for name, (sent, failed) in counts.items()]
    used = [t for t in told if not t.endswith(" 0 sent")]
    return "told: " + (", ".join(used) if used else "nobody yet")


def alert_names(alerts: list) -> list[str]:
    """'MycaTargetDown (gpu-host)' from Prometheus's alerts or the MAS's list of them."""
    names = []
    for a in alerts:
        if not isinstance(a, dict):
            names.append(str(a))
            continue
        labels = a.get("labels") or {}
        name = a.get("name") or labels.get("alertname", "?")
        names.append(f"{name} ({labels['host']})" if labels.get("host") else name)
    return names


def mas_document(row: dict) -> list[str]:
    doc = row.get("health")
    if not isinstance(doc, dict):
        return [f"MAS {row['host']}: no status document ({row.get('health_error') or 'no answer'})"]
    c = doc.get("components", {})
    db = c.get("database", {})
    lines = [
        f"MAS {row['host']}: {doc.get('status')} (version {doc.get('version')}, checked at {doc.get('checked_at')})"
    ]
    lines.append(
        f"  {'database':<20} " + (f"ok, {db.get('latency_ms')} ms" if db.get("ok") else f"DOWN: {db.get('error')}")
    )
    for name, col in c.get("collectors", {}).items():
        lines.append(
            f"  {'collector ' + name:<20} {col.get('state')}, beat {col.get('last_heartbeat_age_s')} s ago, "
            f"backlog {col.get('backlog')}"
        )
    for name, part in c.get("voice", {}).items():
        lines.append(f"  {name:<20} " + ("ok" if part.get("ok") else f"NOT ok: {part.get('error')}"))
    prometheus = c.get("prometheus") or {}
    if prometheus.get("ok") is False:
        lines.append(f"  {'prometheus':<20} NOT ok: {prometheus.get('error')}")
    names = ", ".join(alert_names(doc.get("alerts") or []))
    lines.append(f"  {'alerts':<20} {names or 'none firing'}")
    return lines


def windows_side(w: dict) -> str:
    """A WSL2 host's Windows side: the start task, .wslconfig in force, the LAN rule."""
    task = w.get("task") or {}
    started = (
        f"start task {task.get('status')}, last run {task.get('last_run')} (result {task.get('last_result')})"
        if task.get("present")
        else "no start task"
    )
    config = " ".join(f"{k}={v}" for k, v in (w.get("wslconfig") or {}).items()) or "none of the stack's keys"
    to, address = w.get("portproxy_to"), w.get("wsl_address")
    lan = "no portproxy rule" if not to else f"portproxy to {to}" + ("" if to == address else f" (WSL is at {address})")
    return f"Windows side: {started}; .wslconfig {config}; {lan}"


def table(report: dict) -> str:
    rows = report.get("hosts", [])
    services = [", ".join(f"{name} {state}" for name, state in r["services"].items()) for r in rows]
    lines = [
        plain(["host", "services", "health"], [[r["host"], s, health(r)] for r, s in zip(rows, services, strict=True)])
    ]
    lines += [f"{r['host']}: {windows_side(r['windows'])}" for r in rows if r.get("windows")]
    for r in rows:
        if r["group"] == "mas_hosts":
            lines += mas_document(r)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:])[0])
    print(table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
