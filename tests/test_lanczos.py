import math

import numpy as np
import pytest

from bt_utils.features.lanczos import lanczos_kernel, lanczos_matrix, lanczos_resample
from bt_utils.data.timing import tr_midpoints

TR = 2.0


def _kernel_by_hand(d, cutoff, window=3):
    x = d * cutoff
    if x == 0:
        return 1.0
    if abs(x) > window:
        return 0.0
    return window * math.sin(math.pi * x) * math.sin(math.pi * x / window) / (math.pi * x) ** 2


def test_kernel_matches_the_formula():
    deltas = np.linspace(-8, 8, 161)
    expected = [_kernel_by_hand(d, 0.5) for d in deltas]
    np.testing.assert_allclose(lanczos_kernel(deltas, 0.5), expected, atol=1e-12)
    assert lanczos_kernel(np.array([2.0, 4.0]), 0.5).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert lanczos_kernel(0.0, 0.5) == 1.0 and lanczos_kernel(1.0, 0.5) == pytest.approx(_kernel_by_hand(1.0, 0.5))


def test_resampling_matches_a_loop_over_samples():
    rng = np.random.default_rng(0)
    old = np.sort(rng.uniform(0, 60, 300))
    new = tr_midpoints(30, TR, sound_onset=0.0)
    values = rng.standard_normal((300, 2))
    expected = np.array([[sum(_kernel_by_hand(t - s, 1 / TR) * v[k] for s, v in zip(old, values)) for k in range(2)]
                         for t in new])
    np.testing.assert_allclose(lanczos_resample(values, old, new), expected, atol=1e-9)


def test_slow_signal_is_preserved_and_fast_one_removed():
    old = np.arange(0, 120, 0.1)
    new = tr_midpoints(50, TR, sound_onset=0.0)
    slow = np.sin(2 * np.pi * 0.05 * old)[:, None]  # 0.05 Hz, well below the 0.25 Hz Nyquist of the TR grid
    fast = np.sin(2 * np.pi * 2.0 * old)[:, None]   # 2 Hz
    inner = (new > 10) & (new < 90)
    resampled = lanczos_resample(slow, old, new, normalize=True)[inner, 0]
    np.testing.assert_allclose(resampled, np.sin(2 * np.pi * 0.05 * new[inner]), atol=0.02)
    assert np.abs(lanczos_resample(fast, old, new, normalize=True)[inner]).max() < 0.01
    # unnormalised weights scale with the sampling density (samples per TR), as in the reference
    ratio = lanczos_resample(slow, old, new)[inner, 0] / resampled
    assert np.median(ratio) == pytest.approx(TR / 0.1, rel=0.02)


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 rows but there are 2"):
        lanczos_resample(np.zeros((3, 1)), np.arange(2), np.arange(4))
    with pytest.raises(ValueError, match="cutoff must be positive"):
        lanczos_matrix(np.arange(3), np.arange(3), cutoff=0)
