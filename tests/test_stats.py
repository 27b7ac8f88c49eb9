import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bt_utils.encoding.stats import across_subjects, block_permutation_pvalues, fdr_bh, paired_test, roi_table


def _voxels():
    rows = []
    for subject, offset in (("A", 0.0), ("B", 0.1), ("C", 0.2)):
        for variant, gain in (("pretrained", 0.0), ("tuned", 0.05)):
            for voxel in range(6):
                value = offset + gain + 0.01 * voxel if voxel != 5 else np.nan
                rows.append(dict(subject=subject, model="m", variant=variant, layer=2, voxel=voxel, r_norm=value))
    return pd.DataFrame(rows)


ROIS = {s: {"front": np.array([0, 1, 2]), "back": np.array([3, 4, 5])} for s in "ABC"}


def test_roi_means_skip_excluded_voxels():
    table = roi_table(_voxels(), ROIS)
    row = table[(table.subject == "B") & (table.variant == "tuned") & (table.roi == "back")].iloc[0]
    assert row.r_norm_mean == pytest.approx(0.1 + 0.05 + 0.035) and row.n_voxels == 2
    with pytest.raises(KeyError, match=r"\['A', 'B', 'C'\]"):
        roi_table(_voxels(), {})


def test_summary_and_paired_test_match_scipy():
    table = roi_table(_voxels(), ROIS)
    summary = across_subjects(table, "r_norm_mean")
    front = summary[(summary.variant == "pretrained") & (summary.roi == "front")].iloc[0]
    values = [0.01, 0.11, 0.21]
    assert front["mean"] == pytest.approx(np.mean(values)) and front["sem"] == pytest.approx(scipy.stats.sem(values))
    assert front.n_subjects == 3
    # add noise so the paired differences vary
    noisy = table.copy()
    noisy.loc[noisy.variant == "tuned", "r_norm_mean"] += [0.0, 0.01, 0.02, 0.0, -0.01, 0.03]
    result = paired_test(noisy, "r_norm_mean", "pretrained", "tuned")
    a = noisy[(noisy.variant == "pretrained") & (noisy.roi == "front")].sort_values("subject").r_norm_mean
    b = noisy[(noisy.variant == "tuned") & (noisy.roi == "front")].sort_values("subject").r_norm_mean
    expected = scipy.stats.ttest_rel(b.to_numpy(), a.to_numpy())
    row = result[result.roi == "front"].iloc[0]
    assert row.p_value == pytest.approx(expected.pvalue) and row.mean_difference == pytest.approx((b.to_numpy() - a.to_numpy()).mean())
    with pytest.raises(ValueError, match="variant 'lm'"):
        paired_test(table, "r_norm_mean", "pretrained", "lm")
    with pytest.raises(ValueError, match=r"12 rows share their \['model', 'layer', 'subject', 'variant'\]"):
        paired_test(table, "r_norm_mean", "pretrained", "tuned", by=("model", "layer"))  # two ROIs per key


def test_permutation_finds_planted_signal_and_is_uniform_under_null():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((200, 400))
    prediction = rng.standard_normal((200, 400))
    prediction[:, :50] = target[:, :50] + rng.standard_normal((200, 50))
    p = block_permutation_pvalues(prediction, target, n_permutations=200, rng=rng)
    assert np.all(p[:50] < 0.01)
    null = p[50:]
    assert 0.35 < np.mean(null) < 0.65 and np.mean(null < 0.05) < 0.1
    rejected, q = fdr_bh(p)
    assert rejected[:50].all() and rejected[50:].mean() < 0.05


def test_fdr_matches_scipy():
    p = np.random.default_rng(1).uniform(size=300) ** 2
    rejected, q = fdr_bh(p, 0.1)
    np.testing.assert_allclose(q, scipy.stats.false_discovery_control(p), rtol=1e-12)
    np.testing.assert_array_equal(rejected, q <= 0.1)
    p[3] = np.nan
    rejected, q = fdr_bh(p)
    assert np.isnan(q[3]) and not rejected[3]
    with pytest.raises(ValueError, match="alpha"):
        fdr_bh(p, 1.5)


def test_constant_differences_have_no_t_statistic():
    table = roi_table(_voxels(), ROIS)  # tuned = pretrained + 0.05 for everyone
    result = paired_test(table, "r_norm_mean", "pretrained", "tuned")
    assert result.mean_difference.to_numpy() == pytest.approx([0.05, 0.05]) and result.p_value.isna().all()


def test_standard_error_skips_a_participant_without_a_value():
    table = pd.DataFrame({"model": "m", "variant": "v", "layer": 1, "roi": "AC",
                          "subject": ["A", "B", "C", "D"], "r_norm_mean": [0.1, 0.2, 0.3, np.nan]})
    row = across_subjects(table, "r_norm_mean").iloc[0]
    assert row["mean"] == pytest.approx(0.2) and row.n_subjects == 3
    assert row["sem"] == pytest.approx(scipy.stats.sem([0.1, 0.2, 0.3]))


def test_permutation_blocks_have_the_documented_length():
    # 11 TRs in blocks of 5 are [0:5], [5:10], [10:11]: 6 orders, enumerated here independently
    rng = np.random.default_rng(5)
    target, prediction = rng.standard_normal((11, 40)), rng.standard_normal((11, 40))
    blocks = [np.arange(0, 5), np.arange(5, 10), np.arange(10, 11)]
    observed = [np.corrcoef(prediction[:, v], target[:, v])[0, 1] for v in range(40)]
    exceed = np.zeros(40)
    for order in itertools.permutations(range(3)):
        rows = np.concatenate([blocks[i] for i in order])
        exceed += [np.corrcoef(prediction[:, v], target[rows, v])[0, 1] >= observed[v] - 1e-12 for v in range(40)]
    n = 3000
    expected = (1 + n * exceed / 6) / (1 + n)
    p = block_permutation_pvalues(prediction, target, n_permutations=n, block_size=5, rng=rng)
    assert np.abs(p - expected).max() < 0.04


def test_a_participant_counts_once_across_subjects():
    # S1 appears twice (an old run of other parameters and the current one): that is refused, not averaged in
    table = pd.DataFrame({"model": "m", "variant": "v", "layer": 1, "roi": "AC",
                          "subject": ["S1", "S1", "S2"], "r_norm_mean": [0.5, 0.1, 0.3]})
    with pytest.raises(ValueError, match=r"2 rows share their \['model', 'variant', 'layer', 'roi', 'subject'\] "
                                         r"\(first: .*'subject': 'S1'"):
        across_subjects(table, "r_norm_mean")
    row = across_subjects(table.iloc[1:], "r_norm_mean").iloc[0]
    assert row["mean"] == pytest.approx(0.2) and row.n_subjects == 2
    with pytest.raises(KeyError, match=r"no column\(s\) \['subject'\]"):
        across_subjects(table.drop(columns="subject"), "r_norm_mean")


def test_repeats_are_averaged_within_a_participant_first():
    # A: seeds 0.1, 0.3 -> 0.2; B: seeds 0.5, 0.9 -> 0.7; C: one seed left (the other NaN) -> 0.6
    table = pd.DataFrame({"model": "m", "variant": "v", "task": "t", "subject": list("AABBCC"), "seed": [0, 1] * 3,
                          "value": [0.1, 0.3, 0.5, 0.9, 0.6, np.nan]})
    row = across_subjects(table, "value", by=("model", "variant", "task"), average_over=("seed",)).iloc[0]
    assert row["mean"] == pytest.approx(0.5) and row.n_subjects == 3
    assert row["sem"] == pytest.approx(scipy.stats.sem([0.2, 0.7, 0.6]))
    with pytest.raises(ValueError, match="`average_over`"):  # seeds without saying so look like duplicates
        across_subjects(table, "value", by=("model", "variant", "task"))
