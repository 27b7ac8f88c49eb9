from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import yaml

from bt_utils.results import write_json, write_table
from bt_utils.encoding.stats import across_subjects
from bt_utils.sweeps.summary import (
    collect_results, collect_table, completed_runs, held_out_gains, impact_summary, label_held_out, participant_role,
)
from bt_utils.sweeps.plan import plan_runs
from bt_utils.sweeps.runner import sweep_status
from bt_utils.sweeps.spec import load_spec
from bt_utils.sweeps.state import INDEX_NAME, STATUS_NAME

FIXTURES = Path(__file__).parent / "sweep_fixtures"


def record(run, state: str) -> None:
    """The status file a sweep leaves in a run folder."""
    write_json({"run_id": run.run_id, "stage": run.stage, "notebook": run.notebook, "state": state, "axes": run.axes,
                "parameters": run.parameters, "fingerprint": run.fingerprint}, run.path / STATUS_NAME)


def preference(folder: Path, value: float) -> None:
    """A semantic_preference.csv as notebook 05 writes it: no model or subject column."""
    write_table(pd.DataFrame({"variant": ["pretrained", "tuned"], "layer": 1, "preference": [value, value + 0.1]}),
                folder / "semantic_preference.csv")


def test_only_completed_runs_of_the_current_plan_are_collected(tmp_path):
    sweep = tmp_path / "sweep"
    # an earlier sweep in the same folder, with another scale: its S1 run completed with 0.5
    old_spec = yaml.safe_load((FIXTURES / "example.yaml").read_text())
    old_spec["stages"][0]["parameters"]["scale"] = 3.0
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old_spec))
    old = {(run.stage, *run.axes.values()): run for run in plan_runs(load_spec(tmp_path / "old.yaml", FIXTURES), sweep)}
    preference(old["train", "S1", "good"].path, 0.5)
    record(old["train", "S1", "good"], "completed")
    # the current plan; its index is written when the sweep starts, before any run ends
    spec = load_spec(FIXTURES / "example.yaml", FIXTURES)
    write_table(sweep_status(spec, sweep, notebook_dir=FIXTURES), sweep / INDEX_NAME)
    runs = {(run.stage, *run.axes.values()): run for run in plan_runs(spec, sweep)}
    for key, value, state in ((("train", "S1", "good"), 0.1, "completed"), (("train", "S2", "good"), 0.3, "completed"),
                              (("train", "S1", "bad"), 0.7, "completed"), (("train", "S2", "bad"), 0.9, "failed")):
        preference(runs[key].path, value)
        record(runs[key], state)
    preference(runs["train", "S2", "bad"].path.parent / ".staging", 0.0)  # a staging folder of an atomic write

    done = [runs[key] for key in (("train", "S1", "good"), ("train", "S1", "bad"), ("train", "S2", "good"))]
    assert completed_runs(sweep) == {run.run_id: run.axes for run in done}
    table = collect_table(sweep, "semantic_preference.csv")
    assert sorted(table.run.unique()) == sorted(completed_runs(sweep)) and len(table) == 6
    assert {"subject", "model"} <= set(table.columns)  # labelled with the run's axis values
    summary = across_subjects(table, "preference", by=("model", "variant", "layer")).set_index(["model", "variant"])
    assert summary.loc[("good", "pretrained"), "mean"] == pytest.approx(0.2)  # S1 current 0.1, S2 0.3
    assert summary.loc[("good", "pretrained"), "n_subjects"] == 2
    assert summary.loc[("bad", "tuned"), "mean"] == pytest.approx(0.8)  # S1 only: S2's run failed
    assert summary.loc[("bad", "tuned"), "n_subjects"] == 1
    results = collect_results(sweep)
    assert results["downstream"].empty and len(results["semantic_preference"]) == 6
    # a run whose table is empty (an alignment without paired tests writes a CSV without columns) adds no rows
    write_table(pd.DataFrame(), runs["train", "S1", "good"].path / "alignment_tests.csv")
    write_table(pd.DataFrame({"variant": ["tuned"], "p_value": [0.01]}), runs["train", "S2", "good"].path / "alignment_tests.csv")
    tests = collect_table(sweep, "alignment_tests.csv")
    assert list(tests.variant) == ["tuned"] and list(tests.run) == [runs["train", "S2", "good"].run_id]


def test_a_folder_without_a_sweep_record_is_refused(tmp_path):
    preference(tmp_path / "05" / "A", 0.1)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no runs_index.csv.*bt sweep run SPEC --out"):
        collect_table(tmp_path, "semantic_preference.csv")
    with pytest.raises(FileNotFoundError, match="run the sweep first"):
        collect_table(tmp_path / "nothing", "x.csv")
    pd.DataFrame({"run_id": ["05/A"], "state": ["completed"]}).to_csv(tmp_path / INDEX_NAME, index=False)
    (tmp_path / "05" / "A" / STATUS_NAME).write_text("{half")
    with pytest.raises(ValueError, match=rf"{tmp_path / '05' / 'A' / STATUS_NAME} is damaged \(not valid JSON"):
        collect_table(tmp_path, "semantic_preference.csv")


def test_impact_summary_averages_the_reported_roi_drops_of_participants():
    # per participant: ROI means before/after and the drop of the ROI mean where it is reported (C's AC is not)
    rows = [("A", "AC", 0.40, 0.20, 50.0, "ok"), ("B", "AC", 0.30, 0.24, 20.0, "ok"),
            ("C", "AC", 0.02, 0.05, np.nan, "low_alignment"),
            ("A", "V1", 0.10, 0.09, 10.0, "ok"), ("B", "V1", 0.20, 0.10, 50.0, "ok"), ("C", "V1", 0.10, 0.07, 30.0, "ok")]
    impact = pd.DataFrame(rows, columns=["subject", "roi", "r_norm_orig", "r_norm_resid", "drop_pct", "drop_status"])
    impact = impact.assign(model="m", variant="pretrained", layer=3, feature_set="all", run="03/x")
    other_set = impact.assign(feature_set="phonemes", drop_pct=99.0)
    summary = impact_summary(pd.concat([impact, other_set]))
    assert list(summary.columns) == ["model", "variant", "layer", "roi", "mean", "sem", "n_subjects", "n_participants",
                                     "r_norm_orig", "r_norm_resid"]
    summary = summary.set_index("roi")
    ac, v1 = summary.loc["AC"], summary.loc["V1"]
    assert ac["mean"] == pytest.approx(35.0) and ac["sem"] == pytest.approx(scipy.stats.sem([50.0, 20.0]))
    assert ac.n_subjects == 2 and ac.n_participants == 3
    assert ac.r_norm_orig == pytest.approx(0.24) and ac.r_norm_resid == pytest.approx(0.49 / 3)
    assert v1["mean"] == pytest.approx(30.0) and v1.n_subjects == 3
    assert impact_summary(impact.assign(feature_set="phonemes"), "phonemes").loc[0, "mean"] == pytest.approx(35.0)
    with pytest.raises(ValueError, match=r"no low-level impact rows of feature set 'rates'"):
        impact_summary(impact, "rates")
    # tables of an older version (no drop_status) are refused, naming their runs
    old = impact.drop(columns="drop_status").assign(run="03_low_level_impact/DEMO01-m-1")
    with pytest.raises(ValueError, match=r"6 low-level impact rows have no drop_status.*'03_low_level_impact/DEMO01-m-1'"):
        impact_summary(pd.concat([impact, old], ignore_index=True))


def _alignment_with_a_multi_model() -> pd.DataFrame:
    """ROI rows of S1-S3: pretrained, each one's own tuned model, and a model tuned on S1 and S2 (named 'shared')."""
    rows = []
    for i, subject in enumerate(["S1", "S2", "S3"]):
        for layer in (1, 2):
            base = 0.1 * (i + 1) + 0.01 * layer
            rows += [(subject, "pretrained", "", layer, base), (subject, "own", subject, layer, base + 0.05),
                     (subject, "shared", "S1+S2", layer, base + 0.02 * (i + 1))]
    table = pd.DataFrame(rows, columns=["subject", "variant", "tuned_on", "layer", "r_norm_mean"])
    return table.assign(model="m", roi="planted_semantic", n_voxels=10, n_parcels=1)


def test_participants_a_model_never_saw_are_labelled_from_its_checkpoint():
    assert [participant_role("S3", t) for t in ("S1+S2", "S3", "S13+S2", "")] == ["held-out", "seen", "held-out", ""]
    labelled = label_held_out(_alignment_with_a_multi_model())
    variants = labelled.groupby("subject").variant.apply(set)
    assert variants["S1"] == variants["S2"] == {"pretrained", "own", "shared (seen)"}
    assert variants["S3"] == {"pretrained", "own", "shared (held-out)"}
    # the names decide nothing: a model tuned on every participant keeps its name, whatever it is called
    everyone = _alignment_with_a_multi_model().replace({"tuned_on": {"S1+S2": "S1+S2+S3"}})
    assert set(label_held_out(everyone).variant) == {"pretrained", "own", "shared"}
    # tables written before the column keep their variants
    assert label_held_out(everyone.drop(columns="tuned_on")).equals(everyone.drop(columns="tuned_on"))


def test_held_out_gains_compare_with_pretrained_and_the_participants_own_model():
    table = _alignment_with_a_multi_model()
    gains = held_out_gains(table, reference="pretrained", tuned_alone="own")
    assert list(gains.subject) == ["S3", "S3"] and list(gains.variant) == ["shared", "shared"]
    s3 = table[table.subject == "S3"].pivot(index="layer", columns="variant", values="r_norm_mean")
    np.testing.assert_allclose(gains.gain_over_reference, (s3.shared - s3.pretrained).to_numpy())
    np.testing.assert_allclose(gains.gain_over_tuned_alone, (s3.shared - s3.own).to_numpy())
    assert gains.held_out.tolist() == pytest.approx(s3.shared.tolist())
    assert held_out_gains(table[table.variant != "shared"], tuned_alone="own").empty
    with pytest.raises(ValueError, match=r"variant 'shared' of S1 was tuned on 'S1\+S2', not on that participant alone"):
        held_out_gains(table, tuned_alone="shared")
