"""Every notebook runs end to end with papermill on the demo data."""

import json

import numpy as np
import pandas as pd
import pytest

from bt_utils.notebooks import execute_notebook
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


@pytest.mark.notebook
def test_01_brain_tuning_notebook(demo_root, tmp_path):
    out = tmp_path / "01"
    execute_notebook("01_brain_tuning", out, {
        "data_root": str(demo_root), "build_demo_if_missing": False, "model": "tiny-whisper", "epochs": 2,
        "max_train_trs": 16, "max_validation_trs": 8, "batch_size": 8, "device": "cpu"})
    log = pd.read_parquet(out / "training_log.parquet")
    assert list(log.columns) == ["epoch", "split", "loss"] and len(log) == 4
    assert (out / "checkpoint" / "encoder").is_dir() and (out / "checkpoint" / "head.pt").is_file()
    record = json.loads((out / "checkpoint" / "training_record.json").read_text())
    assert record["parameters"]["model"] == "tiny-whisper" and record["best_epoch"] in (0, 1)
    for figure in ("training_curves.png", "predictions.png"):
        assert (out / figure).stat().st_size > 10_000


WHISPER_NOTEBOOK = {"model": "whisper-tiny.en", "native_length": True, "feature_mode": TEST_WINDOW_KW["mode"],
                    "feature_context_s": TEST_WINDOW_KW["context_s"], "feature_stride_s": TEST_WINDOW_KW["stride_s"],
                    "checkpoints": {}, "device": "cpu", "build_demo_if_missing": False}


@pytest.mark.notebook
def test_02_alignment_notebook(demo_root, tmp_path):
    out = tmp_path / "02"
    execute_notebook("02_alignment", out, {"data_root": str(demo_root), "subjects": ["DEMO01"], "layers": [1, 4],
                                           "n_permutations": 200, **WHISPER_NOTEBOOK})
    voxels = pd.read_parquet(out / "alignment_voxels.parquet")
    rois = pd.read_parquet(out / "alignment_rois.parquet")
    assert list(voxels.columns[:7]) == ["subject", "model", "variant", "layer", "voxel", "r", "r_norm"]
    assert list(rois.columns) == ["subject", "model", "variant", "layer", "roi", "r_norm_mean", "n_voxels"]
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
                                    "r_norm_resid", "drop_pct"]
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
        "alignment_dir": str(results), "impact_dir": "", "preference_models": {"pretrained": "tiny-whisper"}})
    names = {p.name for p in out.glob("*.png")}
    assert {"alignment_pretrained_layer1_flatmap.png", "alignment-difference_brain-tuned_layer1_surface.png",
            "semantic_preference.png"} <= names
    preference = pd.read_csv(out / "semantic_preference.csv")
    assert {"layer", "semantic", "phonetic", "preference", "variant"} <= set(preference.columns)


@pytest.mark.notebook
def test_summary_notebook(tmp_path):
    sweep = tmp_path / "sweep"
    for subject, gain in (("DEMO01", 0.05), ("DEMO02", 0.08), ("DEMO03", 0.02)):
        rois = pd.DataFrame({"subject": subject, "model": "m", "variant": ["pretrained", "brain-tuned"] * 2,
                             "layer": [1, 1, 2, 2], "roi": "planted_semantic",
                             "r_norm_mean": [0.2, 0.2 + gain, 0.3, 0.3 + gain], "n_voxels": 10})
        (sweep / "02_alignment" / subject).mkdir(parents=True)
        rois.to_parquet(sweep / "02_alignment" / subject / "alignment_rois.parquet")
        impact = rois.rename(columns={"r_norm_mean": "r_norm_orig"}).drop(columns="n_voxels").assign(
            feature_set="all", r_norm_resid=0.1, drop_pct=50.0)
        (sweep / "03" / subject).mkdir(parents=True)
        impact.to_parquet(sweep / "03" / subject / "low_level_impact.parquet")
    out = tmp_path / "summary"
    execute_notebook("summary", out, {"sweep_dir": str(sweep)})
    summary = pd.read_csv(out / "alignment_summary_m.csv")
    tuned = summary[(summary.variant == "brain-tuned") & (summary.layer == 1)].iloc[0]
    assert tuned["mean"] == pytest.approx(0.25) and tuned.n_subjects == 3
    assert (out / "alignment_m.png").is_file() and (out / "impact_m.png").is_file()
    assert (out / "summary.html").stat().st_size > 50_000
