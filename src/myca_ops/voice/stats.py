"""Small statistics for latency figures (no numpy: also used where it is not installed)."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 2) -> dict:
    """p50/p95/p99/max and the count, rounded, for reports."""

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }
