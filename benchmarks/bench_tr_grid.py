"""Effect of the TR grid on the demo: data simulated on one TR, analysed on that TR and on another.

Builds (or reuses) a one-participant demo simulated on ``--simulated-tr`` (default 2.0045 s) and
fits the encoding models of the pretrained ``--model`` on its layer features resampled to the TR
midpoints of each ``--analysis-tr`` (default 2.0045 and 2.0 s; :class:`bt_utils.data.dataset.Dataset`'s
``tr``), with the demo sweep's lighter feature windows (fast mode, 8 s of context, a window every
4 s, Whisper on each window's real length). The frame features are computed once (their cache
does not depend on the TR); only their resampling to TRs differs. Prints, per layer and planted
voxel class, the mean over the class's voxels of the test-story r (as the notebooks score it)
and of r / cc_max, on each analysis grid, and with ``--story-cv`` the leave-one-story-out r
(:func:`bt_utils.encoding.alignment.story_cv_scores`, about 16 times more scored TRs).

Run: ``PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_tr_grid.py [--out DIR]
[--simulated-tr 2.0045] [--analysis-tr 2.0045 2.0] [--model whisper-tiny.en] [--story-cv] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench_scaling import markdown_table  # noqa: E402
from bt_utils.data.dataset import Dataset  # noqa: E402
from bt_utils.demo.simulation import DemoConfig, build_demo_dataset  # noqa: E402
from bt_utils.encoding.alignment import (  # noqa: E402
    AlignmentSettings, score_features, story_cv_scores, subject_targets, variant_features,
)
from bt_utils.features.design import layer_design  # noqa: E402
from bt_utils.features.windows import FAST_STRIDE_S, WindowSettings  # noqa: E402

SUBJECT = "DEMO01"
SETTINGS = AlignmentSettings(window=WindowSettings(mode="fast", context_s=8.0), native_length=True)
"""The demo sweep's feature windows (papermill_runs/demo.yaml) and otherwise the notebooks' defaults."""


def grid_scores(root: Path, tr: float, model: str, story_cv: bool) -> pd.DataFrame:
    """Voxel scores of every layer with the features resampled to a grid of ``tr`` seconds.

    Returns
    -------
    table : DataFrame
        ``layer, voxel, r, r_norm`` (+ ``r_story_cv``).
    """
    dataset = Dataset(root, tr=tr)
    layers, features = variant_features(dataset, SUBJECT, model, SETTINGS, device="cpu", progress=False)
    targets = subject_targets(dataset, SUBJECT, SETTINGS.include_validation)
    table = score_features(dataset, SUBJECT, features, layers, targets, SETTINGS)[["layer", "voxel", "r", "r_norm"]]
    if story_cv:
        split = dataset.split(SUBJECT)
        cv = {}
        for layer in layers:
            x_train, _, labels = layer_design(features, dataset, split, layer, SETTINGS.delays,
                                              SETTINGS.include_validation, SUBJECT)
            cv[layer] = story_cv_scores(x_train, targets.train, labels, SETTINGS)
        table["r_story_cv"] = [cv[layer][voxel] for layer, voxel in zip(table.layer, table.voxel)]
    return table


def class_means(table: pd.DataFrame, classes: np.ndarray) -> pd.DataFrame:
    """Mean of each score column per layer and planted class (r / cc_max over the voxels that have one)."""
    scores = [column for column in ("r", "r_norm", "r_story_cv") if column in table]
    return table.assign(voxel_class=classes[table.voxel.to_numpy()]).groupby(["layer", "voxel_class"])[scores].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_tr_grid"), help="folder of the demo data")
    parser.add_argument("--simulated-tr", type=float, default=2.0045)
    parser.add_argument("--analysis-tr", type=float, nargs="+", default=[2.0045, 2.0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--story-cv", action="store_true", help="also score leave-one-story-out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = DemoConfig(subjects=(SUBJECT,), n_repeats=(10,), tr=args.simulated_tr)
    root = build_demo_dataset(args.out / f"demo-tr{args.simulated_tr:g}", config)
    classes = Dataset(root).truth(SUBJECT)["voxel_class"]
    means, seconds = {}, {}
    with threadpool_limits(args.threads):
        for tr in args.analysis_tr:
            started = time.perf_counter()
            means[tr] = class_means(grid_scores(root, tr, args.model, args.story_cv), classes)
            seconds[tr] = time.perf_counter() - started

    n_trs = Dataset(root).n_trs
    longest = max(n_trs.values())
    print(f"Demo ({SUBJECT}, {len(n_trs)} stories of {min(n_trs.values())}-{longest} TRs) simulated on a "
          f"{args.simulated_tr:g}-s grid; {args.model}, fast windows (8 s of context, stride {FAST_STRIDE_S:g} s, "
          "native length, float32).")
    for tr in args.analysis_tr:
        drift = (longest - 1) * abs(tr - args.simulated_tr)
        print(f"- analysed on {tr:g} s: the last TR of the longest story is {drift:.2f} s off the simulated grid; "
              f"{seconds[tr]:.0f} s")
    print()
    first, *others = args.analysis_tr
    scores = list(means[first].columns)
    header = ["layer", "class"]
    for score in scores:
        header += [f"{score} ({first:g} s)"] + [f"{score} ({tr:g} s) - ({first:g} s)" for tr in others]
    rows = []
    for (layer, voxel_class), row in means[first].iterrows():
        cells = [layer, voxel_class]
        for score in scores:
            cells += [f"{row[score]:.4f}"] + [f"{means[tr].loc[(layer, voxel_class), score] - row[score]:+.4f}"
                                              for tr in others]
        rows.append(cells)
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
