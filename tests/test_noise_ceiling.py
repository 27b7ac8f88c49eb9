import statistics

import numpy as np
import pytest

from bt_utils.data.noise_ceiling import cc_max, explainable_variance, select_voxels, signal_power, voxel_counts
from bt_utils.validation import DataError


def _schoppe_reference(repeats_one_voxel):
    """Schoppe et al. (2016) for one voxel with plain Python: SP from the sum formula,
    cc_max = sqrt(SP / var(mean response)), after z-scoring each repeat."""
    z = []
    for trace in repeats_one_voxel:
        mean, sd = statistics.fmean(trace), statistics.pstdev(trace)
        z.append([(v - mean) / sd for v in trace])
    n = len(z)
    summed = [sum(values) for values in zip(*z)]
    mean_response = [s / n for s in summed]
    sp = (statistics.pvariance(summed) - sum(statistics.pvariance(t) for t in z)) / (n * (n - 1))
    return sp, (sp / statistics.pvariance(mean_response)) ** 0.5 if sp > 0 else 0.0


def _simulate(rng, n_repeats, n_trs, signal_r):
    signal = rng.standard_normal((n_trs, len(signal_r)))
    noise = rng.standard_normal((n_repeats, n_trs, len(signal_r)))
    return signal_r * signal + np.sqrt(1 - signal_r**2) * noise


def test_cc_max_matches_independent_computation():
    rng = np.random.default_rng(1)
    repeats = _simulate(rng, 6, 80, np.array([0.0, 0.2, 0.5, 0.9])) * 3.0 + 1.0
    sp, ceiling = signal_power(repeats), cc_max(repeats)
    for voxel in range(repeats.shape[2]):
        ref_sp, ref_cc = _schoppe_reference(repeats[:, :, voxel].tolist())
        assert sp[voxel] == pytest.approx(ref_sp, abs=1e-10)
        assert ceiling[voxel] == pytest.approx(ref_cc, abs=1e-10)


def test_cc_max_recovers_known_ceiling():
    rng = np.random.default_rng(2)
    signal_r = np.full(400, 0.5)
    repeats = _simulate(rng, 10, 300, signal_r)
    expected = np.sqrt(0.25 / (0.25 + 0.75 / 10))
    assert np.median(cc_max(repeats)) == pytest.approx(expected, abs=0.02)


def test_pure_noise_has_low_ceiling_and_zero_ev_on_average():
    rng = np.random.default_rng(3)
    repeats = rng.standard_normal((5, 200, 2000))
    assert np.median(cc_max(repeats)) < 0.2
    assert abs(np.mean(explainable_variance(repeats))) < 0.01
    assert np.mean(explainable_variance(repeats, bias_correction=False)) == pytest.approx(0.2, abs=0.01)


def test_negative_signal_power_gives_zero_not_artefact():
    # anticorrelated repeats: var(mean) = 0 -> SP = -1/(N-1); the bare formula would divide by 0
    trace = np.sin(np.linspace(0, 6, 50))
    repeats = np.stack([trace, -trace])[:, :, None]
    assert signal_power(repeats)[0] == pytest.approx(-1.0)
    assert cc_max(repeats)[0] == 0.0


def test_corrected_ev_equals_signal_power_and_nan_is_zero():
    rng = np.random.default_rng(4)
    repeats = _simulate(rng, 4, 60, np.array([0.3, 0.7]))
    np.testing.assert_allclose(explainable_variance(repeats), signal_power(repeats), atol=1e-12)
    repeats[:, :, 1] = np.nan
    assert cc_max(repeats)[1] == 0.0


def test_too_few_repeats_is_a_clear_error():
    with pytest.raises(DataError, match="at least 2 repeats.*got 1"):
        cc_max(np.zeros((1, 50, 3)))
    with pytest.raises(ValueError, match="shape"):
        cc_max(np.zeros((50, 3)))


def test_select_voxels_and_counts():
    ceiling = np.array([0.1, 0.41, 0.4, 0.9, 0.0])
    np.testing.assert_array_equal(select_voxels(ceiling, 0.4), [1, 3])
    counts = voxel_counts(ceiling, {"train": 0.4, "eval": 0.05})
    assert counts.n_voxels.tolist() == [2, 4]
    with pytest.raises(DataError, match="highest: 0.900"):
        select_voxels(ceiling, 0.95)
    with pytest.raises(ValueError, match="1.5"):
        select_voxels(ceiling, 1.5)
