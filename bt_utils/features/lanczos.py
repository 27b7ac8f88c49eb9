"""Lanczos resampling of irregular feature time series onto the TR grid.

Window 3, cutoff ``1 / TR``, weights not normalised as in the reference pipeline (``normalize=True`` divides by
their sum); docs/method.md ("From frames to a design matrix") gives the kernel."""

from __future__ import annotations

import numpy as np

LANCZOS_WINDOW = 3


def lanczos_kernel(delta: np.ndarray, cutoff: float, window: int = LANCZOS_WINDOW) -> np.ndarray:
    """Lanczos kernel at time differences ``delta`` (seconds), same shape as ``delta``."""
    x = np.asarray(delta, dtype=np.float64) * cutoff
    with np.errstate(invalid="ignore", divide="ignore"):
        values = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi * x) ** 2
    return np.where(x == 0, 1.0, np.where(np.abs(x) > window, 0.0, values))


def lanczos_matrix(old_times: np.ndarray, new_times: np.ndarray, cutoff: float | None = None,
                   window: int = LANCZOS_WINDOW, normalize: bool = False) -> np.ndarray:
    """Weights that map samples at ``old_times`` to ``new_times``.

    Parameters
    ----------
    old_times : ndarray of shape (n_old,)
    new_times : ndarray of shape (n_new,)
        Regularly spaced; the default cutoff is ``1 / mean spacing`` (1/TR).

    Returns
    -------
    weights : ndarray of shape (n_new, n_old)
    """
    old_times, new_times = np.asarray(old_times, float), np.asarray(new_times, float)
    if cutoff is None:
        if len(new_times) < 2:
            raise ValueError("give a cutoff when resampling to fewer than two time points")
        cutoff = 1.0 / np.mean(np.diff(new_times))
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff!r}")
    weights = lanczos_kernel(new_times[:, None] - old_times[None, :], cutoff, window)
    if normalize:
        total = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    return weights


def lanczos_resample(values: np.ndarray, old_times: np.ndarray, new_times: np.ndarray,
                     cutoff: float | None = None, window: int = LANCZOS_WINDOW, normalize: bool = False) -> np.ndarray:
    """Resample a feature time series with the Lanczos filter.

    Parameters
    ----------
    values : ndarray of shape (n_old, n_features)
    old_times : ndarray of shape (n_old,)
    new_times : ndarray of shape (n_new,)

    Returns
    -------
    resampled : ndarray of shape (n_new, n_features)
    """
    values = np.asarray(values)
    if values.shape[0] != len(old_times):
        raise ValueError(f"values have {values.shape[0]} rows but there are {len(old_times)} old times")
    weights = lanczos_matrix(old_times, new_times, cutoff, window, normalize)
    return (weights @ values.reshape(len(old_times), -1)).reshape(len(new_times), *values.shape[1:])
