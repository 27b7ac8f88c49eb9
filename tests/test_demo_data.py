"""The embedded demo dataset: layout, determinism, planted truth and its recovery."""

import dataclasses
import functools
import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
import scipy.stats

from bt_utils.demo import simulation as demo_data
from bt_utils.data.dataset import SAMPLE_RATE, Dataset, open_dataset
from bt_utils.demo.simulation import (
    CATEGORIES, DemoConfig, auditory_features, build_demo_dataset, canonical_hrf, semantic_features,
)
from bt_utils.features.low_level import phoneme_rate, power_spectrum
from bt_utils.data.noise_ceiling import cc_max
from bt_utils.data.transcripts import ARPABET_PHONES
from bt_utils.data.timing import tr_midpoints, trim_trs, trimmed_length
from bt_utils.data.transcripts import Interval, Transcript

SMALL = DemoConfig(seed=3, n_train_stories=2, n_validation_stories=1, story_seconds=45,
                   test_story_seconds=45, n_voxels=300, n_repeats=(3, 2, 2))


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "demo.json"):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_build_is_deterministic_and_seed_dependent(tmp_path):
    first = build_demo_dataset(tmp_path / "a", SMALL)
    second = build_demo_dataset(tmp_path / "b", SMALL)
    other = build_demo_dataset(tmp_path / "c", DemoConfig(**{**SMALL.__dict__, "seed": 4}))
    assert _digest(first) == _digest(second) != _digest(other)


def test_rebuild_with_same_settings_is_skipped(tmp_path):
    root = build_demo_dataset(tmp_path / "a", SMALL)
    stamp = (root / "derivative" / "respdict.json").stat().st_mtime_ns
    build_demo_dataset(root, SMALL)
    assert (root / "derivative" / "respdict.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_dataset(root, DemoConfig(**{**SMALL.__dict__, "seed": 9}))


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(root, config):
        (root / "stimuli").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_demo_dataset(tmp_path / "demo", SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("changes, message", [
    ({"n_repeats": (1, 2, 2)}, "at least 2 test repeats"),
    ({"n_repeats": (2, 2)}, "n_repeats has 2 entries"),
    ({"n_train_stories": 0}, "at least one training story"),
    ({"story_seconds": 10}, "at least 40 s"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**{**SMALL.__dict__, **changes})


def test_demo_follows_the_ds003020_layout(demo):
    split = demo.split("DEMO01")
    assert demo.subjects == ["DEMO01", "DEMO02", "DEMO03"]
    assert len(demo.stories) >= 10 and len(split.train) == 10 and split.test == "echoes"
    for story in demo.stories:
        assert (demo.root / "stimuli" / f"{story}.wav").is_file()
        transcript = demo.transcript(story)
        assert set(p.label for p in transcript.phones) <= set(ARPABET_PHONES)
        assert all(w.label.isalpha() for w in transcript.words)
        for subject in demo.subjects:
            assert demo.load_responses(subject, story).shape == (trimmed_length(demo.n_trs[story]), 3000)
    for subject, n_repeats in zip(demo.subjects, (10, 10, 5)):
        assert demo.load_repeats(subject).shape == (n_repeats, trimmed_length(demo.n_trs["echoes"]), 3000)
    audio = demo.load_audio(split.train[0])
    assert len(audio) / SAMPLE_RATE == pytest.approx(demo.transcript(split.train[0]).duration, abs=0.01)
    n_train_trs = sum(trimmed_length(demo.n_trs[s]) for s in split.train)
    assert n_train_trs >= 500
    info = json.loads((demo.root / "derivative" / "demo.json").read_text())
    assert info["build_seconds"] < 120
    assert info["tr"] == demo.tr == 2.0  # ds003020's grid, recorded in demo.json


def test_the_demo_is_simulated_on_the_tr_it_records(tmp_path):
    root = build_demo_dataset(tmp_path / "slow", DemoConfig(**{**SMALL.__dict__, "tr": 2.0045}))
    dataset = Dataset(root)
    assert json.loads((root / "derivative" / "demo.json").read_text())["tr"] == dataset.tr == 2.0045
    for story in dataset.stories:  # the grid covers 10 s before the sound, the sound, and 10 s after it
        assert dataset.n_trs[story] == int(np.ceil((20.0 + dataset.transcript(story).duration) / 2.0045))
    # the planted auditory features are those of the audio at the recorded grid's midpoints (z-scored over stories)
    planted = np.load(root / "derivative" / "truth" / "stimulus_features.npz")
    stacked = np.vstack([planted[f"auditory/{s}"] for s in dataset.stories])

    def recomputed(grid: Dataset) -> np.ndarray:
        return np.vstack([auditory_features(grid.load_audio(s), grid.transcript(s), grid.tr_times(s))
                          for s in grid.stories])

    def fit(grid: Dataset) -> float:
        values = recomputed(grid)
        return min(np.corrcoef(values[:, k], stacked[:, k])[0, 1] for k in range(values.shape[1]))

    assert fit(dataset) > 1 - 1e-7  # the audio was stored as 16-bit PCM
    assert fit(Dataset(root, tr=2.0)) < 0.9999  # another grid over the same stories (measured: 0.999)


def test_voxels_sit_on_the_template_with_roi_labels(demo):
    layout = demo.voxel_layout("DEMO01")
    truth = demo.truth("DEMO01")
    assert str(layout["template"]) == "S1" and len(np.unique(layout["volume_index"])) == 3000
    assert {"AC", "Broca", "V1"} <= set(layout["roi"])
    # auditory voxels concentrate in auditory cortex, as planted
    auditory = truth["voxel_class"] == "auditory"
    assert np.mean(layout["roi"][auditory] == "AC") > 0.5 > np.mean(layout["roi"][~auditory] == "AC")


def test_noise_ceiling_separates_planted_classes(demo):
    for subject in demo.subjects:
        truth = demo.truth(subject)
        ceiling = cc_max(demo.load_repeats(subject))
        noise = truth["voxel_class"] == "noise"
        assert np.median(ceiling[noise]) < 0.05
        assert np.median(ceiling[~noise]) > 0.6
        assert np.corrcoef(ceiling[~noise], truth["cc_max_true"][~noise])[0, 1] > 0.7


def test_nan_voxels_are_planted_and_zeroed(demo, caplog):
    truth = demo.truth("DEMO02")
    responses = demo.load_responses("DEMO02", str(truth["nan_story"]))
    assert len(truth["nan_voxels"]) >= 1 and np.all(responses[:, truth["nan_voxels"]] == 0)
    assert "NaN values to 0" in caplog.text


def _delayed(features):
    return trim_trs(np.hstack([np.vstack([np.zeros((d, features.shape[1])), features[:len(features) - d]])
                               for d in (1, 2, 3, 4)]))


def test_planted_features_explain_their_voxels(demo):
    """Ridge from each planted feature space predicts held-out responses of its own class only."""
    planted = np.load(demo.root / "derivative" / "truth" / "stimulus_features.npz")
    split, truth = demo.split(), demo.truth("DEMO01")
    test_response = demo.load_repeats("DEMO01").mean(axis=0)
    train_response = np.vstack([demo.load_responses("DEMO01", s) for s in split.train])
    scores = {}
    for space in ("semantic", "auditory"):
        x_train = np.vstack([_delayed(planted[f"{space}/{s}"]) for s in split.train])
        x_test = _delayed(planted[f"{space}/{split.test}"])
        mean, std = x_train.mean(0), x_train.std(0) + 1e-8
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        weights = np.linalg.solve(x_train.T @ x_train + 10 * np.eye(x_train.shape[1]), x_train.T @ train_response)
        prediction = x_test @ weights
        scores[space] = np.array([scipy.stats.pearsonr(prediction[:, v], test_response[:, v])[0] for v in range(3000)])
    classes = truth["voxel_class"]
    for space, other in (("semantic", "auditory"), ("auditory", "semantic")):
        own = classes == space
        assert np.median(scores[space][own]) > 0.4
        assert np.median(scores[space][own]) > np.median(scores[other][own]) + 0.3
        assert abs(np.median(scores[space][classes == "noise"])) < 0.05


def test_semantic_features_integrate_word_meanings_over_time():
    embeddings = {"dog": np.array([1.0, 0.0]), "cake": np.array([0.0, 2.0])}
    transcript = Transcript([Interval(0.1, 0.5, "dog"), Interval(0.6, 0.9, "the"), Interval(1.0, 1.4, "cake"),
                             Interval(3.0, 3.2, "dog")], [], 4.0)
    times = np.array([0.2, 1.0, 2.5, 4.0, 1000.0])
    features = semantic_features(transcript, times, embeddings, timescale_s=2.0)
    # independent computation: weights exp(-age / 2) of the words heard (centres 0.3, 1.2, 3.1)
    centres, vectors = np.array([0.3, 1.2, 3.1]), np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    expected = []
    for t in times:
        weights = np.where(t >= centres, np.exp(-(t - centres) / 2.0), 0.0)
        expected.append(weights @ vectors / weights.sum() if weights.sum() else np.zeros(2))
    expected[-1] = expected[-2]  # after the last word the weighted mean stays put (no underflow to 0/0)
    np.testing.assert_allclose(features, expected, atol=1e-12)
    assert np.array_equal(features[0], [0.0, 0.0])  # before the first word's centre
    np.testing.assert_allclose(features[1], [1.0, 0.0])  # "cake" (centre 1.2) not heard yet
    with pytest.raises(ValueError, match="timescale_s"):
        semantic_features(transcript, times, embeddings, timescale_s=0.0)


def test_auditory_features_see_a_tone_in_its_band():
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(int(4 * SAMPLE_RATE)) / SAMPLE_RATE)
    audio = np.concatenate([np.zeros(int(4.0 * SAMPLE_RATE)), tone]).astype(np.float32)
    times = tr_midpoints(5, 2.0, sound_onset=0.0)
    phones = Transcript([], [Interval(4.1 + 0.1 * i, 4.15 + 0.1 * i, "AH") for i in range(10)], 8.0)
    features = auditory_features(audio, phones, times)
    silent, loud = features[0], features[2]
    assert loud[0] > silent[0] + 10  # mean level
    assert loud[2] > loud[1] + 5 and loud[2] > loud[3] + 5  # 1 kHz lies in the 0.5-2 kHz band
    spectrum = power_spectrum(audio, times)
    np.testing.assert_allclose(features[:, 0], spectrum.values.mean(axis=1))  # linear in the low-level spaces
    np.testing.assert_allclose(features[:, 4], phoneme_rate(phones, times).values[:, 0])
    assert np.argmax(features[:, 4]) == 2 and features[2, 4] > 5  # the 10 phones lie in TR 2 (Lanczos-smoothed)


def test_canonical_hrf_peaks_near_five_seconds():
    hrf = canonical_hrf(2.0)
    assert hrf.sum() == pytest.approx(1.0)
    assert 4.0 <= np.argmax(hrf) * 2.0 <= 6.1
    assert hrf[8:].min() < 0  # undershoot


def test_vocabulary_is_unique():
    words = [w for ws in CATEGORIES.values() for w in ws]
    assert len(words) == len(set(words)) == 64


def test_prepare_demo_outputs_rebuilds_an_old_demo_and_keeps_its_sweep_aside(tmp_path):
    data_root, sweep_dir = demo_data.prepare_demo_outputs(tmp_path, SMALL)
    sweep_dir.mkdir()
    (sweep_dir / "result.txt").write_text("old result")
    assert demo_data.prepare_demo_outputs(tmp_path, SMALL) == (data_root, sweep_dir)  # same data: sweep kept
    assert (sweep_dir / "result.txt").is_file()

    info_path = data_root / "derivative" / "demo.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"generator_version": demo_data.GENERATOR_VERSION - 1}))
    demo_data.prepare_demo_outputs(tmp_path, SMALL)  # as after an upgrade of the generator
    assert json.loads(info_path.read_text())["generator_version"] == demo_data.GENERATOR_VERSION
    assert not sweep_dir.exists()
    (kept,) = tmp_path.glob("sweep-before-*")
    assert (kept / "result.txt").read_text() == "old result"

    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "data" / "mine.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="not empty"):
        demo_data.prepare_demo_outputs(tmp_path / "other", SMALL)
    assert (tmp_path / "other" / "data" / "mine.txt").read_text() == "not a demo"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """A SMALL demo, built once; tests copy it before damaging it."""
    return build_demo_dataset(tmp_path_factory.mktemp("small") / "data", SMALL)


def _damage(root, how):
    if how == "missing wav":
        next((root / "stimuli").glob("*.wav")).unlink()
    elif how == "truncated hf5":
        path = next((root / "derivative" / "preprocessed_data" / "DEMO01").glob("*.hf5"))
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "missing subject":
        shutil.rmtree(root / "derivative" / "preprocessed_data" / "DEMO03")
    else:  # a malformed demo.json
        (root / "derivative" / "demo.json").write_text('{"split": ')


@pytest.mark.parametrize("how, reason", [
    ("missing wav", "missing: stimuli/"),
    ("truncated hf5", "size changed: derivative/preprocessed_data/DEMO01/"),
    ("missing subject", "missing: derivative/preprocessed_data/DEMO03/"),
    ("malformed demo.json", "derivative/demo.json is not a JSON mapping"),
])
def test_a_damaged_demo_is_rebuilt(small_demo, tmp_path, caplog, how, reason):
    root = tmp_path / "data"
    shutil.copytree(small_demo, root)
    _damage(root, how)
    build_demo_dataset(root, SMALL)
    assert f"the demo dataset in {root} is damaged ({reason}" in caplog.text
    assert _digest(root) == _digest(small_demo)
    assert Dataset(root).split("DEMO03").test == "echoes"


def test_overwrite_rebuilds_an_intact_demo(small_demo, tmp_path, monkeypatch, capsys):
    from bt_utils import cli

    monkeypatch.setattr(demo_data, "DemoConfig", lambda seed, tr: dataclasses.replace(SMALL, seed=seed, tr=tr))
    root = tmp_path / "data"
    shutil.copytree(small_demo, root)
    stamp = (root / "derivative" / "respdict.json").stat().st_mtime_ns
    assert cli.main(["demo-data", "--out", str(root), "--seed", "3"]) == 0
    assert (root / "derivative" / "respdict.json").stat().st_mtime_ns == stamp  # intact: kept
    assert cli.main(["demo-data", "--out", str(root), "--seed", "3", "--overwrite"]) == 0
    assert (root / "derivative" / "respdict.json").stat().st_mtime_ns != stamp
    assert _digest(root) == _digest(small_demo) and f"demo dataset ready in {root}" in capsys.readouterr().out


def test_two_builders_of_one_folder_take_turns(tmp_path, monkeypatch):
    """The second builder waits for the first one's lock, then finds the demo ready instead of replacing it."""
    real_build, builds = demo_data._build_into, []
    started, release = threading.Event(), threading.Event()

    def held_build(root, config):
        builds.append(root)
        started.set()
        assert release.wait(60)
        return real_build(root, config)

    monkeypatch.setattr(demo_data, "_build_into", held_build)
    root, results = tmp_path / "data", []
    threads = [threading.Thread(target=lambda: results.append(build_demo_dataset(root, SMALL))) for _ in range(2)]
    threads[0].start()
    assert started.wait(60)
    threads[1].start()
    threads[1].join(timeout=1.0)
    assert threads[1].is_alive()  # waiting for the lock
    release.set()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [root, root] and len(builds) == 1
    assert demo_data._demo_state(root, demo_data._settings(SMALL)) == ("intact", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no lock file or staging folder left


def test_open_dataset_builds_the_demo_only_at_its_own_location(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_data, "build_demo_dataset", functools.partial(build_demo_dataset, config=SMALL))
    typo = tmp_path / "demo_outptu" / "data"
    with pytest.raises(FileNotFoundError, match=f"no dataset at {typo}: the folder does not exist .*builds the demo "
                                                "only at its own location, a folder ending in demo_output/data"):
        open_dataset(typo, build_demo_if_missing=True)
    assert not (tmp_path / "demo_outptu").exists()  # nothing was built at the mistyped path
    with pytest.raises(FileNotFoundError, match=f"no dataset at {typo}: the folder does not exist. Check data_root"):
        open_dataset(typo)
    dataset = open_dataset(tmp_path / "demo_output" / "data", build_demo_if_missing=True)
    assert dataset.root == tmp_path / "demo_output" / "data" and dataset.split("DEMO01").test == "echoes"
