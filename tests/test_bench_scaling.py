"""The projection arithmetic of benchmarks/bench_scaling.py against hand computations (no models, no timing)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_scaling import (
    Protocol,
    UnitCosts,
    cluster_seconds,
    makespan,
    power_law_seconds,
    ridge_flops,
    stage_seconds,
)

# 2 subjects x 2 families; 3 tuned models per run; 4 variants x 7 layers x 2 = 56 fits per run
PROTOCOL = Protocol(n_subjects=2, n_families=2, n_train_trs=100, n_windows=1000, n_voxels=10, n_epochs=3)
COSTS = {"a": UnitCosts(window_s=0.01, sample_s=0.1, fit_s=2.0),
         "b": UnitCosts(window_s=0.02, sample_s=0.3, fit_s=2.0)}
# one run:  a: 3 tunings x 3 epochs x 100 samples x 0.1 s = 90; 3 x 1000 windows x 0.01 = 30; 56 x 2 = 112 -> 232
#           b: 3 x 3 x 100 x 0.3 = 270; 3 x 1000 x 0.02 = 60; 112 -> 442
# shared (pretrained features): a 1000 x 0.01 = 10, b 1000 x 0.02 = 20


def test_stage_totals_by_hand():
    stages = stage_seconds(PROTOCOL, COSTS)
    # features: (1 + 2 x 3) variants x 1000 windows x (0.01 + 0.02)
    assert stages["features"] == pytest.approx(7 * 1000 * 0.03)
    # tuning: 2 x 3 trainings x 3 epochs x 100 samples x (0.1 + 0.3)
    assert stages["tuning"] == pytest.approx(6 * 300 * 0.4)
    # fits: 2 subjects x 56 x (2 + 2)
    assert stages["fits"] == pytest.approx(2 * 56 * 4.0)
    assert stages["total"] == pytest.approx(210 + 720 + 448)


def test_cluster_makespan_by_hand():
    # one worker: everything in a row
    assert cluster_seconds(PROTOCOL, COSTS, 1) == pytest.approx(stage_seconds(PROTOCOL, COSTS)["total"])
    # two workers: shared 20 | 10 -> 20; runs 442 + 232 | 442 + 232 -> 674
    assert cluster_seconds(PROTOCOL, COSTS, 2) == pytest.approx(20 + 674)
    # four workers: one run each -> 20 + 442
    assert cluster_seconds(PROTOCOL, COSTS, 4) == pytest.approx(20 + 442)


def test_makespan_of_equal_jobs_is_ceil_runs_over_workers():
    assert makespan([3.0] * 24, 8) == pytest.approx(3 * 3.0)
    assert makespan([3.0] * 24, 5) == pytest.approx(5 * 3.0)
    assert makespan([5.0, 4.0, 3.0, 3.0], 2) == pytest.approx(8.0)


def test_power_law_and_ridge_flops():
    base = {"trs": 100, "voxels": 10}
    assert power_law_seconds(2.0, base, {"trs": 400, "voxels": 30}, {"trs": 0.5, "voxels": 1.0}) == pytest.approx(
        2.0 * 2.0 * 3.0)
    # the responses' terms are linear in voxels: doubling a large voxel count nearly doubles the flops
    ratio = ridge_flops(2000, 256, 200_000) / ridge_flops(2000, 256, 100_000)
    assert 1.95 < ratio <= 2.0
