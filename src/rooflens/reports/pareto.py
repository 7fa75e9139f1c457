"""The Pareto frontier of (speedup, quality) points: the configurations no other one beats on both."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one (both maximized)."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates, ordered by x then y (the frontier's drawing order).

    Both coordinates are maximized. Equal points are all kept: neither beats the other, and hiding one
    would hide an engine that is exactly as good.
    """
    members = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(members, key=lambda i: (points[i][0], points[i][1]))
