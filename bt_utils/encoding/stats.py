"""Statistics of alignment results: ROI summaries, tests across participants, voxel-wise permutation tests.

Conventions: result tables are tidy (one row per observation). A participant is the
unit of replication: ROI values are averaged over voxels within a participant
first, then summarised (mean, standard error) and tested across participants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ..validation import check_option


def roi_table(voxel_table: pd.DataFrame, rois: Mapping[str, Mapping[str, np.ndarray]], value: str = "r_norm",
              keys: Sequence[str] = ("subject", "model", "variant", "layer")) -> pd.DataFrame:
    """Mean of a voxel-wise value within each ROI.

    Parameters
    ----------
    voxel_table : DataFrame
        One row per voxel and condition: ``keys``, ``voxel`` and ``value``. NaN values
        (e.g. voxels excluded by the noise ceiling) are left out of the means.
    rois : mapping
        ``rois[subject][roi_name]`` = voxel indices of that ROI.
    value : str
        Column to average.
    keys : sequence of str
        Columns that identify a condition.

    Returns
    -------
    table : DataFrame
        ``keys``, ``roi``, ``<value>_mean``, ``n_voxels`` (voxels with a finite value).
    """
    missing = set(voxel_table.subject.unique()) - set(rois)
    if missing:
        raise KeyError(f"no ROI definitions for subjects {sorted(missing)}")
    rows = []
    for condition, group in voxel_table.groupby(list(keys), sort=True):
        by_voxel = group.set_index("voxel")[value]
        subject = dict(zip(keys, condition))["subject"]
        for roi, voxels in rois[subject].items():
            values = by_voxel.reindex(np.asarray(voxels)).to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            rows.append({**dict(zip(keys, condition)), "roi": roi,
                         f"{value}_mean": float(finite.mean()) if finite.size else np.nan, "n_voxels": int(finite.size)})
    return pd.DataFrame(rows)


def _check_one_row_each(table: pd.DataFrame, keys: Sequence[str], remedy: str) -> None:
    """Raise a ValueError naming the rows of ``table`` that share their ``keys``.

    Parameters
    ----------
    table : DataFrame
    keys : sequence of str
        Columns that must identify one row each.
    remedy : str
        What to do about repeated rows, appended to the message.
    """
    keys = list(keys)
    missing = [key for key in keys if key not in table.columns]
    if missing:
        raise KeyError(f"the table has no column(s) {missing}; its columns: {list(table.columns)}")
    repeated = table[table.duplicated(keys, keep=False)]
    if len(repeated):
        raise ValueError(f"{len(repeated)} rows share their {keys} (first: {repeated.iloc[0][keys].to_dict()}); "
                         f"{remedy}")


def across_subjects(table: pd.DataFrame, value: str, by: Sequence[str] = ("model", "variant", "layer", "roi"),
                    average_over: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and standard error of the mean across participants.

    Each participant counts once: its repeated measurements (the columns
    ``average_over``, e.g. probe seeds) are averaged first, then the
    participants' values are summarised.

    Parameters
    ----------
    table : DataFrame
        Columns ``subject``, ``by``, ``average_over`` and ``value``; one row per
        participant, condition and repeat.
    value : str
        Column to summarise.
    by : sequence of str
        Columns that identify a condition.
    average_over : sequence of str
        Columns of repeated measurements within a participant (e.g. ``("seed",)``).

    Returns
    -------
    summary : DataFrame
        ``by``, ``mean``, ``sem`` (NaN with fewer than two participants), ``n_subjects``:
        participants whose value is NaN (e.g. an ROI without a voxel above the
        noise-ceiling cut) are left out of all three.

    Raises
    ------
    ValueError
        When rows share their ``by``, ``subject`` and ``average_over`` (e.g. the
        same participant collected from two runs): the message names them.
    """
    by, average_over = list(by), list(average_over)
    _check_one_row_each(table, [*by, "subject", *average_over],
                        "add the column that tells them apart to `by` (a condition) or to `average_over` "
                        "(repeats within a participant), or select the rows first")
    per_subject = table.groupby([*by, "subject"], sort=True, dropna=False)[value].mean().reset_index()
    grouped = per_subject.groupby(by, sort=True)[value]
    summary = grouped.agg(mean="mean", sem=lambda v: v.sem(ddof=1) if v.count() > 1 else np.nan,
                          n_subjects="count")
    return summary.reset_index()


def paired_test(table: pd.DataFrame, value: str, variant_a: str, variant_b: str,
                by: Sequence[str] = ("model", "layer", "roi"), test: str = "t") -> pd.DataFrame:
    """Paired test across participants between two variants (``b - a``).

    Parameters
    ----------
    table : DataFrame
        Columns ``subject``, ``variant``, ``by`` and ``value``.
    variant_a, variant_b : str
        E.g. "pretrained" and "brain-tuned".
    test : {"t", "wilcoxon"}
        Paired t-test, or Wilcoxon signed-rank (needs more participants to reach small p).

    Returns
    -------
    result : DataFrame
        ``by``, ``mean_difference``, ``statistic``, ``p_value``, ``n_subjects``.
    """
    check_option("test", test, ("t", "wilcoxon"))
    for variant in (variant_a, variant_b):
        if variant not in set(table.variant):
            raise ValueError(f"variant {variant!r} not in the table; variants: {sorted(set(table.variant))}")
    _check_one_row_each(table, [*by, "subject", "variant"],
                        "add the column that tells them apart to `by` or select the rows first")
    wide = table.pivot_table(index=[*by, "subject"], columns="variant", values=value).reset_index()
    rows = []
    for condition, group in wide.groupby(list(by), sort=True):
        pairs = group[[variant_a, variant_b]].dropna()
        difference = (pairs[variant_b] - pairs[variant_a]).to_numpy()
        if len(difference) < 2 or np.allclose(difference, difference[0], rtol=1e-9, atol=1e-12):
            statistic, p_value = np.nan, np.nan
        elif test == "t":
            statistic, p_value = scipy.stats.ttest_rel(pairs[variant_b], pairs[variant_a])
        else:
            statistic, p_value = scipy.stats.wilcoxon(difference)
        rows.append({**dict(zip(by, condition if isinstance(condition, tuple) else (condition,))),
                     "mean_difference": float(difference.mean()) if len(difference) else np.nan,
                     "statistic": float(statistic), "p_value": float(p_value), "n_subjects": len(difference)})
    return pd.DataFrame(rows)


def block_permutation_pvalues(prediction: np.ndarray, target: np.ndarray, n_permutations: int = 1000,
                              block_size: int = 10, rng: np.random.Generator | None = None) -> np.ndarray:
    """One-sided p-values of voxel-wise prediction correlations by block permutation.

    The target time series is cut into consecutive blocks of ``block_size`` TRs
    (the last one shorter when ``block_size`` does not divide the TRs) whose order is
    permuted (keeping the autocorrelation within blocks); the same permutation is
    applied to every voxel. ``p = (1 + #{null r >= observed r}) / (1 + n_permutations)``.

    Parameters
    ----------
    prediction, target : ndarray of shape (n_trs, n_voxels)
    n_permutations : int
    block_size : int
    rng : numpy.random.Generator, optional

    Returns
    -------
    p_values : ndarray of shape (n_voxels,)
    """
    prediction, target = np.asarray(prediction, float), np.asarray(target, float)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    rng = rng or np.random.default_rng(0)
    n_trs = len(target)
    n_blocks = int(np.ceil(n_trs / block_size))
    if n_blocks < 2:
        raise ValueError(f"{n_trs} TRs make fewer than two blocks of {block_size}; use smaller blocks")

    def standardise(x):
        x = x - x.mean(axis=0)
        norm = np.linalg.norm(x, axis=0)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    p, t = standardise(prediction), standardise(target)
    observed = (p * t).sum(axis=0)
    exceed = np.zeros(observed.shape)
    blocks = [np.arange(start, min(start + block_size, n_trs)) for start in range(0, n_trs, block_size)]
    for _ in range(n_permutations):
        order = np.concatenate([blocks[i] for i in rng.permutation(n_blocks)])
        exceed += (p * t[order]).sum(axis=0) >= observed
    return (1.0 + exceed) / (1.0 + n_permutations)


def fdr_bh(p_values: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg false discovery rate control.

    Parameters
    ----------
    p_values : ndarray of shape (n,)
        NaN entries are ignored (never rejected, q = NaN).
    alpha : float

    Returns
    -------
    rejected : ndarray of bool, shape (n,)
    q_values : ndarray of shape (n,)
        Adjusted p-values.
    """
    p_values = np.asarray(p_values, float)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    q = np.full(p_values.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite])]
    m = len(order)
    if m:
        ranked = p_values[order] * m / np.arange(1, m + 1)
        q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return np.nan_to_num(q, nan=np.inf) <= alpha, q
