"""Brain alignment on the demo: encoding models find the planted voxels."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from bt_utils.encoding.alignment import (
    AlignmentSettings,
    SubjectTargets,
    align,
    alignment_rois,
    score_layer,
    story_cv_scores,
    subject_targets,
)
from bt_utils.features import WindowSettings
from bt_utils.data.noise_ceiling import cc_max
from conftest import TEST_WINDOW_KW

FAST = WindowSettings(**TEST_WINDOW_KW)


def test_score_layer_on_a_planted_linear_problem():
    rng = np.random.default_rng(0)
    x_train, x_test = rng.standard_normal((400, 20)), rng.standard_normal((100, 20))
    weights = rng.standard_normal((20, 30)) * (np.arange(30) < 10)  # voxels 0-9 carry signal
    targets = SubjectTargets(
        train=x_train @ weights + rng.standard_normal((400, 30)),
        test=x_test @ weights + 0.5 * rng.standard_normal((100, 30)),
        ceiling=np.r_[np.full(10, 0.8), np.full(20, 0.02)],
    )
    labels = np.repeat(np.arange(8), 50)
    table = score_layer(x_train, x_test, labels, targets, AlignmentSettings(n_permutations=500))
    assert table.r[:10].min() > 0.8 and table.r[10:].abs().max() < 0.35
    np.testing.assert_allclose(table.r_norm[:10], table.r[:10] / 0.8)
    assert table.r_norm[10:].isna().all()  # cc_max <= 0.05: excluded
    assert table.significant[:10].all()
    # FDR runs over the evaluated voxels only: excluded voxels have a p-value but no q-value
    assert table.p_value.notna().all() and table.q_value[10:].isna().all() and not table.significant[10:].any()
    np.testing.assert_allclose(table.q_value[:10], false_discovery_control(table.p_value[:10]))
    with pytest.raises(ValueError, match="do not pair"):
        score_layer(x_train[:-1], x_test, labels[:-1], targets, AlignmentSettings())


def test_story_cv_scores_match_an_independent_leave_one_story_out_ridge():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((240, 12))
    weights = rng.standard_normal((12, 20)) * (np.arange(20) < 8)  # voxels 0-7 carry signal
    y = x @ weights + 1.5 * rng.standard_normal((240, 20))
    labels = np.repeat(["a", "b", "c", "d", "e", "f"], 40)
    alpha = 30.0
    r = story_cv_scores(x, y, labels, AlignmentSettings(alphas=(alpha,), n_folds=3))
    per_story = []
    for story in np.unique(labels):
        held = labels == story
        w = np.linalg.solve(x[~held].T @ x[~held] + alpha * np.eye(12), x[~held].T @ y[~held])
        per_story.append([np.corrcoef(x[held] @ w[:, v], y[held, v])[0, 1] for v in range(20)])
    np.testing.assert_allclose(r, np.mean(per_story, axis=0), atol=1e-4)
    grid = story_cv_scores(x, y, labels, AlignmentSettings())  # per-voxel alphas from the protocol's grid
    assert grid[:8].min() > 0.5 and np.abs(grid[8:]).max() < 0.25


def test_story_cv_scores_are_unbiased_on_pure_noise():
    # one r over the concatenated folds, each with its own alphas, averages about -0.04 here
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(11), 60)
    x, y = rng.standard_normal((660, 32)), rng.standard_normal((660, 400))
    r = story_cv_scores(x, y, labels, AlignmentSettings())
    assert abs(r.mean()) < 0.01


def test_story_cv_scores_reject_bad_inputs():
    x, y = np.zeros((20, 3)), np.zeros((20, 2))
    with pytest.raises(ValueError, match="at least 3 stories"):
        story_cv_scores(x, y, np.repeat(["a", "b"], 10), AlignmentSettings())
    with pytest.raises(ValueError, match="pair row by row"):
        story_cv_scores(x, y[:-1], np.repeat(["a", "b", "c", "d"], 5), AlignmentSettings())


def test_targets_pair_with_the_design(demo):
    targets = subject_targets(demo, "DEMO01")
    split = demo.split()
    assert targets.train.shape[0] == sum(demo.n_trs[s] - 15 for s in (*split.train, *split.validation))
    assert targets.test.shape[0] == demo.n_trs[split.test] - 55  # responses [40:] against stimulus [50:-5]
    repeats = demo.load_repeats("DEMO01")
    np.testing.assert_allclose(targets.test, repeats[:, 40:].mean(axis=0))
    np.testing.assert_allclose(targets.ceiling, cc_max(repeats[:, 40:]))  # over the scored rows only


@pytest.fixture(scope="module")
def tiny_alignment(demo):
    settings = AlignmentSettings(layers=(1, 2), window=FAST)
    return align(demo, ["DEMO01", "DEMO02"], {"pretrained": "tiny-wav2vec2"}, "tiny-wav2vec2", settings, "cpu", False)


def test_alignment_tables(demo, tiny_alignment):
    voxels = tiny_alignment
    assert list(voxels.columns[:7]) == ["subject", "model", "variant", "layer", "voxel", "r", "r_norm"]
    assert len(voxels) == 2 * 2 * 3000
    rois = alignment_rois(demo, voxels)
    assert list(rois.columns) == ["subject", "model", "variant", "tuned_on", "layer", "roi", "r_norm_mean", "n_voxels", "n_parcels"]
    assert {"planted_auditory", "planted_semantic", "planted_noise", "AC"} <= set(rois.roi)


def test_even_random_conv_features_find_auditory_voxels(demo, tiny_alignment):
    rows = tiny_alignment[(tiny_alignment.subject == "DEMO01") & (tiny_alignment.layer == 2)].sort_values("voxel")
    classes = demo.truth("DEMO01")["voxel_class"]
    assert np.median(rows.r[classes == "auditory"]) > 0.15 > abs(np.median(rows.r[classes == "noise"]))


def test_real_whisper_recovers_planted_voxels(demo):
    """Auditory voxels are best predicted by early layers, semantic voxels by late ones; noise voxels by none."""
    settings = AlignmentSettings(window=WindowSettings(**TEST_WINDOW_KW), native_length=True)
    voxels = align(demo, ["DEMO01"], {"pretrained": "whisper-tiny.en"}, "whisper-tiny.en", settings, "cpu", False)
    classes = demo.truth("DEMO01")["voxel_class"]
    medians = {layer: {name: np.median(rows.sort_values("voxel").r.to_numpy()[classes == name])
                       for name in ("semantic", "auditory", "noise")}
               for layer, rows in voxels.groupby("layer")}
    assert all(abs(m["noise"]) < 0.02 for m in medians.values())
    assert all(m["auditory"] > 0.4 for m in medians.values())
    assert medians[4]["semantic"] > 0.07 and medians[4]["semantic"] > medians[1]["semantic"] + 0.04


def test_bad_inputs(demo):
    with pytest.raises(ValueError, match="layer"):
        align(demo, ["DEMO01"], {"pretrained": "tiny-hubert"}, "tiny-hubert", AlignmentSettings(layers=(9,)), "cpu", False)
    with pytest.raises(KeyError, match="no model for DEMO02"):
        align(demo, ["DEMO02"], {"tuned": {"DEMO01": "x"}}, "m", AlignmentSettings(), "cpu", False)
    with pytest.raises(ValueError, match="cv='kfold'"):
        AlignmentSettings(cv="kfold")


@pytest.mark.parametrize("subjects, variants, error, message", [
    ([], {"pretrained": "tiny-hubert"}, ValueError, r"subjects=\[\] is empty; give at least one of \['DEMO01'"),
    ("DEMO01", {"pretrained": "tiny-hubert"}, ValueError, r"subjects='DEMO01' is a string; give a list"),
    (["DEMO01", "UTS01"], {"pretrained": "tiny-hubert"}, ValueError, r"subjects \['UTS01'\] have no responses"),
    (["DEMO01"], {}, ValueError, "variants is empty"),
    (["DEMO01", "DEMO02"], {"tuned": {"DEMO01": "x"}}, KeyError, "variant 'tuned' has no model for DEMO02"),
])
def test_analyses_check_subjects_and_variants_before_any_work(demo, monkeypatch, subjects, variants, error, message):
    from bt_utils.encoding import alignment, impact

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(alignment, "subject_targets", no_work)
    monkeypatch.setattr(impact, "subject_targets", no_work)
    monkeypatch.setattr(impact, "story_low_level", no_work)
    for analysis in (align, impact.low_level_impact):
        with pytest.raises(error, match=message):
            analysis(demo, subjects, variants, "tiny-hubert", settings=AlignmentSettings(), device="cpu", progress=False)


@pytest.mark.parametrize("backend", ["jax", "cupy", None])
def test_settings_refuse_an_unknown_backend_at_construction(backend):
    with pytest.raises(ValueError, match=rf"backend={backend!r} is not valid; choose one of: 'numpy', 'torch', "
                                         "'torch_cuda'"):
        AlignmentSettings(backend=backend)
