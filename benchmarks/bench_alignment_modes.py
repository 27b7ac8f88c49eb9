"""Alignment difference between feature window modes on the demo data (issue 4, item 5).

For one model, every demo participant and every layer, fits the encoding models on the
features of each window mode and compares the test-story correlations with those of the
reference protocol (16 s of context + 0.1 s, one frame per window every 0.1 s), per planted
voxel class: the mean over voxels of |delta r|, the mean over participants of |delta| of the
class's mean r (what an ROI figure shows), the signed mean delta and the voxel-wise
correlation of r. It prints one markdown table and the wall time of each mode (features
from the disk cache when present: point ``BT_UTILS_CACHE_DIR`` at a warm cache to compare
fits only; a cold reference run of whisper-tiny.en costs about 50 min of 1-thread CPU).

Run: ``.venv/bin/python benchmarks/bench_alignment_modes.py [--model whisper-tiny.en]
[--modes fast fast-stride1 grid-1s] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench_scaling import markdown_table  # noqa: E402
from bt_utils.alignment import AlignmentSettings, align  # noqa: E402
from bt_utils.demo_data import open_dataset  # noqa: E402
from bt_utils.features import WindowSettings  # noqa: E402

MODES = {
    "reference": WindowSettings(),
    "fast": WindowSettings(mode="fast"),
    "fast-stride1": WindowSettings(mode="fast", stride_s=1.0),
    "grid-1s": WindowSettings(chunk_s=1.0),
}
"""Window modes by name: the protocol, the fast mode's default, a shorter fast stride, and the
reference protocol on a 1-s grid (10x fewer windows, no reuse)."""


def mode_differences(reference: pd.DataFrame, other: pd.DataFrame, classes: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per layer and planted class, how far another mode's voxel scores lie from the reference's.

    Parameters
    ----------
    reference, other : DataFrame
        :func:`bt_utils.alignment.align` tables (``subject, layer, voxel, r, r_norm``).
    classes : dict of str to ndarray of shape (n_voxels,)
        Planted class of every voxel, per subject.

    Returns
    -------
    table : DataFrame
        ``layer, voxel_class, voxel_mean_abs_dr, class_mean_abs_dr, mean_dr, r_reference, r_other,
        r_correlation`` (voxels with a finite ``r_norm`` in both).
    """
    merged = reference.merge(other, on=["subject", "variant", "layer", "voxel"], suffixes=("_ref", "_other"))
    merged = merged[np.isfinite(merged.r_norm_ref) & np.isfinite(merged.r_norm_other)]
    merged = merged.assign(voxel_class=[classes[s][v] for s, v in zip(merged.subject, merged.voxel)])
    rows = []
    for (layer, voxel_class), group in merged.groupby(["layer", "voxel_class"]):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="demo_output/data", help="the demo dataset (bt demo-data)")
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--modes", nargs="+", default=["fast", "fast-stride1", "grid-1s"], choices=sorted(MODES))
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
            tables[name] = align(dataset, list(dataset.subjects), {"pretrained": args.model}, args.model, settings,
                                 "cpu", False)
            seconds[name] = time.perf_counter() - started
    print(f"{args.model}, {'padded to 30 s' if args.padded else 'native length'}, {len(dataset.subjects)} "
          f"participants, {args.threads} thread(s)\n")
    print(markdown_table(["mode", "settings", "wall s (features + fits)"],
                         [[name, MODES[name].tag, f"{value:.0f}"] for name, value in seconds.items()]))
    for name in args.modes:
        table = mode_differences(tables["reference"], tables[name], classes)
        print(f"\n{name} vs reference\n")
        print(markdown_table(list(table.columns), [[f"{v:.4f}" if isinstance(v, float) else v for v in row]
                                                   for row in table.itertuples(index=False)]))


if __name__ == "__main__":
    main()
