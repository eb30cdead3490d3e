"""The verify report's pictures, drawn on the control node from the measurement's raw samples
(myca_ops.runner.verify_report calls it).

Per GPU host, one PNG: the frame-time histogram of each measured mode against the 80 ms
budget, and the voice probe's arrivals (the gap before each audio frame) with every underrun
marked; per bridge, its probe's arrivals. Each row gains `picture` (the PNG's name, beside
verify.json), which the page shows.
"""

from __future__ import annotations

import re
from pathlib import Path

from myca_ops.voice.protocol import FRAME_BUDGET_MS


def picture_name(kind: str, host: str) -> str:
    return f"verify-{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}.png"


def draw_frame_times(ax, samples: dict[str, list[float]]) -> None:
    """One histogram per measurement (mode and slot count), and the budget as a vertical line."""
    measured = {label: s for label, s in samples.items() if s}
    if not measured:
        ax.text(0.5, 0.5, "no tick times measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    top = max(FRAME_BUDGET_MS * 1.25, max(max(s) for s in measured.values()) * 1.05)
    bins = [top * i / 50 for i in range(51)]
    for label, s in measured.items():
        over = sum(1 for v in s if v > FRAME_BUDGET_MS)
        ax.hist(s, bins=bins, alpha=0.6, label=f"{label}: {len(s)} ticks, {over} over budget")
    ax.axvline(FRAME_BUDGET_MS, color="#c62828", linestyle="--", label=f"{FRAME_BUDGET_MS:.0f} ms budget")
    ax.set_xlabel("tick per 80 ms frame, every slot talking (encode + LM step + decode), ms")
    ax.set_ylabel("ticks")
    ax.legend(fontsize=8)


def draw_arrivals(ax, arrival_s: list[float], underrun_s: list[float]) -> None:
    """The gap before each audio frame over the conversation; a red line at each underrun."""
    if not arrival_s:
        ax.text(0.5, 0.5, "no audio arrived", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    gaps = [0.0] + [(b - a) * 1000 for a, b in zip(arrival_s, arrival_s[1:], strict=False)]
    ax.plot(arrival_s, gaps, ".", markersize=3, color="#1565c0", label="audio frame (gap before it)")
    ax.axhline(FRAME_BUDGET_MS, color="#9e9e9e", linestyle=":", label=f"{FRAME_BUDGET_MS:.0f} ms")
    for i, t in enumerate(underrun_s):
        ax.axvline(t, color="#c62828", linewidth=1, label="underrun" if i == 0 else None)
    ax.set_xlabel("seconds since the first audio sent")
    ax.set_ylabel("gap, ms")
    ax.legend(fontsize=8, loc="upper right")


def render(rows: list[dict], kind: str, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for row in rows:
        gpu = kind == "gpu"
        fig, axes = plt.subplots(2 if gpu else 1, 1, figsize=(9, 6.5 if gpu else 3.2), squeeze=False)
        if gpu:
            draw_frame_times(axes[0][0], row.get("step_samples_ms") or {})
            axes[0][0].set_title(f"{row['host']}: ticks per slot count ({row.get('gpu')})", fontsize=10)
        ax = axes[-1][0]
        draw_arrivals(ax, row.get("arrival_s") or [], row.get("underrun_s") or [])
        underruns = len(row.get("underrun_s") or [])
        via = "directly" if gpu else f"through the bridge ({row.get('url')})"
        ax.set_title(f"{row['host']}: voice probe {via}, {underruns} underruns", fontsize=10)
        fig.tight_layout()
        row["picture"] = picture_name(kind, row["host"])
        fig.savefig(folder / row["picture"], dpi=90)
        plt.close(fig)
