"""The compute count of benchmarks/bench_features.py: by hand for the reference, and the 10x claim of EDGE_SHARED."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_features import layer_compute

from bt_utils.features.layers import EDGE_SHARED, WindowSettings, plan_windows
from bt_utils.models.encoder import SAMPLE_RATE, WHISPER_FRAMES
from bt_utils.models.registry import load_encoder


@pytest.fixture(scope="module")
def padded_whisper():
    return load_encoder("whisper-tiny.en", "cpu", native_length=False)


def test_reference_compute_by_hand(padded_whisper):
    """Every reference window runs 1,500 frames: 1500 * (12 D^2 + 2 D * 1500) multiply-adds per layer."""
    plan = plan_windows(20 * SAMPLE_RATE, WindowSettings("reference"))
    frames, multiply_adds = layer_compute(padded_whisper, plan, WindowSettings("reference"))
    width = padded_whisper.hidden_size
    assert (frames, width) == (200 * WHISPER_FRAMES, 384)  # one window per 0.1 s
    assert multiply_adds == pytest.approx(200 * WHISPER_FRAMES * (12 * width ** 2 + 2 * width * WHISPER_FRAMES))


@pytest.mark.parametrize("minutes, low, high", [(2, 10.0, 10.3), (15, 10.4, 10.7)])
def test_edge_shared_needs_10x_less_compute(padded_whisper, minutes, low, high):
    """The documented 10.1-10.6x fewer layer multiply-adds than the reference for stories of 2-15 min."""
    samples = minutes * 60 * SAMPLE_RATE
    reference, shared = WindowSettings("reference"), WindowSettings("edge", **EDGE_SHARED)
    ratio = (layer_compute(padded_whisper, plan_windows(samples, reference), reference)[1]
             / layer_compute(padded_whisper, plan_windows(samples, shared), shared)[1])
    assert low < ratio < high
