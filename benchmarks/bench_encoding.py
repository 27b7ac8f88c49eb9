"""Benchmark of the voxelwise ridge fit: bt_utils vs himalaya vs the reference bootstrap ridge.

Prints one table. The fixed problem: 4,000 TRs x 3,072 features (768 features x
4 FIR delays) x 4,000 voxels, 15 alphas, 5 leave-stories-out folds, float32,
synthetic data with planted signal. Rows:

- ``floor``: the unavoidable products ``X^T X`` and ``X^T Y``;
- ``bt_utils`` :func:`~bt_utils.encoding.ridge.fit_ridge_cv` on the 5 folds;
- ``himalaya``: ``RidgeCV`` with its defaults (same alphas, same folds). Its
  default score is the negative MSE; with responses z-scored per story and
  whole-story folds that is exactly ``R^2 - 1``, so ``cv_scores_ + 1`` is
  compared with the R^2 of bt_utils;
- ``reference``: a plain numpy implementation of the Huth lab bootstrap ridge
  (one SVD per bootstrap, penalty ``alpha**2`` on ``logspace(1, 4, 15)``, 3
  bootstraps of 20-TR chunks holding out 25%, refit with an SVD of all rows),
  next to ``fit_ridge_cv`` on the same bootstrap splits with the squared grid.

Run: ``.venv/bin/python benchmarks/bench_encoding.py [--quick] [--backend numpy|torch|torch_cuda] [--repeats 3]
[--threads N]``. On a machine shared with other jobs, multi-threaded BLAS spins
while its threads wait for cores, and timings swing several-fold; ``--threads 1``
gives stable ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np
import scipy.signal
from threadpoolctl import threadpool_info, threadpool_limits

from bt_utils.encoding.ridge import (
    HIMALAYA_ALPHAS,
    REFERENCE_ALPHAS,
    bootstrap_chunk_splits,
    fit_ridge_cv,
    story_folds,
)

FULL = {"n_stories": 20, "trs_per_story": 200, "n_base": 768, "n_voxels": 4000}
QUICK = {"n_stories": 10, "trs_per_story": 100, "n_base": 192, "n_voxels": 1000}
DELAYS = (1, 2, 3, 4)


# ----------------------------------------------------------------------------- data


def zscore_per_story(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for story in np.unique(groups):
        rows = groups == story
        block = values[rows]
        out[rows] = (block - block.mean(0)) / block.std(0)
    return out


def delay_within_stories(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """FIR delays 1-4 TRs within each story (zeros before the story starts), concatenated."""
    delayed = []
    for delay in DELAYS:
        shifted = np.zeros_like(features)
        for story in np.unique(groups):
            rows = np.flatnonzero(groups == story)
            shifted[rows[delay:]] = features[rows[:-delay]]
        delayed.append(shifted)
    return np.hstack(delayed)


def make_problem(n_stories: int, trs_per_story: int, n_base: int, n_voxels: int, seed: int = 0):
    """Features with correlated, autocorrelated columns and responses with planted signal.

    Returns
    -------
    X : ndarray of shape (n_stories * trs_per_story, 4 * n_base), float32, z-scored per story
    Y : ndarray of shape (n_trs, n_voxels), float32, z-scored per story
    groups : ndarray of shape (n_trs,)
        Story of each TR.
    signal_voxels : ndarray of shape (n_voxels,)
        True for the 75% of voxels with planted signal.
    """
    rng = np.random.default_rng(seed)
    n_trs = n_stories * trs_per_story
    groups = np.repeat(np.arange(n_stories), trs_per_story)
    latent = scipy.signal.lfilter([1.0], [1.0, -0.7], rng.standard_normal((n_trs, n_base)), axis=0)
    mixing = rng.standard_normal((n_base, n_base)) * (np.arange(1, n_base + 1) ** -0.5)[:, None]
    X = zscore_per_story(delay_within_stories(zscore_per_story(latent @ mixing, groups), groups), groups)
    weights = rng.standard_normal((X.shape[1], n_voxels)) / np.sqrt(X.shape[1])
    signal = X @ weights
    signal /= signal.std(0)
    signal_voxels = rng.random(n_voxels) < 0.75
    snr = np.where(signal_voxels, rng.uniform(0.1, 1.0, n_voxels), 0.0)
    Y = zscore_per_story(snr * signal + rng.standard_normal((n_trs, n_voxels)), groups)
    return X.astype(np.float32), Y.astype(np.float32), groups, signal_voxels


# ----------------------------------------------------------------------------- methods


def reference_bootstrap_ridge(X: np.ndarray, Y: np.ndarray, splits, alphas=REFERENCE_ALPHAS):
    """The Huth lab bootstrap ridge, written plainly: penalty ``alpha**2``, one SVD per bootstrap.

    Returns
    -------
    best_alphas : ndarray of shape (n_voxels,)
    mean_r2 : ndarray of shape (n_alphas, n_voxels)
        Held-out R^2 averaged over bootstraps.
    weights : ndarray of shape (n_features, n_voxels)
    """
    total = np.zeros((len(alphas), Y.shape[1]))
    for train, test in splits:
        U, s, Vt = np.linalg.svd(X[train], full_matrices=False)
        projected = U.T @ Y[train]
        test_basis = X[test] @ Vt.T
        centred = Y[test] - Y[test].mean(0)
        variance = (centred**2).sum(0)
        for index, alpha in enumerate(alphas):
            prediction = (test_basis * (s / (s**2 + alpha**2))) @ projected
            total[index] += 1 - ((Y[test] - prediction) ** 2).sum(0) / variance
    mean_r2 = total / len(splits)
    best = np.argmax(mean_r2, axis=0)
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    weights = np.empty((X.shape[1], Y.shape[1]), dtype=X.dtype)
    for index in np.unique(best):
        voxels = np.flatnonzero(best == index)
        shrink = s / (s**2 + alphas[index] ** 2)
        weights[:, voxels] = Vt.T @ (shrink[:, None] * (U.T @ Y[:, voxels]))
    return alphas[best], mean_r2, weights


def himalaya_default(X: np.ndarray, Y: np.ndarray, splits, alphas=HIMALAYA_ALPHAS):
    """himalaya's RidgeCV with its defaults (numpy backend, negative-MSE score)."""
    from himalaya.ridge import RidgeCV

    return RidgeCV(alphas=alphas, cv=splits).fit(X, Y)


def floor_products(X: np.ndarray, Y: np.ndarray):
    """The products every method needs at least once: X^T X and X^T Y."""
    return X.T @ X, X.T @ Y


# ----------------------------------------------------------------------------- timing and report


def timed(function, repeats: int):
    """Median wall and CPU (all threads) seconds over ``repeats`` calls, the last result, the 1-minute load after.

    CPU time is less sensitive than wall time to other processes sharing the cores.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result, os.getloadavg()[0]


def peak_memory_mb(function) -> float:
    """Peak of the memory numpy and Python allocate during one call (tracemalloc), in MB, beyond what existed before."""
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def machine_lines() -> list[str]:
    import himalaya
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = [f"{info['internal_api']} {info.get('version')} ({info.get('architecture')}, "
            f"{info['num_threads']} threads)" for info in threadpool_info() if info["user_api"] == "blas"]
    return [
        f"machine: {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start",
        f"numpy {np.__version__} BLAS: {', '.join(blas) or 'unknown'}",
        f"himalaya {himalaya.__version__}, torch {torch.__version__}, python {platform.python_version()}",
    ]


def alpha_mismatch(alphas_a: np.ndarray, alphas_b: np.ndarray) -> float:
    """Fraction of voxels whose chosen alphas differ by more than float32 rounding."""
    return float(np.mean(~np.isclose(alphas_a, alphas_b, rtol=1e-4)))


def ridge_benchmark_parser(description: str, quick_help: str, repeats_help: str) -> argparse.ArgumentParser:
    """Options shared by the ridge benchmarks: ``--quick``, ``--repeats``, ``--threads``, ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=3, help=repeats_help)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (default: the BLAS default); 1 gives stable timings on a shared machine")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> None:
    """Parse the options and run the benchmark under the requested BLAS thread count."""
    parser = ridge_benchmark_parser(__doc__.splitlines()[0], "a 1,000 x 768 x 1,000 problem",
                                    "repeats of the fast rows (himalaya and reference: 1)")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "torch", "torch_cuda"),
                        help="backend of fit_ridge_cv")
    args = parser.parse_args(argv)
    with threadpool_limits(args.threads):
        run(args)


def run(args) -> None:
    """Build the problem, time every method and print the machine and the table."""
    size = QUICK if args.quick else FULL
    X, Y, groups, signal_voxels = make_problem(**size, seed=args.seed)
    folds = story_folds(groups, n_folds=5)
    boots = bootstrap_chunk_splits(len(X), n_boots=3, chunk_len=20, held_out_fraction=0.25, rng=args.seed)
    n_voxels = Y.shape[1]
    print("\n".join(machine_lines()))
    print(f"problem: {X.shape[0]} TRs x {X.shape[1]} features x {n_voxels} voxels, {len(HIMALAYA_ALPHAS)} alphas, "
          f"5 story folds / 3 bootstraps, float32; {signal_voxels.sum()} voxels with planted signal\n")

    rows = []
    floor_s, floor_cpu, _, load = timed(lambda: floor_products(X, Y), args.repeats)
    rows.append(("floor: X^T X + X^T Y", "numpy", args.repeats, floor_s, floor_cpu, load, "", ""))

    suite_s, suite_cpu, suite, load = timed(lambda: fit_ridge_cv(X, Y, cv=folds, backend=args.backend), args.repeats)
    himalaya_s, himalaya_cpu, himalaya_fit, himalaya_load = timed(lambda: himalaya_default(X, Y, folds), 1)
    mismatch = alpha_mismatch(suite.best_alphas, himalaya_fit.best_alphas_)
    score_diff = np.abs(suite.best_scores - (himalaya_fit.cv_scores_ + 1)).max()
    rows.append((f"bt_utils fit_ridge_cv ({suite.method})", args.backend, args.repeats, suite_s, suite_cpu, load,
                 f"{mismatch:.4%}", f"{score_diff:.1e}"))
    rows.append(("himalaya RidgeCV (defaults)", "numpy", 1, himalaya_s, himalaya_cpu, himalaya_load,
                 "reference", "reference"))

    boot_s, boot_cpu, boot_fit, boot_load = timed(lambda: fit_ridge_cv(X, Y, cv=boots, backend=args.backend),
                                                  args.repeats)
    reference_s, reference_cpu, reference, reference_load = timed(lambda: reference_bootstrap_ridge(X, Y, boots), 1)
    reference_alphas, reference_r2, _ = reference
    boot_mismatch = alpha_mismatch(boot_fit.best_alphas, reference_alphas**2)
    boot_diff = np.abs(boot_fit.best_scores - reference_r2.max(0)).max()
    rows.append((f"bt_utils fit_ridge_cv, bootstrap splits ({boot_fit.method})", args.backend, args.repeats,
                 boot_s, boot_cpu, boot_load, f"{boot_mismatch:.4%}", f"{boot_diff:.1e}"))
    rows.append(("reference bootstrap ridge (numpy SVD)", "numpy", 1, reference_s, reference_cpu, reference_load,
                 "reference", "reference"))

    print("| method | backend | repeats | median wall s | median CPU s | wall vs himalaya | CPU vs himalaya "
          "| voxels/s | load | alphas differing | max abs score diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, backend, repeats, seconds, cpu, load, alphas_diff, scores_diff in rows:
        print(f"| {name} | {backend} | {repeats} | {seconds:.2f} | {cpu:.2f} | {himalaya_s / seconds:.1f}x | "
              f"{himalaya_cpu / cpu:.1f}x | {n_voxels / seconds:,.0f} | {load:.1f} | {alphas_diff} | {scores_diff} |")
    print(f"\nbt_utils speed-up over himalaya: {himalaya_s / suite_s:.1f}x wall, {himalaya_cpu / suite_cpu:.1f}x CPU "
          f"(5 folds); over the reference bootstrap ridge: {reference_s / boot_s:.1f}x wall, "
          f"{reference_cpu / boot_cpu:.1f}x CPU (3 bootstraps)")
    if args.backend == "numpy":
        peak = peak_memory_mb(lambda: fit_ridge_cv(X, Y, cv=folds))
        print(f"peak memory fit_ridge_cv allocates (tracemalloc): {peak:.0f} MB, "
              f"on top of its inputs X and Y ({(X.nbytes + Y.nbytes) / 1e6:.0f} MB)")
    print(f"mean CV R^2 at the chosen alpha: signal voxels {suite.best_scores[signal_voxels].mean():.3f}, "
          f"noise voxels {suite.best_scores[~signal_voxels].mean():.3f}")


if __name__ == "__main__":
    main()
