"""What every notebook calls first and last (bt_utils.notebook) and the variant loops it shares."""

import importlib.metadata
import json
import os
import subprocess
import sys
import types

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bt_utils import notebook
from bt_utils.encoding import AlignmentSettings, model_variants, partition_variants
from bt_utils.encoding import impact as low_level_impact
from bt_utils.features import DEFAULT_LOW_LEVEL_FEATURES, WindowSettings
from bt_utils.notebook import (CHECKOUT, NotebookRun, install_in_colab, notebook_parameters, notebook_path,
                               notebook_setup, optional_table)


@pytest.fixture
def pip_calls(monkeypatch):
    """Arguments of every subprocess.run call (none is really run)."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append(list(args)))
    return calls


@pytest.fixture
def colab(monkeypatch):
    """A Colab session in which the suite's distribution is not installed yet."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    real = importlib.metadata.distribution

    def distribution(name):
        if name == notebook.DISTRIBUTION:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.delenv("BT_SUITE_SOURCE", raising=False)


def test_parameters_are_the_simple_values_of_the_namespace():
    namespace = {"subject": "DEMO01", "layers": [1, 4], "checkpoints": {"b": "x"}, "seed": 3, "alpha": 0.5,
                 "atlas_dir": None, "lora": False, "_private": 1, "In": ["cell"], "Out": {}, "np": np,
                 "table": pd.DataFrame(), "get_ipython": print}
    assert notebook_parameters(namespace) == {"subject": "DEMO01", "layers": [1, 4], "checkpoints": {"b": "x"},
                                              "seed": 3, "alpha": 0.5, "atlas_dir": None, "lora": False}


def test_a_run_records_its_steps_figures_tables_and_parameters(tmp_path):
    run = NotebookRun(tmp_path, {"subject": "DEMO01"})
    assert run.step("load") >= 0 and run.step("fit") >= 0
    figure, axes = plt.subplots()
    axes.plot([0, 1])
    assert run.save_figure(figure, "curve.png").stat().st_size > 1000
    plt.close(figure)
    run.write_table(pd.DataFrame({"voxel": [0, 1], "r": [0.1, 0.2]}), "scores.csv")
    record = json.loads(run.finish(layers=[1, 4]).read_text())
    assert record["parameters"] == {"subject": "DEMO01"} and record["layers"] == [1, 4]
    assert set(record["timings_s"]) == {"load", "fit", "total"}
    assert record["timings_s"]["total"] >= record["timings_s"]["load"] + record["timings_s"]["fit"]
    assert record["bt_utils_version"] and record["python"]
    assert pd.read_csv(tmp_path / "scores.csv").r.tolist() == [0.1, 0.2]


def test_tables_of_earlier_runs_are_read_where_present(tmp_path, capsys):
    table = pd.DataFrame({"voxel": [0, 1], "cc_max": [0.2, 0.7]})
    table.to_parquet(tmp_path / "noise_ceiling.parquet")
    table.to_csv(tmp_path / "counts.csv", index=False)
    pd.testing.assert_frame_equal(optional_table(tmp_path, "noise_ceiling.parquet"), table)
    pd.testing.assert_frame_equal(optional_table(str(tmp_path), "counts.csv"), table)
    assert optional_table(tmp_path, "absent.parquet") is None and optional_table("", "counts.csv") is None
    assert "no absent.parquet in" in capsys.readouterr().out


def test_setup_opens_the_dataset_and_creates_the_output_folder(demo_root, tmp_path, monkeypatch, pip_calls):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    run = notebook_setup(tmp_path / "out" / "00", {"subject": "DEMO02", "np": np}, data_root=demo_root)
    assert run.output_dir.is_dir() and run.parameters == {"subject": "DEMO02"}
    assert run.dataset.subjects == ["DEMO01", "DEMO02", "DEMO03"]
    assert os.environ["HF_HUB_OFFLINE"] == "1" and pip_calls == []
    assert notebook_setup(tmp_path / "other").dataset is None
    with pytest.raises(FileNotFoundError, match=f"no dataset at {tmp_path / 'absent'}"):
        notebook_setup(tmp_path / "out", data_root=tmp_path / "absent")


def test_outside_colab_nothing_is_installed_and_paths_stay_relative(pip_calls, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert install_in_colab() is False and pip_calls == []
    assert notebook_path("../demo_output/data") == notebook.Path("../demo_output/data")


def test_in_colab_the_checkout_is_installed_once_and_relative_paths_start_at_its_notebooks(colab, pip_calls,
                                                                                         capsys):
    assert install_in_colab() is True
    assert pip_calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(CHECKOUT)]]
    assert "restart the session" in capsys.readouterr().out
    assert notebook_path("../demo_output/data") == CHECKOUT / "notebooks" / "../demo_output/data"
    assert notebook_path("/content/drive/MyDrive/ds003020") == notebook.Path("/content/drive/MyDrive/ds003020")


def test_in_colab_bt_suite_source_names_the_checkout_and_a_folder_without_one_is_a_clear_error(
        colab, pip_calls, monkeypatch, tmp_path):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setenv("BT_SUITE_SOURCE", str(tmp_path / "suite"))
    install_in_colab()
    assert pip_calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(tmp_path / "suite")]]
    with pytest.raises(FileNotFoundError, match=f"no checkout of the suite at {tmp_path} .no pyproject.toml.: .*BT_SUITE_SOURCE"):
        install_in_colab(tmp_path)
    assert len(pip_calls) == 1


def test_in_colab_an_installed_suite_is_left_alone(colab, pip_calls, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())
    assert install_in_colab() is False and pip_calls == []


def test_variants_are_the_pretrained_model_and_the_checkpoints_found(tmp_path, capsys):
    (tmp_path / "S1" / "checkpoint").mkdir(parents=True)
    checkpoints = {"brain-tuned": str(tmp_path / "{subject}" / "checkpoint"),
                   "story_swap": str(tmp_path / "{subject}" / "swap")}
    assert model_variants("tiny-hubert", checkpoints, ["S1"], skip_missing=True) == {
        "pretrained": "tiny-hubert", "brain-tuned": checkpoints["brain-tuned"]}
    assert "leaving out 'story_swap': no checkpoint for ['S1']" in capsys.readouterr().out
    assert model_variants("m", checkpoints, ["S1", "S2"], skip_missing=True) == {"pretrained": "m"}
    assert model_variants("m", checkpoints, ["S1", "S2"]) == {"pretrained": "m", **checkpoints}


def test_partition_of_every_variant_partitions_its_layer_features_against_the_low_level_features(demo,
                                                                                                monkeypatch):
    """The loop alone, on stand-in features: the partition itself is tested in test_impact.py."""
    models = {"tiny-hubert": 1.0, "tiny-wav2vec2": 10.0}
    calls = []

    def features(dataset, subject, model, settings, device="auto", progress=True):
        return settings.layers, {story: {layer: np.full((3, 2), models[model] * layer) for layer in settings.layers}
                                 for story in dataset.split(subject).all}

    def low_level(dataset, stories, names):
        return {story: np.full((3, 1), 0.5 if names == DEFAULT_LOW_LEVEL_FEATURES else 0.0) for story in stories}

    def partition(features, low, dataset, subject, settings):
        calls.append((subject, settings.layers, settings.window))
        return pd.DataFrame({"voxel": [0, 1], "feature_value": np.mean([f.mean() for f in features.values()]),
                             "low_value": np.mean([f.mean() for f in low.values()])})

    for name, value in (("variant_features", features), ("story_low_level", low_level),
                        ("variance_partition", partition)):
        monkeypatch.setattr(low_level_impact, name, value)
    settings = AlignmentSettings(layers=(1, 2), window=WindowSettings("fast", 8.0))
    variants = {"pretrained": "tiny-hubert", "other": "tiny-wav2vec2"}
    table = partition_variants(demo, ["DEMO01", "DEMO02"], variants, "tiny", 2, settings, device="cpu")
    assert calls == [(subject, (2,), settings.window) for subject in ("DEMO01", "DEMO02") for _ in variants]
    assert len(table) == 2 * 2 * 2 and set(table.layer) == {2} and set(table.model) == {"tiny"}
    means = table.groupby(["subject", "variant"]).feature_value.first()
    assert means.to_dict() == {(s, v): 2 * models[variants[v]] for s in ("DEMO01", "DEMO02") for v in variants}
    assert set(table.low_value) == {0.5}
    with pytest.raises(ValueError, match="is a string"):
        partition_variants(demo, "DEMO01", variants, "tiny", 1, settings)
