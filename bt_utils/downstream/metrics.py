"""Scores of downstream tasks: word error rate, accuracy, macro-F1, multi-label F1 and bootstrap intervals.

All functions take plain sequences or NumPy arrays and are deterministic;
:func:`bootstrap_ci` draws from its own seeded generator.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

from ..validation import check_option

# ---------------------------------------------------------------------------
# Transcripts
# ---------------------------------------------------------------------------


NORMALIZERS = ("english", "basic")
"""Text normalisations of :func:`normalize_words`."""


@functools.cache
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize_words(text: str, normalizer: str = "english") -> list[str]:
    """Words of ``text`` as ASR scoring compares them."""
    check_option("normalizer", normalizer, NORMALIZERS)
    if normalizer == "english":
        return _english_normalizer()(text).split()
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", text.lower().replace("\u2019", "'"))


def _words(text: str | Iterable[str], normalizer: str) -> list[str]:
    return normalize_words(text, normalizer) if isinstance(text, str) else list(text)


def word_edits(reference: str | Iterable[str], hypothesis: str | Iterable[str], normalizer: str = "english") -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions."""
    ref, hyp = _words(reference, normalizer), _words(hypothesis, normalizer)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


def word_error_rate(reference: str | Iterable[str], hypothesis: str | Iterable[str],
                    normalizer: str = "english") -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    ref, hyp = _words(reference, normalizer), _words(hypothesis, normalizer)
    if not ref:
        return 0.0 if not hyp else float("inf")
    return word_edits(ref, hyp) / len(ref)


def corpus_word_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "english") -> float:
    """Word error rate of a corpus: all edits over all reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; "
                         "give one of each per utterance")
    edits = sum(word_edits(r, h, normalizer) for r, h in zip(references, hypotheses))
    n_words = sum(len(normalize_words(r, normalizer)) for r in references)
    if n_words == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / n_words


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def _labels_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d of the same length; "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("y_true is empty: there is nothing to score")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct predictions; ``y_true`` and ``y_pred`` of shape (n,)."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of the per-class F1 scores over the classes present in ``y_true``; both of shape (n,)."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    labels = np.unique(y_true) if labels is None else np.asarray(labels)
    return float(_per_class_f1(y_true[:, None] == labels[None, :], y_pred[:, None] == labels[None, :]).mean())


def _per_class_f1(true_hits: np.ndarray, pred_hits: np.ndarray) -> np.ndarray:
    """F1 of each column, ``2 TP / (2 TP + FP + FN)``, from bool arrays (n, n_classes); 0 for an empty column."""
    tp = (true_hits & pred_hits).sum(axis=0)
    denominator = true_hits.sum(axis=0) + pred_hits.sum(axis=0)  # 2 TP + FP + FN
    return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)


MULTILABEL_AVERAGES = ("macro", "micro")
"""Averages of :func:`multilabel_f1`."""


def multilabel_f1(y_true, y_pred, average: str = "macro", labels=None) -> float:
    """F1 of multi-label predictions (each example may have any number of classes).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_examples, n_classes)
        Multi-hot: 1 (or True) where the class is present / predicted.

    Raises
    ------
    ValueError
        Arrays of other shapes or values than 0/1, or no positive in ``y_true`` (with ``labels`` unset: no class to
        average over).
    """
    check_option("average", average, MULTILABEL_AVERAGES)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[0] == 0:
        raise ValueError(f"y_true and y_pred must be non-empty multi-hot arrays (n_examples, n_classes) of one shape; "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 (or False and True); got values {np.unique(values)[:5]}")
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    if labels is None:
        if not y_true.any():
            raise ValueError("y_true has no positive label: there is no class to score; pass labels= to choose "
                             "the columns")
        labels = np.flatnonzero(y_true.any(axis=0)) if average == "macro" else np.arange(y_true.shape[1])
    y_true, y_pred = y_true[:, np.asarray(labels)], y_pred[:, np.asarray(labels)]
    if average == "micro":  # every (example, class) decision in one column
        return float(_per_class_f1(y_true.reshape(-1, 1), y_pred.reshape(-1, 1))[0])
    return float(_per_class_f1(y_true, y_pred).mean())


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


class ConfidenceInterval(NamedTuple):
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    metric: Callable[..., float],
    *samples,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric`` over resampled examples.

    Parameters
    ----------
    *samples : array-like, each of shape (n, ...)
        Per-example data; indexed along the first axis.
    """
    if not samples:
        raise ValueError("bootstrap_ci needs at least one array of per-example data")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be between 0 and 1")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} must be at least 1")
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"samples must be non-empty and of one length; got lengths {[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    replicates = np.array([metric(*(a[idx] for a in arrays))
                           for idx in rng.integers(0, n, size=(n_resamples, n))])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return ConfidenceInterval(float(metric(*arrays)), float(low), float(high))
