"""History: runs in time order, one series per cell and metric, and the change points in each.

A series holds one point per run: the median of the metric over the run's repetitions of that cell (``ok``
records only), in the order the runs were measured. Change points are found in two steps: candidates
from binary segmentation of the log values (the ``ruptures`` library, least-squares cost, a BIC-like
penalty of 2 sigma^2 log n per change, sigma estimated robustly from the first differences), then each
candidate is kept only when it is significant and large: a permutation test of the segment it splits
(the best split's cost reduction against that of the same values shuffled, so the p-value accounts for
the split having been chosen as the best) at ``alpha``, and a change of the medians of at least
``min_change``. That is the shape of E-Divisive means with a p-value cut and a minimum magnitude
(Hunter/apache-otava), with a maintained library that installs beside this project's numpy and scipy
(apache-otava and MongoDB's signal-processing-algorithms pin older ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import ruptures

from rooflens.results.compare import BETTER
from rooflens.results.derived import CellKey, cell_key
from rooflens.results.record import Record
from rooflens.results.runs import runs_of

MIN_SEGMENT = 3
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Point:
    run_id: str
    when: str  # the run's start
    commit: str  # rooflens's commit (12 characters), or "unknown"
    value: float


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first point after the change
    before: float  # median of the segment before
    after: float  # median of the segment after
    p_value: float
    better: str

    @property
    def change(self) -> float:
        """Relative change of the medians, positive = better."""
        ratio = self.after / self.before
        return ratio - 1 if self.better == "higher" else 1 / ratio - 1


@dataclass
class Series:
    cell: CellKey
    metric: str
    points: list[Point] = field(default_factory=list)
    changes: list[ChangePoint] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.cell.describe()} {self.metric}"


def _commit(r: Record) -> str:
    git = r.environment.get("rooflens_git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    return commit + ("+" if git.get("dirty") else "")


def build_series(records: list[Record], metrics: tuple[str, ...]) -> list[Series]:
    """One series per cell and metric, a point per run that measured the cell ``ok``, runs in time order."""
    by: dict[tuple[CellKey, str], Series] = {}
    for run in runs_of(records):
        for r in run.records:
            if r.status != "ok":
                continue
            key = cell_key(r)
            for metric in metrics:
                m = r.metrics.get(metric)
                if m is None or not m.median or m.median <= 0:
                    continue
                series = by.setdefault((key, metric), Series(key, metric))
                series.points.append(Point(run.run_id, run.started, _commit(r), m.median))
    return list(by.values())


def _sigma(logs: np.ndarray) -> float:
    """The noise of a series, robust to its steps: the MAD of the first differences over sqrt(2)."""
    diffs = np.abs(np.diff(logs))
    return float(MAD_TO_SIGMA * np.median(diffs) / math.sqrt(2)) if len(diffs) else 0.0


PERMUTATIONS = 999


def _best_gains(x: np.ndarray, min_size: int) -> np.ndarray:
    """Per row of ``x``, the largest drop of the squared error from splitting the row in two (each part at
    least ``min_size`` long)."""
    m = x.shape[1]
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    total = s2[:, -1] - s1[:, -1] ** 2 / m
    k = np.arange(min_size, m - min_size + 1)  # left part sizes
    left = s2[:, k - 1] - s1[:, k - 1] ** 2 / k
    right = (s2[:, -1:] - s2[:, k - 1]) - (s1[:, -1:] - s1[:, k - 1]) ** 2 / (m - k)
    return np.max(total[:, None] - left - right, axis=1)


def split_p_value(segment: np.ndarray, min_size: int = MIN_SEGMENT, permutations: int = PERMUTATIONS) -> float:
    """How often the segment's values, shuffled, split better than they do in order (the permutation p-value of
    its best split)."""
    if len(segment) < 2 * min_size or np.ptp(segment) == 0:
        return 1.0
    rng = np.random.default_rng(0)
    observed = _best_gains(segment[None, :], min_size)[0]
    shuffled = rng.permuted(np.tile(segment, (permutations, 1)), axis=1)
    beaten = int(np.sum(_best_gains(shuffled, min_size) >= observed - 1e-12))
    return (1 + beaten) / (1 + permutations)


def find_changes(
    values: list[float], better: str, alpha: float = 0.01, min_change: float = 0.05, min_size: int = MIN_SEGMENT
) -> list[ChangePoint]:
    """The change points of one series (the index of the first point after each)."""
    n = len(values)
    if n < 2 * min_size:
        return []
    logs = np.log(np.asarray(values, dtype=float))
    sigma = max(_sigma(logs), 1e-9)
    penalty = 2 * sigma**2 * math.log(n)
    candidates = ruptures.Binseg(model="l2", min_size=min_size, jump=1).fit(logs.reshape(-1, 1)).predict(pen=penalty)
    bounds = [0, *candidates]  # ruptures ends the list with n
    kept = []
    for i in range(1, len(bounds) - 1):
        left, right = logs[bounds[i - 1] : bounds[i]], logs[bounds[i] : bounds[i + 1]]
        before, after = math.exp(float(np.median(left))), math.exp(float(np.median(right)))
        if abs(after / before - 1) < min_change:
            continue
        p = split_p_value(logs[bounds[i - 1] : bounds[i + 1]], min_size)
        if p <= alpha:
            kept.append(ChangePoint(bounds[i], before, after, p, better))
    return kept


def history(
    records: list[Record], metrics: tuple[str, ...] = ("decode_tok_s",), alpha: float = 0.01, min_change: float = 0.05
) -> list[Series]:
    """Every series of ``records`` with its change points."""
    out = build_series(records, metrics)
    for s in out:
        s.changes = find_changes([p.value for p in s.points], BETTER[s.metric], alpha, min_change)
    return out


def summary_table(series: list[Series]) -> list[dict[str, str]]:
    """One row per detected change: the series, the commits around it, the medians and the change."""
    rows = []
    for s in series:
        for c in s.changes:
            a, b = s.points[c.index - 1], s.points[c.index]
            rows.append(
                {
                    "series": s.name,
                    "between": f"{a.commit} ({a.run_id}) -> {b.commit} ({b.run_id})",
                    "before": f"{c.before:.4g}",
                    "after": f"{c.after:.4g}",
                    "change": f"{100 * c.change:+.1f}%",
                    "direction": "better" if c.change > 0 else "worse",
                    "p": f"{c.p_value:.2g}",
                }
            )
    return rows
