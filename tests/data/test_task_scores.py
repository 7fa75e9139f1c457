"""Task scores against hand-computed values (SQuAD's normalisation, word-level LCS) and the bootstrap interval
against the normal approximation."""

import math

import pytest

from rooflens.data.task_scores import exact_match, mean_interval, normalize, rouge_l_text, rouge_words, token_f1


def test_squad_normalisation():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert normalize("An apple a day") == "apple day"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_by_hand():
    # normalised: [cat, sat, on, mat] vs [cat, on, mat]: 3 shared, precision 3/4, recall 1
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 / 1.75)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counted with multiplicity


def test_rouge_l_over_words_by_hand():
    assert rouge_words("It's 56, isn't it?") == ["it", "s", "56", "isn", "t", "it"]
    # [the cat sat on the mat] vs [the cat on the mat]: LCS 5, precision 5/6, recall 1
    assert rouge_l_text("The cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert rouge_l_text("mat the on", "the cat on the mat") == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert rouge_l_text("", "cat") == 0.0


def test_the_bootstrap_interval_is_seeded_and_near_the_normal_one():
    values = [0.0, 1.0] * 10
    mean, low, high = mean_interval(values)
    assert mean == 0.5 and (mean, low, high) == mean_interval(values)
    half = 1.96 * 0.5 / math.sqrt(20)  # sd of a 0/1 mean of 20
    assert low == pytest.approx(0.5 - half, abs=0.05) and high == pytest.approx(0.5 + half, abs=0.05)
    assert mean_interval([0.7] * 5) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        mean_interval([])
