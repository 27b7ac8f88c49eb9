"""The compute count of benchmarks/bench_features.py: by hand for the reference, and the 10x claim of the fast
mode of Whisper padded to 30 s."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_features import layer_compute

from bt_utils.features import WindowSettings
from bt_utils.models.encoder import SAMPLE_RATE, WHISPER_FRAMES
from bt_utils.models.registry import load_encoder


@pytest.fixture(scope="module")
def padded_whisper():
    return load_encoder("whisper-tiny.en", "cpu", native_length=False)


def test_reference_compute_by_hand(padded_whisper):
    """Every reference window runs 1,500 frames: 1500 * (12 D^2 + 2 D * 1500) multiply-adds per layer."""
    frames, multiply_adds = layer_compute(padded_whisper, 20 * SAMPLE_RATE, WindowSettings("reference"))
    width = padded_whisper.hidden_size
    assert (frames, width) == (200 * WHISPER_FRAMES, 384)  # one window per 0.1 s
    assert multiply_adds == pytest.approx(200 * WHISPER_FRAMES * (12 * width ** 2 + 2 * width * WHISPER_FRAMES))


def test_shared_group_compute_by_hand(padded_whisper):
    """A 1.5-s story: 15 windows from sample 0, one group led by the first window (the members' spans of 91
    frames all start at frame 0: their kept frames, 10 .. 75, lie at most 75 frames in). The members read the
    lead's middle frame of each of the 89 blocks of 16 frames after the span (the last one 1409 - 88 * 16 = 1
    frame long), projected once."""
    frames, multiply_adds = layer_compute(padded_whisper, 24_000, WindowSettings("fast"))
    width = padded_whisper.hidden_size
    assert frames == WHISPER_FRAMES + 14 * 91
    assert multiply_adds == pytest.approx(WHISPER_FRAMES * (12 * width ** 2 + 2 * width * WHISPER_FRAMES)
                                          + 89 * 2 * width ** 2 + 14 * 91 * (12 * width ** 2 + 2 * width * (91 + 89)))


@pytest.mark.parametrize("minutes, low, high", [(2, 10.0, 10.3), (15, 10.4, 10.7)])
def test_fast_padded_whisper_needs_10x_less_compute(padded_whisper, minutes, low, high):
    """The documented 10.1-10.6x fewer layer multiply-adds than the reference for stories of 2-15 min."""
    samples = minutes * 60 * SAMPLE_RATE
    ratio = (layer_compute(padded_whisper, samples, WindowSettings("reference"))[1]
             / layer_compute(padded_whisper, samples, WindowSettings("fast"))[1])
    assert low < ratio < high
