"""From frame features to the design matrix of the encoding models: TRs, z-scoring, delays, trims.

Per story, :func:`tr_features` Lanczos-resamples each layer's frame series (window 3, cutoff 1/TR) to the TR
midpoints. :func:`layer_design` then z-scores each story with the mean and standard deviation of the rows that
:func:`stimulus_rows` keeps, adds the FIR delays (:func:`make_delays`, zero-filled) and trims: training and validation
stories keep ``[10:-5]``, the test story ``[50:-5]``, paired with its stored responses ``[40:]``
(:data:`response_rows_test`). The statistics leave out the trimmed TRs because the first ones lie before sound onset,
where features are near 0. Delays come before the trim, so that the delayed copies of the first kept TRs hold the
real features of the TRs before them, and after the z-scoring, so that the zero fill equals the story mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data.dataset import Dataset, StorySplit
from ..data.timing import TRIM_END, TRIM_START
from ..validation import DataError
from .lanczos import LANCZOS_WINDOW, lanczos_matrix

__all__ = ["DELAYS", "TEST_STIMULUS_START", "layer_design", "make_delays", "response_rows_test", "stimulus_rows",
           "tr_features", "zscore_per_story"]

DELAYS = (1, 2, 3, 4)
"""FIR delays of the encoding model, in TRs."""

TEST_STIMULUS_START = 50
"""First stimulus TR of the test story (the stimulus is sliced ``[50:-5]``)."""

response_rows_test = slice(TEST_STIMULUS_START - TRIM_START, None)
"""Rows of the test story's stored (already ``[10:-5]``-trimmed) responses that pair
with the stimulus ``[50:-5]``: ``[40:]``."""


def tr_features(times: np.ndarray, values: np.ndarray | Mapping[int, np.ndarray],
                tr_times: np.ndarray) -> np.ndarray | dict[int, np.ndarray]:
    """Lanczos-resample frame features to TR midpoints (window 3, cutoff 1/TR).

    Parameters
    ----------
    times : ndarray of shape (n_times,)
        Frame times, seconds after sound onset.
    values : ndarray of shape (n_times, d), or dict of layer to such arrays
    tr_times : ndarray of shape (n_trs,)
        TR midpoints, e.g. :meth:`Dataset.tr_times`.

    Returns
    -------
    ndarray of shape (n_trs, d), or dict of layer to such arrays
        float32; same kind as ``values``.
    """
    weights = lanczos_matrix(times, tr_times, window=LANCZOS_WINDOW)
    if isinstance(values, Mapping):
        return {layer: _resample(weights, array, len(times)) for layer, array in values.items()}
    return _resample(weights, values, len(times))


def _resample(weights: np.ndarray, values: np.ndarray, n_times: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] != n_times:
        raise ValueError(f"features must have shape (n_times={n_times}, d); got {values.shape}")
    return (weights @ values.astype(np.float64)).astype(np.float32)


def zscore_per_story(values: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """z-score every column of one story's TR features (n_trs, d) with the mean and standard deviation of ``rows``
    (default: all); constant columns become 0. Returns float32 of the same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    std = values[rows].std(axis=0)
    centred = values - values[rows].mean(axis=0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0).astype(np.float32)


def make_delays(values: np.ndarray, delays: Sequence[int] = DELAYS) -> np.ndarray:
    """Delayed copies of a TR series (n_trs, d) side by side (FIR model), zero-filled: shape (n_trs, len(delays) * d),
    row ``t`` of block ``j`` is ``values[t - delays[j]]`` (negative delays: earlier).
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (n_trs, d); got {values.shape}")
    delays = list(delays)
    if not delays or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in delays):
        raise ValueError(f"delays must be a non-empty sequence of integers (TRs); got {delays!r}")
    n_trs = values.shape[0]
    blocks = []
    for delay in delays:
        block = np.zeros_like(values)
        if delay >= 0:
            block[delay:] = values[:max(n_trs - delay, 0)]
        else:
            block[:max(n_trs + delay, 0)] = values[-delay:]
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def stimulus_rows(story: str, n_trs: int, is_test: bool) -> slice:
    """Rows of a story's untrimmed TR series (``n_trs`` TRs) that pair with its response rows: ``[50:-5]`` for the test
    story (against its responses :data:`response_rows_test`, ``[40:]``), ``[10:-5]`` for the others.
    """
    start = TEST_STIMULUS_START if is_test else TRIM_START
    if n_trs - TRIM_END <= start:
        raise ValueError(f"story {story!r} has {n_trs} TRs, too few for the [{start}:-{TRIM_END}] trim of "
                         f"{'the test' if is_test else 'a training'} story")
    return slice(start, n_trs - TRIM_END)


def _story_design(values: np.ndarray, story: str, n_trs: int, is_test: bool, delays: Sequence[int],
                  standardise: bool) -> np.ndarray:
    """z-score (if ``standardise``), delay, then trim one story's TR features: (n_trs, d) -> (kept rows,
    len(delays) * d)."""
    rows = stimulus_rows(story, n_trs, is_test)
    if values.shape[0] != n_trs:
        kept = max(values.shape[0] - rows.start - TRIM_END, 0)
        raise DataError(f"story {story!r}: the features have {values.shape[0]} TRs ({kept} rows after the "
                        f"[{rows.start}:-{TRIM_END}] trim) but its responses pair with {rows.stop - rows.start} "
                        f"rows (the story has {n_trs} TRs); recompute the features at this dataset's TR times")
    return make_delays(zscore_per_story(values, rows) if standardise else values, delays)[rows]


def layer_design(features_by_story: Mapping[str, Mapping[int, np.ndarray]], dataset: Dataset, split: StorySplit,
                 layer: int, delays: Sequence[int] = DELAYS, include_validation: bool = True,
                 subject: str | None = None, standardise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delayed, z-scored, trimmed features of one layer, ready for ridge regression.

    Parameters
    ----------
    features_by_story : mapping of str to mapping of int to ndarray of shape (n_trs, d)
        Untrimmed TR features per story and layer, as :func:`bt_utils.features.extraction.dataset_tr_features`
        returns.
    dataset : Dataset
        Gives each story's TR count.
    delays : sequence of int
    include_validation : bool
        Append the validation stories to the training stories (the alignment fit has no early stopping).
    subject : str, optional
        If given, every story of the design must have responses for this subject.
    standardise : bool
        z-score each story (default). ``False`` for features already standardised per story, such as the
        residuals of :func:`bt_utils.encoding.impact.residualise` (docs/method.md, "Impact").

    Returns
    -------
    X_train : ndarray of shape (n, len(delays) * d)
        Training stories (then validation stories) one after another, each ``[10:-5]``.
    X_test : ndarray of shape (m, len(delays) * d)
        The test story ``[50:-5]``; pair it with the responses' :data:`response_rows_test`.
    story_labels_train : ndarray of shape (n,)
        The story of each training row.
    """
    train = tuple(split.train) + (tuple(split.validation) if include_validation else ())
    stories = (*train, split.test)
    missing = [story for story in stories if story not in features_by_story]
    if missing:
        raise KeyError(f"no features for stories {missing} of the split; features were given for "
                       f"{sorted(features_by_story)}: compute them with dataset_tr_features")
    no_layer = [story for story in stories if layer not in features_by_story[story]]
    if no_layer:
        available = sorted(features_by_story[no_layer[0]])
        raise KeyError(f"layer {layer} is missing from the features of stories {no_layer} (they have layers "
                       f"{available}); compute it with dataset_tr_features")
    if subject is not None:
        without = sorted(set(stories) - set(dataset.stories_for(subject)))
        if without:
            raise DataError(f"{subject} has no responses for stories {without} of the design; "
                            f"stories with responses: {dataset.stories_for(subject)}")
    blocks = [_story_design(np.asarray(features_by_story[story][layer]), story, dataset.n_trs[story],
                            False, delays, standardise) for story in train]
    x_test = _story_design(np.asarray(features_by_story[split.test][layer]), split.test,
                           dataset.n_trs[split.test], True, delays, standardise)
    labels = np.concatenate([np.full(len(block), story) for block, story in zip(blocks, train)])
    return np.concatenate(blocks), x_test, labels
