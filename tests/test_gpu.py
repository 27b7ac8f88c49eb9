"""Checks that need a CUDA GPU; skipped elsewhere. On a GPU machine: ``pytest -m gpu``."""

import numpy as np
import pytest
import torch

from bt_utils.encoding.ridge import HIMALAYA_ALPHAS, EigenRidgeCV, story_folds
from bt_utils.features import WindowSettings, extract_layer_features
from bt_utils.models.registry import load_encoder, select_device
from bt_utils.models.resume_state import load_resume_state
from bt_utils.models.tuning import TuningConfig, tune
from conftest import QUICK_TUNING

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_device_picks_cuda():
    assert select_device("auto").type == "cuda"


@pytest.mark.parametrize("strategy", ["downdate", "per_fold"])
def test_torch_cuda_ridge_matches_numpy(strategy):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 40))
    Y = X @ rng.standard_normal((40, 50)) + 2.0 * rng.standard_normal((300, 50))
    folds = story_folds(np.repeat(np.arange(6), 50))
    cpu = EigenRidgeCV(cv=folds, solver_params={"strategy": strategy}).fit(X, Y)
    gpu = EigenRidgeCV(cv=folds, backend="torch_cuda", solver_params={"strategy": strategy, "n_targets_batch": 16})
    gpu.fit(X, Y)
    assert isinstance(gpu.coef_, np.ndarray) and gpu.method_ == cpu.method_
    np.testing.assert_allclose(gpu.alpha_scores_, cpu.alpha_scores_, atol=1e-4)
    # a voxel may choose another alpha only where two alphas tie to float32 rounding on the CPU too
    cpu_scores_at_gpu_alphas = cpu.alpha_scores_[np.searchsorted(HIMALAYA_ALPHAS, gpu.best_alphas_), np.arange(50)]
    np.testing.assert_allclose(cpu_scores_at_gpu_alphas, cpu.cv_scores_, atol=1e-4)
    same = gpu.best_alphas_ == cpu.best_alphas_
    assert same.mean() >= 0.9
    np.testing.assert_allclose(gpu.coef_[:, same], cpu.coef_[:, same], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-whisper"])
def test_cuda_features_match_cpu(name):
    audio = 0.1 * np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32)
    settings = WindowSettings(context_s=1.0)
    _, cpu = extract_layer_features(load_encoder(name, "cpu"), audio, [1, 2], settings, progress=False)
    _, gpu = extract_layer_features(load_encoder(name, "cuda"), audio, [1, 2], settings, progress=False)
    for layer in (1, 2):
        # cuDNN convolutions run in TF32 by default (10-bit mantissa): equal to ~1e-3 of the scale,
        # far below what a wrong frame, window or padding would change
        np.testing.assert_allclose(gpu[layer], cpu[layer], atol=1e-2 * cpu[layer].std())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_tuning_learns_on_cuda(demo, tmp_path, precision):
    config = TuningConfig(model="tiny-wav2vec2", **{**QUICK_TUNING, "device": "cuda", "mixed_precision": precision})
    result = tune(demo, "DEMO01", config, tmp_path / precision, progress=False)
    train = result.history[result.history.split == "train"].loss.to_numpy()
    assert np.isfinite(train).all() and train[-1] < train[0] - 0.05


def test_resume_on_cuda_continues_the_run(demo, tmp_path):
    """The resume file holds CPU random-number states (CUDA ones too) and the fp16 loss scale: resuming on
    the GPU restores them and ends where an uninterrupted run ends (up to CUDA's non-deterministic sums)."""
    config = TuningConfig(model="tiny-wav2vec2", **{**QUICK_TUNING, "device": "cuda", "mixed_precision": "fp16"})
    straight = tune(demo, "DEMO01", config, tmp_path / "straight", progress=False)
    tune(demo, "DEMO01", config, tmp_path / "resumed", progress=False, stop_after_epochs=1)
    state = load_resume_state(tmp_path / "resumed" / "resume_state.pt")
    assert state["scaler"]["scale"] > 0
    resumed = tune(demo, "DEMO01", config, tmp_path / "resumed", progress=False)
    np.testing.assert_allclose(resumed.history.loss, straight.history.loss, rtol=1e-3)
