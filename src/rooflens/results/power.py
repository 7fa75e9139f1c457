"""Could a comparison have seen the change it was asked about? The smallest change a design detects.

"No significant change" means something only when the design could have detected the threshold: with the
noise each side showed and its number of repetitions (or paired rounds), at the chosen alpha, with 80 %
power. The estimate works on log values (a relative change is a difference of logs): the variance of a
median is about pi/2 times that of a mean, sigma^2 / n, for normal-ish samples; the detectable change is
(z[1 - alpha] + z[power]) standard errors of the difference. A rank test has a floor too: with n and m
samples the smallest one-sided Mann-Whitney p is 1 / C(n + m, n), so 4 against 4 can never reach 0.01.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import norm

POWER = 0.8
MEDIAN_EFFICIENCY = math.pi / 2  # var(median) / var(mean) for normal samples


def median_log_variance(samples: Sequence[float]) -> float:
    """Variance of the log of the samples' median, estimated from their spread (inf with fewer than 2)."""
    logs = [math.log(x) for x in samples if x > 0]
    n = len(logs)
    if n < 2:
        return math.inf
    mean = sum(logs) / n
    var = sum((v - mean) ** 2 for v in logs) / (n - 1)
    return MEDIAN_EFFICIENCY * var / n


def detectable_change(variance: float, alpha: float, power: float = POWER) -> float:
    """The smallest relative change detected at ``alpha`` with ``power``, given the variance of the estimated
    log change (both sides' median variances summed)."""
    if math.isinf(variance):
        return math.inf
    z = norm.ppf(1 - alpha) + norm.ppf(power)
    return math.expm1(z * math.sqrt(variance))


def rank_test_floor(n: int, m: int) -> float:
    """The smallest one-sided p-value a Mann-Whitney U test of n against m samples can give."""
    return 1.0 / math.comb(n + m, n)


def repetitions_needed(n: int, detectable: float, threshold: float) -> int:
    """About how many repetitions (or rounds) a side would let the same noise show ``threshold``."""
    if math.isinf(detectable) or threshold <= 0:
        return 0
    scale = (math.log1p(detectable) / math.log1p(threshold)) ** 2
    return max(n + 1, math.ceil(n * scale))


def power_gap(
    variance: float, n: int, alpha: float, threshold: float, floor: float | None = None, unit: str = "repetitions"
) -> str | None:
    """Why this design could not have detected ``threshold`` (None when it could): what it could detect, and
    about how many ``unit`` (repetitions a side, or paired rounds) it would need."""
    if n < 3:
        return f"{n} {unit}: at least 3 are needed to judge a change"
    if floor is not None and floor > alpha:
        return f"a rank test of {n} {unit} cannot reach p <= {alpha:g} (its smallest p is {floor:.3g}); more are needed"
    mde = detectable_change(variance, alpha)
    if mde <= threshold:
        return None
    need = repetitions_needed(n, mde, threshold)
    return (
        f"with this noise and {n} {unit} only a change of {mde:.1%} or more is detected "
        f"(alpha {alpha:g}, power {POWER:.0%}); about {need} would detect {threshold:.0%}"
    )
