"""The stack's status as tables: per host its services and health, then each MAS's document.

    python -m myca_ops.runner.status reports/status.json

``playbooks/status.yml`` writes the JSON and prints these tables; ``myca-ops status`` too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def health(row: dict) -> str:
    h = row.get("health")
    if not isinstance(h, dict):
        return row.get("health_error") or "no /healthz (moshi.server)"
    if row["group"] == "gpu_hosts":
        tick = h.get("tick_ms") or {}
        ticks = f"tick p50 {tick['p50']} / p99 {tick['p99']} ms" if tick.get("count") else "no tick in the last minute"
        return f"{h.get('status')}: {h.get('slots_used')}/{h.get('slots_total')} slots, {ticks}"
    if row["group"] == "bridge_hosts":
        sessions = f"{h['sessions']}/{h['max_sessions']} sessions" if "sessions" in h else ""
        state = "ok" if h.get("ok") else f"NOT ok: {h.get('error', '')}"
        return ", ".join(p for p in (state, sessions) if p)
    return f"{h.get('status')} (details below)"


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
    alerts = doc.get("alerts") or []
    names = ", ".join(a.get("name", str(a)) if isinstance(a, dict) else str(a) for a in alerts)
    lines.append(f"  {'alerts':<20} {names or 'none firing'}")
    return lines


def table(report: dict) -> str:
    rows = report.get("hosts", [])
    width = max([len(r["host"]) for r in rows] + [4])
    lines = [f"{'host':<{width}}  {'services':<44}  health"]
    for r in rows:
        services = ", ".join(f"{name} {state}" for name, state in r["services"].items())
        lines.append(f"{r['host']:<{width}}  {services:<44}  {health(r)}")
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
