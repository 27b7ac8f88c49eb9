import json
import logging
import shutil

import h5py
import numpy as np
import pytest

from bt_utils.data.dataset import SAMPLE_RATE, Dataset, StorySplit, open_dataset
from bt_utils.data.timing import DS003020_TR_S
from bt_utils.data.transcripts import read_textgrid
from bt_utils.validation import DataError
from conftest import write_small_dataset

STORIES = {"alpha": 40, "beta": 35, "gamma": 30}


@pytest.fixture
def small(tmp_path):
    return write_small_dataset(tmp_path / "data", STORIES)


def test_missing_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="ds003020 layout"):
        Dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks stimuli.*respdict.json"):
        Dataset(tmp_path / "empty")


def test_small_dataset_loads_and_resamples(small, caplog):
    dataset = Dataset(small)
    assert dataset.stories == ["alpha", "beta", "gamma"]
    assert dataset.subjects == ["S01"]
    with caplog.at_level(logging.INFO, logger="bt_utils.data.dataset"):
        audio = dataset.load_audio("alpha")
    assert audio.dtype == np.float32 and len(audio) == SAMPLE_RATE
    assert "resampling alpha.wav from 44100 Hz to 16000 Hz" in caplog.text
    assert dataset.load_responses("S01", "alpha").shape == (25, 4)
    assert dataset.load_repeats("S01", "gamma").shape == (3, 15, 4)
    assert dataset.tr_times("beta").shape == (35,)


def test_the_tr_grid_is_a_parameter_of_the_dataset(small):
    # default: the reference's 2.0-s grid, sound onset 10 s after the first trigger, features at TR midpoints
    dataset = Dataset(small)
    assert dataset.tr == DS003020_TR_S == 2.0
    np.testing.assert_allclose(dataset.tr_times("alpha"), np.arange(40) * 2.0 - 10.0 + 1.0)
    slower = Dataset(small, tr=2.0045)
    assert slower.tr == 2.0045 and "tr=2.0045" in repr(slower)
    np.testing.assert_allclose(slower.tr_times("alpha"), np.arange(40) * 2.0045 - 10.0 + 2.0045 / 2)
    assert open_dataset(small, tr=1.5).tr_times("beta")[1] - open_dataset(small).tr_times("beta")[1] == -0.75
    with pytest.raises(ValueError, match="the TR must be a finite positive number of seconds, got 0"):
        Dataset(small, tr=0)
    # a dataset may declare its own TR (the demo does, in demo.json); an explicit tr wins
    (small / "derivative" / "demo.json").write_text(json.dumps({"tr": 1.5}))
    assert Dataset(small).tr == 1.5 and Dataset(small, tr=2.0).tr == 2.0
    np.testing.assert_allclose(np.diff(Dataset(small).tr_times("gamma")), 1.5)
    (small / "derivative" / "demo.json").write_text(json.dumps({"tr": -1}))
    with pytest.raises(DataError, match="demo.json declares an invalid TR"):
        _ = Dataset(small).tr


def test_story_with_audio_but_no_textgrid(small):
    (small / "derivative" / "TextGrids" / "beta.TextGrid").unlink()
    with pytest.raises(DataError, match="story 'beta' has audio but no TextGrid"):
        Dataset(small).transcript("beta")


def test_hf5_without_data(small):
    path = small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5"
    with h5py.File(path, "w") as handle:
        handle["responses"] = np.zeros((25, 4))
    with pytest.raises(DataError, match=r"alpha.hf5 has no dataset 'data' \(datasets found: \['responses'\]\)"):
        Dataset(small).load_responses("S01", "alpha")


def test_row_count_mismatch_names_story_and_counts(small):
    path = small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5"
    with h5py.File(path, "w") as handle:
        handle["data"] = np.zeros((40, 4))
    with pytest.raises(DataError, match=r"40 TRs but respdict.json gives story 'alpha' 45 TRs, i.e. a grid of 40 "
                                        r"TRs \(respdict counts 5 more\) and 25 after"):
        Dataset(small).load_responses("S01", "alpha")


def test_too_few_repeats(small):
    from bt_utils.data.noise_ceiling import cc_max

    path = small / "derivative" / "preprocessed_data" / "S01" / "gamma.hf5"
    with h5py.File(path, "a") as handle:
        del handle["individual_repeats"]
        handle["individual_repeats"] = np.zeros((1, 15, 4))
    with pytest.raises(DataError, match="at least 2 repeats"):
        cc_max(Dataset(small).load_repeats("S01", "gamma"))


def test_nan_voxels_are_zeroed_and_counted(small, caplog):
    path = small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5"
    with h5py.File(path, "a") as handle:
        values = handle["data"][()]
        values[:, 1] = np.nan
        del handle["data"]
        handle["data"] = values
    with caplog.at_level(logging.WARNING):
        responses = Dataset(small).load_responses("S01", "alpha")
    assert np.all(responses[:, 1] == 0) and np.isfinite(responses).all()
    assert "set 25 NaN values to 0" in caplog.text


def test_unknown_names_list_what_exists(small):
    dataset = Dataset(small)
    with pytest.raises(KeyError, match="unknown story 'delta'.*alpha"):
        dataset.load_audio("delta")
    with pytest.raises(KeyError, match="unknown subject 'S02'.*S01"):
        dataset.load_responses("S02", "alpha")


def test_small_dataset_without_split_information(small):
    with pytest.raises(DataError, match="cannot choose a split"):
        Dataset(small).split()


def test_ds003020_split_is_the_authors(tmp_path):
    from bt_utils.data.dataset import DS003020_TEST_STORY, DS003020_TRAIN_STORIES

    stories = {s: 30 for s in (*DS003020_TRAIN_STORIES, "stagefright", DS003020_TEST_STORY)}
    dataset = Dataset(write_small_dataset(tmp_path / "ds", stories, n_voxels=2))
    split = dataset.split()
    assert split.test == "wheretheressmoke" and split.validation == ("stagefright",)
    assert len(split.train) == 24 and "souls" in split.train
    shutil.rmtree(tmp_path / "ds" / "derivative" / "preprocessed_data" / "S01")
    (tmp_path / "ds" / "derivative" / "preprocessed_data" / "S01").mkdir()
    with pytest.raises(DataError, match="S01 has no responses"):
        dataset.split("S01")


def test_split_rejects_overlap():
    with pytest.raises(ValueError, match="more than one split"):
        StorySplit(("a", "b"), ("b",), "c")


def test_textgrid_tiers_found_case_insensitively(tmp_path):
    path = tmp_path / "x.TextGrid"
    path.write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 1\ntiers? <exists>\nsize = 2\nitem []:\n'
        '    item [1]:\n        class = "IntervalTier"\n        name = "Phones"\n        xmin = 0\n        xmax = 1\n'
        '        intervals: size = 1\n        intervals [1]:\n            xmin = 0\n            xmax = 1\n            text = "AH0"\n'
        '    item [2]:\n        class = "IntervalTier"\n        name = "Words"\n        xmin = 0\n        xmax = 1\n'
        '        intervals: size = 2\n        intervals [1]:\n            xmin = 0\n            xmax = 0.5\n            text = ""\n'
        '        intervals [2]:\n            xmin = 0.5\n            xmax = 1\n            text = "a"\n'
    )
    transcript = read_textgrid(path)
    assert [w.label for w in transcript.words] == ["a"] and transcript.phones[0].label == "AH0"
    path.write_text(path.read_text().replace('"Words"', '"tokens"'))
    with pytest.raises(DataError, match="no tier named 'word' or 'words'.*tokens"):
        read_textgrid(path)


def test_respdict_counts_five_trs_beyond_the_grid_as_ds003020(small):
    # ds003020's wheretheressmoke: 311 in respdict.json, 291 response rows, so a grid of 306 TRs
    (small / "derivative" / "respdict.json").write_text('{"alpha": 311, "beta": 40, "gamma": 35}')
    with h5py.File(small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5", "w") as handle:
        handle["data"] = np.zeros((291, 4))
    dataset = Dataset(small)
    assert dataset.n_trs["alpha"] == 306 and len(dataset.tr_times("alpha")) == 306
    assert dataset.load_responses("S01", "alpha").shape == (291, 4)
    (small / "derivative" / "respdict.json").write_text('{"alpha": 311, "beta": 20}')
    with pytest.raises(DataError, match=r"respdict.json gives stories \{'beta': 20\} no TR left after the \[10:-5\]"):
        _ = Dataset(small).n_trs


def test_repeats_need_only_the_test_story(demo_root, tmp_path):
    root = tmp_path / "data"  # the demo, linked file by file, without one training story of DEMO01
    for path in demo_root.rglob("*"):
        if path.is_file():
            (root / path.relative_to(demo_root)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(demo_root)).symlink_to(path)
    dataset = Dataset(root)
    (root / "derivative" / "preprocessed_data" / "DEMO01" / f"{dataset.split().train[0]}.hf5").unlink()
    with pytest.raises(DataError):
        dataset.split("DEMO01")
    assert dataset.load_repeats("DEMO01").shape == Dataset(demo_root).load_repeats("DEMO01").shape
