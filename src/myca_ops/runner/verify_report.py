"""The verify report, built once from the measurements' own results and rendered from the same
rows as the table `make lab` prints, Markdown, a page with a picture per host, and JSON.

    python -m myca_ops.runner.verify_report reports/verify-raw.json

playbooks/verify.yml records each host's raw results (the step-latency module's, the voice
probe's, Moshi's /healthz, the MAS's /api/myca/status) in verify-raw.json; this writes
verify.json (the rows: numbers stay numbers, booleans booleans), verify.md, verify.html and the
pictures beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from myca_ops.runner.tables import plain
from myca_ops.voice.protocol import FRAME_BUDGET_MS


def _total(step: dict, stat: str) -> float | None:
    results = step.get("results") or [{}]
    return ((results[0].get("stages") or {}).get("total") or {}).get(stat)


def gpu_state(states: list[dict] | None) -> str:
    """The GPU's peaks while the step latency was measured (myca_ops.voice.gpu.Sampler)."""
    if states is None:
        return "not read (no NVML: no GPU, or no driver)"
    gib = 1 << 30

    def one(g: dict) -> str:
        power = "-" if g["power_max_w"] is None else f"{g['power_max_w']:.0f} W"
        return (
            f"GPU{g['gpu']} {g['name']}: busy {g['utilization_max']:.0%}, memory {g['memory_used_max_bytes'] / gib:.1f}"
            f" of {g['memory_total_bytes'] / gib:.1f} GiB, {g['temperature_max_c']} °C, {power}, "
            f"throttled: {', '.join(g['throttled']) or 'no'} (peaks of {g['samples']} readings)"
        )

    return "; ".join(one(g) for g in states)


def gpu_row(raw: dict) -> dict:
    """A GPU host's row from its step-latency result, voice probe and /healthz."""
    step, voice, health = raw["step"], raw.get("voice") or {}, raw.get("health") or {}
    tick = health.get("tick_ms") or {}
    persona = health.get("default_persona")
    return {
        "host": raw["host"],
        "gpu": step.get("gpu_name") or "none (CPU)",
        "mode": step.get("mode"),
        "mode_reason": step.get("mode_reason"),
        "step_p50_ms": _total(step, "p50"),
        "step_p99_ms": _total(step, "p99"),
        "budget_ms": step.get("budget_ms", FRAME_BUDGET_MS),
        "slots": step.get("slots"),
        "capacity": step.get("capacity"),
        "slot_mib": (step.get("results") or [{}])[0].get("slot_mib"),
        "step_realtime": bool(step.get("realtime")),
        "step_cause": step.get("cause") or step.get("msg"),
        "first_audio_ms": voice.get("first_audio_ms"),
        "underruns": voice.get("underruns") or 0,
        "voice_realtime": voice.get("realtime"),
        "voice_cause": voice.get("cause"),
        # The persona callers get by default, and how long the probe waited for its handshake.
        "persona": f"{persona}, handshake {voice.get('handshake_ms', '-')} ms" if persona else "none",
        "server": raw.get("server", "batched"),
        "slots_used": health.get("slots_used"),
        "slots_total": health.get("slots_total"),
        "tick_p50_ms": tick.get("p50"),
        "tick_p99_ms": tick.get("p99"),
        "tick_count": tick.get("count") or 0,
        "health_status": health.get("status", "no /healthz (moshi.server)"),
        "realtime": bool(step.get("realtime")) and voice.get("realtime") is not False,
        "require_realtime": bool(raw.get("require_realtime", True)),
        "skipped": skipped(step, voice),
        "torch": step.get("torch_version"),
        "triton": step.get("triton_version"),
        "driver": raw.get("driver"),
        "gpu_state": gpu_state(step.get("gpu_state")),
        # The raw figures the pictures draw: each measurement's tick times, the probe's arrivals.
        "step_samples_ms": {r.get("label"): r.get("samples_ms") or [] for r in step.get("results") or []},
        "arrival_s": voice.get("arrival_s") or [],
        "underrun_s": voice.get("underrun_s") or [],
    }


def bridge_row(raw: dict) -> dict:
    """A bridge's row from the voice probe made through it."""
    voice = raw.get("voice") or {}
    return {
        "host": raw["host"],
        "url": raw["url"],
        "credential": raw.get("credential", "none"),
        "handshake_ms": voice.get("handshake_ms"),
        "first_audio_ms": voice.get("first_audio_ms"),
        "underruns": voice.get("underruns") or 0,
        "realtime": voice.get("realtime") is True,
        "cause": voice.get("cause"),
        "require_realtime": bool(raw.get("require_realtime", True)),
        "skipped": skipped(voice),
        "arrival_s": voice.get("arrival_s") or [],
        "underrun_s": voice.get("underrun_s") or [],
    }


def skipped(*results: dict) -> str | None:
    """Why a measurement was not made (check mode on a host the run has not deployed yet), or None."""
    return next((r.get("msg") or "skipped" for r in results if r.get("skipped")), None)


def mas_row(raw: dict) -> dict:
    """A MAS's row from its /api/myca/status document."""
    components = raw["status"].get("components") or {}
    database = components.get("database") or {}
    collectors = components.get("collectors") or {}
    voice = components.get("voice") or {}
    return {
        "host": raw["host"],
        "status": raw["status"].get("status"),
        "database_ok": bool(database.get("ok")),
        "database_ms": database.get("latency_ms"),
        "database_error": database.get("error"),
        "collectors_running": sum(1 for c in collectors.values() if c.get("state") == "running"),
        "collectors": len(collectors),
        "collectors_detail": ", ".join(
            f"{name} {c.get('state')} (beat {c.get('last_heartbeat_age_s')} s ago, backlog {c.get('backlog')})"
            for name, c in collectors.items()
        ),
        "moshi_ok": (voice.get("moshi") or {}).get("ok"),
        "bridge_ok": (voice.get("bridge") or {}).get("ok"),
    }


def build(raw: dict) -> dict:
    """The report's rows from verify-raw.json's records."""
    return {
        "gpu_hosts": [gpu_row(r) for r in raw.get("gpu_hosts", [])],
        "bridge_hosts": [bridge_row(r) for r in raw.get("bridge_hosts", [])],
        "mas_hosts": [mas_row(r) for r in raw.get("mas_hosts", [])],
    }


def failures(doc: dict) -> list[str]:
    """Why the verification fails: a host that must be real-time and is not, a MAS that is down."""
    out = [
        f"{r['host']} is not real-time: {r.get('step_cause') or ''}; voice: {r.get('voice_cause') or r.get('cause')}"
        for r in doc["gpu_hosts"] + doc["bridge_hosts"]
        if r["require_realtime"] and not r["realtime"] and not r.get("skipped")
    ]
    out += [
        f"{r['host']}: /api/myca/status is down: database: {r['database_error']}"
        for r in doc["mas_hosts"]
        if r["status"] == "down"
    ]
    return out


def _ms(value, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f} ms"


def _as_measured(value) -> str:
    """A figure as the measurement gave it (the page and Markdown show what the modules said)."""
    return "-" if value is None else f"{value} ms"


def _verdict(ok: bool) -> str:
    return "real-time" if ok else "NOT real-time"


def budget(doc: dict) -> float:
    """The frame budget the measurements were made against (the modules report it)."""
    return next((r["budget_ms"] for r in doc["gpu_hosts"] if r.get("budget_ms") is not None), FRAME_BUDGET_MS)


def text(doc: dict) -> str:
    """The tables `make lab` and `myca-ops verify` print (the Markdown and HTML reports' own), each
    with its notes."""
    out = []
    for title, key, header, rows in _tables(doc):
        out.append(plain(header, rows, title=title))
        if key == "gpu-hosts":
            out += [f"{r['host']}: {note}" for r in doc["gpu_hosts"] for note in _host_notes(r)]
        if key == "bridges":
            out += [f"{r['host']}: voice through the bridge: {r['cause']}" for r in doc["bridge_hosts"]]
        if key == "mas":
            for r in doc["mas_hosts"]:
                error = f"; database: {r['database_error']}" if r["database_error"] else ""
                out.append(f"{r['host']}: collectors: {r['collectors_detail']}{error}")
    return "\n".join(out) + "\n"


# The tables of every report (text, Markdown, HTML): (title, id, header, cells of a row).
def _tables(doc: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    def database(r):
        return f"ok, {_as_measured(r['database_ms'])}" if r["database_ok"] else str(r["database_error"])

    tables = [
        (
            "GPU hosts",
            "gpu-hosts",
            ["host", "GPU", "mode", "tick p50", "tick p99", "carries", "budget", "first audio", "underruns", "verdict"],
            [
                [r["host"], r["gpu"], str(r["mode"]), _as_measured(r["step_p50_ms"]), _as_measured(r["step_p99_ms"])]
                + [
                    f"{r['capacity']} of {r['slots']}",
                    _as_measured(r["budget_ms"]),
                    _as_measured(r["first_audio_ms"]),
                    str(r["underruns"]),
                ]
                + [_verdict(r["realtime"])]
                for r in doc["gpu_hosts"]
            ],
        ),
        (
            "",
            "gpu-servers",
            ["host", "server", "slots in use", "tick p50", "tick p99", "ticks", "/healthz"],
            [
                [r["host"], r["server"], f"{r['slots_used']}/{r['slots_total']}"]
                + [
                    _as_measured(r["tick_p50_ms"]),
                    _as_measured(r["tick_p99_ms"]),
                    str(r["tick_count"]),
                    r["health_status"],
                ]
                if r["server"] == "batched"
                else [
                    r["host"],
                    r["server"],
                    "1",
                    "-",
                    "-",
                    "-",
                    r["health_status"],
                ]  # moshi.server: one caller, no /healthz
                for r in doc["gpu_hosts"]
            ],
        ),
        (
            "Voice through the bridge",
            "bridges",
            ["bridge", "URL", "handshake", "first audio", "underruns", "verdict"],
            [
                [
                    r["host"],
                    f"{r['url']} ({r['credential']})",
                    _as_measured(r["handshake_ms"]),
                    _as_measured(r["first_audio_ms"]),
                ]
                + [str(r["underruns"]), _verdict(r["realtime"])]
                for r in doc["bridge_hosts"]
            ],
        ),
        (
            "MAS status (/api/myca/status)",
            "mas",
            ["host", "status", "database", "collectors running", "moshi", "bridge"],
            [
                [r["host"], r["status"], database(r), f"{r['collectors_running']}/{r['collectors']}"]
                + [str(r["moshi_ok"]), str(r["bridge_ok"])]
                for r in doc["mas_hosts"]
            ],
        ),
    ]
    # The GPU hosts' tables always (an empty one says none was measured); the others when they have rows.
    return [t for t in tables if t[1].startswith("gpu") or t[3]]


def _host_notes(r: dict) -> list[str]:
    return [
        f"{r['mode']}: {r['mode_reason']}; torch {r['torch'] or 'none'}, Triton {r['triton'] or 'none'}, driver {r['driver'] or 'none'}",
        f"capacity: {r['step_cause']}",
        f"GPU during the measurement: {r['gpu_state']}",
        f"voice: {r['voice_cause']}",
        f"persona: {r['persona']}",
    ]


def markdown(doc: dict) -> str:
    out = ["# Verification report", ""]
    for title, _, header, rows in _tables(doc):
        if title and title != "GPU hosts":
            out += [f"## {title}", ""]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in rows]
        out.append("")
        if title == "" and doc["gpu_hosts"]:
            for r in doc["gpu_hosts"]:
                notes = _host_notes(r)
                out.append(f"- **{r['host']}** ({notes[0]})")
                out += [f"  - {n}" for n in notes[1:]]
            out.append("")
        if title == "Voice through the bridge":
            out += [f"- **{r['host']}**: {r['cause']}" for r in doc["bridge_hosts"]] + [""]
    return "\n".join(out)


PAGE_STYLE = """  body { font-family: sans-serif; margin: 2em; color: #212121; }
  table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
  th, td { border: 1px solid #bdbdbd; padding: 0.25em 0.6em; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .ok { color: #2e7d32; font-weight: bold; }
  .bad { color: #c62828; font-weight: bold; }
  img { max-width: 100%; border: 1px solid #e0e0e0; }"""


def page(doc: dict, note: str = "") -> str:
    """verify.html: the tables, each host's notes and its picture (the `picture` of its row)."""
    e = html.escape

    def cell(value: str) -> str:
        if value in ("real-time", "NOT real-time"):
            return f'<td><span class="{"ok" if value == "real-time" else "bad"}">{value}</span></td>'
        return f"<td>{e(value)}</td>"

    def picture(r: dict) -> str:
        if "picture" not in r:
            return ""
        return f'<p><img src="{e(r["picture"])}" alt="{e(r["host"])}: frame times and voice arrivals"></p>'

    out = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>myca-ops verify report</title>\n<style>\n{PAGE_STYLE}\n</style>\n</head>\n<body>",
        "<h1>Verify report</h1>",
        f"<p>Each Moshi's tick (encode, LM step, decode for every slot talking) against the {budget(doc):.0f} ms budget and "
        "how many conversations fit it, a real voice round trip as the browser makes it, and the MAS's status. "
        "Generated by playbooks/verify.yml.</p>",
    ]
    if note:
        out.append(f'<p class="bad">{e(note)}</p>')
    for title, table_id, header, rows in _tables(doc):
        if title:
            out.append(f"<h2>{e(title)}</h2>")
        out.append(f'<table id="{table_id}">')
        out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(cell(c) for c in cells) + "</tr>" for cells in rows]
        out.append("</table>")
        if table_id == "gpu-servers":
            for r in doc["gpu_hosts"]:
                out.append(f"<h3>{e(r['host'])}</h3>\n<p>" + "<br>".join(e(n) for n in _host_notes(r)) + "</p>")
                out.append(picture(r))
        if table_id == "bridges":
            for r in doc["bridge_hosts"]:
                out.append(f"<p>{e(r['host'])}: {e(str(r['cause']))}</p>")
                out.append(picture(r))
    out.append("</body>\n</html>\n")
    return "\n".join(line for line in out if line)


def write(doc: dict, folder: Path) -> str:
    """verify.json, verify.md, the pictures (when matplotlib is here) and verify.html in `folder`;
    returns why there are no pictures ('' when there are)."""
    from myca_ops.runner import report

    note = ""
    try:
        report.render(doc["gpu_hosts"], "gpu", folder)
        report.render(doc["bridge_hosts"], "bridge", folder)
    except ImportError:
        note = "no pictures: matplotlib is not installed on the control node (pip install matplotlib)"
    (folder / "verify.json").write_text(json.dumps(doc, indent=4) + "\n")
    (folder / "verify.md").write_text(markdown(doc))
    (folder / "verify.html").write_text(page(doc, note))
    return note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="verify-raw.json (playbooks/verify.yml writes it)")
    args = parser.parse_args(argv)
    doc = build(json.loads(args.raw.read_text()))
    note = write(doc, args.raw.parent)
    print(text(doc), end="")
    print(f"verify report: {args.raw.parent.resolve() / 'verify.html'} {note}".rstrip())
    failed = failures(doc)
    for failure in failed:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
