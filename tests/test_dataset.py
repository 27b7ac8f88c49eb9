import json
import logging
import shutil

import h5py
import numpy as np
import pytest
import soundfile

from bt_utils.data.dataset import SAMPLE_RATE, Dataset, StorySplit, open_dataset
from bt_utils.data.timing import DS003020_TR_S
from bt_utils.data.transcripts import Interval, Transcript, read_textgrid, textgrid_duration, write_textgrid
from bt_utils.validation import DataError
from conftest import small_story_seconds, write_small_dataset

STORIES = {"alpha": 40, "beta": 35, "gamma": 30}


@pytest.fixture
def small(tmp_path):
    return write_small_dataset(tmp_path / "data", STORIES)


def test_missing_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no dataset at {tmp_path / 'nowhere'}: .*ds003020 layout"):
        Dataset(tmp_path / "nowhere")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match=f"data root {tmp_path / 'file'} is a file, not a folder"):
        Dataset(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks stimuli.*respdict.json"):
        Dataset(tmp_path / "empty")


def test_small_dataset_loads_and_resamples(small, caplog):
    dataset = Dataset(small)
    assert dataset.stories == ["alpha", "beta", "gamma"]
    assert dataset.subjects == ["S01"]
    with caplog.at_level(logging.INFO, logger="bt_utils.data.dataset"):
        audio = dataset.load_audio("alpha")
    assert audio.dtype == np.float32 and len(audio) == pytest.approx(small_story_seconds(40) * SAMPLE_RATE, abs=2)
    assert "resampling alpha.wav from 8000 Hz to 16000 Hz" in caplog.text
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
    split = {"train": ["alpha"], "validation": ["beta"], "test": "gamma"}
    (small / "derivative" / "demo.json").write_text(json.dumps({"split": split, "tr": 1.5}))
    assert Dataset(small).tr == 1.5 and Dataset(small, tr=2.0).tr == 2.0
    np.testing.assert_allclose(np.diff(Dataset(small).tr_times("gamma")), 1.5)
    (small / "derivative" / "demo.json").write_text(json.dumps({"split": split, "tr": -1}))
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


def _rewrite(path, key="data", change=None, values=None):
    """Replace dataset ``key`` of an hf5 file by ``values``, or by its values edited in place by ``change``."""
    with h5py.File(path, "a") as handle:
        if values is None:
            values = handle[key][()]
            change(values)
        del handle[key]
        handle[key] = values


def test_nan_voxels_are_zeroed_and_counted(small, caplog):
    path = small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5"
    original = Dataset(small).load_responses("S01", "alpha")
    _rewrite(path, change=lambda values: values.__setitem__((slice(None), 1), np.nan))
    with caplog.at_level(logging.WARNING):
        responses = Dataset(small).load_responses("S01", "alpha")
    assert np.all(responses[:, 1] == 0) and np.isfinite(responses).all()
    np.testing.assert_array_equal(np.delete(responses, 1, axis=1), np.delete(original, 1, axis=1))
    assert "1 dropped-out voxel(s) (NaN in every TR): set 25 NaN values to 0" in caplog.text


@pytest.mark.parametrize("key, where, value, kinds, rows, voxels", [
    ("data", (7, 2), np.inf, "1 \\+Inf", "\\[7\\]", "\\[2\\]"),
    ("data", (slice(3, 5), 0), np.nan, "2 NaN", "\\[3, 4\\]", "\\[0\\]"),  # NaN in some TRs only
    ("individual_repeats", (1, 2, 3), -np.inf, "1 -Inf", "\\[2\\]", "\\[3\\]"),
])
def test_non_finite_values_other_than_dropped_voxels_are_refused(small, key, where, value, kinds, rows, voxels):
    path = small / "derivative" / "preprocessed_data" / "S01" / "gamma.hf5"
    _rewrite(path, key, change=lambda values: values.__setitem__(where, value))
    dataset = Dataset(small)
    load = dataset.load_responses if key == "data" else dataset.load_repeats
    with pytest.raises(DataError, match=f"gamma.hf5: dataset '{key}' of story 'gamma' holds {kinds} outside "
                                        f"dropped-out voxels, in rows {rows} and voxels {voxels}"):
        load("S01", "gamma")


def test_a_story_without_usable_data_is_refused(small):
    path = small / "derivative" / "preprocessed_data" / "S01" / "alpha.hf5"
    _rewrite(path, change=lambda values: values.fill(np.nan))
    with pytest.raises(DataError, match="alpha.hf5: dataset 'data' of story 'alpha' has no data: every voxel is NaN"):
        Dataset(small).load_responses("S01", "alpha")


@pytest.mark.parametrize("kept", [0.0, 0.5])
def test_audio_that_does_not_cover_its_tr_grid_is_refused_on_opening(small, kept):
    path = small / "stimuli" / "beta.wav"
    audio, rate = soundfile.read(path)
    soundfile.write(path, audio[:int(kept * len(audio))], rate)  # a valid header with 0 frames, or half the story
    last_response = (35 - 5 - 1) * DS003020_TR_S - 10.0 + DS003020_TR_S / 2  # midpoint of TR 29, the last kept by the [10:-5] trim
    with pytest.raises(DataError, match=rf"the audio of story 'beta' lasts {kept * small_story_seconds(35):.2f} s "
                                        rf"\({path}\) but its TR grid \(35 TRs, from respdict.json\) has responses "
                                        rf"until {last_response:.1f} s after sound onset: the file is truncated or empty"):
        Dataset(small)


def test_truncated_audio_file_is_refused_on_opening(small):
    path = small / "stimuli" / "beta.wav"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # cut inside the data chunk
    with pytest.raises(DataError, match="the audio of story 'beta' lasts .* the file is truncated or empty"):
        Dataset(small)
    path.write_bytes(b"RIFF")
    with pytest.raises(DataError, match=f"the audio of story 'beta' cannot be read: {path}"):
        Dataset(small)


def test_textgrid_of_another_story_is_refused_on_opening(small):
    textgrids = small / "derivative" / "TextGrids"
    shutil.copy(textgrids / "alpha.TextGrid", textgrids / "gamma.TextGrid")
    audio = soundfile.info(small / "stimuli" / "gamma.wav")
    with pytest.raises(DataError, match=rf"the TextGrid of story 'gamma' ends at {small_story_seconds(40):.2f} s but "
                                        rf"its audio lasts {audio.frames / audio.samplerate:.2f} s: .*gamma.TextGrid does not "
                                        "belong to .*gamma.wav"):
        Dataset(small)


def test_stories_without_files_are_checked_when_used(small):
    """A partial download of ds003020 (datalad leaves links to files not fetched) opens; what is missing fails
    when it is used."""
    (small / "stimuli" / "beta.wav").unlink()
    (small / "stimuli" / "beta.wav").symlink_to(small / "annex" / "beta.wav")
    response = small / "derivative" / "preprocessed_data" / "S01" / "beta.hf5"
    response.unlink()
    response.symlink_to(small / "annex" / "beta.hf5")
    dataset = Dataset(small)
    with pytest.raises(FileNotFoundError, match="audio of story 'beta' not found"):
        dataset.load_audio("beta")
    assert dataset.stories_for("S01") == ["alpha", "gamma"] and dataset.load_responses("S01", "alpha").shape == (25, 4)
    with pytest.raises(FileNotFoundError, match=r"beta.hf5 is a broken link \(not downloaded\?\)"):
        dataset.load_responses("S01", "beta")


@pytest.mark.parametrize("content, message", [
    (b"", "cannot be read as HDF5 .*the file is empty, truncated or not an hf5 file"),
    ("truncated", "cannot be read as HDF5 .*the file is empty, truncated or not an hf5 file"),
    ("1-D", r"dataset 'data' has shape \(100,\); expected 2 dimensions, \(TRs, voxels\) with 25 TRs"),
    ("other voxels", r"S01's responses have 4 voxels in 2 stories but \{'alpha': 5\} in \[.*alpha.hf5'\]"),
    ("repeats", r"gamma.hf5: dataset 'individual_repeats' has shape \(3, 15, 2\); expected \(repeats, 15, 4\)"),
])
def test_bad_response_files_are_named_before_their_data_is_read(small, content, message):
    folder = small / "derivative" / "preprocessed_data" / "S01"
    path = folder / "alpha.hf5"
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "1-D":
        _rewrite(path, values=np.zeros(100))
    elif content == "other voxels":
        _rewrite(path, values=np.zeros((25, 5)))
    elif content == "repeats":
        _rewrite(folder / "gamma.hf5", "individual_repeats", values=np.zeros((3, 15, 2)))
    else:
        path.write_bytes(content)
    dataset = Dataset(small)
    for first_use in (lambda: dataset.split("S01"), lambda: dataset.n_voxels("S01"),
                      lambda: dataset.load_responses("S01", "beta")):  # the other files are fine
        with pytest.raises(DataError, match=message):
            first_use()


@pytest.mark.parametrize("respdict, message", [
    ("[45, 40, 35]", r"respdict.json holds a list; expected a mapping of story names to numbers of TRs"),
    ('{"alpha": "45", "beta": 40.5, "gamma": true}', r"respdict.json gives stories numbers of TRs that are not "
                                                     r"integers: \{'alpha': '45', 'beta': 40.5, 'gamma': True\}"),
    ('{"alpha": 45,', r"respdict.json is not valid JSON"),
])
def test_bad_respdict_is_refused_on_opening(small, respdict, message):
    (small / "derivative" / "respdict.json").write_text(respdict)
    with pytest.raises(DataError, match=message):
        Dataset(small)


def _as_demo(root, split):
    (root / "derivative" / "demo.json").write_text(json.dumps({"split": split}))


@pytest.mark.parametrize("content, message", [
    ('{"split": {"train": ["alpha"], "validation": ["beta"], "test": "gamma"', "demo.json is not valid JSON"),
    ('{"split": {"train": "alpha", "validation": ["beta"], "test": "gamma"}}', "demo.json has no valid 'split'"),
    ('{"seed": 0}', "demo.json has no valid 'split'.*found None"),
])
def test_malformed_demo_json_is_refused_on_opening(small, content, message):
    (small / "derivative" / "demo.json").write_text(content)
    with pytest.raises(DataError, match=f"{message}.*bt demo-data --out {small} --overwrite"):
        Dataset(small)


def test_a_split_story_missing_from_respdict_is_named(small):
    _as_demo(small, {"train": ["alpha"], "validation": ["beta"], "test": "gamma"})
    assert Dataset(small).split("S01").all == ("alpha", "beta", "gamma")
    (small / "derivative" / "respdict.json").write_text('{"alpha": 45, "gamma": 35}')
    with pytest.raises(DataError, match=r"respdict.json has no entry \(number of TRs\) for stories \['beta'\] of "
                                        r"the split in .*demo.json"):
        Dataset(small)
    (small / "derivative" / "demo.json").unlink()
    with pytest.raises(DataError, match=r"story 'beta' has files \(.*beta.wav, .*beta.hf5\) but .*respdict.json "
                                        "has no entry for it"):
        Dataset(small).load_responses("S01", "beta")


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
    respdict = json.loads((tmp_path / "ds" / "derivative" / "respdict.json").read_text())
    del respdict["souls"]
    (tmp_path / "ds" / "derivative" / "respdict.json").write_text(json.dumps(respdict))
    with pytest.raises(DataError, match=r"respdict.json has no entry \(number of TRs\) for stories \['souls'\] of "
                                        "ds003020's split"):
        Dataset(tmp_path / "ds").split()


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


@pytest.mark.parametrize("form", ["long_textgrid", "short_textgrid", "utf-16"])
def test_textgrid_duration_reads_the_header_only(tmp_path, form):
    from praatio import textgrid

    path = tmp_path / "x.TextGrid"
    write_textgrid(Transcript([Interval(0.2, 0.6, "hello")], [Interval(0.2, 0.4, "HH")], 123.456), path)
    if form != "long_textgrid":
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
        grid.save(str(path), format="long_textgrid" if form == "utf-16" else form, includeBlankSpaces=True)
    if form == "utf-16":
        path.write_bytes(path.read_text().encode("utf-16"))
    assert textgrid_duration(path) == read_textgrid(path).duration == 123.456
    path.write_text("not a TextGrid\n")
    with pytest.raises(DataError, match="x.TextGrid does not start like a Praat TextGrid"):
        textgrid_duration(path)


def test_respdict_counts_five_trs_beyond_the_grid_as_ds003020(tmp_path):
    # ds003020's wheretheressmoke: 311 in respdict.json, 291 response rows, so a grid of 306 TRs
    small = write_small_dataset(tmp_path / "data", {"alpha": 306, "beta": 35})
    assert json.loads((small / "derivative" / "respdict.json").read_text())["alpha"] == 311
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
