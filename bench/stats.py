"""Figures shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def quantiles(values: Iterable[float], qs: Sequence[float] = (0.5, 0.95, 0.99, 1.0)) -> list[float]:
    s = sorted(values)
    return [percentile(s, q) for q in qs]
