"""A load test as a picture: one row per caller, waiting and talking, each underrun marked.

    python -m myca_ops.runner.timeline reports/loadtest.json reports/loadtest.png

Made on the control node (matplotlib) from what ``moshi_voice_probe`` with ``callers`` returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from myca_ops.runner.tables import plain
from myca_ops.voice.loadtest import OUTCOMES
from myca_ops.voice.protocol import FRAME_BUDGET_MS

COLOURS = dict(zip(OUTCOMES, ("#2e7d32", "#f9a825", "#c62828", "#757575", "#1565c0"), strict=True))


def bars(caller: dict) -> dict:
    """Where a caller is drawn, in seconds since the first caller connected (one clock for all):
    waiting from its connect to its handshake (or refusal), talking from its first send to its
    last audio; its underruns and long gaps on the same axis."""
    start = caller.get("start_s") or 0.0
    waited = (caller.get("waited_ms") or 0) / 1000
    if caller["outcome"] == "refused":
        return {"waiting": (start, max(waited, 0.05)), "talking": None, "gaps": [], "underruns": []}
    talk = caller.get("stream_s") or caller.get("handshake_s") or start + waited
    arrivals = caller.get("arrival_s") or []
    gaps = [b for a, b in zip(arrivals, arrivals[1:], strict=False) if (b - a) * 1000 > 2 * FRAME_BUDGET_MS]
    return {
        "waiting": (start, talk - start),
        "talking": (talk, (arrivals[-1] if arrivals else 0) + 0.08),
        "gaps": [talk + t for t in gaps],
        "underruns": [talk + t for t in caller.get("underrun_s") or []],
    }


def render(load: dict, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    callers = load["callers"]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * len(callers)))
    for row, c in enumerate(callers):
        y = len(callers) - 1 - row
        drawn, colour = bars(c), COLOURS[c["outcome"]]
        if drawn["talking"] is None:
            ax.barh(y, drawn["waiting"][1], left=drawn["waiting"][0], color=colour, height=0.5)
            ax.text(sum(drawn["waiting"]), y, f"  refused: close {c.get('close_code')}", va="center", fontsize=8)
            continue
        ax.barh(y, drawn["waiting"][1], left=drawn["waiting"][0], color="#bdbdbd", height=0.5)  # waiting for a slot
        ax.barh(y, drawn["talking"][1], left=drawn["talking"][0], color=colour, height=0.5)
        ax.plot(drawn["gaps"], [y + 0.3] * len(drawn["gaps"]), "v", color="#ef6c00", markersize=4)
        ax.plot(drawn["underruns"], [y] * len(drawn["underruns"]), "x", color="black", markersize=6)
    ax.set_yticks(range(len(callers)), [f"caller {c['caller']}" for c in reversed(callers)])
    ax.set_xlabel("seconds since the first caller connected")
    counts = ", ".join(f"{load['summary'].get(o, 0)} {o}" for o in OUTCOMES)
    ax.set_title(
        f"{len(callers)} callers: {counts}\n"
        f"grey: connecting and waiting for a slot; bar: talking (colour = verdict); x: underrun; "
        f"v: audio gap over 2 frames ({2 * FRAME_BUDGET_MS:.0f} ms)",
        fontsize=9,
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, COLOURS, loc="lower right", fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


def table(load: dict) -> str:
    rows = [
        [
            c["caller"],
            f"{c.get('start_s') or 0:.1f}s",
            _ms(c.get("waited_ms")),
            _ms(c.get("first_audio_ms")),
            _ms((c.get("gap_ms") or {}).get("p99")),
            c.get("underruns"),
            c.get("close_code"),
            c["outcome"],
        ]
        for c in load["callers"]
    ]
    header = ["caller", "start", "waited", "1st audio", "gap p99", "under", "close", "outcome"]
    return plain(header, rows, right=tuple(range(7))) + f"\n{load['cause']} ({load['url']})"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", type=Path, help="the load test's JSON (moshi_voice_probe with callers)")
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    load = json.loads(args.result.read_text())
    print(table(load))
    print(f"timeline: {render(load, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
