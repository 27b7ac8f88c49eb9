"""Alignment difference between feature modes on the demo data.

For one model, every demo participant and layer, fits the encoding models on each mode's features and
compares their correlations with those of the reference protocol, per planted voxel class (mean |delta r|
over voxels, |delta| of the class mean, signed mean delta, voxel-wise correlation of r), and prints the
wall time of each mode. Modes: ``fast``, ``reference+0.1s`` (the yardstick: how far the protocol's own
scores move with 0.1 s more context) and ``grid-1s``. Scorings: ``test`` (the test story, as the
notebooks do) and ``story-cv`` (every training story predicted from the others: far less sampling noise).

Run: ``.venv/bin/python benchmarks/bench_alignment_modes.py [--model whisper-tiny.en]
[--modes fast reference+0.1s grid-1s] [--scoring test story-cv] [--padded] [--threads 1]
[--data-root demo_output/data]``.
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
from bench_scaling import markdown_table  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bt_utils.data.dataset import Dataset, open_dataset  # noqa: E402
from bt_utils.encoding.alignment import (  # noqa: E402
    AlignmentSettings,
    score_features,
    story_cv_scores,
    subject_targets,
    variant_features,
)
from bt_utils.features import CHUNK_S, CONTEXT_S, WindowSettings, layer_design  # noqa: E402

MODES = {
    "reference": WindowSettings(),
    "fast": WindowSettings(mode="fast"),
    "reference+0.1s": WindowSettings(context_s=CONTEXT_S + CHUNK_S),
    "grid-1s": WindowSettings(chunk_s=1.0),
}
"""Feature modes by name (see the module docstring)."""


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
    parser.add_argument("--modes", nargs="+", default=["fast"], choices=[mode for mode in MODES if mode != "reference"])
    parser.add_argument("--scoring", nargs="+", default=["test", "story-cv"], choices=["test", "story-cv"])
    parser.add_argument("--padded", action="store_true", help="Whisper padded to 30 s (default: native length)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data_root)
    classes = {subject: dataset.truth(subject)["voxel_class"] for subject in dataset.subjects}
    tables, seconds = {}, {}
    with threadpool_limits(args.threads):
        for name in ["reference", *args.modes]:
            started = time.perf_counter()
            settings = AlignmentSettings(window=MODES[name], native_length=not args.padded)
            features_of = partial(variant_features, dataset, path=args.model, settings=settings, device="cpu",
                                  progress=False)
            for scoring, table in mode_scores(dataset, features_of, settings, args.scoring).items():
                tables[name, scoring] = table
            seconds[name] = time.perf_counter() - started
    print(f"{args.model}, {'padded to 30 s' if args.padded else 'native length'}, {len(dataset.subjects)} "
          f"participants, {args.threads} thread(s)\n")
    print(markdown_table(["mode", "settings", "wall s (features + fits)"],
                         [[name, MODES[name].to_dict(), f"{value:.0f}"] for name, value in seconds.items()]))
    for name in args.modes:
        for scoring in args.scoring:
            table = mode_differences(tables["reference", scoring], tables[name, scoring], classes)
            print(f"\n{name} vs reference, {scoring} scoring\n")
            print(markdown_table(list(table.columns), [[f"{v:.4f}" if isinstance(v, float) else v for v in row]
                                                       for row in table.itertuples(index=False)]))


if __name__ == "__main__":
    main()
