"""Low-level feature impact: how much of a layer's alignment is carried by low-level speech features.

A layer's features are replaced by their residuals after regressing out the low-level features, the encoding
models refitted, and the drop of alignment reported per voxel and ROI. docs/method.md ("Impact") defines it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from himalaya.ridge import BandedRidgeCV

from .alignment import (
    AlignmentSettings, check_runs, cv_splits, order_columns, score_features, subject_model, subject_targets,
    variant_features,
)
from ..data.dataset import Dataset
from .ridge import EigenRidgeCV, correlation_score
from ..features.design import layer_design, stimulus_rows, zscore_per_story
from ..features.low_level import DEFAULT_LOW_LEVEL_FEATURES, build_vocabularies, low_level_features
from .stats import ROI_WEIGHTINGS, roi_mean, roi_parcels
from ..validation import DataError, check_option

log = logging.getLogger(__name__)

RESIDUAL_ALPHAS = np.logspace(-6, 9, 16)
"""Penalties searched when regressing model features on low-level features (docs/method.md, "Impact")."""

IMPACT_MIN_ALIGNMENT = 0.05
"""Smallest ROI mean of ``r / cc_max`` (before removing low-level features) whose drop :func:`impact_rois` reports."""

IMPACT_ALPHA = 0.05
"""Level of the one-sided test across voxels that an ROI's mean ``r / cc_max`` is above 0 (:func:`impact_rois`)."""

DROP_STATUSES = {
    "ok": "the drop is reported",
    "no_voxels": "no voxel of the ROI above the noise-ceiling cut",
    "low_alignment": "the ROI's mean r / cc_max is below min_alignment",
    "not_above_zero": "the ROI's mean r / cc_max is not significantly above 0 across its voxels",
}
"""Values of the ``drop_status`` column of :func:`impact_rois`: why ``drop_pct`` is or is not reported."""


def contiguous_folds(n_samples: int, n_folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds of consecutive rows (no shuffling: neighbouring TRs are correlated)."""
    if not 2 <= n_folds <= n_samples:
        raise ValueError(f"n_folds must lie in 2..{n_samples}, got {n_folds}")
    indices = np.arange(n_samples)
    return [(np.setdiff1d(indices, held), held) for held in np.array_split(indices, n_folds)]


def default_feature_sets(names: Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES) -> dict[str, tuple[str, ...]]:
    """All low-level spaces together (``"all"``) and each one alone."""
    if not names:
        raise ValueError("the list of low-level feature spaces is empty")
    return {"all": tuple(names)} | {name: (name,) for name in names}


def story_low_level(dataset: Dataset, stories: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Untrimmed low-level features of each story, spaces concatenated: ``{story: (n_trs, k)}``."""
    vocabularies = build_vocabularies(dataset)
    return {story: np.hstack(list(low_level_features(dataset, story, tuple(names), vocabularies).values()))
            for story in stories}


def residualise(model: Mapping[str, np.ndarray], low: Mapping[str, np.ndarray], dataset: Dataset,
                train_stories: Sequence[str], alphas: np.ndarray = RESIDUAL_ALPHAS, n_folds: int = 10,
                backend: str = "numpy") -> dict[str, np.ndarray]:
    """Remove what low-level features predict from model features, per story.

    ``model`` maps stories to untrimmed TR features of shape (n_trs, d), ``low`` to low-level features of shape
    (n_trs, k); returns residuals of shape (n_trs, d) per story, in the units of the z-scored model features.

    Raises
    ------
    ValueError
        If the test story is among ``train_stories``, or the low-level feature set is empty.
    KeyError
        If a training story has no model features or a story has no low-level features.
    DataError
        If a story's model and low-level features differ in TRs, or the stories' low-level features differ in
        columns.
    """
    test_story = dataset.split().test
    if test_story in train_stories:
        raise ValueError(f"the test story {test_story!r} is among the training stories of the low-level "
                         "regression; fit it on training (and validation) stories only")
    missing = [story for story in train_stories if story not in model]
    if missing:
        raise KeyError(f"no model features for training stories {missing}")
    for story in model:
        if story not in low:
            raise KeyError(f"no low-level features for story {story!r}")
        if len(model[story]) != len(low[story]):
            raise DataError(f"story {story!r}: model features have {len(model[story])} TRs but low-level "
                            f"features {len(low[story])}")
    widths = {low[story].shape[1] for story in model}
    if widths == {0}:
        raise ValueError("the low-level feature set is empty")
    if len(widths) > 1:
        raise DataError(f"the stories' low-level features differ in columns ({sorted(widths)}); build them "
                        "with one vocabulary (story_low_level)")
    rows = {s: stimulus_rows(s, dataset.n_trs[s], is_test=False) for s in model}
    z_model = {s: zscore_per_story(v, rows[s]) for s, v in model.items()}
    z_low = {s: zscore_per_story(low[s], rows[s]) for s in model}

    x = np.vstack([z_low[s][rows[s]] for s in train_stories])
    y = np.vstack([z_model[s][rows[s]] for s in train_stories])
    ridge = EigenRidgeCV(alphas=alphas, cv=contiguous_folds(len(x), n_folds), backend=backend, dtype="float64")
    ridge.fit(x, y)
    return {s: z_model[s] - z_low[s] @ ridge.coef_ for s in model}


def low_level_impact(dataset: Dataset, subjects: list[str], variants: Mapping[str, str | Mapping[str, str]],
                     model: str, feature_sets: Mapping[str, Sequence[str]] | None = None,
                     settings: AlignmentSettings = AlignmentSettings(), device: str = "auto",
                     progress: bool = True) -> pd.DataFrame:
    """Alignment before and after removing each low-level feature set, per voxel.

    Parameters
    ----------
    dataset, subjects, variants, model, settings, device, progress
        As for :func:`bt_utils.encoding.alignment.align`.
    feature_sets : mapping of str to sequence of str, optional
        Named groups of low-level spaces (a single space may be given as a
        string); default :func:`default_feature_sets`.

    Returns
    -------
    voxels : DataFrame
        ``subject, model, variant, layer, voxel, feature_set, r_norm_orig, r_norm_resid, drop_pct``
        (``drop_pct`` NaN where ``r_norm_orig <= 0`` or excluded).
    """
    feature_sets = {name: (group,) if isinstance(group, str) else tuple(group)
                    for name, group in (feature_sets or default_feature_sets()).items()}
    for name, group in feature_sets.items():
        if not group:
            raise ValueError(f"feature set {name!r} is empty")
        if len(set(group)) < len(group):
            raise ValueError(f"feature set {name!r} names a space more than once: {list(group)}")
    spaces = sorted({space for group in feature_sets.values() for space in group})
    tables = []
    for subject in check_runs(dataset, subjects, variants):
        split = dataset.split(subject)
        train = tuple(split.train) + (tuple(split.validation) if settings.include_validation else ())
        targets = subject_targets(dataset, subject, settings.include_validation)
        low_by_space = {space: story_low_level(dataset, split.all, (space,)) for space in spaces}
        for variant, paths in variants.items():
            layers, features = variant_features(dataset, subject, subject_model(paths, subject, variant), settings,
                                                device, progress)
            original = score_features(dataset, subject, features, layers, targets, settings)
            for set_name, group in feature_sets.items():
                low = {s: np.hstack([low_by_space[space][s] for space in group]) for s in split.all}
                residual = {s: {} for s in split.all}
                for layer in layers:
                    per_story = residualise({s: features[s][layer] for s in split.all}, low, dataset, train,
                                            backend=settings.backend)
                    for story, values in per_story.items():
                        residual[story][layer] = values
                resid = score_features(dataset, subject, residual, layers, targets, settings, standardise=False)
                merged = original[["layer", "voxel", "r_norm"]].merge(
                    resid[["layer", "voxel", "r_norm"]], on=["layer", "voxel"], suffixes=("_orig", "_resid"))
                tables.append(merged.assign(subject=subject, model=model, variant=variant, feature_set=set_name))
                log.info("%s %s %s: median drop %.1f%%", subject, variant, set_name,
                         np.nanmedian(_drop_pct(merged.r_norm_orig, merged.r_norm_resid)))
    voxels = pd.concat(tables, ignore_index=True)
    voxels["drop_pct"] = _drop_pct(voxels.r_norm_orig, voxels.r_norm_resid)
    return order_columns(voxels)


def _drop_pct(orig, resid) -> np.ndarray:
    orig, resid = np.asarray(orig, float), np.asarray(resid, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(orig > 0, 100.0 * (orig - resid) / orig, np.nan)


def impact_rois(voxels: pd.DataFrame, rois: Mapping[str, Mapping], weighting: str = "parcel",
                min_alignment: float = IMPACT_MIN_ALIGNMENT, alpha: float = IMPACT_ALPHA) -> pd.DataFrame:
    """Low-level impact per ROI: the drop of the ROI's mean alignment.

    Parameters
    ----------
    voxels : DataFrame
        :func:`low_level_impact`'s table: ``subject, model, variant, layer, feature_set, voxel, r_norm_orig,
        r_norm_resid``.
    rois : mapping
        ``rois[subject][roi]``: parcels ``{parcel: voxel indices}`` (:func:`bt_utils.data.rois.subject_rois`) or an
        array of voxel indices (one parcel).
    weighting : {"parcel", "voxel"}
    min_alignment : float
        Smallest ``orig`` (mean ``r / cc_max``) whose drop is reported.
    alpha : float
        Level of the test that ``orig`` is above 0.

    Returns
    -------
    table : DataFrame
        ``subject, model, variant, layer, roi, feature_set, r_norm_orig, r_norm_resid, drop_pct, p_orig,
        drop_status, n_voxels, n_parcels``; ``p_orig`` is the one-sided p-value of ``r_norm_orig > 0``.
    """
    check_option("weighting", weighting, ROI_WEIGHTINGS)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    keys = ["subject", "model", "variant", "layer", "feature_set"]
    missing = set(voxels.subject.unique()) - set(rois)
    if missing:
        raise KeyError(f"no ROI definitions for subjects {sorted(missing)}")
    rows = []
    for condition, group in voxels.groupby(keys, sort=True):
        labels = dict(zip(keys, condition))
        by_voxel = group.set_index("voxel")[["r_norm_orig", "r_norm_resid"]]
        for roi, definition in rois[labels["subject"]].items():
            orig, resid = {}, {}
            for parcel, members in roi_parcels(definition, roi).items():
                values = by_voxel.reindex(members).to_numpy(dtype=float)
                kept = np.isfinite(values).all(axis=1)
                orig[parcel], resid[parcel] = values[kept, 0], values[kept, 1]
            before, after = roi_mean(orig, weighting), roi_mean(resid, weighting)
            p_orig = before.p_above_zero()
            if before.n_voxels == 0:
                status = "no_voxels"
            elif before.mean < min_alignment:
                status = "low_alignment"
            elif not p_orig < alpha:
                status = "not_above_zero"
            else:
                status = "ok"
            drop = 100.0 * (before.mean - after.mean) / before.mean if status == "ok" else np.nan
            rows.append({**labels, "roi": roi, "r_norm_orig": before.mean, "r_norm_resid": after.mean,
                         "drop_pct": drop, "p_orig": p_orig, "drop_status": status, "n_voxels": before.n_voxels,
                         "n_parcels": before.n_parcels})
    columns = ["subject", "model", "variant", "layer", "roi", "feature_set", "r_norm_orig", "r_norm_resid",
               "drop_pct", "p_orig", "drop_status", "n_voxels", "n_parcels"]
    return pd.DataFrame(rows, columns=columns)


BAND_MIXES = 1.0 / (1.0 + np.logspace(3, -3, 11))
"""Default grid of the band mixing ``g`` of :func:`banded_ridge_grid`, ascending, strictly inside (0, 1).

``g`` is the weight of the first band; the penalty ratio ``alpha_1 / alpha_2 = (1 - g) / g`` takes 11
log-evenly spaced values from 1e3 (first band almost switched off) to 1e-3 (second band almost off),
a factor of about 4 per step; the middle value is ``g = 0.5`` (equal penalties)."""

PARTITION_SOLVERS = ("grid", "himalaya")
PARTITION_ALPHAS = np.logspace(-2, 8, 11)
"""Default penalties of :func:`partition_variance` and :func:`banded_ridge_grid`."""


@dataclass
class BandedGridFit:
    """A two-band banded ridge fitted by :func:`banded_ridge_grid`.

    Attributes
    ----------
    band_mixes : ndarray of shape (n_mixes,)
        The grid of band mixing ``g`` searched.
    alphas : ndarray of shape (n_alphas,)
        The grid of overall penalties searched.
    cv_scores : ndarray of shape (n_mixes, n_alphas, n_voxels)
        Held-out score of every ``(g, alpha)``, averaged over splits (float64).
    band_mix : ndarray of shape (n_voxels,)
        The ``g`` chosen for each voxel (a value of ``band_mixes``).
    alpha : ndarray of shape (n_voxels,)
        The ``alpha`` chosen for each voxel (a value of ``alphas``).
    best_scores : ndarray of shape (n_voxels,)
        Cross-validated score at each voxel's ``(g, alpha)``.
    prediction : ndarray of shape (m, n_voxels)
        Predictions on the test rows of the model refit on all training rows with each voxel's ``(g, alpha)``.
    """

    band_mixes: np.ndarray
    alphas: np.ndarray
    cv_scores: np.ndarray
    band_mix: np.ndarray
    alpha: np.ndarray
    best_scores: np.ndarray
    prediction: np.ndarray

    @property
    def band_alphas(self) -> np.ndarray:
        """Per-band penalties ``(alpha / g, alpha / (1 - g))`` of each voxel, shape (2, n_voxels)."""
        return np.vstack([self.alpha / self.band_mix, self.alpha / (1.0 - self.band_mix)])


def _check_rows(**arrays: np.ndarray) -> None:
    """ValueError unless every named 2-D array has the same number of rows."""
    rows = {name: np.shape(values)[0] if np.ndim(values) == 2 else None for name, values in arrays.items()}
    bad = [name for name, count in rows.items() if count is None]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be 2-D arrays (rows, columns), got shapes "
                         f"{[np.shape(arrays[name]) for name in bad]}")
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in rows.items())
        raise ValueError(f"row counts differ ({listed}); these arrays must cover the same TRs")


def _check_columns(train: np.ndarray, test: np.ndarray, name: str) -> None:
    if np.shape(train)[1] != np.shape(test)[1]:
        raise ValueError(f"{name}: training features have {np.shape(train)[1]} columns but test features "
                         f"{np.shape(test)[1]}")


def banded_ridge_grid(x1_train: np.ndarray, x2_train: np.ndarray, y_train: np.ndarray, x1_test: np.ndarray,
                      x2_test: np.ndarray, folds, alphas: np.ndarray = PARTITION_ALPHAS,
                      band_mixes: np.ndarray = BAND_MIXES, backend: str = "numpy", dtype: str = "float32",
                      score: str = "r2") -> BandedGridFit:
    """Two-band banded ridge by grid search, with a penalty per band and voxel.

    ``x1_*``, ``x2_*`` are the two bands' z-scored features, of shapes (n, d1), (n, d2) for training and (m, d1),
    (m, d2) for test; ``y_train`` has shape (n, n_voxels); ``band_mixes`` are weights of the first band in (0, 1).
    """
    check_option("dtype", dtype, ("float32", "float64"))
    _check_rows(x1_train=x1_train, x2_train=x2_train, y_train=y_train)
    _check_rows(x1_test=x1_test, x2_test=x2_test)
    _check_columns(x1_train, x1_test, "band 1")
    _check_columns(x2_train, x2_test, "band 2")
    band_mixes = np.asarray(band_mixes, dtype=np.float64)
    if band_mixes.ndim != 1 or band_mixes.size == 0 or not np.all((band_mixes > 0) & (band_mixes < 1)):
        raise ValueError(f"band_mixes must be a non-empty 1-D array of values strictly inside (0, 1), got {band_mixes!r}")
    if len(np.unique(band_mixes)) != band_mixes.size:
        raise ValueError(f"band_mixes has repeated values: {band_mixes!r}")
    work = np.float32 if dtype == "float32" else np.float64
    x1_train, x2_train, x1_test, x2_test = (np.asarray(x, dtype=work) for x in (x1_train, x2_train, x1_test, x2_test))
    n_voxels = np.shape(y_train)[1]
    cv_scores = np.empty((len(band_mixes), len(np.atleast_1d(alphas)), n_voxels))
    best_scores = np.full(n_voxels, -np.inf)
    band_mix, alpha = np.full(n_voxels, np.nan), np.full(n_voxels, np.nan)
    prediction = np.zeros((len(x1_test), n_voxels), dtype=work)
    for index, g in enumerate(band_mixes):
        scale1, scale2 = np.sqrt(g), np.sqrt(1.0 - g)
        ridge = EigenRidgeCV(alphas=alphas, cv=folds, scoring=score, backend=backend, dtype=dtype)
        ridge.fit(np.hstack([scale1 * x1_train, scale2 * x2_train]), y_train)
        cv_scores[index] = ridge.alpha_scores_
        scores = ridge.cv_scores_
        better = scores > best_scores
        if better.any():
            best_scores[better], band_mix[better], alpha[better] = scores[better], g, ridge.best_alphas_[better]
            prediction[:, better] = np.hstack([scale1 * x1_test, scale2 * x2_test]) @ ridge.coef_[:, better]
        del ridge  # only the chosen test predictions are kept, not each mix's weights
    return BandedGridFit(band_mixes, np.asarray(alphas, dtype=np.float64), cv_scores, band_mix, alpha, best_scores,
                         prediction)


def _himalaya_banded(model_train, low_train, y_train, model_test, low_test, folds, alphas, n_iter: int,
                     random_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """himalaya's BandedRidgeCV (random search): test predictions (m, n_voxels), band mix and alpha (n_voxels,)."""
    joint = BandedRidgeCV(groups=np.repeat([0, 1], [model_train.shape[1], low_train.shape[1]]), cv=folds,
                          random_state=random_state,
                          solver_params={"n_iter": n_iter, "alphas": alphas, "progress_bar": False})
    joint.fit(np.hstack([model_train, low_train]).astype(np.float32), np.asarray(y_train, np.float32))
    prediction = np.asarray(joint.predict(np.hstack([model_test, low_test]).astype(np.float32)))
    # deltas_ = log(gamma / alpha) per band, with the gammas summing to 1
    weights = np.exp(np.asarray(joint.deltas_, dtype=np.float64))
    alpha = 1.0 / weights.sum(0)
    return prediction, weights[0] * alpha, alpha


def partition_variance(model_train: np.ndarray, low_train: np.ndarray, y_train: np.ndarray, model_test: np.ndarray,
                       low_test: np.ndarray, y_test: np.ndarray, folds, alphas: np.ndarray = PARTITION_ALPHAS,
                       n_iter: int = 20, random_state: int = 0, backend: str = "numpy", solver: str = "grid",
                       band_mixes: np.ndarray = BAND_MIXES) -> pd.DataFrame:
    """Unique and shared test-set variance of two feature spaces per voxel.

    Features have shapes (n, d_model), (n, d_low) for training and (m, d_model), (m, d_low) for test; ``y_train``
    (n, n_voxels) and ``y_test`` (m, n_voxels). ``band_mixes`` are the weights of the model band searched by
    ``solver="grid"``.
    """
    check_option("solver", solver, PARTITION_SOLVERS)
    _check_rows(model_train=model_train, low_train=low_train, y_train=y_train)
    _check_rows(model_test=model_test, low_test=low_test, y_test=y_test)
    _check_columns(model_train, model_test, "model features")
    _check_columns(low_train, low_test, "low-level features")
    if np.shape(y_train)[1] != np.shape(y_test)[1]:
        raise ValueError(f"y_train has {np.shape(y_train)[1]} voxels but y_test {np.shape(y_test)[1]}")
    r2 = {}
    for name, (x_train, x_test) in {"model": (model_train, model_test), "low": (low_train, low_test)}.items():
        ridge = EigenRidgeCV(alphas=alphas, cv=folds, backend=backend).fit(x_train, y_train)
        r2[name] = correlation_score(ridge.predict(x_test), y_test) ** 2
    if solver == "grid":
        joint = banded_ridge_grid(model_train, low_train, y_train, model_test, low_test, folds, alphas, band_mixes,
                                  backend)
        prediction, band_mix, alpha_joint = joint.prediction, joint.band_mix, joint.alpha
    else:
        prediction, band_mix, alpha_joint = _himalaya_banded(model_train, low_train, y_train, model_test, low_test,
                                                             folds, alphas, n_iter, random_state)
    r2["joint"] = correlation_score(prediction, y_test) ** 2
    return pd.DataFrame({
        "voxel": np.arange(len(r2["joint"])), "r2_joint": r2["joint"], "r2_model": r2["model"], "r2_low": r2["low"],
        "unique_model": r2["joint"] - r2["low"], "unique_low": r2["joint"] - r2["model"],
        "shared": r2["model"] + r2["low"] - r2["joint"], "band_mix": band_mix, "alpha_joint": alpha_joint,
    })


def variance_partition(features: Mapping[str, np.ndarray], low: Mapping[str, np.ndarray], dataset: Dataset,
                       subject: str, settings: AlignmentSettings = AlignmentSettings(), n_iter: int = 20,
                       random_state: int = 0, solver: str = "grid",
                       band_mixes: np.ndarray = BAND_MIXES) -> pd.DataFrame:
    """:func:`partition_variance` of one layer's features and the low-level features of a subject.

    Parameters
    ----------
    features : mapping of str to ndarray of shape (n_trs, d)
        Untrimmed TR features of one layer per story.
    low : mapping of str to ndarray of shape (n_trs, k)
        Untrimmed low-level features per story.
    dataset, subject, settings
    n_iter, random_state
        Of ``solver="himalaya"``'s random search.
    solver : {"grid", "himalaya"}
    band_mixes : ndarray of shape (n_mixes,)
        Of ``solver="grid"``; see :func:`partition_variance`.

    Returns
    -------
    table : DataFrame
        One row per fitted voxel: ``voxel`` (the subject's voxel index) and the other columns of
        :func:`partition_variance`.
    """
    split = dataset.split(subject)
    targets = subject_targets(dataset, subject, settings.include_validation)
    voxels = np.flatnonzero(targets.ceiling > settings.min_ceiling)
    designs = [layer_design({s: {0: np.asarray(space[s])} for s in split.all}, dataset, split, 0, settings.delays,
                            settings.include_validation, subject) for space in (features, low)]
    (model_train, model_test, labels), (low_train, low_test, _) = designs
    table = partition_variance(model_train, low_train, targets.train[:, voxels], model_test, low_test,
                               targets.test[:, voxels], cv_splits(labels, settings), np.asarray(settings.alphas),
                               n_iter=n_iter, random_state=random_state, backend=settings.backend, solver=solver,
                               band_mixes=band_mixes)
    return table.assign(voxel=voxels)


def partition_variants(dataset: Dataset, subjects: list[str], variants: Mapping[str, str | Mapping[str, str]],
                       model: str, layer: int, settings: AlignmentSettings = AlignmentSettings(),
                       low_level: Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES, device: str = "auto") -> pd.DataFrame:
    """:func:`variance_partition` of one layer against the low-level features, for every subject and variant.

    ``dataset, subjects, variants, model, device`` are as for :func:`bt_utils.encoding.alignment.align`; ``low_level``
    names the low-level spaces stacked into one band. Returns the rows of :func:`variance_partition` with ``subject,
    model, variant, layer``.
    """
    settings = replace(settings, layers=(layer,))
    tables = []
    for subject in check_runs(dataset, subjects, variants):
        low = story_low_level(dataset, dataset.split(subject).all, low_level)
        for variant, paths in variants.items():
            _, features = variant_features(dataset, subject, subject_model(paths, subject, variant), settings, device)
            table = variance_partition({s: f[layer] for s, f in features.items()}, low, dataset, subject, settings)
            tables.append(table.assign(subject=subject, model=model, variant=variant, layer=layer))
    return pd.concat(tables, ignore_index=True)
