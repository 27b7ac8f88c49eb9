"""Benchmark of the voxelwise ridge fit: EigenRidgeCV against himalaya's RidgeCV, side by side.

Prints one markdown table. Problems (synthetic, float32, planted signal, 15 alphas
``logspace(2, 8, 15)``, 5 leave-stories-out folds): the standard one, 4,000 TRs x
3,072 features (768 x 4 FIR delays) x 4,000 voxels, and two of the demo's size,
500 and 1,500 TRs x 1,536 features (384 x 4) x 3,000 voxels. On each problem and
backend (numpy; torch on the CPU) both estimators get the same data, alphas,
folds and selection score (R^2: himalaya's ``r2_score`` as ``score_func``); their
fits alternate within every repeat, so both see the same load on a shared
machine, and the speed-up is the median of the per-repeat ratios. Agreement: the
fraction of voxels whose alphas differ and the largest difference of the
cross-validated score at the chosen alpha.

Run: ``.venv/bin/python benchmarks/bench_encoding.py [--quick] [--repeats 3] [--threads N]
[--backends numpy torch] [--problems standard demo-1500 demo-500]``; ``--quick`` skips the
standard problem. On a machine shared with other jobs, multi-threaded BLAS spins while
its threads wait for cores, and timings swing several-fold; ``--threads 1`` gives stable ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import scipy.signal
from threadpoolctl import threadpool_info, threadpool_limits

from bt_utils.encoding.ridge import HIMALAYA_ALPHAS, EigenRidgeCV, story_folds

#: name -> make_problem arguments; the standard problem first.
PROBLEMS = {
    "standard": {"n_stories": 20, "trs_per_story": 200, "n_base": 768, "n_voxels": 4000},
    "demo-1500": {"n_stories": 10, "trs_per_story": 150, "n_base": 384, "n_voxels": 3000},
    "demo-500": {"n_stories": 10, "trs_per_story": 50, "n_base": 384, "n_voxels": 3000},
}
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


def himalaya_ridge_cv(X: np.ndarray, Y: np.ndarray, splits, backend: str):
    """himalaya's RidgeCV on ``backend`` with R^2 as the score: best alphas and CV scores as numpy (n_voxels,)."""
    from himalaya.backend import get_backend, set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score

    previous = get_backend().name
    set_backend(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # when n_samples < n_features: "kernel ridge would be faster"
            model = RidgeCV(alphas=HIMALAYA_ALPHAS, cv=splits, solver_params={"score_func": r2_score}).fit(X, Y)
        current = get_backend()
        return current.to_numpy(model.best_alphas_).astype(np.float64), current.to_numpy(model.cv_scores_)
    finally:
        set_backend(previous)


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
    """Parse the options and run the benchmark under the requested thread count."""
    parser = ridge_benchmark_parser(__doc__.splitlines()[0], "only the demo-sized problems",
                                    "interleaved repeats of both estimators")
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch"], choices=("numpy", "torch", "torch_cuda"))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def compare(X: np.ndarray, Y: np.ndarray, folds, backend: str, repeats: int) -> dict:
    """Alternate the two fits ``repeats`` times; medians, the median per-repeat ratio and their agreement."""
    ours = EigenRidgeCV(alphas=HIMALAYA_ALPHAS, cv=folds, backend=backend)
    times = {"ours": [], "himalaya": [], "ours_cpu": [], "himalaya_cpu": []}
    for _ in range(repeats):
        seconds, cpu, _, _ = timed(lambda: ours.fit(X, Y), 1)
        times["ours"].append(seconds)
        times["ours_cpu"].append(cpu)
        seconds, cpu, (alphas, scores), load = timed(lambda: himalaya_ridge_cv(X, Y, folds, backend), 1)
        times["himalaya"].append(seconds)
        times["himalaya_cpu"].append(cpu)
    return {
        **{key: statistics.median(values) for key, values in times.items()},
        "ratio": statistics.median(h / o for h, o in zip(times["himalaya"], times["ours"])),
        "cpu_ratio": statistics.median(h / o for h, o in zip(times["himalaya_cpu"], times["ours_cpu"])),
        "method": ours.method_, "load": load,
        "alphas_differ": float(np.mean(~np.isclose(ours.best_alphas_, alphas, rtol=1e-4))),
        "score_diff": float(np.abs(ours.cv_scores_ - scores).max()),
    }


def run(args) -> None:
    """Build each problem, compare the estimators on every backend and print the machine and the table."""
    print("\n".join(machine_lines()))
    print(f"threads: {args.threads or 'BLAS default'}, repeats: {args.repeats}, "
          f"{len(HIMALAYA_ALPHAS)} alphas, 5 story folds, float32\n")
    print("| problem (TRs x features x voxels) | backend | EigenRidgeCV method | EigenRidgeCV wall s | himalaya wall s "
          "| speed-up (wall) | EigenRidgeCV CPU s | himalaya CPU s | speed-up (CPU) | load | alphas differing "
          "| max abs score diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.problems:
        if args.quick and name == "standard":
            continue
        X, Y, groups, _ = make_problem(**PROBLEMS[name], seed=args.seed)
        folds = story_folds(groups, n_folds=5)
        for backend in args.backends:
            row = compare(X, Y, folds, backend, args.repeats)
            print(f"| {name}: {X.shape[0]:,} x {X.shape[1]:,} x {Y.shape[1]:,} | {backend} | {row['method']} "
                  f"| {row['ours']:.2f} | {row['himalaya']:.2f} | **{row['ratio']:.1f}x** | {row['ours_cpu']:.2f} "
                  f"| {row['himalaya_cpu']:.2f} | {row['cpu_ratio']:.1f}x | {row['load']:.1f} "
                  f"| {row['alphas_differ']:.2%} | {row['score_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
