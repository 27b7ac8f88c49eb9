"""Statistics of alignment results: ROI summaries, tests across participants, voxel-wise permutation tests.

The participant is the unit of replication: values are averaged within an ROI of one participant, then summarised
and tested across participants (docs/method.md, "Statistics")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from ..validation import check_option

ROI_WEIGHTINGS = ("parcel", "voxel")


@dataclass(frozen=True)
class RoiMean:
    """Mean of a voxel-wise value over an ROI, with its standard error from the spread across voxels.

    Attributes
    ----------
    mean : float
        NaN when no voxel of the ROI has a finite value.
    sem : float
        Standard error of ``mean``; NaN when ``dof < 1``.
    dof : int
        Degrees of freedom of ``sem``.
    n_voxels, n_parcels : int
        Voxels with a finite value, and parcels with at least one such voxel.
    """

    mean: float
    sem: float
    dof: int
    n_voxels: int
    n_parcels: int

    def p_above_zero(self) -> float:
        """One-sided p-value of ``mean > 0``: Student's t of ``mean / sem`` with ``dof`` (NaN without a sem)."""
        if not np.isfinite(self.sem) or self.sem <= 0:
            return np.nan
        return float(scipy.stats.t.sf(self.mean / self.sem, self.dof))


def roi_mean(parcel_values: Mapping[str, np.ndarray], weighting: str = "parcel") -> RoiMean:
    """Mean of a voxel-wise value over the parcels of an ROI, from ``parcel_values`` (parcel -> ndarray of shape
    (n_voxels_of_parcel,)); NaN values are left out, and so are parcels left without a value.

    ``"parcel"`` weighting: the mean of the parcel means, standard error ``s * sqrt(sum_p 1 / n_p) / P`` with ``s``
    the pooled within-parcel standard deviation (``N - P`` degrees of freedom); ``"voxel"``: ``std / sqrt(N)``.
    """
    check_option("weighting", weighting, ROI_WEIGHTINGS)
    parcels = [values[np.isfinite(values)] for values in (np.asarray(v, float) for v in parcel_values.values())]
    parcels = [values for values in parcels if values.size]
    n_voxels, n_parcels = sum(v.size for v in parcels), len(parcels)
    if not n_voxels:
        return RoiMean(np.nan, np.nan, 0, 0, 0)
    if weighting == "voxel":
        pooled = np.concatenate(parcels)
        dof = n_voxels - 1
        sem = pooled.std(ddof=1) / np.sqrt(n_voxels) if dof else np.nan
        return RoiMean(float(pooled.mean()), float(sem), dof, n_voxels, n_parcels)
    dof = n_voxels - n_parcels
    within = sum(((v - v.mean()) ** 2).sum() for v in parcels)
    sem = np.sqrt(within / dof * sum(1.0 / v.size for v in parcels)) / n_parcels if dof else np.nan
    return RoiMean(float(np.mean([v.mean() for v in parcels])), float(sem), dof, n_voxels, n_parcels)


def roi_parcels(definition: Mapping[str, np.ndarray] | np.ndarray, roi: str) -> dict[str, np.ndarray]:
    """An ROI's ``{parcel: voxel indices}``; an array of voxel indices is one parcel named like the ROI."""
    if isinstance(definition, Mapping):
        return {str(parcel): np.asarray(voxels, dtype=int) for parcel, voxels in definition.items()}
    return {roi: np.asarray(definition, dtype=int)}


def roi_table(voxel_table: pd.DataFrame, rois: Mapping[str, Mapping], value: str = "r_norm",
              keys: Sequence[str] = ("subject", "model", "variant", "layer"),
              weighting: str = "parcel") -> pd.DataFrame:
    """Mean of a voxel-wise value within each ROI (:func:`roi_mean`).

    ``rois[subject][roi]`` is an ROI's parcels, ``{parcel: voxel indices}``; the result has the columns ``keys``,
    ``roi``, ``<value>_mean``, ``n_voxels`` and ``n_parcels`` (those with a finite value).
    """
    check_option("weighting", weighting, ROI_WEIGHTINGS)
    missing = set(voxel_table.subject.unique()) - set(rois)
    if missing:
        raise KeyError(f"no ROI definitions for subjects {sorted(missing)}")
    rows = []
    for condition, group in voxel_table.groupby(list(keys), sort=True):
        by_voxel = group.set_index("voxel")[value]
        labels = dict(zip(keys, condition))
        for roi, definition in rois[labels["subject"]].items():
            parcel_values = {parcel: by_voxel.reindex(voxels).to_numpy(dtype=float)
                             for parcel, voxels in roi_parcels(definition, roi).items()}
            mean = roi_mean(parcel_values, weighting)
            rows.append({**labels, "roi": roi, f"{value}_mean": mean.mean, "n_voxels": mean.n_voxels,
                         "n_parcels": mean.n_parcels})
    return pd.DataFrame(rows)


def _check_one_row_each(table: pd.DataFrame, keys: Sequence[str], remedy: str) -> None:
    """Raise a ValueError naming the rows of ``table`` that share their ``keys``."""
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

    Parameters
    ----------
    table : DataFrame
        Columns ``subject``, ``by``, ``average_over`` and ``value``; one row per participant, condition and repeat.
    value : str
        Column to summarise.
    by : sequence of str
        Columns that identify a condition.
    average_over : sequence of str
        Columns of repeated measurements within a participant (e.g. ``("seed",)``).

    Returns
    -------
    summary : DataFrame
        ``by``, ``mean``, ``sem`` (NaN with fewer than two participants), ``n_subjects``: participants whose value
        is NaN (e.g. an ROI without a voxel above the noise-ceiling cut) are left out of all three.

    Raises
    ------
    ValueError
        When rows share their ``by``, ``subject`` and ``average_over`` (e.g. the same participant collected from
        two runs): the message names them.
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
                by: Sequence[str] = ("model", "layer", "roi"), test: str = "t",
                family: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Paired test across participants between two variants (``b - a``), with FDR-corrected q-values.

    Parameters
    ----------
    table : DataFrame
        Columns ``subject``, ``variant``, ``by`` and ``value``.
    variant_a, variant_b : str
        E.g. "pretrained" and "brain-tuned".
    by : sequence of str
        Columns that identify a condition.
    test : {"t", "wilcoxon"}
        Paired t-test, or Wilcoxon signed-rank (needs more participants to reach small p).
    family : sequence of str
        Columns of ``by`` that separate families of comparisons (``()``: all conditions are one family).

    Returns
    -------
    result : DataFrame
        ``by``, ``mean_a``, ``mean_b`` (the variants' means over the paired participants), ``mean_difference``
        (``mean_b - mean_a``), ``relative_pct`` (``100 * mean_difference / |mean_a|``), ``statistic``, ``p_value``
        (uncorrected), ``q_value`` (Benjamini-Hochberg within the family), ``n_comparisons`` (tests in the family),
        ``n_subjects``.
    """
    check_option("test", test, ("t", "wilcoxon"))
    outside = [column for column in family if column not in by]
    if outside:
        raise ValueError(f"family columns {outside} are not among the condition columns by={list(by)}")
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
        mean_a, mean_b = (float(pairs[v].mean()) if len(pairs) else np.nan for v in (variant_a, variant_b))
        rows.append({**dict(zip(by, condition if isinstance(condition, tuple) else (condition,))),
                     "mean_a": mean_a, "mean_b": mean_b,
                     "mean_difference": float(difference.mean()) if len(difference) else np.nan,
                     "relative_pct": 100 * (mean_b - mean_a) / abs(mean_a) if mean_a else np.nan,
                     "statistic": float(statistic), "p_value": float(p_value), "n_subjects": len(difference)})
    result = pd.DataFrame(rows, columns=[*by, "mean_a", "mean_b", "mean_difference", "relative_pct", "statistic",
                                         "p_value", "n_subjects"])
    result.insert(result.columns.get_loc("n_subjects"), "q_value", np.nan)
    result.insert(result.columns.get_loc("n_subjects"), "n_comparisons", 0)
    families = result.groupby(list(family), sort=False, dropna=False) if family else [(None, result)]
    for _, members in families:
        p_values = members.p_value.to_numpy()
        result.loc[members.index, "q_value"] = fdr_bh(p_values)[1]
        result.loc[members.index, "n_comparisons"] = int(np.isfinite(p_values).sum())
    return result


def paired_tests(table: pd.DataFrame, value: str, variant: str, references: Sequence[str],
                 **options) -> pd.DataFrame:
    """:func:`paired_test` of one variant against each of several references (``variant - reference``).

    Parameters
    ----------
    table : DataFrame
        As for :func:`paired_test`.
    variant : str
        E.g. "brain-tuned".
    references : sequence of str
        E.g. ``["pretrained", "block_shuffle", "text_embedding"]``; each is one family of comparisons.
    **options
        ``by``, ``test``, ``family`` of :func:`paired_test`.

    Returns
    -------
    result : DataFrame
        ``variant``, ``reference`` and the columns of :func:`paired_test` (``mean_a`` is the reference's mean,
        ``mean_b`` the variant's); empty when ``references`` is.
    """
    tests = [paired_test(table, value, reference, variant, **options).assign(variant=variant, reference=reference)
             for reference in references]
    if not tests:
        return pd.DataFrame(columns=["variant", "reference"])
    result = pd.concat(tests, ignore_index=True)
    return result[["variant", "reference", *[c for c in result.columns if c not in ("variant", "reference")]]]


def block_permutation_pvalues(prediction: np.ndarray, target: np.ndarray, n_permutations: int = 1000,
                              block_size: int = 10, rng: np.random.Generator | None = None) -> np.ndarray:
    """One-sided p-values of shape (n_voxels,) of voxel-wise prediction correlations by block permutation of the TRs of
    ``target``; ``prediction`` and ``target`` have shape (n_trs, n_voxels).
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
    """Benjamini-Hochberg false discovery rate control of ``p_values`` (n,); NaN entries are never rejected.

    Returns
    -------
    rejected : ndarray of bool, shape (n,)
    q_values : ndarray of shape (n,)
        Adjusted p-values (NaN where ``p_values`` is).
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
