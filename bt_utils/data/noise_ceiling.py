"""Noise ceilings from repeated presentations of the test story.

Every repeat is z-scored over time first. With ``N`` repeats and ``y`` their mean, the signal power is
``SP = (N * var(y) - 1) / (N - 1)`` (Schoppe et al. 2016) and ``cc_max = 1 / sqrt(1 + (1 / N) * (1 / SP - 1))``,
0 where ``SP <= 0``; docs/method.md ("Noise ceiling and voxel selection") gives the selection.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..validation import DataError

log = logging.getLogger(__name__)

MIN_REPEATS = 2


def _zscored_repeats(repeats: np.ndarray) -> np.ndarray:
    repeats = np.asarray(repeats, dtype=np.float64)
    if repeats.ndim != 3:
        raise ValueError(f"repeats must have shape (n_repeats, n_trs, n_voxels), got shape {repeats.shape}")
    if repeats.shape[0] < MIN_REPEATS:
        raise DataError(
            f"a noise ceiling needs at least {MIN_REPEATS} repeats of the test story, got {repeats.shape[0]}"
        )
    if repeats.shape[1] < 3:
        raise DataError(f"a noise ceiling needs at least 3 TRs per repeat, got {repeats.shape[1]}")
    repeats = np.nan_to_num(repeats, nan=0.0)
    mean = repeats.mean(axis=1, keepdims=True)
    std = repeats.std(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (repeats - mean) / std
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def signal_power(repeats: np.ndarray) -> np.ndarray:
    """Schoppe signal power ``(N * var(mean over repeats) - 1) / (N - 1)`` of each voxel, shape (n_voxels,), from
    z-scored ``repeats`` of shape (n_repeats, n_trs, n_voxels) (NaN treated as 0).
    """
    z = _zscored_repeats(repeats)
    n_repeats = z.shape[0]
    return (n_repeats * z.mean(axis=0).var(axis=0) - 1.0) / (n_repeats - 1.0)


def cc_max(repeats: np.ndarray) -> np.ndarray:
    """Schoppe et al. (2016) noise ceiling in [0, 1] of each voxel, shape (n_voxels,), from ``repeats`` of shape
    (n_repeats, n_trs, n_voxels) (at least two); 0 where the signal power is not positive.
    """
    sp = signal_power(repeats)
    n_repeats = np.asarray(repeats).shape[0]
    ceiling = np.zeros_like(sp)
    positive = sp > 0
    ceiling[positive] = 1.0 / np.sqrt(1.0 + (1.0 / n_repeats) * (1.0 / sp[positive] - 1.0))
    return ceiling


def explainable_variance(repeats: np.ndarray, bias_correction: bool = True) -> np.ndarray:
    """Fraction of variance explainable by the stimulus, per voxel: shape (n_voxels,), from ``repeats`` of shape
    (n_repeats, n_trs, n_voxels). ``bias_correction`` applies ``EV - (1 - EV) / (N - 1)`` (expectation 0 on noise).
    """
    z = _zscored_repeats(repeats)
    n_repeats = z.shape[0]
    mean_var = z.var(axis=1).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ev = np.nan_to_num(z.mean(axis=0).var(axis=0) / mean_var, nan=0.0)
    if bias_correction:
        ev = ev - (1.0 - ev) / (n_repeats - 1.0)
    return ev


def select_voxels(ceiling: np.ndarray, threshold: float) -> np.ndarray:
    """Sorted indices of the voxels whose noise ceiling ``ceiling`` (n_voxels,) exceeds ``threshold`` (the protocol: 0.4
    for training targets, 0.05 for evaluation).
    """
    ceiling = np.asarray(ceiling)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
    voxels = np.flatnonzero(ceiling > threshold)
    if voxels.size == 0:
        best = float(np.max(ceiling)) if ceiling.size else float("nan")
        raise DataError(
            f"no voxel has cc_max > {threshold} (highest: {best:.3f}); lower the threshold"
        )
    log.info("selected %d of %d voxels with cc_max > %s", voxels.size, ceiling.size, threshold)
    return voxels


def noise_ceiling_table(dataset, subject: str):
    """Per-voxel noise ceiling of a subject, from the repeats of its test story.

    Returns
    -------
    table : DataFrame
        One row per voxel: ``subject, voxel, cc_max, explainable_variance``, plus ``roi`` where the dataset has a
        voxel layout and ``planted_class`` / ``cc_max_true`` for the demo.
    """
    repeats = dataset.load_repeats(subject)
    table = pd.DataFrame({
        "subject": subject,
        "voxel": np.arange(repeats.shape[2]),
        "cc_max": cc_max(repeats),
        "explainable_variance": explainable_variance(repeats),
    })
    layout = dataset.voxel_layout(subject)
    if layout is not None:
        table["roi"] = layout["roi"]
    if dataset.demo_info is not None:
        truth = dataset.truth(subject)
        table["planted_class"] = truth["voxel_class"]
        table["cc_max_true"] = truth["cc_max_true"]
    return table


def voxel_counts(ceiling: np.ndarray, thresholds: dict[str, float]):
    """Number and fraction of voxels above each named threshold: ``selection, threshold, n_voxels, fraction``."""
    ceiling = np.asarray(ceiling)
    return pd.DataFrame([
        {"selection": name, "threshold": value, "n_voxels": int(np.sum(ceiling > value)),
         "fraction": float(np.mean(ceiling > value))}
        for name, value in thresholds.items()
    ])
