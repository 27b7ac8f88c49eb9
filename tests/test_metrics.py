"""Tests of bt_utils.downstream.metrics against hand-computed values."""

import functools

import numpy as np
import pytest
from sklearn.metrics import f1_score

from bt_utils.downstream.metrics import (
    accuracy,
    bootstrap_ci,
    corpus_word_error_rate,
    macro_f1,
    multilabel_f1,
    normalize_words,
    word_edits,
    word_error_rate,
)


def test_word_error_rate_hand_computed():
    assert word_error_rate("the cat sat", "the cat sat") == 0.0
    # case and punctuation are ignored
    assert word_error_rate("Hello, world!", " hello world.") == 0.0
    # one substitution in three words
    assert word_error_rate("the cat sat", "the hat sat") == pytest.approx(1 / 3)
    # one deletion and one insertion: "a b c d" -> "a c d e"
    assert word_error_rate("a b c d", "a c d e") == pytest.approx(2 / 4)
    # everything deleted
    assert word_error_rate("one two", "") == 1.0
    # insertions can push the rate above 1
    assert word_error_rate("yes", "yes yes yes") == pytest.approx(2.0)
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "noise") == float("inf")
    # lists are compared as given
    assert word_error_rate(["A", "b"], ["a", "b"]) == pytest.approx(0.5)
    basic = functools.partial(normalize_words, normalizer="basic")
    assert basic("Don't STOP, it's 9 o'clock.") == ["don't", "stop", "it's", "9", "o'clock"]
    assert basic("Naïve CAFÉ_owner’s résumé") == ["naïve", "café", "owner's", "résumé"]
    assert word_error_rate("naïve café", "naive café", normalizer="basic") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="normalizer='whisper' is not valid"):
        normalize_words("a", "whisper")


def test_english_normalizer_forgives_spelling_conventions():
    """Whisper's English normaliser: a transcript is not charged for numbers written as digits, spelled-out
    contractions and titles, hesitations, noise tags or diacritics; real word errors still count."""
    assert normalize_words("Twenty-five dollars, Mr. Smith won't pay!") == ["$25", "mister", "smith", "will", "not", "pay"]
    pairs = [("switch the lights off at five a m", "Switch the lights off at 5 a.m."),
             ("I think it's done", "uh I think it is done [noise]"), ("naïve café", "naive cafe")]
    for reference, hypothesis in pairs:
        assert word_error_rate(reference, hypothesis) == 0.0
        assert word_error_rate(reference, hypothesis, normalizer="basic") > 0.1
    assert word_error_rate("turn the lights on", "turn the light on") == pytest.approx(1 / 4)
    assert corpus_word_error_rate(["five a m", "stop"], ["5 a m", "top"]) == pytest.approx(1 / 4)


def test_corpus_word_error_rate_pools_the_edits():
    references = ["turn on the lights", "stop"]
    hypotheses = ["turn off the light", "stop"]
    assert word_edits(references[0], hypotheses[0]) == 2
    # 2 edits over 5 reference words, not the mean of the per-utterance rates (0.25)
    assert corpus_word_error_rate(references, hypotheses) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_word_error_rate(references, hypotheses[:1])


def test_accuracy_and_macro_f1_hand_computed():
    y_true = ["a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "b", "b", "a"]
    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    # F1: a = 2*1/(2+2) = 0.5, b = 2*2/(2+3) = 0.8, c = 0
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # an extra class that never occurs counts as 0
    assert macro_f1(y_true, y_pred, labels=["a", "b", "c", "d"]) == pytest.approx(1.3 / 4)
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 2], [1])


def test_macro_f1_averages_the_true_classes():
    y_true = ["a", "a", "b", "b"]
    # F1: a = 2*2/(2+3) = 0.8, b = 2*1/(2+1) = 2/3
    assert macro_f1(y_true, ["a", "a", "b", "a"]) == pytest.approx((0.8 + 2 / 3) / 2)
    # the same accuracy with a wrong class never true: a = 2*1/(2+1) = 2/3, b = 1; no third class of F1 0
    assert accuracy(y_true, ["a", "c", "b", "b"]) == 0.75
    assert macro_f1(y_true, ["a", "c", "b", "b"]) == pytest.approx((2 / 3 + 1.0) / 2)
    assert macro_f1(y_true, ["c", "c", "c", "c"]) == 0.0
    assert macro_f1(y_true, ["a", "c", "b", "b"], labels=["a", "b", "c"]) == pytest.approx((2 / 3 + 1.0) / 3)


def test_macro_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 6, 300), rng.integers(0, 7, 300)
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, labels=np.arange(6), average="macro"))


def test_multilabel_f1_matches_sklearn_on_random_multi_hot():
    rng = np.random.default_rng(2)
    for n, n_classes in ((300, 8), (40, 25)):
        y_true = rng.random((n, n_classes)) < rng.uniform(0.05, 0.6, n_classes)
        y_true[:, 3] = False  # a class no example has, sometimes predicted
        y_pred = np.where(rng.random((n, n_classes)) < 0.7, y_true, rng.random((n, n_classes)) < 0.3)
        present = np.flatnonzero(y_true.any(axis=0))
        assert y_pred[:, 3].any() and len(present) < n_classes
        assert multilabel_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", labels=present))
        assert multilabel_f1(y_true.astype(int), y_pred.astype(int), average="micro") == pytest.approx(
            f1_score(y_true, y_pred, average="micro"))
        # an explicit column list: columns never true and never predicted count 0, as in sklearn
        every = np.arange(n_classes)
        assert multilabel_f1(y_true, y_pred, labels=every) == pytest.approx(
            f1_score(y_true, y_pred, average="macro", labels=every, zero_division=0))


def test_multilabel_f1_hand_computed_and_checked():
    y_true = [[1, 1, 0], [1, 0, 0], [0, 1, 1]]
    y_pred = [[1, 0, 0], [1, 0, 1], [0, 1, 1]]
    # per class: TP 2 FN 0 FP 0 -> 1; TP 1 FN 1 -> 2/3; TP 1 FP 1 -> 2/3; micro: TP 4, FP 1, FN 1
    assert multilabel_f1(y_true, y_pred) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert multilabel_f1(y_true, y_pred, average="micro") == pytest.approx(8 / 10)
    with pytest.raises(ValueError, match="no positive label"):
        multilabel_f1(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="same length|one shape"):
        multilabel_f1([[1, 0]], [[1, 0, 0]])
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_f1([[1, 2]], [[1, 0]])
    with pytest.raises(ValueError, match="average='weighted'"):
        multilabel_f1(y_true, y_pred, average="weighted")


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)

    def interval(n):
        y_true = rng.integers(0, 4, n)
        y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 4, n))
        return bootstrap_ci(accuracy, y_true, y_pred, n_resamples=500, seed=3)

    small, large = interval(50), interval(2000)
    for ci in (small, large):
        assert ci.low <= ci.estimate <= ci.high
        assert 0.6 < ci.estimate < 0.9
    assert (large.high - large.low) < 0.3 * (small.high - small.low)
    # the same seed gives the same interval
    y = np.arange(20) % 2
    assert bootstrap_ci(accuracy, y, y[::-1], seed=5) == bootstrap_ci(accuracy, y, y[::-1], seed=5)


def test_bootstrap_ci_checks_its_arguments():
    with pytest.raises(ValueError, match="one length"):
        bootstrap_ci(accuracy, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="confidence=1.5"):
        bootstrap_ci(accuracy, [1], [1], confidence=1.5)
