"""Brain alignment: from a speech model's layer features to voxel-wise and ROI scores.

Per participant, variant and layer: cached TR features -> delayed design -> ridge with a cross-validated penalty per
voxel -> ``r`` and ``r / cc_max`` on the test story -> optional permutation p-values -> ROI means."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.dataset import Dataset
from .ridge import (
    HIMALAYA_ALPHAS, EigenRidgeCV, bootstrap_chunk_splits, check_backend, correlation_score, normalised_score,
    story_folds,
)
from ..features.design import DELAYS, layer_design, response_rows_test
from ..features.extraction import check_layers, dataset_tr_features, default_layers
from ..features.windows import WindowSettings
from ..models.registry import load_encoder
from ..models.tuning import tuned_participants
from ..data.noise_ceiling import cc_max
from ..data.rois import subject_rois
from .stats import block_permutation_pvalues, fdr_bh, roi_table
from ..validation import check_option

log = logging.getLogger(__name__)

CV_SCHEMES = ("story", "bootstrap")


@dataclass(frozen=True)
class AlignmentSettings:
    """How features are extracted and encoding models fitted (recorded with the results).

    Attributes
    ----------
    layers : tuple of int or None
        Hidden-state indices; None: :func:`bt_utils.features.extraction.default_layers`.
    window : WindowSettings
        The reference protocol or the fast mode (see docs/feature_windows.md).
    native_length : bool
        Whisper only: run the encoder on each window's real length instead of padding it to 30 s (faster; the
        protocol pads, and native-length features shift with the window's start, see docs/feature_windows.md).
    delays : tuple of int
        FIR delays in TRs.
    cv : {"story", "bootstrap"}
        Leave-stories-out folds, or the reference's bootstrap of 20-TR chunks.
    n_folds : int
        Folds of the story scheme (capped at the number of training stories).
    alphas : tuple of float
        Ridge penalties in himalaya's convention (the reference grid, squared; docs/method.md).
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend of the ridge fits.
    min_ceiling : float
        Voxels with ``cc_max`` at or below it get ``r_norm = NaN``.
    n_permutations : int
        Block permutations for voxel-wise p-values (0: none; use >= 1000 so that FDR correction over thousands of
        voxels can reject).
    permutation_block_trs : int
        Length of the permuted blocks of test TRs.
    include_validation : bool
        Train the encoding models on the validation stories too.
    """

    layers: tuple[int, ...] | None = None
    window: WindowSettings = field(default_factory=WindowSettings)
    native_length: bool = False
    delays: tuple[int, ...] = DELAYS
    cv: str = "story"
    n_folds: int = 5
    alphas: tuple[float, ...] = tuple(HIMALAYA_ALPHAS)
    backend: str = "numpy"
    min_ceiling: float = 0.05
    n_permutations: int = 0
    permutation_block_trs: int = 5
    include_validation: bool = True
    seed: int = 0

    def __post_init__(self):
        check_option("cv", self.cv, CV_SCHEMES)
        check_backend(self.backend)
        if self.n_permutations < 0:
            raise ValueError(f"n_permutations must be >= 0, got {self.n_permutations}")

    def record(self) -> dict:
        """JSON-serialisable form for run records."""
        return asdict(self)


@dataclass(frozen=True)
class SubjectTargets:
    """Responses of one participant arranged like the design matrices."""

    train: np.ndarray        # (n_train_trs, n_voxels)
    test: np.ndarray         # (n_test_trs, n_voxels): mean of the repeats, rows [40:]
    ceiling: np.ndarray      # (n_voxels,) cc_max from the repeats' scored rows [40:]


def subject_targets(dataset: Dataset, subject: str, include_validation: bool = True) -> SubjectTargets:
    """Training responses (stories in split order) and the test story's repeat mean, trimmed to pair with the
    design.
    """
    split = dataset.split(subject)
    stories = tuple(split.train) + (tuple(split.validation) if include_validation else ())
    repeats = dataset.load_repeats(subject)
    return SubjectTargets(
        train=np.concatenate([dataset.load_responses(subject, story) for story in stories]),
        test=repeats.mean(axis=0)[response_rows_test],
        ceiling=cc_max(repeats[:, response_rows_test]),
    )


def cv_splits(labels: np.ndarray, settings: AlignmentSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation splits of the training rows (``labels``: story of each row) for ``settings.cv``."""
    if settings.cv == "story":
        return story_folds(labels, n_folds=min(settings.n_folds, len(np.unique(labels))))
    return bootstrap_chunk_splits(len(labels), rng=np.random.default_rng(settings.seed))


def score_layer(x_train: np.ndarray, x_test: np.ndarray, labels: np.ndarray, targets: SubjectTargets,
                settings: AlignmentSettings) -> pd.DataFrame:
    """Fit the encoding model of one layer and score it on the test story, from ``x_train`` (n_train_trs, n_features),
    ``x_test`` (n_test_trs, n_features) and the story of each training row, ``labels`` (n_train_trs,).
    """
    if len(x_train) != len(targets.train) or len(x_test) != len(targets.test):
        raise ValueError(f"design ({len(x_train)} train, {len(x_test)} test rows) and responses "
                         f"({len(targets.train)} train, {len(targets.test)} test rows) do not pair")
    model = EigenRidgeCV(alphas=settings.alphas, cv=cv_splits(labels, settings), backend=settings.backend)
    prediction = model.fit(x_train, targets.train).predict(x_test)
    r = correlation_score(prediction, targets.test)
    table = pd.DataFrame({"voxel": np.arange(len(r)), "r": r,
                          "r_norm": normalised_score(r, targets.ceiling, settings.min_ceiling),
                          "alpha": model.best_alphas_})
    if settings.n_permutations:
        p = block_permutation_pvalues(prediction, targets.test, settings.n_permutations,
                                      settings.permutation_block_trs, np.random.default_rng(settings.seed))
        table["p_value"] = p
        evaluated = np.asarray(targets.ceiling) > settings.min_ceiling  # FDR over the voxels that are scored
        table["significant"], table["q_value"] = fdr_bh(np.where(evaluated, p, np.nan))
    return table


def story_cv_scores(x_train: np.ndarray, y_train: np.ndarray, labels: np.ndarray,
                    settings: AlignmentSettings) -> np.ndarray:
    """Mean over stories of the Pearson r of each story's held-out prediction (leave one story out), of shape
    (n_voxels,), from ``x_train`` (n, n_features), ``y_train`` (n, n_voxels) and ``labels`` (n,), at least 3 stories.
    """
    labels = np.asarray(labels)
    if not len(x_train) == len(y_train) == len(labels):
        raise ValueError(f"x_train ({len(x_train)} rows), y_train ({len(y_train)}) and labels ({len(labels)}) "
                         f"must pair row by row")
    stories = np.unique(labels)
    if len(stories) < 3:
        raise ValueError(f"leave-one-story-out scoring needs at least 3 stories (an inner CV over 2); got "
                         f"{list(stories)}")
    scores = []
    for story in stories:
        held_out = labels == story
        model = EigenRidgeCV(alphas=settings.alphas, cv=cv_splits(labels[~held_out], settings),
                             backend=settings.backend).fit(x_train[~held_out], y_train[~held_out])
        scores.append(correlation_score(model.predict(x_train[held_out]), y_train[held_out]))
    return np.mean(scores, axis=0)


def score_features(dataset: Dataset, subject: str, features: Mapping[str, Mapping[int, np.ndarray]],
                   layers: tuple[int, ...], targets: SubjectTargets, settings: AlignmentSettings,
                   standardise: bool = True) -> pd.DataFrame:
    """Encoding-model scores of every layer of precomputed TR features for one subject: ``features`` maps story and
    layer to untrimmed ndarray of shape (n_trs, d) (e.g. :func:`bt_utils.features.extraction.dataset_tr_features`).
    """
    split = dataset.split(subject)
    tables = []
    for layer in layers:
        x_train, x_test, labels = layer_design(features, dataset, split, layer, settings.delays,
                                               settings.include_validation, subject, standardise)
        table = score_layer(x_train, x_test, labels, targets, settings).assign(layer=layer)
        log.info("%s layer %d: median r %.3f", subject, layer, float(np.median(table.r)))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def variant_features(dataset: Dataset, subject: str, path: str, settings: AlignmentSettings, device: str = "auto",
                     progress: bool = True) -> tuple[tuple[int, ...], dict[str, dict[int, np.ndarray]]]:
    """Layers and untrimmed TR features of every story of a subject's split, for one model (cached)."""
    encoder = load_encoder(path, device=device)
    if encoder.family == "whisper":
        encoder.native_length = settings.native_length
    layers = check_layers(settings.layers, encoder.n_layers) if settings.layers else default_layers(encoder.n_layers)
    features = dataset_tr_features(encoder, dataset, dataset.split(subject).all, layers, settings.window,
                                   progress=progress)
    return layers, features


def subject_model(paths: str | Mapping[str, str], subject: str, variant: str) -> str:
    """The model of ``variant`` for ``subject``: a path with ``{subject}`` filled in, or an entry of a mapping."""
    if isinstance(paths, str):
        return paths.format(subject=subject)
    if subject not in paths:
        raise KeyError(f"variant {variant!r} has no model for {subject}; it has {sorted(paths)}")
    return paths[subject]


def tuned_on(path: str) -> str:
    """The participants whose responses a model was brain-tuned on, joined by ``+`` (``"DEMO01+DEMO02"``); ``""``
    for a model that is no brain-tuning checkpoint or learned no participant's responses (``text_embedding``; see
    :func:`bt_utils.models.tuning.tuned_participants`)."""
    return "+".join(tuned_participants(path) or [])


def model_variants(model: str, checkpoints: Mapping[str, str], subjects: list[str],
                   skip_missing: bool = False) -> dict[str, str]:
    """The variants of an analysis: the pretrained ``model``, then each checkpoint (``{subject}`` filled in).

    Parameters
    ----------
    model : str
        The pretrained model (registry name, Hub id or folder), variant ``"pretrained"``.
    checkpoints : mapping of str to str
        Variant name -> checkpoint path, with ``{subject}`` standing for each participant.
    subjects : list of str
    skip_missing : bool
        Leave out (with a message) a variant whose checkpoint is missing for some subject, e.g. before
        01_brain_tuning has run; otherwise keep it (the analysis then stops on the missing folder).

    Returns
    -------
    variants : dict of str to str
        Variant -> model, as :func:`align` takes them.
    """
    variants = {"pretrained": model}
    for variant, path in checkpoints.items():
        missing = [subject for subject in subjects if not Path(path.format(subject=subject)).exists()]
        if missing and skip_missing:
            print(f"leaving out {variant!r}: no checkpoint for {missing} at {path} (run 01_brain_tuning first)")
            continue
        variants[variant] = path
    return variants


def check_runs(dataset: Dataset, subjects: list[str], variants: Mapping[str, str | Mapping[str, str]]) -> list[str]:
    """Check the subjects and variants of an analysis before any work is done; return the subjects as a list.

    Raises
    ------
    ValueError
        ``subjects`` is a string or empty, or names subjects the dataset does not have; ``variants`` is empty.
    KeyError
        A variant has no model for one of the subjects.
    """
    if isinstance(subjects, str):
        raise ValueError(f"subjects={subjects!r} is a string; give a list of subjects, e.g. [{subjects!r}]")
    subjects = list(subjects)
    if not subjects:
        raise ValueError(f"subjects={subjects!r} is empty; give at least one of {dataset.subjects}")
    unknown = [subject for subject in subjects if subject not in dataset.subjects]
    if unknown:
        raise ValueError(f"subjects {unknown} have no responses in {dataset.root}; available: {dataset.subjects}")
    if not variants:
        raise ValueError("variants is empty; give at least one model, e.g. {'pretrained': 'whisper-tiny.en'}")
    for subject in subjects:
        for variant, paths in variants.items():
            subject_model(paths, subject, variant)
    return subjects


def align(dataset: Dataset, subjects: list[str], variants: Mapping[str, str | Mapping[str, str]], model: str,
          settings: AlignmentSettings = AlignmentSettings(), device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Voxel-wise alignment of every subject, variant and layer.

    Parameters
    ----------
    subjects : list of str
    variants : mapping
        Variant name -> model (registry name, Hub id, folder or brain-tuning checkpoint), the same for every
        subject (``{subject}`` in a path is replaced by the subject), or a mapping subject -> model (brain-tuned
        models are per participant).
    model : str
        Label of the model family in the tables (e.g. "whisper-tiny.en").

    Returns
    -------
    voxels : DataFrame
        ``subject, model, variant, layer, voxel, r, r_norm, alpha, tuned_on`` (+ permutation columns);
        ``tuned_on``: see :func:`tuned_on`.
    """
    tables = []
    for subject in check_runs(dataset, subjects, variants):
        targets = subject_targets(dataset, subject, settings.include_validation)
        for variant, paths in variants.items():
            path = subject_model(paths, subject, variant)
            layers, features = variant_features(dataset, subject, path, settings, device, progress)
            table = score_features(dataset, subject, features, layers, targets, settings)
            tables.append(table.assign(subject=subject, model=model, variant=variant, tuned_on=tuned_on(path)))
    return order_columns(pd.concat(tables, ignore_index=True))


def order_columns(voxels: pd.DataFrame) -> pd.DataFrame:
    """Identifying columns first: ``subject, model, variant, layer, voxel``, then the rest."""
    first = ["subject", "model", "variant", "layer", "voxel"]
    return voxels[first + [c for c in voxels.columns if c not in first]]


def alignment_rois(dataset: Dataset, voxels: pd.DataFrame, atlas_dir=None, weighting: str = "parcel") -> pd.DataFrame:
    """ROI means of ``r_norm``: ``subject, model, variant, tuned_on, layer, roi, r_norm_mean, n_voxels, n_parcels``
    (``tuned_on`` when the voxel table has it).
    """
    rois = {subject: subject_rois(dataset, subject, atlas_dir) for subject in voxels.subject.unique()}
    keys = ("subject", "model", "variant", *(["tuned_on"] if "tuned_on" in voxels else []), "layer")
    return roi_table(voxels, rois, value="r_norm", keys=keys, weighting=weighting)
