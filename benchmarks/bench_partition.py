"""Benchmark of variance partitioning: the grid banded ridge vs himalaya's BandedRidgeCV random search.

Prints one markdown table. The fixed problem is the size of the demo's
:func:`bt_utils.encoding.impact.variance_partition`: 550 training TRs in 5
stories (5 leave-stories-out folds) and 200 test TRs; model features 384 x 4
FIR delays = 1,536 columns, low-level features 500 x 4 delays = 2,000 columns;
1,500 voxels; float32; the suite's alphas (``logspace(2, 8, 15)``). A third of
the voxels follow the model features only, a third the low-level ones only, a
third a mix of both, all with noise. Rows:

- ``grid``: :func:`~bt_utils.encoding.impact.partition_variance` with
  ``solver="grid"`` (11 band mixes x 15 alphas, one ridge fit per mix), median
  of ``--repeats`` runs;
- ``grid, joint fit only``: :func:`~bt_utils.encoding.impact.banded_ridge_grid` alone;
- ``himalaya``: ``partition_variance(solver="himalaya")``, BandedRidgeCV random
  search with ``n_iter=20`` (one run).

Both ``partition_variance`` rows include the two single-space ridge fits, which
are the same code in both. Agreement: per-voxel ``|delta r2_joint|`` and
``|delta unique_model|`` between the two solvers (their search spaces differ:
a fixed grid of the band mix vs 20 random Dirichlet draws).

Run: ``.venv/bin/python benchmarks/bench_partition.py [--repeats 3] [--threads N] [--quick]``.
On a machine shared with other jobs the wall times are pessimistic; the ratio
measured side by side is the meaningful part.
"""

from __future__ import annotations


import numpy as np
import scipy.signal
import scipy.stats
from threadpoolctl import threadpool_limits

from bench_encoding import delay_within_stories, machine_lines, ridge_benchmark_parser, timed, zscore_per_story
from bt_utils.encoding.ridge import HIMALAYA_ALPHAS, story_folds
from bt_utils.encoding.impact import BAND_MIXES, banded_ridge_grid, partition_variance

FULL = {"n_train": 550, "n_test": 200, "n_model": 384, "n_low": 500, "n_voxels": 1500}
QUICK = {"n_train": 300, "n_test": 100, "n_model": 96, "n_low": 125, "n_voxels": 300}
N_STORIES = 5


def make_problem(n_train: int, n_test: int, n_model: int, n_low: int, n_voxels: int, seed: int = 0):
    """Two autocorrelated, partly correlated feature spaces and voxels driven by one, the other or both.

    Returns
    -------
    model_train, low_train, y_train, model_test, low_test, y_test : float32 ndarrays
        (n_train, 4 n_model), (n_train, 4 n_low), (n_train, n_voxels) and the same for the n_test rows.
    groups : ndarray of shape (n_train,)
        Story of each training TR.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    groups = np.r_[np.repeat(np.arange(N_STORIES), n_train // N_STORIES + 1)[:n_train], np.full(n_test, N_STORIES)]

    def latent(width):
        """Autocorrelated columns with a decaying spectrum (a few directions carry most variance)."""
        mixing = rng.standard_normal((width, width)) * (np.arange(1, width + 1) ** -0.5)[:, None]
        return scipy.signal.lfilter([1.0], [1.0, -0.7], rng.standard_normal((n, width)), axis=0) @ mixing

    latent_low, latent_model = latent(n_low), latent(n_model)
    latent_model += 0.5 * latent_low[:, :n_model]  # the model features partly carry low-level information
    model, low = (zscore_per_story(delay_within_stories(zscore_per_story(latent, groups), groups), groups)
                  for latent in (latent_model, latent_low))

    def signal(x):
        values = x @ (rng.standard_normal((x.shape[1], n_voxels)) / np.sqrt(x.shape[1]))
        return values / values.std(0)

    share = np.repeat([1.0, 0.0, 0.5], [n_voxels // 3, n_voxels // 3, n_voxels - 2 * (n_voxels // 3)])
    snr = rng.uniform(0.3, 1.5, n_voxels)
    y = zscore_per_story(snr * (share * signal(model) + (1 - share) * signal(low)) + rng.standard_normal((n, n_voxels)), groups)
    parts = [a.astype(np.float32) for a in (model, low, y)]
    return (*(a[:n_train] for a in parts), *(a[n_train:] for a in parts), groups[:n_train])


def main(argv=None) -> None:
    parser = ridge_benchmark_parser(__doc__.splitlines()[0], "a 300-TR, 384 + 500-feature, 300-voxel problem",
                                    "repeats of the grid rows (himalaya: 1)")
    args = parser.parse_args(argv)
    with threadpool_limits(args.threads):
        run(args)


def run(args) -> None:
    size = QUICK if args.quick else FULL
    model_train, low_train, y_train, model_test, low_test, y_test, groups = make_problem(**size, seed=args.seed)
    folds = story_folds(groups, n_folds=5)
    alphas = HIMALAYA_ALPHAS
    data = (model_train, low_train, y_train, model_test, low_test, y_test, folds, alphas)
    print("\n".join(machine_lines()))
    print(f"problem: {len(y_train)} training TRs, {len(y_test)} test TRs, {model_train.shape[1]} + "
          f"{low_train.shape[1]} features, {y_train.shape[1]} voxels, 5 story folds, {len(alphas)} alphas, "
          f"{len(BAND_MIXES)} band mixes, float32\n")

    grid_s, grid_cpu, grid, grid_load = timed(lambda: partition_variance(*data, solver="grid"), args.repeats)
    joint_s, joint_cpu, _, joint_load = timed(
        lambda: banded_ridge_grid(model_train, low_train, y_train, model_test, low_test, folds, alphas), args.repeats)
    ref_s, ref_cpu, reference, ref_load = timed(lambda: partition_variance(*data, solver="himalaya", n_iter=20), 1)

    joint = np.abs(grid.r2_joint - reference.r2_joint)
    unique = np.abs(grid.unique_model - reference.unique_model)
    agreement = (f"median {np.median(joint):.4f}, 95th pct {np.percentile(joint, 95):.4f}, max {joint.max():.4f}; "
                 f"mean r2_joint {grid.r2_joint.mean():.4f} vs {reference.r2_joint.mean():.4f}")
    print("| method | runs | median wall s | median CPU s | wall vs himalaya | load | |delta r2_joint| vs himalaya |")
    print("|---|---|---|---|---|---|---|")
    print(f"| `partition_variance(solver=\"grid\")` | {args.repeats} | {grid_s:.1f} | {grid_cpu:.1f} | "
          f"{ref_s / grid_s:.1f}x | {grid_load:.1f} | {agreement} |")
    print(f"| `banded_ridge_grid` (joint fit only) | {args.repeats} | {joint_s:.1f} | {joint_cpu:.1f} | "
          f"{ref_s / joint_s:.1f}x | {joint_load:.1f} | |")
    print(f"| `partition_variance(solver=\"himalaya\")`, BandedRidgeCV n_iter=20 | 1 | {ref_s:.1f} | {ref_cpu:.1f} | "
          f"1.0x | {ref_load:.1f} | reference |")
    same_band = np.mean(np.sign(grid.band_mix - 0.5) == np.sign(reference.band_mix - 0.5))
    print(f"\n|delta unique_model|: median {np.median(unique):.4f}, max {unique.max():.4f}; band_mix: Spearman r "
          f"{scipy.stats.spearmanr(grid.band_mix, reference.band_mix)[0]:.2f} between the solvers, same favoured "
          f"band (g above / below 0.5) in {same_band:.0%} of voxels")
    for name, rows in (("model only", slice(0, len(grid) // 3)), ("low only", slice(len(grid) // 3, 2 * len(grid) // 3)),
                       ("both", slice(2 * len(grid) // 3, None))):
        part = grid.iloc[rows].mean()
        print(f"grid, {name} voxels: unique_model {part.unique_model:.3f}, unique_low {part.unique_low:.3f}, "
              f"shared {part.shared:.3f}, median band_mix {grid.band_mix.iloc[rows].median():.3f}")



if __name__ == "__main__":
    main()
