"""A low-level feature space: values at a story's TR midpoints with one name per column.

Samples (spectrum frames) and events (phones, words) reach the TR midpoints through the Lanczos filter of
:mod:`bt_utils.features.lanczos` (window 3, cutoff ``1 / TR``), as the model features do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .lanczos import LANCZOS_WINDOW, lanczos_matrix

_TR_BLOCK = 64


class FeatureSpace(NamedTuple):
    """One low-level feature space of a story.

    Attributes
    ----------
    values : ndarray of shape (n_trs, n_dims)
        float64, at the TR midpoints, untrimmed.
    """

    values: np.ndarray
    names: tuple[str, ...]


def check_tr_times(tr_times: np.ndarray) -> np.ndarray:
    """``tr_times`` as float64, checked to be an increasing 1-D array of at least two TR midpoints."""
    tr_times = np.asarray(tr_times, dtype=np.float64)
    if tr_times.ndim != 1 or len(tr_times) < 2 or np.any(np.diff(tr_times) <= 0):
        raise ValueError(
            f"tr_times must be an increasing 1-D array of at least two TR midpoints, got shape {tr_times.shape}; "
            "use Dataset.tr_times(story)"
        )
    return tr_times


def resample_to_trs(values, times: np.ndarray, tr_times: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Lanczos-resample samples or events to the TR midpoints, a block of TRs at a time.

    Parameters
    ----------
    values : ndarray or scipy sparse array of shape (n_samples, n_dims)
    times : ndarray of shape (n_samples,)
    tr_times : ndarray of shape (n_trs,)

    Returns
    -------
    resampled : ndarray of shape (n_trs, n_dims)
    """
    tr_times = check_tr_times(tr_times)
    order = np.argsort(times, kind="stable")
    times, values = np.asarray(times, dtype=np.float64)[order], values[order]
    cutoff = 1.0 / np.mean(np.diff(tr_times))
    reach = LANCZOS_WINDOW / cutoff
    resampled = np.zeros((len(tr_times), values.shape[1]))
    for first in range(0, len(tr_times), _TR_BLOCK):
        block = tr_times[first:first + _TR_BLOCK]
        low = np.searchsorted(times, block[0] - reach, side="left")
        high = np.searchsorted(times, block[-1] + reach, side="right")
        if high > low:
            weights = lanczos_matrix(times[low:high], block, cutoff, normalize=normalize)
            resampled[first:first + len(block)] = weights @ values[low:high]
    return resampled
