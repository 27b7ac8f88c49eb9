import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bt_utils.encoding.stats import (
    across_subjects, block_permutation_pvalues, fdr_bh, paired_test, paired_tests, roi_mean, roi_table,
)


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


def test_roi_means_weigh_parcels_equally_by_default():
    # an ROI of three parcels of 1, 4 and 10 voxels (one of them excluded), values far apart per parcel
    rng = np.random.default_rng(0)
    sizes, centres = (1, 4, 10), (0.9, 0.5, 0.1)
    values, parcels, start = [], {}, 0
    for name, size, centre in zip(("small", "middle", "large"), sizes, centres):
        values.append(centre + 0.05 * rng.standard_normal(size))
        parcels[name] = np.arange(start, start + size)
        start += size
    r_norm = np.concatenate(values)
    r_norm[7] = np.nan  # a voxel of the large parcel below the noise-ceiling cut
    voxels = pd.DataFrame({"subject": "A", "model": "m", "variant": "v", "layer": 1, "voxel": np.arange(start),
                           "r_norm": r_norm})
    by_parcel = roi_table(voxels, {"A": {"lang": parcels}})
    by_voxel = roi_table(voxels, {"A": {"lang": parcels}}, weighting="voxel")
    finite = r_norm[np.isfinite(r_norm)]
    parcel_means = [np.nanmean(r_norm[members]) for members in parcels.values()]
    assert by_parcel.r_norm_mean.iloc[0] == pytest.approx(sum(parcel_means) / 3)
    assert by_voxel.r_norm_mean.iloc[0] == pytest.approx(finite.sum() / 14)
    assert by_parcel.r_norm_mean.iloc[0] > by_voxel.r_norm_mean.iloc[0] + 0.1  # the large parcel dominates voxels
    assert by_parcel.n_voxels.iloc[0] == 14 and by_parcel.n_parcels.iloc[0] == 3
    # a parcel without a finite value is left out; an array of voxel indices is one parcel
    r_norm[0] = np.nan
    alone = roi_table(voxels.assign(r_norm=r_norm), {"A": {"lang": parcels, "flat": np.arange(start)}})
    lang, flat = alone.set_index("roi").loc["lang"], alone.set_index("roi").loc["flat"]
    assert lang.r_norm_mean == pytest.approx(np.mean(parcel_means[1:])) and lang.n_parcels == 2
    assert flat.r_norm_mean == pytest.approx(np.nanmean(r_norm)) and flat.n_parcels == 1
    with pytest.raises(ValueError, match="weighting"):
        roi_table(voxels, {"A": {"lang": parcels}}, weighting="parcels")


def test_roi_mean_standard_errors_match_independent_computations():
    rng = np.random.default_rng(1)
    one = rng.normal(0.1, 0.2, 30)
    single = roi_mean({"p": one})  # one parcel: the usual one-sample t-test
    expected = scipy.stats.ttest_1samp(one, 0.0, alternative="greater")
    assert single.sem == pytest.approx(scipy.stats.sem(one)) and single.dof == 29
    assert single.p_above_zero() == pytest.approx(expected.pvalue)
    # parcels of unequal size: the stratified standard error with the variance pooled within parcels
    parcels = {"a": rng.normal(0.5, 0.1, 3), "b": rng.normal(0.0, 0.1, 12), "c": rng.normal(0.2, 0.1, 6)}
    mean = roi_mean(parcels)
    pooled = sum(((v - v.mean()) ** 2).sum() for v in parcels.values()) / (21 - 3)
    variance = sum(pooled / len(v) for v in parcels.values()) / 9  # var(mean of 3 parcel means)
    assert mean.mean == pytest.approx(np.mean([v.mean() for v in parcels.values()]))
    assert mean.sem == pytest.approx(np.sqrt(variance)) and mean.dof == 18
    assert mean.p_above_zero() == pytest.approx(scipy.stats.t.sf(mean.mean / np.sqrt(variance), 18))
    voxel = roi_mean(parcels, "voxel")
    stacked = np.concatenate(list(parcels.values()))
    assert voxel.mean == pytest.approx(stacked.mean()) and voxel.sem == pytest.approx(scipy.stats.sem(stacked))
    # one voxel per parcel leaves no within-parcel spread: no standard error, no p-value
    lonely = roi_mean({"a": [0.3], "b": [0.4, np.nan]})
    assert lonely.n_voxels == 2 and np.isnan(lonely.sem) and np.isnan(lonely.p_above_zero())
    assert np.isnan(roi_mean({"a": [np.nan]}).mean) and roi_mean({}).n_voxels == 0


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
    assert row.mean_a == pytest.approx(a.mean()) and row.mean_b == pytest.approx(b.mean())
    assert row.relative_pct == pytest.approx(100 * (b.mean() - a.mean()) / abs(a.mean()))
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


def test_paired_tests_are_fdr_corrected_per_model_over_layers_and_rois():
    rng = np.random.default_rng(2)
    rows = []
    for model, layer, roi, subject in itertools.product(("m1", "m2"), (1, 2, 3), ("AC", "Broca", "V1", "lang"),
                                                         "ABCDEF"):
        base = rng.normal(0.3, 0.1)
        gain = 0.1 if (model == "m1" and roi == "AC") else 0.0  # a planted effect in one model's AC only
        rows += [dict(model=model, layer=layer, roi=roi, subject=subject, variant="pretrained", value=base),
                 dict(model=model, layer=layer, roi=roi, subject=subject, variant="tuned",
                      value=base + gain + rng.normal(0, 0.02))]
    table = pd.DataFrame(rows)
    table.loc[(table.model == "m2") & (table.layer == 3) & (table.roi == "V1") & (table.variant == "tuned")
              & (table.subject != "A"), "value"] = np.nan  # one participant left: no test
    result = paired_test(table, "value", "pretrained", "tuned")
    assert list(result.columns) == ["model", "layer", "roi", "mean_a", "mean_b", "mean_difference", "relative_pct",
                                    "statistic", "p_value", "q_value", "n_comparisons", "n_subjects"]
    for model, rows_of_model in result.groupby("model"):
        # Benjamini-Hochberg by hand over this model's layer x ROI comparisons that have a p-value
        tested = rows_of_model[rows_of_model.p_value.notna()]
        p, m = tested.p_value.to_numpy(), len(tested)
        order = np.argsort(p)
        ranked = p[order] * m / np.arange(1, m + 1)
        q = np.empty(m)
        q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
        np.testing.assert_allclose(tested.q_value, q, rtol=1e-12)
        np.testing.assert_allclose(tested.q_value, scipy.stats.false_discovery_control(p), rtol=1e-12)
        assert (rows_of_model.n_comparisons == m).all() and m == (12 if model == "m1" else 11)
    assert result.q_value.isna().sum() == 1
    planted = (result.model == "m1") & (result.roi == "AC")
    assert (result.q_value[planted] < 0.05).all() and (result.q_value.dropna() >= result.p_value.dropna()).all()
    # one family across both models: 23 comparisons
    pooled = paired_test(table, "value", "pretrained", "tuned", family=())
    assert (pooled.n_comparisons == 23).all()
    np.testing.assert_allclose(pooled.q_value.dropna(), scipy.stats.false_discovery_control(pooled.p_value.dropna()))
    with pytest.raises(ValueError, match=r"family columns \['subject'\]"):
        paired_test(table, "value", "pretrained", "tuned", family=("subject",))


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


def test_paired_tests_compare_one_variant_with_each_reference():
    rng = np.random.default_rng(1)
    subjects = ["A", "B", "C", "D"]
    means = {"pretrained": 0.10, "shuffled": 0.09, "tuned": 0.15}
    table = pd.DataFrame([{"subject": s, "model": "m", "layer": 1, "roi": "sem", "variant": v,
                           "value": mean + 0.01 * rng.standard_normal()} for s in subjects for v, mean in means.items()])
    result = paired_tests(table, "value", "tuned", ["pretrained", "shuffled"])
    assert list(result.reference) == ["pretrained", "shuffled"] and set(result.variant) == {"tuned"}
    for _, row in result.iterrows():
        a = table[table.variant == row.reference].sort_values("subject").value.to_numpy()
        b = table[table.variant == "tuned"].sort_values("subject").value.to_numpy()
        assert row.p_value == pytest.approx(scipy.stats.ttest_rel(b, a).pvalue)
        assert row.relative_pct == pytest.approx(100 * (b.mean() - a.mean()) / a.mean())
        assert row.n_comparisons == 1  # each reference is its own family
    assert paired_tests(table, "value", "tuned", []).empty
