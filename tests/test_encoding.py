"""Voxelwise ridge: EigenRidgeCV against himalaya's RidgeCV, planted signal, splits, scores, backends, bad inputs."""

import warnings

import numpy as np
import pytest
from himalaya.backend import get_backend as himalaya_current_backend
from himalaya.backend import set_backend
from himalaya.ridge import RidgeCV
from himalaya.scoring import correlation_score as himalaya_correlation
from himalaya.scoring import r2_score as himalaya_r2

from bt_utils.encoding.ridge import (
    BACKENDS,
    HIMALAYA_ALPHAS,
    REFERENCE_ALPHAS,
    EigenRidgeCV,
    _spd_inverse,
    _strategy_costs,
    bootstrap_chunk_splits,
    check_backend,
    correlation_score,
    get_backend,
    normalised_score,
    story_folds,
)


def _problem(n_samples=300, n_features=40, n_voxels=50, seed=0):
    """Correlated features, 10 stories, voxels from pure noise to strong signal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features)) @ rng.standard_normal((n_features, n_features)) * 0.3
    X += rng.standard_normal((n_samples, n_features))
    weights = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    Y = X @ weights * np.linspace(0, 2, n_voxels) + rng.standard_normal((n_samples, n_voxels))
    groups = np.repeat(np.arange(10), n_samples // 10)
    return X - X.mean(0), Y - Y.mean(0), groups


def _himalaya(X, Y, folds, score_func=himalaya_r2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # himalaya warns that kernel ridge is faster when p > n
        return RidgeCV(alphas=HIMALAYA_ALPHAS, cv=folds, solver_params={"score_func": score_func}).fit(X, Y)


def _himalaya_alpha_scores(X, Y, folds, score_func):
    """Score of every alpha (n_alphas, n_voxels) averaged over splits, from the score function himalaya calls."""
    recorded = []

    def recording(y_true, y_pred):
        scores = score_func(y_true, y_pred)
        recorded.append(np.asarray(scores, dtype=np.float64))
        return scores

    _himalaya(X, Y, folds, recording)
    assert len(recorded) == len(folds) and recorded[0].shape == (len(HIMALAYA_ALPHAS), Y.shape[1])
    return np.mean(recorded, axis=0)


def _ridge(folds, **kwargs):
    return EigenRidgeCV(alphas=HIMALAYA_ALPHAS, cv=folds, **kwargs)


def _relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_alpha_grids_are_the_same_penalties():
    assert np.allclose(HIMALAYA_ALPHAS, np.logspace(2, 8, 15))
    assert np.allclose(np.sqrt(HIMALAYA_ALPHAS), REFERENCE_ALPHAS)


@pytest.mark.parametrize("strategy", ["downdate", "per_fold"])
@pytest.mark.parametrize("shape", [(300, 40, 50), (100, 150, 20)], ids=["primal", "kernel"])
def test_matches_himalaya(strategy, shape):
    X, Y, groups = _problem(*shape)
    folds = story_folds(groups)
    reference = _himalaya(X, Y, folds)
    ridge = _ridge(folds, dtype="float64", solver_params={"strategy": strategy}).fit(X, Y)
    assert ridge.method_.startswith(f"{strategy}/")
    np.testing.assert_allclose(ridge.best_alphas_, reference.best_alphas_, rtol=1e-9)
    np.testing.assert_allclose(ridge.cv_scores_, reference.cv_scores_, rtol=1e-4, atol=1e-10)
    assert _relative(ridge.coef_, reference.coef_) < 1e-4
    X_new, Y_new = np.random.default_rng(9).standard_normal((30, X.shape[1])), Y[:30]
    assert _relative(ridge.predict(X_new), reference.predict(X_new)) < 1e-4
    np.testing.assert_allclose(ridge.score(X_new, Y_new), reference.score(X_new, Y_new), rtol=1e-4, atol=1e-8)


def test_float32_matches_himalaya_float32():
    """Both in float32 on the default strategy: the same alphas (no near-ties here) and predictions."""
    X, Y, groups = _problem(n_samples=400, n_features=60, n_voxels=200, seed=5)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    folds = story_folds(groups)
    reference = _himalaya(X, Y, folds)
    ridge = _ridge(folds).fit(X, Y)
    assert ridge.coef_.dtype == np.float32 and len(np.unique(ridge.best_alphas_)) > 3
    np.testing.assert_allclose(ridge.best_alphas_, reference.best_alphas_, rtol=1e-4)
    np.testing.assert_allclose(ridge.cv_scores_, reference.cv_scores_, atol=1e-5)
    X_new = np.random.default_rng(9).standard_normal((30, X.shape[1])).astype(np.float32)
    assert _relative(ridge.predict(X_new), np.asarray(reference.predict(X_new))) < 1e-4


@pytest.mark.parametrize("score", ["r2", "correlation"])
def test_every_alpha_scores_like_himalaya(score):
    X, Y, groups = _problem()
    folds = story_folds(groups)
    reference = _himalaya_alpha_scores(X, Y, folds, himalaya_r2 if score == "r2" else himalaya_correlation)
    for strategy in ("downdate", "per_fold"):
        ridge = _ridge(folds, scoring=score, dtype="float64", solver_params={"strategy": strategy}).fit(X, Y)
        assert ridge.alpha_scores_.shape == (len(HIMALAYA_ALPHAS), Y.shape[1])
        np.testing.assert_allclose(ridge.alpha_scores_, reference, rtol=1e-4, atol=1e-8)
        np.testing.assert_array_equal(ridge.cv_scores_, ridge.alpha_scores_.max(0))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float32_backends_and_batches_agree_with_float64(backend):
    X, Y, groups = _problem()
    folds = story_folds(groups)
    exact = _ridge(folds, dtype="float64").fit(X, Y)
    for solver_params in ({}, {"n_targets_batch": 7}, {"strategy": "downdate", "n_targets_batch": 16},
                          {"strategy": "per_fold"}):
        ridge = _ridge(folds, backend=backend, solver_params=solver_params).fit(X, Y)
        assert ridge.coef_.dtype == np.float32 and isinstance(ridge.coef_, np.ndarray)
        np.testing.assert_array_equal(ridge.best_alphas_, exact.best_alphas_)
        np.testing.assert_allclose(ridge.alpha_scores_, exact.alpha_scores_, atol=1e-5)
        assert _relative(ridge.coef_, exact.coef_) < 1e-4


def test_fit_leaves_himalaya_global_backend_alone():
    X, Y, groups = _problem(n_voxels=5)
    before = himalaya_current_backend().name
    _ridge(story_folds(groups), backend="torch").fit(X, Y)
    assert himalaya_current_backend().name == before
    set_backend("torch")
    try:  # nor does himalaya's global backend choose ours
        ridge = _ridge(story_folds(groups)).fit(X, Y)
        assert isinstance(ridge.coef_, np.ndarray) and himalaya_current_backend().name == "torch"
    finally:
        set_backend(before)


def test_get_backend_gives_himalaya_modules():
    assert get_backend("numpy").name == "numpy" and get_backend("torch").name == "torch"
    assert check_backend("torch_cuda") == "torch_cuda"  # a valid name, whether or not a GPU is present
    assert set(BACKENDS) <= {"numpy", "cupy", "torch", "torch_cuda", "torch_mps"}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_spd_inverse_matches_numpy_inverse(backend):
    """Large enough (300 rows) for the blockwise triangular inverse to recurse."""
    A = np.random.default_rng(2).standard_normal((400, 300))
    matrix = A.T @ A / 400 + 0.1 * np.eye(300)
    module = get_backend(backend)
    inverse = module.to_numpy(_spd_inverse(module.asarray(matrix, dtype="float64"), module))
    np.testing.assert_allclose(inverse, np.linalg.inv(matrix), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("strategy", ["downdate", "per_fold"])
def test_float32_correlation_scores_are_accurate_at_large_alphas(strategy):
    """Predictions shrink to ~1e-5 of the targets at alpha = 1e8; their correlation must not lose digits."""
    X, Y, groups = _problem()
    folds = story_folds(groups)
    exact = _ridge(folds, scoring="correlation", dtype="float64", solver_params={"strategy": strategy}).fit(X, Y)
    ridge = _ridge(folds, scoring="correlation", solver_params={"strategy": strategy}).fit(X, Y)
    np.testing.assert_allclose(ridge.alpha_scores_, exact.alpha_scores_, atol=1e-4)


def test_splits_with_rows_left_out_of_both_sides():
    """Gaps between train and test (rows in neither) are handled exactly."""
    X, Y, groups = _problem()
    folds = [(train[np.abs(train[:, None] - test[None, :]).min(1) > 5], test) for train, test in story_folds(groups)]
    reference = _himalaya(X, Y, folds)
    for strategy in ("downdate", "per_fold"):
        ridge = _ridge(folds, dtype="float64", solver_params={"strategy": strategy}).fit(X, Y)
        np.testing.assert_allclose(ridge.best_alphas_, reference.best_alphas_, rtol=1e-9)
        np.testing.assert_allclose(ridge.cv_scores_, reference.cv_scores_, rtol=1e-4)


def test_planted_ridge_recovers_the_true_predictions():
    rng = np.random.default_rng(3)
    n_train, n_test, n_features, n_voxels = 600, 200, 60, 40
    X = rng.standard_normal((n_train + n_test, n_features))
    true_weights = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    signal = np.arange(n_voxels) < 20
    clean = X @ (true_weights * signal)
    Y = clean + 0.5 * rng.standard_normal(clean.shape)
    train, test = slice(0, n_train), slice(n_train, None)
    folds = story_folds(np.repeat(np.arange(12), n_train // 12))
    ridge = EigenRidgeCV(cv=folds).fit(X[train], Y[train])
    prediction = ridge.predict(X[test])
    r = correlation_score(prediction, Y[test])
    assert r[signal].min() > 0.8
    assert np.abs(r[~signal]).mean() < 0.1
    assert correlation_score(prediction[:, signal], clean[test][:, signal]).min() > 0.97
    assert ridge.cv_scores_[signal].min() > 0.5 and ridge.cv_scores_[~signal].max() < 0.05
    assert ridge.score(X[test], clean[test])[signal].min() > 0.9


def test_story_folds_never_split_a_story():
    lengths = {"souls": 37, "life": 80, "avatar": 55, "legacy": 21, "wheel": 64, "sloth": 43, "naked": 30}
    groups = np.concatenate([[story] * n for story, n in lengths.items()])
    folds = story_folds(groups, n_folds=3)
    assert len(folds) == 3
    tested = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(len(groups)))  # each TR tested once
    for train, test in folds:
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(groups)))
        assert not set(groups[train]) & set(groups[test])
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= max(lengths.values())
    again = story_folds(groups, n_folds=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_bootstrap_chunk_splits_hold_out_a_quarter_in_chunks():
    n_trs = 1010
    splits = bootstrap_chunk_splits(n_trs, n_boots=3, chunk_len=20, held_out_fraction=0.25, rng=0)
    assert len(splits) == 3
    for train, test in splits:
        assert len(test) == 20 * int(n_trs * 0.25 / 20)
        assert abs(len(test) / n_trs - 0.25) < 20 / n_trs
        starts = test.reshape(-1, 20)
        assert np.all(starts[:, 0] % 20 == 0) and np.all(np.diff(starts, axis=1) == 1)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n_trs))
        assert np.all(test < 1000)  # the 10-TR tail is never held out
    assert not np.array_equal(splits[0][1], splits[1][1])
    again = bootstrap_chunk_splits(n_trs, rng=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))


def test_fit_with_bootstrap_splits_matches_himalaya():
    X, Y, _ = _problem()
    splits = bootstrap_chunk_splits(len(X), rng=1)
    reference = _himalaya(X, Y, splits)
    ridge = _ridge(splits, dtype="float64").fit(X, Y)
    np.testing.assert_allclose(ridge.best_alphas_, reference.best_alphas_, rtol=1e-9)


def test_correlation_score():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    b[:, 2] = 7.0
    r = correlation_score(a, b)
    assert r[0] == pytest.approx(np.corrcoef(a[:, 0], b[:, 0])[0, 1])
    assert r[2] == 0.0
    assert correlation_score(a, 2 * a + 1) == pytest.approx(np.ones(3))


def test_normalised_score_excludes_unreliable_voxels():
    r = np.array([0.2, 0.3, 0.1, 0.4])
    ceiling = np.array([0.5, 0.05, 0.0, 0.8])
    normalised = normalised_score(r, ceiling)
    assert normalised[0] == pytest.approx(0.4) and normalised[3] == pytest.approx(0.5)
    assert np.isnan(normalised[1]) and np.isnan(normalised[2])
    assert np.isfinite(normalised_score(r, ceiling, min_ceiling=0.01)[1])


def test_strategy_choice_follows_the_cost():
    """Measured on 2 cores: 4,000 x 200 x 4,000 takes 1.3 s per fold and 4.0 s by downdate."""
    folds = story_folds(np.repeat(np.arange(20), 200))
    many_features = _strategy_costs(4000, 3072, 4000, 15, folds)
    assert many_features["downdate"] < many_features["per_fold"]
    few_features = _strategy_costs(4000, 200, 4000, 15, folds)
    assert few_features["per_fold"] < few_features["downdate"]


def test_bad_inputs_raise_clear_errors():
    X, Y, groups = _problem(n_voxels=5)
    folds = story_folds(groups)
    ridge = _ridge(folds)
    with pytest.raises(ValueError, match="X has 300 rows but Y has 299"):
        ridge.fit(X, Y[:-1])
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X has 1 NaN"):
        ridge.fit(bad, Y)
    bad = Y.copy()
    bad[0, :2] = [np.nan, np.inf]
    with pytest.raises(ValueError, match="Y has 2 NaN or infinite"):
        ridge.fit(X, bad)
    with pytest.raises(ValueError, match="split 1: test must be a non-empty"):
        _ridge([folds[0], (folds[1][0], np.array([], dtype=int))]).fit(X, Y)
    with pytest.raises(ValueError, match="test rows are also training rows"):
        _ridge([(np.arange(200), np.arange(150, 300))]).fit(X, Y)
    with pytest.raises(TypeError, match="story_folds"):
        _ridge(5).fit(X, Y)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ridge.predict(X)
    # constructor arguments are checked before any work
    with pytest.raises(ValueError, match="backend='jax' is not valid; choose one of: 'numpy', 'torch', 'torch_cuda'"):
        _ridge(folds, backend="jax")
    with pytest.raises(ValueError, match="backend='jax' is not valid"):
        check_backend("jax")
    with pytest.raises(ValueError, match="backend='cupy' is not valid"):
        get_backend("cupy")
    with pytest.raises(ValueError, match="scoring='mse' is not valid"):
        _ridge(folds, scoring="mse")
    with pytest.raises(ValueError, match="positive"):
        EigenRidgeCV(alphas=[0.0, 1.0], cv=folds)
    with pytest.raises(ValueError, match="n_targets_batch"):
        _ridge(folds, solver_params={"n_targets_batch": 0})
    with pytest.raises(ValueError, match="strategy='eig' is not valid"):
        _ridge(folds, solver_params={"strategy": "eig"})
    with pytest.raises(ValueError, match=r"unknown keys \['score_func'\]"):
        _ridge(folds, solver_params={"score_func": himalaya_r2})
    with pytest.raises(ValueError, match="between 2 and the number of stories"):
        story_folds(groups, n_folds=11)
    with pytest.raises(ValueError, match="one held-out and one training chunk"):
        bootstrap_chunk_splits(30)
    ridge.fit(X, Y)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 40\)"):
        ridge.predict(X[:, :3])
    with pytest.raises(ValueError, match=r"Y must have shape \(300, 5\)"):
        ridge.score(X, Y[:, :2])


def test_torch_cuda_fails_clearly_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    X, Y, groups = _problem(n_voxels=3)
    ridge = _ridge(story_folds(groups), backend="torch_cuda")  # a valid name: the GPU is needed only to fit
    with pytest.raises(RuntimeError, match="backend='torch_cuda' needs a CUDA GPU"):
        ridge.fit(X, Y)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        get_backend("torch_cuda")
