"""Low-level feature impact and variance partitioning."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bt_utils.encoding.alignment import AlignmentSettings, score_features, subject_targets, variant_features
from bt_utils.features import WindowSettings, stimulus_rows
from bt_utils.features.low_level import DEFAULT_LOW_LEVEL_FEATURES
from bt_utils.encoding.impact import (
    BAND_MIXES, DROP_STATUSES, banded_ridge_grid, contiguous_folds, default_feature_sets, impact_rois, low_level_impact,
    partition_variance, residualise, story_low_level,
)
from bt_utils.data.rois import subject_rois
from bt_utils.validation import DataError
from conftest import TEST_WINDOW_KW

WHISPER = AlignmentSettings(layers=(1,), window=WindowSettings(**TEST_WINDOW_KW), native_length=True)


def test_folds_and_feature_sets():
    folds = contiguous_folds(25, 5)
    assert [len(test) for _, test in folds] == [5] * 5 and np.array_equal(folds[1][1], np.arange(5, 10))
    assert all(len(np.intersect1d(train, test)) == 0 for train, test in folds)
    sets = default_feature_sets(("a", "b"))
    assert sets == {"all": ("a", "b"), "a": ("a",), "b": ("b",)}
    with pytest.raises(ValueError, match="empty"):
        default_feature_sets(())


def test_residuals_are_uncorrelated_with_low_level_features_on_training_trs(demo):
    split = demo.split()
    rng = np.random.default_rng(0)
    low = story_low_level(demo, split.all, ("phonemes", "word_rate"))
    mixing = rng.standard_normal((low[split.train[0]].shape[1], 6))
    own = {s: rng.standard_normal((demo.n_trs[s], 6)) for s in split.all}
    model = {s: low[s] @ mixing + own[s] for s in split.all}
    residual = residualise(model, low, demo, split.train)
    rows = [stimulus_rows(s, demo.n_trs[s], False) for s in split.train]
    res = np.vstack([residual[s][r] for s, r in zip(split.train, rows)])
    lows = np.vstack([low[s][r] for s, r in zip(split.train, rows)])
    lows = lows[:, lows.std(axis=0) > 0]
    corr = np.corrcoef(res.T, lows.T)[:6, 6:]
    assert np.abs(corr).max() < 0.1
    kept = np.vstack([own[s][r] for s, r in zip(split.train, rows)])
    assert np.min([np.corrcoef(res[:, j], kept[:, j])[0, 1] for j in range(6)]) > 0.8
    with pytest.raises(DataError, match="model features have 3 TRs but low-level features"):
        residualise({split.train[0]: np.zeros((3, 2))}, low, demo, split.train[:1])
    with pytest.raises(ValueError, match=f"the test story '{split.test}' is among the training stories"):
        residualise(model, low, demo, (*split.train, split.test))
    with pytest.raises(KeyError, match=rf"no model features for training stories \['{split.train[1]}'\]"):
        residualise({split.train[0]: model[split.train[0]]}, low, demo, split.train[:2])
    narrow = dict(low, **{split.train[0]: low[split.train[0]][:, :-1]})
    with pytest.raises(DataError, match="low-level features differ in columns"):
        residualise(model, narrow, demo, split.train)


def test_removing_low_level_features_hits_auditory_voxels_hardest(demo):
    """The acoustic spaces hit only planted auditory voxels; the phonetic ones also carry the words that
    the planted semantic signal is built from, so removing all spaces lowers semantic voxels too
    (measured at layer 4 on DEMO01, auditory vs semantic drop: all 38% vs 42%, rates 18% vs -10%,
    power spectrum 33% vs -10%)."""
    settings = AlignmentSettings(layers=(4,), window=WHISPER.window, native_length=True)
    sets = {"all": DEFAULT_LOW_LEVEL_FEATURES, "rates": ("word_rate", "phoneme_rate"),
            "power_spectrum": "power_spectrum"}  # one space may be named by a string
    voxels = low_level_impact(demo, ["DEMO01"], {"pretrained": "whisper-tiny.en"}, "whisper-tiny.en", sets,
                              settings, "cpu", False)
    assert list(voxels.columns[:5]) == ["subject", "model", "variant", "layer", "voxel"]
    rois = impact_rois(voxels, {"DEMO01": subject_rois(demo, "DEMO01")})
    assert list(rois.columns) == ["subject", "model", "variant", "layer", "roi", "feature_set", "r_norm_orig",
                                  "r_norm_resid", "drop_pct", "p_orig", "drop_status", "n_voxels", "n_parcels"]
    assert (rois.set_index("roi").loc["planted_noise"].drop_status != "ok").all()  # no alignment to lose
    drop = rois.set_index(["feature_set", "roi"]).drop_pct
    assert drop["all", "planted_auditory"] > 20 and drop["all", "planted_auditory"] > drop["power_spectrum", "planted_auditory"]
    assert drop["all", "planted_semantic"] > drop["power_spectrum", "planted_semantic"] + 20
    assert drop["rates", "planted_auditory"] > 10 and drop["rates", "planted_semantic"] < 5
    assert drop["power_spectrum", "planted_auditory"] > drop["power_spectrum", "planted_semantic"] + 20
    with pytest.raises(ValueError, match="feature set 'nothing' is empty"):
        low_level_impact(demo, ["DEMO01"], {"p": "tiny-hubert"}, "m", {"nothing": ()}, WHISPER, "cpu", False)
    with pytest.raises(ValueError, match=r"feature set 'ps' names a space more than once: \['phonemes', 'phonemes'\]"):
        low_level_impact(demo, ["DEMO01"], {"p": "tiny-hubert"}, "m", {"ps": ("phonemes",) * 2}, WHISPER, "cpu", False)
    # the refit uses the residuals in the units of the z-scored features, not z-scored again
    split = demo.split("DEMO01")
    layers, features = variant_features(demo, "DEMO01", "whisper-tiny.en", settings, "cpu", False)
    low = story_low_level(demo, split.all, ("power_spectrum",))
    residual = residualise({s: features[s][4] for s in split.all}, low, demo, (*split.train, *split.validation))
    targets = subject_targets(demo, "DEMO01", settings.include_validation)
    resid = score_features(demo, "DEMO01", {s: {4: v} for s, v in residual.items()}, layers, targets, settings,
                           standardise=False)
    from_table = voxels[voxels.feature_set == "power_spectrum"].set_index("voxel").r_norm_resid
    np.testing.assert_allclose(resid.set_index("voxel").r_norm.loc[from_table.index], from_table, atol=1e-6)


def _impact_voxels(orig: np.ndarray, resid: np.ndarray) -> pd.DataFrame:
    voxels = pd.DataFrame({"subject": "S", "model": "m", "variant": "v", "layer": 1, "feature_set": "all",
                           "voxel": np.arange(len(orig)), "r_norm_orig": orig, "r_norm_resid": resid})
    voxels["drop_pct"] = np.where(orig > 0, 100 * (orig - resid) / orig, np.nan)
    return voxels


def test_impact_per_roi_is_the_drop_of_the_roi_mean():
    rng = np.random.default_rng(0)
    # "lang": parcels of 5, 20 and 60 voxels aligned at 0.6, 0.3 and 0.1, which keep 80 %, 50 % and 0 % of it
    sizes, levels, kept = (5, 20, 60), (0.6, 0.3, 0.1), (0.8, 0.5, 0.0)
    orig = np.concatenate([level + 0.02 * rng.standard_normal(n) for n, level in zip(sizes, levels)])
    resid = np.concatenate([orig[a:b] * k for a, b, k in zip(np.cumsum((0, *sizes[:-1])), np.cumsum(sizes), kept)])
    bounds = np.cumsum((0, *sizes))
    lang = {name: np.arange(a, b) for name, a, b in zip(("44", "45", "STSdp"), bounds[:-1], bounds[1:])}
    n = bounds[-1]
    # "silent": 200 voxels of alignment ~0 (a near-0 mean would give any percentage); "faint": many voxels at 0.03,
    # significantly above 0 but below min_alignment; "noisy": a mean of 0.09 from 5 voxels that disagree;
    # "excluded": no voxel above the noise-ceiling cut
    silent = 0.1 * rng.standard_normal(200)
    faint = 0.03 + 0.01 * rng.standard_normal(300)
    noisy = np.array([0.5, -0.3, 0.4, -0.25, 0.1])
    orig = np.concatenate([orig, silent, faint, noisy, [np.nan, np.nan]])
    resid = np.concatenate([resid, silent - 0.05, faint / 2, noisy / 2, [np.nan, np.nan]])
    orig[3], resid[4] = np.nan, np.nan  # an excluded voxel, and one whose refit failed: both left out
    rois = {"S": {"lang": lang, "silent": np.arange(n, n + 200), "faint": np.arange(n + 200, n + 500),
                  "noisy": np.arange(n + 500, n + 505), "excluded": np.array([n + 505, n + 506])}}
    voxels = _impact_voxels(orig, resid)
    table = impact_rois(voxels, rois).set_index("roi")

    # independent computation: the mean over each parcel of the voxels with both values, then over the parcels
    both = np.isfinite(orig) & np.isfinite(resid)
    mean_orig = np.mean([orig[v][both[v]].mean() for v in lang.values()])
    mean_resid = np.mean([resid[v][both[v]].mean() for v in lang.values()])
    row = table.loc["lang"]
    assert row.r_norm_orig == pytest.approx(mean_orig) and row.r_norm_resid == pytest.approx(mean_resid)
    assert row.drop_pct == pytest.approx(100 * (mean_orig - mean_resid) / mean_orig)
    assert row.drop_status == "ok" and row.n_voxels == n - 2 and row.n_parcels == 3 and row.p_orig < 1e-6
    # planted: parcel means 0.6 -> 0.48, 0.3 -> 0.15, 0.1 -> 0: drop 100 * (1/3 - 0.21) / (1/3) = 37 %
    assert row.drop_pct == pytest.approx(37.0, abs=1.5)
    voxel_weighted = impact_rois(voxels, rois, weighting="voxel").set_index("roi").loc["lang"]
    assert voxel_weighted.drop_pct == pytest.approx(
        100 * (orig[:n][both[:n]].mean() - resid[:n][both[:n]].mean()) / orig[:n][both[:n]].mean())
    # per-voxel percentages are not averaged into the ROI's drop (here they would give 84 %, not 37 %)
    assert voxels.drop_pct[:n].mean() > row.drop_pct + 30

    assert np.isnan(table.loc["silent", "drop_pct"]) and table.loc["silent", "drop_status"] == "low_alignment"
    assert abs(table.loc["silent", "r_norm_orig"]) < 0.02
    assert np.isnan(table.loc["noisy", "drop_pct"]) and table.loc["noisy", "drop_status"] == "not_above_zero"
    assert table.loc["noisy", "p_orig"] == pytest.approx(scipy.stats.ttest_1samp(noisy, 0, alternative="greater").pvalue)
    assert np.isnan(table.loc["faint", "drop_pct"]) and table.loc["faint", "drop_status"] == "low_alignment"
    assert table.loc["faint", "p_orig"] < 1e-6  # significant, yet too small a base for a percentage
    loose = impact_rois(voxels, rois, min_alignment=0.02).set_index("roi")
    assert loose.loc["faint", "drop_pct"] == pytest.approx(50, abs=0.5) and loose.loc["faint", "drop_status"] == "ok"
    assert table.loc["excluded", "drop_status"] == "no_voxels" and table.loc["excluded", "n_voxels"] == 0
    assert set(table.drop_status) <= set(DROP_STATUSES)
    with pytest.raises(KeyError, match=r"no ROI definitions for subjects \['S'\]"):
        impact_rois(voxels, {})
    with pytest.raises(ValueError, match="alpha"):
        impact_rois(voxels, rois, alpha=0)


def test_partition_recovers_planted_unique_and_shared_variance():
    """Voxels 0-9 see only space A, 10-19 only space B, 20-29 a component both spaces carry."""
    rng = np.random.default_rng(0)
    n, m = 400, 200
    shared = rng.standard_normal(n + m)
    a = np.column_stack([rng.standard_normal((n + m, 4)), shared])
    b = np.column_stack([rng.standard_normal((n + m, 4)), shared + 0.1 * rng.standard_normal(n + m)])
    y = np.hstack([a[:, :1] + 0.5 * rng.standard_normal((n + m, 10)), b[:, :1] + 0.5 * rng.standard_normal((n + m, 10)),
                   shared[:, None] + 0.5 * rng.standard_normal((n + m, 10))])
    folds = contiguous_folds(n, 5)
    table = partition_variance(a[:n], b[:n], y[:n], a[n:], b[n:], y[n:], folds)
    assert list(table.columns) == ["voxel", "r2_joint", "r2_model", "r2_low", "unique_model", "unique_low", "shared",
                                   "band_mix", "alpha_joint"]
    np.testing.assert_allclose(table.unique_model + table.shared, table.r2_model, atol=1e-9)
    only_a, only_b, both = table.iloc[:10].mean(), table.iloc[10:20].mean(), table.iloc[20:].mean()
    assert only_a.unique_model > 0.6 and abs(only_a.unique_low) < 0.05
    assert only_b.unique_low > 0.6 and abs(only_b.unique_model) < 0.05
    assert both.shared > 0.6 and abs(both.unique_model) < 0.05 and abs(both.unique_low) < 0.05
    # the joint model leans on the band that carries the signal
    assert only_a.band_mix > 0.5 > only_b.band_mix
    assert set(table.band_mix) <= set(BAND_MIXES) and set(table.alpha_joint) <= set(np.logspace(-2, 8, 11))


def _banded_problem(n, m, d1, d2, n_voxels, seed):
    """Voxels driven by band 1, band 2 or both in varying proportions, with noise."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((n + m, d1)), rng.standard_normal((n + m, d2))
    mix = np.linspace(0, 1, n_voxels)
    y = (mix * (x1 @ rng.standard_normal((d1, n_voxels))) / np.sqrt(d1)
         + (1 - mix) * (x2 @ rng.standard_normal((d2, n_voxels))) / np.sqrt(d2)
         + 0.7 * rng.standard_normal((n + m, n_voxels)))
    return x1[:n], x2[:n], y[:n], x1[n:], x2[n:], y[n:]


@pytest.mark.parametrize("n, d1, d2", [(120, 6, 8), (60, 40, 50)], ids=["primal", "kernel"])
def test_banded_grid_matches_brute_force_per_band_penalties(n, d1, d2):
    """Every (g, alpha) of the grid solved directly with per-band penalties (alpha / g, alpha / (1 - g))
    by plain numpy on each fold: same CV scores, same choice per voxel, same test predictions."""
    x1, x2, y, x1_test, x2_test, _ = _banded_problem(n, 30, d1, d2, 16, seed=1)
    folds = contiguous_folds(n, 4)
    alphas, mixes = np.logspace(-1, 3, 5), np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    fit = banded_ridge_grid(x1, x2, y, x1_test, x2_test, folds, alphas, mixes, dtype="float64")

    x, x_test = np.hstack([x1, x2]), np.hstack([x1_test, x2_test])

    def solve(rows, g, alpha):
        penalty = np.r_[np.full(d1, alpha / g), np.full(d2, alpha / (1 - g))]
        return np.linalg.solve(x[rows].T @ x[rows] + np.diag(penalty), x[rows].T @ y[rows])

    scores = np.zeros((len(mixes), len(alphas), y.shape[1]))
    for train, test in folds:
        total = ((y[test] - y[test].mean(0)) ** 2).sum(0)
        for i, g in enumerate(mixes):
            for j, alpha in enumerate(alphas):
                error = ((y[test] - x[test] @ solve(train, g, alpha)) ** 2).sum(0)
                scores[i, j] += (1 - error / total) / len(folds)
    np.testing.assert_allclose(fit.cv_scores, scores, atol=1e-8)
    best = scores.reshape(-1, y.shape[1]).argmax(0)
    chosen_g, chosen_alpha = mixes[best // len(alphas)], alphas[best % len(alphas)]
    np.testing.assert_array_equal(fit.band_mix, chosen_g)
    np.testing.assert_array_equal(fit.alpha, chosen_alpha)
    assert len(np.unique(chosen_g)) >= 3  # the voxels really choose different band mixes
    everything = np.arange(n)
    expected = np.column_stack([x_test @ solve(everything, g, a)[:, v]
                                for v, (g, a) in enumerate(zip(chosen_g, chosen_alpha))])
    np.testing.assert_allclose(fit.prediction, expected, atol=1e-5)
    np.testing.assert_allclose(fit.best_scores, scores.reshape(-1, y.shape[1]).max(0), atol=1e-8)
    np.testing.assert_allclose(fit.band_alphas, [chosen_alpha / chosen_g, chosen_alpha / (1 - chosen_g)])


def test_grid_and_himalaya_banded_ridge_agree_on_joint_r2():
    """The search spaces differ (an 11-point grid of g vs 20 random Dirichlet draws of himalaya), so the
    chosen penalties differ; the joint test R2 agrees within 0.02 per voxel on average and 0.06 at worst."""
    x1, x2, y, x1_test, x2_test, y_test = _banded_problem(200, 100, 20, 30, 30, seed=2)
    folds = contiguous_folds(200, 5)
    grid = partition_variance(x1, x2, y, x1_test, x2_test, y_test, folds)
    reference = partition_variance(x1, x2, y, x1_test, x2_test, y_test, folds, solver="himalaya", n_iter=20)
    np.testing.assert_allclose(grid.r2_model, reference.r2_model)
    difference = np.abs(grid.r2_joint - reference.r2_joint)
    assert difference.mean() < 0.02 and difference.max() < 0.06
    assert grid.r2_joint.mean() > 0.3
    # both give the model band the more weight the more it drives the voxel (measured r: 0.94 grid, 0.78 himalaya)
    for table in (grid, reference):
        assert np.corrcoef(np.log(table.band_mix / (1 - table.band_mix)), np.linspace(0, 1, 30))[0, 1] > 0.6


def test_partition_rejects_mismatched_rows():
    rng = np.random.default_rng(0)
    a, b, y = rng.standard_normal((50, 3)), rng.standard_normal((50, 4)), rng.standard_normal((50, 2))
    folds = contiguous_folds(50, 5)
    with pytest.raises(ValueError, match=r"row counts differ \(model_train 50, low_train 49, y_train 50\)"):
        partition_variance(a, b[:49], y, a, b, y, folds)
    with pytest.raises(ValueError, match=r"row counts differ \(model_test 50, low_test 50, y_test 40\)"):
        partition_variance(a, b, y, a, b, y[:40], folds)
    with pytest.raises(ValueError, match="training features have 3 columns but test features 2"):
        partition_variance(a, b, y, a[:, :2], b, y, folds)
    with pytest.raises(ValueError, match="strictly inside"):
        banded_ridge_grid(a, b, y, a, b, folds, band_mixes=[0.0, 0.5])
    with pytest.raises(ValueError, match="solver"):
        partition_variance(a, b, y, a, b, y, folds, solver="random")
