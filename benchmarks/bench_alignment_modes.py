"""Alignment difference between feature window modes on the demo data (issue 4, item 5).

For one model, every demo participant and every layer, fits the encoding models on the
features of each window mode and compares the test-story correlations with those of the
reference protocol (16 s of context + 0.1 s, one frame per window every 0.1 s), per planted
voxel class: the mean over voxels of |delta r|, the mean over participants of |delta| of the
class's mean r (what an ROI figure shows), the signed mean delta and the voxel-wise
correlation of r. It prints one markdown table per mode and scoring and the wall time of
each mode (features from the disk cache when present: point ``BT_UTILS_CACHE_DIR`` at a warm
cache to compare fits only; a cold reference run of whisper-tiny.en costs about 50 min of
1-thread CPU).

Two scorings (``--scoring``): ``test`` scores the test story as the notebooks do (the demo's
has 56 scored TRs, so r has a sampling s.d. of about 0.13 and small feature changes move
single voxels a lot); ``story-cv`` predicts every training story from the others
(:func:`bt_utils.encoding.alignment.story_cv_scores`, about 900 TRs), which measures the difference
between feature modes with far less sampling noise.

Mode ``fast-calibrated`` probes a calibrated fast mode: a linear map from fast-mode frames to
reference frames, fitted per layer on one grid point in :data:`CALIBRATION_EVERY` pooled over all
stories, is applied to every fast frame (the calibration points keep their reference frames). It
reads both modes' frames from the disk cache (the reference runs first anyway) and prints the
encoder compute it would need on its own: the fast windows plus one reference window per
calibration point.

Run: ``.venv/bin/python benchmarks/bench_alignment_modes.py [--model whisper-tiny.en]
[--modes fast fast-stride1 grid-1s fast-calibrated edge edge-2.5+0.5s edge-sparse edge-shared] [--scoring test story-cv] [--padded]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench_scaling import markdown_table  # noqa: E402
from bt_utils.encoding.alignment import (  # noqa: E402
    AlignmentSettings,
    score_features,
    story_cv_scores,
    subject_targets,
    variant_features,
)
from bt_utils.data.dataset import Dataset  # noqa: E402
from bt_utils.data.dataset import open_dataset  # noqa: E402
from bt_utils.features.layers import (  # noqa: E402
    CHUNK_S,
    CONTEXT_S,
    EDGE_SHARED,
    EDGE_SPARSE,
    WindowSettings,
    default_layers,
    layer_design,
    plan_windows,
    story_features,
    tr_features,
)
from bt_utils.models.encoder import SAMPLE_RATE, WHISPER_MAX_SAMPLES  # noqa: E402
from bt_utils.models.registry import load_encoder

MODES = {
    "reference": WindowSettings(),
    "fast": WindowSettings(mode="fast"),
    "fast-stride1": WindowSettings(mode="fast", stride_s=1.0),
    "grid-1s": WindowSettings(chunk_s=1.0),
    "reference+0.1s": WindowSettings(context_s=CONTEXT_S + CHUNK_S),
    "edge": WindowSettings(mode="edge"),
    "edge-2.5+0.5s": WindowSettings(mode="edge", span_before_s=2.5, span_after_s=0.5),
    "edge-sparse": WindowSettings(mode="edge", **EDGE_SPARSE),
    "edge-shared": WindowSettings(mode="edge", **EDGE_SHARED),
}
"""Window modes by name: the protocol, the fast mode's default, a shorter fast stride, the
reference protocol on a 1-s grid (10x fewer windows, no reuse), the protocol with 0.1 s more
context (no cheaper: how far the protocol's own scores move with its window length), and edge
mode with its default span (8 s + 2 s, 3x less encoder input), a 3-s span (10x less) and
``EDGE_SPARSE`` (a 1.8-s span plus every 16th frame before it and every 128th after it, 10.7x
less input) and ``EDGE_SHARED`` (the span reading, beyond itself, one whole forward pass per 23
windows, 10x less compute); the edge modes need ``--padded``."""

CALIBRATED = "fast-calibrated"
"""Name of the calibrated fast mode (fast frames mapped onto reference frames, see the module docstring)."""
CALIBRATION_EVERY = 21
"""Grid points per calibration point of the calibrated mode (coprime with the fast mode's 20 frames per
window, so the calibration points cycle through every position in a fast window)."""
CALIBRATION_PENALTY = 0.1
"""Ridge penalty of the calibration map, as a fraction of the mean eigenvalue of the fast frames' covariance."""


def mode_differences(reference: pd.DataFrame, other: pd.DataFrame, classes: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per layer and planted class, how far another mode's voxel scores lie from the reference's.

    Parameters
    ----------
    reference, other : DataFrame
        :func:`mode_scores` tables (``subject, layer, voxel, r``; ``r_norm`` with test scoring).
    classes : dict of str to ndarray of shape (n_voxels,)
        Planted class of every voxel, per subject (the table adds a class "all voxels").

    Returns
    -------
    table : DataFrame
        ``layer, voxel_class, voxel_mean_abs_dr, class_mean_abs_dr, mean_dr, r_reference, r_other,
        r_correlation`` (voxels with a finite ``r_norm`` in both, where given).
    """
    merged = reference.merge(other, on=["subject", "layer", "voxel"], suffixes=("_ref", "_other"))
    if "r_norm" in reference:
        merged = merged[np.isfinite(merged.r_norm_ref) & np.isfinite(merged.r_norm_other)]
    merged = merged.assign(voxel_class=[classes[s][v] for s, v in zip(merged.subject, merged.voxel)])
    everything = merged.assign(voxel_class="all voxels")
    rows = []
    for (layer, voxel_class), group in pd.concat([merged, everything]).groupby(["layer", "voxel_class"]):
        class_means = group.groupby("subject")[["r_ref", "r_other"]].mean()
        rows.append({
            "layer": layer, "voxel_class": voxel_class,
            "voxel_mean_abs_dr": (group.r_other - group.r_ref).abs().mean(),
            "class_mean_abs_dr": (class_means.r_other - class_means.r_ref).abs().mean(),
            "mean_dr": (group.r_other - group.r_ref).mean(),
            "r_reference": group.r_ref.mean(), "r_other": group.r_other.mean(),
            "r_correlation": np.corrcoef(group.r_ref, group.r_other)[0, 1],
        })
    return pd.DataFrame(rows)


def calibration_map(fast: np.ndarray, reference: np.ndarray, penalty: float = CALIBRATION_PENALTY):
    """Ridge map from fast-mode frames to reference frames, shrunk towards the identity.

    Fits ``reference - mean ~ (fast - mean) @ (I + D)`` with a ridge penalty on ``D``, so that
    directions the calibration frames say little about keep their fast-mode values.

    Parameters
    ----------
    fast, reference : ndarray of shape (n_calibration, d)
        Frames of the same grid points in the two modes.
    penalty : float
        Ridge penalty as a fraction of the mean eigenvalue of ``fast``'s covariance.

    Returns
    -------
    callable
        Maps fast frames of shape (n, d) to estimated reference frames of shape (n, d).
    """
    fast, reference = np.asarray(fast, np.float64), np.asarray(reference, np.float64)
    fast_mean, reference_mean = fast.mean(axis=0), reference.mean(axis=0)
    centred = fast - fast_mean
    gram = centred.T @ centred
    ridge = penalty * np.trace(gram) / len(gram)
    weights = np.eye(len(gram)) + np.linalg.solve(gram + ridge * np.eye(len(gram)),
                                                  centred.T @ (reference - reference_mean - centred))
    return lambda frames: (np.asarray(frames, np.float64) - fast_mean) @ weights + reference_mean


def calibrated_features(dataset: Dataset, model: str, native_length: bool) -> tuple[tuple[int, ...], dict, float]:
    """TR features of every demo story in the calibrated fast mode, from both modes' frames (disk cache).

    Parameters
    ----------
    dataset : Dataset
    model : str
    native_length : bool
        Whisper on each window's real length instead of padded to 30 s.

    Returns
    -------
    layers : tuple of int
    features : dict of str to dict of int to ndarray of shape (n_trs, d)
        Untrimmed TR features per story and layer.
    compute_ratio : float
        Reference encoder input over the calibrated mode's (fast windows + calibration windows).
    """
    encoder = load_encoder(model, "cpu", native_length=native_length)
    layers = default_layers(encoder.n_layers)
    padded_to = None
    if encoder.family == "whisper" and not encoder.native_length:
        padded_to = WHISPER_MAX_SAMPLES / SAMPLE_RATE
    fingerprint = encoder.fingerprint()
    stories = sorted({story for subject in dataset.subjects for story in dataset.split(subject).all})
    times, reference, fast, points = {}, {}, {}, {}
    reference_seconds = calibrated_seconds = 0.0
    for story in stories:
        times[story], reference[story] = story_features(encoder, dataset, story, layers, MODES["reference"],
                                                        progress=False, fingerprint=fingerprint)
        fast_times, fast[story] = story_features(encoder, dataset, story, layers, MODES["fast"], progress=False,
                                                 fingerprint=fingerprint)
        if not np.allclose(times[story], fast_times):
            raise ValueError(f"{story}: the fast and reference frame grids differ")
        points[story] = np.arange(CALIBRATION_EVERY // 2, len(times[story]), CALIBRATION_EVERY)
        n_samples = len(times[story]) * MODES["reference"].chunk_samples  # the same windows as the story's audio
        reference_plan = plan_windows(n_samples, MODES["reference"])
        calibration_windows = (reference_plan.ends - reference_plan.starts)[points[story]] / SAMPLE_RATE
        reference_seconds += reference_plan.input_seconds(padded_to)
        calibrated_seconds += plan_windows(n_samples, MODES["fast"]).input_seconds(padded_to)
        calibrated_seconds += len(points[story]) * padded_to if padded_to else calibration_windows.sum()
    features = {story: {} for story in stories}
    for layer in layers:
        mapping = calibration_map(np.concatenate([fast[story][layer][points[story]] for story in stories]),
                                  np.concatenate([reference[story][layer][points[story]] for story in stories]))
        for story in stories:
            mapped = mapping(fast[story][layer])
            mapped[points[story]] = reference[story][layer][points[story]]
            features[story][layer] = tr_features(times[story], mapped, dataset.tr_times(story))
    return layers, features, reference_seconds / calibrated_seconds


def mode_scores(dataset: Dataset, features_of, settings: AlignmentSettings,
                scorings: list[str]) -> dict[str, pd.DataFrame]:
    """Voxel scores of every participant and layer for one window mode, for each scoring.

    Features and responses are loaded once per participant and shared by the scorings.

    Parameters
    ----------
    dataset : Dataset
    features_of : callable
        Subject -> ``(layers, features)`` as :func:`bt_utils.encoding.alignment.variant_features` returns them.
    settings : AlignmentSettings
    scorings : list of {"test", "story-cv"}
        Test-story r and r_norm, and/or leave-one-story-out r over the training stories.

    Returns
    -------
    tables : dict of str to DataFrame
        Per scoring: ``subject, layer, voxel, r`` (+ ``r_norm`` with test scoring).
    """
    tables = {scoring: [] for scoring in scorings}
    for subject in dataset.subjects:
        layers, features = features_of(subject)
        targets = subject_targets(dataset, subject, settings.include_validation)
        if "test" in tables:
            table = score_features(dataset, subject, features, layers, targets, settings)
            tables["test"].append(table[["layer", "voxel", "r", "r_norm"]].assign(subject=subject))
        if "story-cv" in tables:
            for layer in layers:
                x_train, _, labels = layer_design(features, dataset, dataset.split(subject), layer, settings.delays,
                                                  settings.include_validation, subject)
                r = story_cv_scores(x_train, targets.train, labels, settings)
                tables["story-cv"].append(pd.DataFrame({"subject": subject, "layer": layer,
                                                        "voxel": np.arange(len(r)), "r": r}))
    return {scoring: pd.concat(parts, ignore_index=True) for scoring, parts in tables.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="demo_output/data", help="the demo dataset (bt demo-data)")
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--modes", nargs="+", default=["fast", "fast-stride1", "grid-1s"],
                        choices=sorted([*MODES, CALIBRATED]))
    parser.add_argument("--scoring", nargs="+", default=["test", "story-cv"], choices=["test", "story-cv"])
    parser.add_argument("--padded", action="store_true", help="Whisper padded to 30 s (default: native length)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.padded and any(mode in MODES and MODES[mode].mode == "edge" for mode in args.modes):
        parser.error("the edge modes run Whisper padded to 30 s: add --padded")
    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data_root)
    classes = {subject: dataset.truth(subject)["voxel_class"] for subject in dataset.subjects}
    tables, seconds = {}, {}
    with threadpool_limits(args.threads):
        for name in ["reference", *(mode for mode in args.modes if mode != CALIBRATED)]:
            started = time.perf_counter()
            settings = AlignmentSettings(window=MODES[name], native_length=not args.padded)
            features_of = partial(variant_features, dataset, path=args.model, settings=settings, device="cpu",
                                  progress=False)
            for scoring, table in mode_scores(dataset, features_of, settings, args.scoring).items():
                tables[name, scoring] = table
            seconds[name] = time.perf_counter() - started
        if CALIBRATED in args.modes:
            layers, features, compute_ratio = calibrated_features(dataset, args.model, not args.padded)
            settings = AlignmentSettings(window=MODES["fast"], native_length=not args.padded)

            def features_of(subject):
                return layers, {story: features[story] for story in dataset.split(subject).all}

            for scoring, table in mode_scores(dataset, features_of, settings, args.scoring).items():
                tables[CALIBRATED, scoring] = table
    print(f"{args.model}, {'padded to 30 s' if args.padded else 'native length'}, {len(dataset.subjects)} "
          f"participants, {args.threads} thread(s)\n")
    print(markdown_table(["mode", "settings", "wall s (features + fits)"],
                         [[name, MODES[name].tag, f"{value:.0f}"] for name, value in seconds.items()]))
    if CALIBRATED in args.modes:
        print(f"\n{CALIBRATED}: one calibration point every {CALIBRATION_EVERY} grid points, penalty "
              f"{CALIBRATION_PENALTY}; {compute_ratio:.1f}x less encoder compute than the reference")
    for name in args.modes:
        for scoring in args.scoring:
            table = mode_differences(tables["reference", scoring], tables[name, scoring], classes)
            print(f"\n{name} vs reference, {scoring} scoring\n")
            print(markdown_table(list(table.columns), [[f"{v:.4f}" if isinstance(v, float) else v for v in row]
                                                       for row in table.itertuples(index=False)]))


if __name__ == "__main__":
    main()
