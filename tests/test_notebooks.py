"""Every notebook runs end to end with papermill on the demo data."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bt_utils.sweeps.notebooks import execute_notebook, render_html
from conftest import TEST_WINDOW_KW


@pytest.mark.notebook
def test_00_data_notebook(demo_root, tmp_path):
    out = tmp_path / "00_data"
    executed = execute_notebook("00_data", out, {"data_root": str(demo_root), "subject": "DEMO02",
                                                 "build_demo_if_missing": False})
    assert executed.is_file() and (out / "00_data.html").stat().st_size > 100_000
    table = pd.read_parquet(out / "noise_ceiling.parquet")
    assert {"subject", "voxel", "cc_max"} <= set(table.columns)
    assert len(table) == 3000 and set(table.subject) == {"DEMO02"}
    for figure in ("waveform_alignment.png", "carpet.png", "noise_ceiling.png", "noise_ceiling_by_class.png"):
        assert (out / figure).stat().st_size > 10_000
    assert json.loads((out / "run.json").read_text())["parameters"]["subject"] == "DEMO02"


def test_missing_notebook_lists_available(tmp_path):
    with pytest.raises(FileNotFoundError, match="00_data"):
        execute_notebook("99_nothing", tmp_path)


def test_a_relative_output_dir_is_taken_from_the_current_folder(tmp_path, monkeypatch):
    """The kernel runs in the notebook's folder: the notebook's outputs must still land beside the executed copy."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(Path(__file__).parent / "sweep_fixtures" / "prepare.ipynb", notebooks)  # writes data.csv
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    executed = execute_notebook("prepare", "run", {"subject": "S7"}, html=False, notebook_dir=notebooks)
    assert executed == tmp_path / "work" / "run" / "prepare.ipynb" and executed.is_file()
    assert pd.read_csv(tmp_path / "work" / "run" / "data.csv").subject.tolist() == ["S7"] * 3
    assert sorted(path.name for path in notebooks.iterdir()) == ["prepare.ipynb"]


@pytest.mark.parametrize("markdown, widgets, needs", [
    ("Median r per layer.", False, []),
    ("Median r per layer, and the loss $L = (y - x)^2$.", False, ["MathJax"]),
    ("Median r per layer.", True, ["widget manager"]),
])
def test_reports_work_offline_and_say_what_needs_the_network(tmp_path, markdown, widgets, needs):
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    png = io.BytesIO()
    figure.savefig(png, format="png")
    plt.close(figure)
    image = base64.b64encode(png.getvalue()).decode()
    table = pd.DataFrame({"layer": [1, 2], "median_r": [0.31, 0.42]})
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(markdown),
        nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": image, "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("table", execution_count=2, outputs=[nbformat.v4.new_output(
            "execute_result", data={"text/html": table.to_html(), "text/plain": str(table)}, execution_count=2)]),
    ]
    if widgets:
        notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
            "state": {}, "version_major": 2, "version_minor": 0}}
    nbformat.write(notebook, tmp_path / "report.ipynb")
    html = render_html(tmp_path / "report.ipynb").read_text()
    assert f"data:image/png;base64,{image}" in html and "<td>0.42</td>" in html and "Median r per layer" in html
    scripts = re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", html)
    assert any("mathjax" in src for src in scripts) == ("MathJax" in needs)
    assert any("require" in src for src in scripts) == ("widget manager" in needs)
    assert len(scripts) == len(needs)  # nothing else is loaded when the report opens
    note = re.search(r'<p class="bt-report-network"[^>]*>([^<]*)</p>', html).group(1)
    assert note.startswith("Offline report: figures, tables and text are embedded")
    assert ("nothing is loaded from the network" in note) == (not needs)
    assert all(need in note for need in needs)


@pytest.mark.notebook
@pytest.mark.parametrize("participants", [{}, {"subject": None, "subjects": ["DEMO01", "DEMO02"]}],
                         ids=["one", "several"])
def test_01_brain_tuning_notebook(demo_root, tmp_path, participants):
    out = tmp_path / "01"
    execute_notebook("01_brain_tuning", out, {
        "data_root": str(demo_root), "build_demo_if_missing": False, "model": "tiny-whisper", "epochs": 2,
        "max_train_trs": 16, "max_validation_trs": 8, "batch_size": 8, "device": "cpu", **participants})
    log = pd.read_parquet(out / "training_log.parquet")
    # per epoch: the training and validation losses, and each participant's validation loss when there are several
    assert list(log.columns) == ["epoch", "split", "subject", "loss"] and len(log) == (8 if participants else 4)
    run = json.loads((out / "run.json").read_text())
    assert set(run["validation_median_r_by_participant"]) == set(participants.get("subjects", ["DEMO01"]))
    assert (out / "checkpoint" / "encoder").is_dir() and (out / "checkpoint" / "head.pt").is_file()
    record = json.loads((out / "checkpoint" / "training_record.json").read_text())
    assert record["parameters"]["model"] == "tiny-whisper" and record["best_epoch"] in (0, 1)
    for figure in ("training_curves.png", "predictions.png"):
        assert (out / figure).stat().st_size > 10_000


WHISPER_NOTEBOOK = {"model": "whisper-tiny.en", "native_length": True, "feature_mode": TEST_WINDOW_KW["mode"],
                    "feature_context_s": TEST_WINDOW_KW["context_s"],
                    "checkpoints": {}, "device": "cpu", "build_demo_if_missing": False}


@pytest.mark.notebook
def test_02_alignment_notebook(demo_root, tmp_path):
    out = tmp_path / "02"
    execute_notebook("02_alignment", out, {"data_root": str(demo_root), "subjects": ["DEMO01"], "layers": [1, 4],
                                           "n_permutations": 200, **WHISPER_NOTEBOOK})
    voxels = pd.read_parquet(out / "alignment_voxels.parquet")
    rois = pd.read_parquet(out / "alignment_rois.parquet")
    assert list(voxels.columns[:7]) == ["subject", "model", "variant", "layer", "voxel", "r", "r_norm"]
    assert list(rois.columns) == ["subject", "model", "variant", "tuned_on", "layer", "roi", "r_norm_mean", "n_voxels",
                                  "n_parcels"]
    assert set(rois.tuned_on) == {""}  # the pretrained model was tuned on no participant
    assert len(voxels) == 2 * 3000 and set(voxels.layer) == {1, 4}
    for figure in ("alignment_layers.png", "planted_recovery_DEMO01.png"):
        assert (out / figure).stat().st_size > 10_000


@pytest.mark.notebook
def test_03_low_level_impact_notebook(demo_root, tmp_path):
    out = tmp_path / "03"
    execute_notebook("03_low_level_impact", out, {
        "data_root": str(demo_root), "subjects": ["DEMO01"], "layers": [1], "partition_layer": 1,
        "feature_sets": {"all": ["power_spectrum", "phonemes", "word_rate"], "phonemes": ["phonemes"]},
        **WHISPER_NOTEBOOK})
    impact = pd.read_parquet(out / "low_level_impact.parquet")
    assert list(impact.columns) == ["subject", "model", "variant", "layer", "roi", "feature_set", "r_norm_orig",
                                    "r_norm_resid", "drop_pct", "p_orig", "drop_status", "n_voxels", "n_parcels"]
    assert impact.drop_pct.notna().eq(impact.drop_status == "ok").all()
    assert set(impact.feature_set) == {"all", "phonemes"}
    assert (out / "impact_layers.png").is_file()
    partition = pd.read_parquet(out / "variance_partition.parquet")
    assert {"voxel", "r2_joint", "unique_model", "unique_low", "shared", "band_mix", "alpha_joint", "subject",
            "variant", "layer"} <= set(partition.columns)
    assert set(partition.layer) == {1} and partition.band_mix.between(0, 1, inclusive="neither").all()
    assert (out / "variance_partition.png").stat().st_size > 10_000


@pytest.mark.notebook
def test_05_voxel_maps_notebook(demo_root, tmp_path):
    rng = np.random.default_rng(0)
    results = tmp_path / "alignment"
    voxels = pd.concat([pd.DataFrame({"subject": "DEMO01", "model": "m", "variant": variant, "layer": 1,
                                      "voxel": np.arange(3000), "r": rng.uniform(-0.1, 0.6, 3000)})
                        for variant in ("pretrained", "brain-tuned")], ignore_index=True)
    voxels["r_norm"] = voxels.r / 0.8
    rois = voxels.assign(roi=np.where(voxels.voxel < 1500, "AC", "V1")).groupby(
        ["subject", "model", "variant", "layer", "roi"]).r_norm.agg(r_norm_mean="mean", n_voxels="count").reset_index()
    results.mkdir()
    voxels.to_parquet(results / "alignment_voxels.parquet")
    rois.to_parquet(results / "alignment_rois.parquet")
    out = tmp_path / "05"
    execute_notebook("05_voxel_maps", out, {
        "data_root": str(demo_root), "build_demo_if_missing": False, "noise_ceiling_dir": "",
        "alignment_dir": str(results), "impact_dir": "", "preference_models": {"pretrained": "tiny-whisper"},
        "preference_native_length": True})
    names = {p.name for p in out.glob("*.png")}
    assert {"alignment_pretrained_layer1_flatmap.png", "alignment-difference_brain-tuned_layer1_surface.png",
            "semantic_preference.png"} <= names
    preference = pd.read_csv(out / "semantic_preference.csv")
    assert {"layer", "semantic", "phonetic", "preference", "variant"} <= set(preference.columns)


@pytest.mark.notebook
def test_summary_notebook(tmp_path):
    from bt_utils.sweeps.state import INDEX_NAME, STATUS_NAME

    sweep = tmp_path / "sweep"
    planned = []

    def run(run_id, axes, file_name, table, state="completed"):
        """A run folder as a sweep leaves it: a result table and the run's status."""
        folder = sweep / run_id
        folder.mkdir(parents=True)
        if file_name.endswith(".parquet"):
            table.to_parquet(folder / file_name)
        else:
            table.to_csv(folder / file_name, index=False)
        (folder / STATUS_NAME).write_text(json.dumps({"run_id": run_id, "state": state, "axes": axes}))
        return run_id

    for subject, gain in (("DEMO01", 0.05), ("DEMO02", 0.08), ("DEMO03", 0.02)):
        rois = pd.DataFrame({"subject": subject, "model": "m", "variant": ["pretrained", "brain-tuned"] * 2,
                             "layer": [1, 1, 2, 2], "roi": "planted_semantic",
                             "r_norm_mean": [0.2, 0.2 + gain, 0.3, 0.3 + gain], "n_voxels": 10})
        control = rois[rois.variant == "pretrained"].assign(variant="block_shuffle", r_norm_mean=lambda t: t.r_norm_mean - gain)
        rois = pd.concat([rois, control], ignore_index=True)
        rois["tuned_on"] = np.where(rois.variant == "pretrained", "", subject)  # from each checkpoint
        axes = {"subject": subject, "model": "m"}
        planned.append(run(f"02_alignment/{subject}-m-00000002", axes, "alignment_rois.parquet", rois))
        # a model tuned on DEMO01 and DEMO02 together, aligned on all three
        multi = rois[rois.variant == "pretrained"].assign(variant="multi", tuned_on="DEMO01+DEMO02",
                                                          r_norm_mean=lambda t: t.r_norm_mean + 0.03)
        planned.append(run(f"02_multi_alignment/{subject}-m-00000012", axes, "alignment_rois.parquet", multi))
        impact = rois.rename(columns={"r_norm_mean": "r_norm_orig"}).assign(
            feature_set="all", r_norm_resid=0.1, drop_pct=50.0, p_orig=1e-4, drop_status="ok", n_parcels=1)
        planned.append(run(f"03_low_level_impact/{subject}-m-00000003", axes, "low_level_impact.parquet", impact))
        for model, base in (("m", 0.1), ("org/other", -0.2)):  # semantic_preference.csv has no model or subject
            preference = pd.DataFrame({"variant": ["pretrained", "brain-tuned"], "layer": 1,
                                       "preference": [base, base + gain]})
            planned.append(run(f"05_voxel_maps/{subject}-{model.replace('/', '_')}-00000005",
                               {"subject": subject, "model": model}, "semantic_preference.csv", preference))
    # a run of earlier parameters (not in the index) and a failed run of the current plan are left out
    stale = rois.assign(subject="DEMO01", r_norm_mean=0.9)  # DEMO01 again
    run("02_alignment/DEMO01-m-0000old2", {"subject": "DEMO01", "model": "m"}, "alignment_rois.parquet", stale)
    planned.append(run("02_alignment/DEMO04-m-00000002", {"subject": "DEMO04", "model": "m"},
                       "alignment_rois.parquet", stale.assign(subject="DEMO04"), state="failed"))
    # downstream probes: the pretrained model once (subject ""), brain-tuned per participant, two seeds each
    scores = [("pretrained", "", seed, value) for seed, value in ((0, 0.5), (1, 0.7))]
    scores += [("brain-tuned", subject, seed, mean + delta) for subject, mean in (("DEMO01", 0.7), ("DEMO02", 0.8),
                                                                                  ("DEMO03", 0.9))
               for seed, delta in ((0, -0.1), (1, 0.1))]
    downstream = pd.DataFrame(scores, columns=["variant", "subject", "seed", "value"]).assign(
        model="m", task="demo_word", metric="macro_f1")
    planned.append(run("04_downstream/m-00000004", {"model": "m"}, "downstream.parquet", downstream))
    pd.DataFrame({"run_id": planned, "state": "queued"}).to_csv(sweep / INDEX_NAME, index=False)

    out = tmp_path / "summary"
    execute_notebook("summary", out, {"sweep_dir": str(sweep)})
    summary = pd.read_csv(out / "alignment_summary_m.csv")
    tuned = summary[(summary.variant == "brain-tuned") & (summary.layer == 1)].iloc[0]
    assert tuned["mean"] == pytest.approx(0.25) and tuned.n_subjects == 3
    assert (out / "alignment_m.png").is_file() and (out / "impact_m.png").is_file()
    # paired tests of the chosen ROIs at every layer, with Benjamini-Hochberg q-values over those comparisons
    tests = pd.read_csv(out / "alignment_tests_m_brain-tuned.csv")
    assert len(tests) == 2 and (tests.n_comparisons == 2).all()
    np.testing.assert_allclose(tests.q_value, scipy.stats.false_discovery_control(tests.p_value))
    # brain-tuning against the reference and each control, per layer, with the relative change
    gains = pd.read_csv(out / "brain_tuning_gain_m.csv").set_index(["reference", "layer"])
    assert sorted(gains.index) == [(reference, layer) for reference in ("block_shuffle", "multi (held-out)",
                                                                        "multi (seen)", "pretrained")
                                   for layer in (1, 2)]
    mean_gain = np.mean([0.05, 0.08, 0.02])
    assert gains.loc[("pretrained", 1), "relative_pct"] == pytest.approx(100 * mean_gain / 0.2)
    assert gains.loc[("block_shuffle", 2), "relative_pct"] == pytest.approx(100 * 2 * mean_gain / (0.3 - mean_gain))
    # the model tuned on DEMO01 and DEMO02: seen on those, held out on DEMO03, as its checkpoint records
    multi = summary[summary.variant.str.startswith("multi")].set_index(["variant", "layer"])
    assert multi.loc[("multi (seen)", 1), "n_subjects"] == 2 and multi.loc[("multi (held-out)", 1), "n_subjects"] == 1
    assert multi.loc[("multi (held-out)", 2), "mean"] == pytest.approx(0.33)
    held_out = pd.read_csv(out / "held_out_gains.csv")
    assert list(held_out.subject) == ["DEMO03", "DEMO03"] and list(held_out.layer) == [1, 2]
    np.testing.assert_allclose(held_out.gain_over_reference, 0.03)
    np.testing.assert_allclose(held_out.gain_over_tuned_alone, 0.03 - 0.02)
    impact = pd.read_csv(out / "impact_summary_m.csv")
    assert (impact["mean"] == 50.0).all() and (impact.n_subjects == 3).all() and (impact.n_participants == 3).all()
    # seeds averaged within a participant, then across participants; the pretrained model counts once
    downstream = pd.read_csv(out / "downstream_summary.csv").set_index("variant")
    assert downstream.loc["brain-tuned", "mean"] == pytest.approx(0.8)
    assert downstream.loc["brain-tuned", "sem"] == pytest.approx(0.1 / np.sqrt(3))
    assert downstream.loc["brain-tuned", "n_subjects"] == 3 and downstream.loc["pretrained", "n_subjects"] == 1
    assert downstream.loc["pretrained", "mean"] == pytest.approx(0.6)
    # the semantic preference per model, never pooled across models
    preference = pd.read_csv(out / "semantic_preference_summary.csv").set_index(["model", "variant"])
    assert preference.loc[("m", "brain-tuned"), "mean"] == pytest.approx(0.1 + 0.05)
    assert preference.loc[("org/other", "brain-tuned"), "mean"] == pytest.approx(-0.2 + 0.05)
    # the pretrained model is the same in every participant's run: it counts once
    assert preference.loc[("m", "pretrained"), "n_subjects"] == 1 and preference.loc[("m", "pretrained"), "mean"] == 0.1
    assert set(preference.xs("brain-tuned", level="variant").n_subjects) == {3}
    assert (out / "semantic_preference_m.png").is_file() and (out / "semantic_preference_org_other.png").is_file()
    assert len(json.loads((out / "run.json").read_text())["runs"]) == len(planned) - 1  # all but the failed one
    assert (out / "summary.html").stat().st_size > 50_000


def test_reports_leave_out_the_code_unless_asked_and_open_with_the_parameters(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {"parameters": {"subject": "DEMO02", "layers": [1, 4], "note": "<b>"}}
    notebook.cells = [
        nbformat.v4.new_markdown_cell("## Noise ceiling per voxel"),
        nbformat.v4.new_code_cell("ceiling_table = compute_the_ceiling()", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", data={"text/plain": "median cc_max 0.61"}, execution_count=1)]),
    ]
    nbformat.write(notebook, tmp_path / "report.ipynb")
    hidden = render_html(tmp_path / "report.ipynb").read_text()
    shown = render_html(tmp_path / "report.ipynb", tmp_path / "code.html", show_code=True).read_text()
    for html in (hidden, shown):
        assert "Noise ceiling per voxel" in html and "median cc_max 0.61" in html
        parameters = re.search(r'<details class="bt-report-parameters".*?</details>', html, re.S).group(0)
        assert '<code>subject</code></td><td><code>"DEMO02"</code>' in parameters
        assert '<code>note</code></td><td><code>"&lt;b&gt;"</code>' in parameters
        assert "<code>layers</code></td><td><code>[1, 4]</code>" in parameters
    assert "compute_the_ceiling" not in hidden and "Out[1]" not in hidden
    assert "compute_the_ceiling" in shown


def test_executed_notebooks_and_sweeps_render_without_code_unless_asked(tmp_path):
    notebooks = Path(__file__).parent / "sweep_fixtures"
    plain = execute_notebook("prepare", tmp_path / "plain", {"subject": "S7"}, notebook_dir=notebooks)
    coded = execute_notebook("prepare", tmp_path / "coded", {"subject": "S7"}, notebook_dir=notebooks,
                             show_code=True)
    assert "writerows" not in plain.with_suffix(".html").read_text()
    assert "writerows" in coded.with_suffix(".html").read_text()


def test_bt_sweep_run_has_a_show_code_option():
    from bt_utils.cli import build_parser

    assert build_parser().parse_args(["sweep", "run", "spec.yaml", "--show-code"]).show_code is True
    assert build_parser().parse_args(["sweep", "run", "spec.yaml"]).show_code is False
    assert build_parser().parse_args(["demo"]).show_code is False  # bt demo passes its arguments to bt sweep run
