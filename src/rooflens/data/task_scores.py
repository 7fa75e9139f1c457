"""Task quality of generated answers against reference answers, per item, and their mean with an interval.

- exact match and token F1 after SQuAD v1.1's normalisation (lower case, punctuation and the articles a/an/the
  removed, whitespace collapsed): the usual scores of short answers;
- ROUGE-L F1 over words as the ``rouge-score`` package tokenises them (lower case, runs of ``[a-z0-9]``; no
  stemming): the usual score of summaries (PMPD reports it on CNN/DailyMail and DialogSum);
- the mean over items with a percentile bootstrap interval (seeded: the same answers give the same interval).
"""

from __future__ import annotations

import random
import re
import statistics
import string
from collections import Counter
from collections.abc import Sequence

from rooflens.data.quality import rouge_l

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD v1.1's answer normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    """F1 of the normalised words two answers share (counted with multiplicity)."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    p, q = common / len(a), common / len(r)
    return 2 * p * q / (p + q)


def rouge_words(text: str) -> list[str]:
    """Words as ``rouge-score``'s default tokenizer makes them."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l_text(answer: str, reference: str) -> float:
    return rouge_l(rouge_words(answer), rouge_words(reference))  # type: ignore[arg-type]


SCORES = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l_text}


def mean_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval at ``level``."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean, mean, mean
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    low, high = means[int(tail * (resamples - 1))], means[int(round((1 - tail) * (resamples - 1)))]
    return mean, low, high
