"""Tests of the downstream probes, scores, the task loaders and notebook 04 (the CTC heads: test_asr.py).

The real pretrained Whisper tiny.en encodes one small offline demo task per
session (features cached in a session folder, which the notebook test reuses).
"""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from sklearn.metrics import f1_score

from bt_utils.downstream import features as downstream_features
from bt_utils.downstream import tasks as dt
from bt_utils.downstream.asr import CtcConfig
from bt_utils.downstream.features import extract_features, feature_cache_path, frame_centres
from bt_utils.downstream.probes import (
    ModelEntry,
    ProbeConfig,
    fit_probe,
    model_entry,
    probe_task,
    run_downstream,
    score_predictions,
    summarize,
)
from bt_utils.demo import tasks as demo_tasks
from bt_utils.demo.tasks import demo_task
from bt_utils.downstream.tasks import TASKS, DownstreamTask, Example, load_task
from bt_utils.downstream.metrics import accuracy
from bt_utils.models.registry import load_encoder
from bt_utils.sweeps.notebooks import execute_notebook
from bt_utils.models.tuning import masked_mean
from bt_utils.viz.plots import plot_downstream

WORD_PER_CLASS = 20  # 10 train, 5 validation, 5 test per word
FAST = ProbeConfig(max_epochs=25)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These small models run fastest on one thread; with two, a busy 2-core machine is up to 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("downstream_cache")


@pytest.fixture(scope="session")
def encoder():
    return load_encoder("whisper-tiny.en", device="cpu", native_length=True)


@pytest.fixture(scope="session")
def word_task():
    return demo_task("demo_word", per_class=WORD_PER_CLASS)


@pytest.fixture(scope="session")
def word_features(encoder, word_task, feature_cache):
    return extract_features(encoder, word_task, cache_dir=feature_cache, progress=False)


def _relabel(task: DownstreamTask, labels) -> DownstreamTask:
    return replace(task, examples=tuple(replace(e, label=str(label)) for e, label in zip(task.examples, labels)))


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


def test_probe_learns_word_identity_but_not_shuffled_labels(word_task, word_features):
    assert word_features.shape == (len(word_task.examples), 5, 384)
    predictions, selection = probe_task(word_features, word_task, seeds=(0,), config=FAST)
    assert len(predictions) == len(word_task.split("test")) == 50
    learned = accuracy(predictions.label, predictions.prediction)
    assert learned > 0.6, learned  # chance: 0.1

    shuffled_labels = np.random.default_rng(0).permutation([e.label for e in word_task.examples])
    shuffled = _relabel(word_task, shuffled_labels)
    predictions, _ = probe_task(word_features, shuffled, seeds=(0,), config=FAST)
    assert accuracy(predictions.label, predictions.prediction) < 0.3
    assert selection.chosen.sum() == 1 and set(selection.layer) == set(range(5))


def test_selection_never_touches_the_test_split(word_task, word_features):
    reference, selection = probe_task(word_features, word_task, seeds=(0, 1), config=FAST)
    test = np.array([e.split == "test" for e in word_task.examples])

    constant = _relabel(word_task, [e.label if e.split != "test" else "yes" for e in word_task.examples])
    poisoned_features = word_features.copy()
    poisoned_features[test] = np.random.default_rng(1).normal(size=poisoned_features[test].shape)
    for features, task in ((word_features, constant), (poisoned_features, word_task)):
        predictions, poisoned_selection = probe_task(features, task, seeds=(0, 1), config=FAST)
        pd.testing.assert_frame_equal(poisoned_selection, selection)
        assert list(predictions.layer) == list(reference.layer)
    # same features, poisoned labels: the very same test predictions
    predictions, _ = probe_task(word_features, constant, seeds=(0, 1), config=FAST)
    assert list(predictions.prediction) == list(reference.prediction)
    assert set(predictions.label) == {"yes"}


def test_fit_probe_chooses_the_informative_layer():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    features = rng.normal(size=(240, 4, 16)).astype(np.float32)
    features[:, 2, :3] += 3.0 * np.eye(3)[labels]  # only layer 2 carries the class
    fit = fit_probe(features[:160], labels[:160], features[160:], labels[160:], n_classes=3, seed=0,
                    config=ProbeConfig(max_epochs=30, batch_size=16))
    assert fit.layer == 2 and 1 <= fit.epoch <= 30
    assert fit.layers.set_index("layer").macro_f1.idxmax() == 2
    assert len(fit.history) == 4 * 30
    assert accuracy(labels[160:], fit.predict(features[160:])) > 0.9


def _planted_multilabel_task(n=300, n_classes=6, seed=0):
    """A multi-label task of ``n`` examples (1/2 train, 1/4 validation, 1/4 test), classes of frequency 0.2-0.45."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, n_classes)) < np.linspace(0.2, 0.45, n_classes)
    classes = tuple(f"c{i}" for i in range(n_classes))
    splits = ["train"] * (n // 2) + ["validation"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    labels = [" ".join(c for c, p in zip(classes, row) if p) for row in present]
    examples = tuple(Example(f"e{i:03d}", split, label, np.zeros(8, np.float32))
                     for i, (split, label) in enumerate(zip(splits, labels)))
    return DownstreamTask("planted", "multilabel", examples, classes), present


def test_multilabel_probe_recovers_planted_classes_but_not_noise():
    """Layer 1 of the features carries 4 x the multi-hot labels (plus unit noise): the probes choose it and recover
    the labels; on pure noise they score near chance (random permutations of the test labels)."""
    task, present = _planted_multilabel_task()
    noise = np.random.default_rng(1).normal(size=(len(present), 3, 16)).astype(np.float32)
    planted = noise.copy()
    planted[:, 1, :6] += 4.0 * present
    test = np.array([e.split == "test" for e in task.examples])
    config = ProbeConfig(max_epochs=30, batch_size=16, learning_rate=1e-2)
    summaries = {}
    for name, features in (("planted", planted), ("noise", noise)):
        predictions, selection = probe_task(features, task, seeds=(0, 1), config=config)
        assert list(selection.columns) == ["seed", "layer", "epoch", "macro_f1", "micro_f1", "loss", "chosen"]
        table = predictions.assign(model="m", variant="v", subject="", task="planted", kind="multilabel")
        summaries[name] = summarize(table, n_resamples=100).set_index("metric")
        # the summary's macro-F1 is the seeds' mean of scikit-learn's, over the classes present in the test labels
        observed = [f1_score(present[test], np.array([[c in p.split() for c in task.classes] for p in seed.prediction]),
                             average="macro", labels=np.flatnonzero(present[test].any(axis=0)))
                    for _, seed in predictions.groupby("seed")]
        assert summaries[name].loc["macro_f1", "value"] == pytest.approx(np.mean(observed))
    planted_f1, noise_f1 = summaries["planted"].loc["macro_f1"], summaries["noise"].loc["macro_f1"]
    assert planted_f1.layers == "1,1" and planted_f1.value > 0.9 and planted_f1.chance < 0.4
    assert abs(noise_f1.value - noise_f1.chance) < 0.12, noise_f1
    assert summaries["planted"].loc["micro_f1", "value"] > 0.9
    with pytest.raises(ValueError, match="not multi-hot over n_classes=6"):
        fit_probe(planted[:10], present[:10, :5], planted[10:20], present[10:20, :5], n_classes=6)


def test_feature_cache(encoder, word_task, word_features, feature_cache, monkeypatch):
    path = feature_cache_path(encoder.fingerprint(), word_task, feature_cache)
    assert path.is_file() and path.parent.parent.name == "downstream"
    again = extract_features(encoder, word_task, cache_dir=feature_cache, progress=False)
    np.testing.assert_array_equal(again, word_features)
    # different audio for the same ids: another cache entry
    changed = replace(word_task, examples=(replace(word_task.examples[0], audio=word_task.examples[0].audio * 0.5),
                                           *word_task.examples[1:]))
    assert feature_cache_path(encoder.fingerprint(), changed, feature_cache) != path
    # features computed by another version of the code: another cache entry
    monkeypatch.setattr(downstream_features, "_FEATURE_VERSION", downstream_features._FEATURE_VERSION + 1)
    assert feature_cache_path(encoder.fingerprint(), word_task, feature_cache) != path


def test_span_pooling_matches_a_manual_masked_mean(encoder, word_task):
    source = word_task.examples[0]
    whole = Example("whole", "train", "yes", source.audio, source="utt")
    part = Example("part", "train", "yes", source.audio, source="utt", span=(0.1, 0.3))
    task = DownstreamTask("spans", "classification", (whole, part), ("yes",))
    features = extract_features(encoder, task, cache=False, progress=False)
    audio = torch.from_numpy(source.audio)[None]
    with torch.inference_mode():
        output = encoder(audio, torch.tensor([audio.shape[1]]))
    centres = torch.from_numpy(frame_centres(encoder, output.frame_mask.shape[1]))
    in_span = output.frame_mask & (centres >= 0.1) & (centres < 0.3)
    assert int(in_span.sum()) == 10
    for layer, hidden in enumerate(output.hidden_states):
        np.testing.assert_allclose(features[0, layer], masked_mean(hidden, output.frame_mask)[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(features[1, layer], masked_mean(hidden, in_span)[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("name, first_centre, span, frame", [
    # hop 320 samples (conv strides 5 * 2**6); receptive field 400 samples (kernels 10, 3 x4, 2 x2): 0.0125 + 0.02 k
    ("tiny-wav2vec2", 0.0125, (8.005, 8.02), 400),
    # mel frame m centred on sample 160 m (400-sample windows, centred); conv1 keeps it, stride-2 conv2: 0.02 k
    ("tiny-whisper", 0.0, (0.191, 0.201), 10),
])
def test_spans_pool_the_frames_centred_in_them(name, first_centre, span, frame):
    encoder = load_encoder(name, device="cpu", **({"native_length": True} if name == "tiny-whisper" else {}))
    np.testing.assert_allclose(frame_centres(encoder, 4), first_centre + 0.02 * np.arange(4), atol=1e-12)
    audio = np.random.default_rng(0).normal(0.0, 0.1, 10 * 16000).astype(np.float32)
    task = DownstreamTask("span", "classification", (Example("e", "train", "x", audio, span=span),), ("x",))
    features = extract_features(encoder, task, cache=False, progress=False)
    with torch.inference_mode():
        output = encoder(torch.from_numpy(audio)[None])
    for layer, hidden in enumerate(output.hidden_states):  # only the frame centred in the span is pooled
        np.testing.assert_allclose(features[0, layer], hidden[0, frame].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-hubert", "tiny-whisper", "whisper-tiny.en"])
def test_features_do_not_depend_on_the_batch(name, encoder, word_task, monkeypatch):
    """Clips of other lengths change a clip's features through the padding of group-norm wav2vec2 (no attention
    mask) and of Whisper at native length (``encoder``); those are batched only with clips of the same length.
    HuBERT with an attention mask and Whisper padded to 30 s (tiny-whisper's default) keep whole batches."""
    if name != "whisper-tiny.en":
        encoder = load_encoder(name, device="cpu")
    clips = [e.audio for e in word_task.examples[:6]]
    clips.append(clips[0][::-1].copy())  # the same length as clip 0: the two may share a pass
    examples = [Example(f"clip{i}", "train", "yes", audio) for i, audio in enumerate(clips)]
    examples.append(Example("part", "train", "yes", clips[1], source="clip1", span=(0.1, 0.3)))
    task = DownstreamTask("batch", "classification", tuple(examples), ("yes",))
    alone = extract_features(encoder, task, batch_size=1, cache=False, progress=False)

    passes, forward = [], encoder.forward

    def counting_forward(audio, lengths):
        passes.append(len(audio))  # sources in this encoder pass
        return forward(audio, lengths)

    monkeypatch.setattr(encoder, "forward", counting_forward)
    batched = extract_features(encoder, task, batch_size=8, cache=False, progress=False)
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)
    assert len({len(c) for c in clips}) == 6
    # sources per encoder pass: all in one, or only clips of equal length together
    assert sorted(passes) == ([7] if name in ("tiny-hubert", "tiny-whisper") else [1, 1, 1, 1, 1, 2])


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def test_asr_scores_are_one_minus_corpus_wer():
    predictions = pd.DataFrame({
        "model": "m", "variant": "v", "subject": "", "task": "asr", "kind": "asr", "seed": 0, "layer": 4,
        "example_id": ["a", "b"], "label": ["turn on the lights", "stop"], "prediction": ["turn off the light", "stop"],
    })
    scores = score_predictions(predictions, n_resamples=50)
    assert list(scores.metric) == ["one_minus_wer"]
    assert scores.value.iloc[0] == pytest.approx(1 - 2 / 5)
    assert scores.ci_low.iloc[0] <= scores.value.iloc[0] <= scores.ci_high.iloc[0]


def test_macro_f1_scores_average_the_classes_of_the_test_labels():
    predictions = pd.DataFrame({
        "model": "m", "variant": "v", "subject": "", "task": "t", "kind": "classification", "seed": 0, "layer": 1,
        "example_id": list("wxyz"), "label": ["a", "a", "b", "b"], "prediction": ["a", "c", "b", "b"]})
    scores = score_predictions(predictions, n_resamples=50).set_index("metric")
    # F1 of a = 2*1/(2+1), of b = 1; "c" is only a wrong prediction: no class of its own in the average
    assert scores.loc["macro_f1", "value"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores.loc["accuracy", "value"] == pytest.approx(0.75)
    assert summarize(predictions, n_resamples=50).set_index("metric").loc["macro_f1", "value"] == pytest.approx(5 / 6)


def test_multilabel_scores_round_trip_through_parquet(tmp_path):
    predictions = pd.DataFrame({
        "model": "m", "variant": "v", "subject": "", "task": "t", "kind": "multilabel", "seed": 0, "layer": 1,
        "example_id": list("wxyz"), "label": ["a b", "a", "b c", ""], "prediction": ["a", "a c", "b c", "d"]})
    path = tmp_path / "predictions.parquet"
    predictions.to_parquet(path)
    back = pd.read_parquet(path)
    assert list(back.prediction) == ["a", "a c", "b c", "d"] and list(back.label) == ["a b", "a", "b c", ""]
    scores = score_predictions(back, n_resamples=50).set_index("metric")
    # per class over the 4 examples: a: TP 2 -> 1; b: TP 1, FN 1 -> 2/3; c: TP 1, FP 1 -> 2/3; d is only
    # predicted: no class of its own in the macro average, one more false positive in the micro one (TP 4, FP 2, FN 1)
    assert scores.loc["macro_f1", "value"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert scores.loc["micro_f1", "value"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    assert set(scores.index) == {"macro_f1", "micro_f1"}
    assert (scores.ci_low <= scores.value).all() and (scores.value <= scores.ci_high).all()


def test_summary_pools_seeds_and_reports_chance():
    rng = np.random.default_rng(0)
    labels = rng.choice(list("abcd"), 200)
    rows = []
    for seed in (0, 1):
        guess = np.where(rng.random(200) < 0.8, labels, rng.choice(list("abcd"), 200))
        rows.append(pd.DataFrame({"model": "m", "variant": "v", "subject": "", "task": "t", "kind": "classification",
                                  "seed": seed, "layer": seed + 2, "example_id": np.arange(200).astype(str),
                                  "label": labels, "prediction": guess}))
    predictions = pd.concat(rows, ignore_index=True)
    per_seed = score_predictions(predictions, n_resamples=200)
    summary = summarize(predictions, n_resamples=200)
    row = summary.set_index("metric").loc["accuracy"]
    assert row.value == pytest.approx(per_seed[per_seed.metric == "accuracy"].value.mean())
    assert row.ci_low < row.value < row.ci_high
    assert row.chance == pytest.approx(0.25, abs=0.05) and row.layers == "2,3" and row.n_seeds == 2


# ---------------------------------------------------------------------------
# Comparison of variants
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tuned_checkpoint(tmp_path_factory):
    """A stand-in brain-tuned checkpoint: whisper-tiny.en with one layer perturbed."""
    folder = tmp_path_factory.mktemp("tuned") / "checkpoint"
    encoder = load_encoder("whisper-tiny.en", device="cpu")
    with torch.no_grad():
        encoder.encoder.layers[3].fc2.weight.mul_(0.5)
    encoder.save_pretrained(folder / "encoder")
    record = {"parameters": {"model": "whisper-tiny.en", "subject": "DEMO01", "control": "none"}}
    (folder / "training_record.json").write_text(json.dumps(record))
    return folder


def test_model_entries(tuned_checkpoint):
    assert model_entry("whisper-tiny.en") == ModelEntry("pretrained", "whisper-tiny.en", "whisper-tiny.en", "")
    entry = model_entry({"path": str(tuned_checkpoint.parent)})  # the run folder holding checkpoint/
    assert entry == ModelEntry("brain-tuned", str(tuned_checkpoint), "whisper-tiny.en", "DEMO01")
    assert model_entry({"path": str(tuned_checkpoint), "variant": "mine"}).variant == "mine"
    with pytest.raises(ValueError, match="'path'"):
        model_entry({"variant": "x"})


def test_run_compares_variants_with_asr(tuned_checkpoint, feature_cache):
    word = demo_task("demo_word", per_class=8)
    asr = demo_task("demo_asr", per_class=16)
    results = run_downstream(["whisper-tiny.en", {"path": str(tuned_checkpoint)}], [word, asr], seeds=(0,),
                             probe=ProbeConfig(max_epochs=5), ctc=CtcConfig(max_epochs=2), device="cpu",
                             native_length=True, n_resamples=100, cache_dir=feature_cache, progress=False)
    scores = results.scores
    assert list(scores.columns) == ["model", "variant", "subject", "task", "layer", "metric", "value", "seed",
                                    "ci_low", "ci_high", "n_test"]
    assert set(scores.variant) == {"pretrained", "brain-tuned"}
    assert set(scores[scores.variant == "brain-tuned"].subject) == {"DEMO01"}
    assert set(scores.metric) == {"macro_f1", "accuracy", "one_minus_wer", "one_minus_wer_whisper_decoder"}
    assert (scores.ci_low <= scores.value + 1e-12).all() and (scores.value <= scores.ci_high + 1e-12).all()
    decoder_rows = scores[scores.metric == "one_minus_wer_whisper_decoder"]
    assert len(decoder_rows) == 2 and set(decoder_rows.layer) == {4}
    assert len(scores[scores.metric == "one_minus_wer"]) == 2
    assert set(results.selection.task) == {"demo_word", "demo_asr"}
    figure = plot_downstream(summarize(results.predictions, n_resamples=100))
    assert len(figure.axes) == 2


def test_run_downstream_with_a_multilabel_task(tmp_path):
    """The whole path for the multi-label demo task on a tiny random Whisper: features, probes, scores, tables."""
    phoneme = demo_task("demo_phoneme", per_class=12)  # 6 train, 3 validation, 3 test utterances
    results = run_downstream(["tiny-whisper"], [phoneme], seeds=(0, 1), probe=ProbeConfig(max_epochs=3),
                             device="cpu", native_length=True, n_resamples=50, cache=False, progress=False)
    test = {e.id: e.label for e in phoneme.split("test")}
    predictions = results.predictions
    assert set(predictions.kind) == {"multilabel"} and len(predictions) == 2 * len(test)
    assert dict(zip(predictions.example_id, predictions.label)) == test
    predicted = {name for p in predictions.prediction for name in p.split()}
    assert predicted <= set(phoneme.classes)
    assert set(results.scores.metric) == {"macro_f1", "micro_f1"} and set(results.scores.n_test) == {len(test)}
    selection = results.selection
    assert selection.accuracy.isna().all() and selection.micro_f1.notna().all()
    assert selection.groupby("seed").chosen.sum().tolist() == [1, 1]
    results.write(tmp_path)
    back = pd.read_parquet(tmp_path / "downstream_predictions.parquet")
    pd.testing.assert_frame_equal(score_predictions(back, n_resamples=50), results.scores)
    summary = summarize(back, n_resamples=50).set_index("metric")
    assert 0 < summary.loc["macro_f1", "chance"] < 1
    assert len(plot_downstream(summary.reset_index()).axes) == 1


# ---------------------------------------------------------------------------
# Demo tasks
# ---------------------------------------------------------------------------


def test_demo_phoneme_labels_the_phones_spoken(monkeypatch):
    """demo_phoneme is multi-label: each utterance's label is the set of phones of what eSpeak spoke."""
    spoken, speak = [], demo_tasks._speak

    def recording_speak(text, speaker, rng):
        audio, utterance = speak(text, speaker, rng)
        spoken.append({p.label for p in utterance.phones})
        return audio, utterance

    monkeypatch.setattr(demo_tasks, "_speak", recording_speak)
    phoneme = demo_task("demo_phoneme", per_class=8)
    assert phoneme.kind == "multilabel" and phoneme.classes == demo_tasks.ARPABET_PHONES
    assert [len(phoneme.split(s)) for s in dt.SPLITS] == [4, 2, 2]
    assert [set(e.label.split()) for e in phoneme.examples] == spoken
    multi_hot = dt.encode_multilabel([e.label for e in phoneme.examples], phoneme.classes)
    assert dt.decode_multilabel(multi_hot, phoneme.classes) == [e.label for e in phoneme.examples]
    assert phoneme.counts().to_numpy().sum() == multi_hot.sum() > 8 * 4  # several phones per utterance
    with pytest.raises(ValueError, match="outside its classes"):
        replace(phoneme, examples=(replace(phoneme.examples[0], label="SH XX"),))


def test_demo_tasks_are_balanced_with_disjoint_speakers(word_task):
    counts = word_task.counts()
    assert counts.shape == (10, 3) and (counts.train == 10).all() and (counts.test == 5).all()
    speakers = {split: {e.speaker for e in word_task.split(split)} for split in dt.SPLITS}
    assert not speakers["train"] & speakers["test"] and not speakers["validation"] & speakers["test"]
    assert not speakers["train"] & speakers["validation"]
    again = demo_task("demo_word", per_class=WORD_PER_CLASS)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(word_task.examples, again.examples))
    small = word_task.subsample(20)
    assert len(small.split("train")) == 20 and small.counts().train.tolist() == [2] * 10


# ---------------------------------------------------------------------------
# Real-data loaders, on tiny hand-made copies
# ---------------------------------------------------------------------------


def _wav(path, seconds=0.5, rate=16000, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * rate), np.float32), rate, **kwargs)


@pytest.mark.parametrize("name", sorted(name for name in TASKS if TASKS[name].needs_source))
def test_missing_real_data_says_where_to_get_it(name, tmp_path):
    where = {"timit": "LDC93S1", "speech": "speech_commands_v0.02", "crema": "CREMA-D", "slurp": "slurp",
             "librispeech": "openslr.org/12"}[name.split("_")[0]]
    with pytest.raises(FileNotFoundError, match=where):
        load_task(name, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=where):
        load_task(name)
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError, match=where):
        load_task(name, tmp_path / "empty")


def test_hugging_face_ids_need_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_task("speech_commands", "hf:google/speech_commands")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")


def test_hugging_face_copies(monkeypatch):
    """The Hugging Face path of the loaders, with a stand-in ``datasets`` whose splits are lists of rows."""
    import sys
    import types

    tone = {"array": np.zeros(4000), "sampling_rate": 8000}
    rows = {
        "x/crema": {"train": [{"audio": tone | {"path": f"{actor}_IEO_HAP_LO.wav"}} for actor in range(1001, 1011)]},
        "x/slurp": {split: [{"audio": tone, "intent": "alarm_set", "action": "set"}]
                    for split in ("train", "validation", "test")},
        "x/timit": {split: [{"audio": tone, "file": f"/data/{split.upper()}/DR1/{speaker}/SX216.WAV", "text": "Hi.",
                             "phonetic_detail": {"start": [0, 800], "stop": [800, 1600], "utterance": ["h#", "hv"]}}
                            for speaker in speakers] for split, speakers in (("train", ["FCJF0"]),
                                                                             ("test", ["FELC0", "MABC0"]))},
    }
    rows["x/libri"] = {split: [{"audio": tone, "id": f"{split}-1", "text": "HELLO", "speaker_id": 7}]
                       for split in ("train.100", "validation", "test")}
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, config=None, split=None: rows[name][split]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    libri = dt.librispeech("hf:x/libri")
    assert [(e.id, e.split, e.label) for e in libri.examples] == [
        ("train.100-1", "train", "HELLO"), ("validation-1", "validation", "HELLO"), ("test-1", "test", "HELLO")]
    with pytest.raises(ValueError, match="train='train-other-500'"):
        dt.librispeech("hf:x/libri", train="train-other-500")
    crema = dt.crema_d("hf:x/crema")
    assert {e.label for e in crema.examples} == {"happy"} and crema.examples[0].audio.shape == (8000,)
    assert dt.slurp("hf:x/slurp", "action").classes == ("set",)
    timit = dt.timit_phonemes("hf:x/timit", protocol="segments")
    assert [(e.id, e.split, e.label, e.span) for e in timit.examples if e.speaker == "FELC0"] == [
        ("FELC0_SX216_000", "test", "sil", (0.0, 0.05)), ("FELC0_SX216_001", "test", "hh", (0.05, 0.1))]
    assert {(e.speaker, e.split) for e in timit.examples} == {("FCJF0", "train"), ("FELC0", "test"),
                                                               ("MABC0", "validation")}
    presence = dt.timit_phonemes("hf:x/timit")
    assert [(e.id, e.split, e.label, e.span) for e in presence.examples] == [
        ("FCJF0_SX216", "train", "hh", None), ("FELC0_SX216", "test", "hh", None),
        ("MABC0_SX216", "validation", "hh", None)]
    with pytest.raises(dt.DataError, match="phonetic_detail"):
        rows["x/timit"]["train"][0].pop("phonetic_detail")
        dt.timit_phonemes("hf:x/timit")


def test_timit_loader(tmp_path):
    root = tmp_path / "TIMIT"
    utterances = {"TRAIN/DR1/FCJF0/SI1027": "h# q ix n pcl p ax-h h#", "TRAIN/DR1/FCJF0/SA1": "h# sh iy h#",
                  "TEST/DR1/FELC0/SX216": "h# zh ux h#", "TEST/DR2/MABC0/SI1620": "h# el em h#"}
    for stem, phones in utterances.items():
        _wav(root / f"{stem}.WAV", format="NIST", subtype="PCM_16")
        rows = [f"{800 * i} {800 * (i + 1)} {p}" for i, p in enumerate(phones.split())]
        (root / f"{stem}.PHN").write_text("\n".join(rows) + "\n")
        (root / f"{stem}.TXT").write_text(f"0 {800 * len(rows)} A short sentence.\n")
    phonemes = dt.timit_phonemes(root, protocol="segments")
    assert phonemes.name == "timit_phoneme_segments" and phonemes.kind == "classification"
    assert len(dt.TIMIT_PHONES_39) == 39 and len(dt.TIMIT_FOLDING) == 61
    by_id = {e.id: e for e in phonemes.examples}
    assert [by_id[f"FCJF0_SI1027_{i:03d}"].label for i in (0, 2, 3, 4, 5)] == ["sil", "ih", "n", "sil", "p"]
    assert "FCJF0_SI1027_001" not in by_id  # q is dropped
    assert by_id["FCJF0_SI1027_006"].label == "ah" and by_id["FCJF0_SI1027_006"].span == (0.3, 0.35)
    assert not any(e.source == "FCJF0_SA1" for e in phonemes.examples)  # SA left out
    assert {e.split for e in phonemes.examples if e.speaker == "FELC0"} == {"test"}  # core test speaker
    assert {e.split for e in phonemes.examples if e.speaker == "MABC0"} == {"validation"}
    assert [by_id[f"FELC0_SX216_{i:03d}"].label for i in (1, 2)] == ["sh", "uw"]
    assert dt.load_audio(by_id["FELC0_SX216_001"]).shape == (8000,)
    # the paper's protocol: one example per utterance, the folded phones present in it, sil (h#, q, closures) dropped
    presence = dt.timit_phonemes(root)
    assert presence.name == "timit_phoneme" and presence.kind == "multilabel"
    assert len(presence.classes) == 38 and "sil" not in presence.classes
    assert {(e.id, e.split, e.label, e.source, e.span) for e in presence.examples} == {
        ("FCJF0_SI1027", "train", "ah ih n p", "FCJF0_SI1027", None),  # h# q ix n pcl p ax-h h#
        ("FELC0_SX216", "test", "sh uw", "FELC0_SX216", None),  # h# zh ux h#
        ("MABC0_SI1620", "validation", "l m", "MABC0_SI1620", None)}  # h# el em h#
    multi_hot = dt.encode_multilabel([e.label for e in presence.examples], presence.classes)
    assert multi_hot.shape == (3, 38) and multi_hot.sum() == 8
    with_sa = {e.id: e.label for e in dt.timit_phonemes(root, include_sa=True).examples}
    assert with_sa["FCJF0_SA1"] == "iy sh"
    with pytest.raises(ValueError, match="protocol='frames'"):
        dt.timit_phonemes(root, protocol="frames")
    soundfile.write(tmp_path / "odd.wav", np.zeros(1001, np.float32), 32000)  # 500.5 samples at 16 kHz
    odd = Example("odd", "test", "x", str(tmp_path / "odd.wav"))
    assert dt.audio_length(odd) == len(dt.load_audio(odd)) == 501  # soxr rounds half up
    sentence = dt.timit_sentence_type(root)
    assert min((e.id, e.label) for e in sentence.examples) == ("FCJF0_SA1", "SA")
    asr = dt.timit_asr(root)  # the split of the other TIMIT tasks, SA left out
    assert {(e.id, e.split, e.label) for e in asr.examples} == {
        ("FCJF0_SI1027", "train", "A short sentence."), ("FELC0_SX216", "test", "A short sentence."),
        ("MABC0_SI1620", "validation", "A short sentence.")}


def test_speech_commands_crema_slurp_and_librispeech_loaders(tmp_path):
    commands = tmp_path / "speech_commands"
    for word in ("yes", "no"):
        for speaker in ("aaa", "bbb", "ccc"):
            _wav(commands / word / f"{speaker}_nohash_0.wav")
    (commands / "validation_list.txt").write_text("yes/bbb_nohash_0.wav\nno/bbb_nohash_0.wav\n")
    (commands / "testing_list.txt").write_text("yes/ccc_nohash_0.wav\n")
    task = dt.speech_commands(commands)
    assert len(task.classes) == 35 and len(task.examples) == 6
    assert {e.id: e.split for e in task.examples}["yes/ccc_nohash_0.wav"] == "test"
    assert {e.split for e in task.examples if e.speaker == "aaa"} == {"train"}

    crema = tmp_path / "crema" / "AudioWAV"
    for actor in range(1001, 1021):
        _wav(crema / f"{actor}_DFA_{'ANG' if actor % 2 else 'SAD'}_XX.wav", seconds=0.1)
    task = dt.crema_d(crema.parent)
    assert task.classes == ("anger", "disgust", "fear", "happy", "neutral", "sad")
    assert task.counts().sum().to_dict() == {"train": 16, "validation": 2, "test": 2}
    _wav(crema / "bad_name.wav", seconds=0.1)
    with pytest.raises(dt.DataError, match="bad_name"):
        dt.crema_d(crema.parent)

    slurp = tmp_path / "slurp"
    for split, name in (("train", "train.jsonl"), ("validation", "devel.jsonl"), ("test", "test.jsonl")):
        record = {"slurp_id": 1, "sentence": "wake me up", "intent": "alarm_set", "action": "set",
                  "recordings": [{"file": f"{split}-1.flac"}, {"file": f"{split}-2.flac"}]}
        (slurp / "dataset" / "slurp").mkdir(parents=True, exist_ok=True)
        (slurp / "dataset" / "slurp" / name).write_text(json.dumps(record) + "\n")
        for index in (1, 2):
            _wav(slurp / "slurp_real" / f"{split}-{index}.flac", seconds=0.1)
    intent, action = dt.slurp(slurp, "intent"), dt.slurp(slurp, "action")
    assert intent.classes == ("alarm_set",) and action.classes == ("set",) and len(intent.examples) == 6
    with pytest.raises(ValueError, match="target='scenario'"):
        dt.slurp(slurp, "scenario")

    root = tmp_path / "LibriSpeech"
    for subset, speaker in (("train-clean-100", "19"), ("dev-clean", "84"), ("test-clean", "61")):
        chapter = root / subset / speaker / "70968"
        _wav(chapter / f"{speaker}-70968-0000.flac")
        _wav(chapter / f"{speaker}-70968-0001.flac", seconds=31)
        (chapter / f"{speaker}-70968.trans.txt").write_text(
            f"{speaker}-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n{speaker}-70968-0001 TOO LONG\n")
    task = dt.librispeech(root)  # one subset per split; utterances over 30 s left out
    assert task.kind == "asr" and {(e.id, e.split, e.speaker) for e in task.examples} == {
        ("19-70968-0000", "train", "19"), ("84-70968-0000", "validation", "84"), ("61-70968-0000", "test", "61")}
    assert {e.label for e in task.examples} == {"HE BEGAN A CONFUSED COMPLAINT"}
    with pytest.raises(FileNotFoundError, match="LibriSpeech train-clean-360 \\(the train split\\)"):
        dt.librispeech(root, train="train-clean-360")


# ---------------------------------------------------------------------------
# Notebook
# ---------------------------------------------------------------------------


@pytest.mark.notebook
def test_04_downstream_notebook(tmp_path, word_features, feature_cache, monkeypatch):
    out = tmp_path / "04"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: see one_thread
    execute_notebook("04_downstream", out, {
        "tasks": ["demo_word", "demo_asr"], "demo_per_class": {"demo_word": WORD_PER_CLASS, "demo_asr": 16},
        "seeds": [0], "max_epochs": 10, "ctc_options": {"max_epochs": 2}, "native_length": True, "device": "cpu",
        "cache_dir": str(feature_cache)})
    table = pd.read_parquet(out / "downstream.parquet")
    assert set(table) == {"model", "variant", "subject", "task", "layer", "metric", "value", "seed", "ci_low",
                          "ci_high", "n_test"}
    assert set(table.task) == {"demo_word", "demo_asr"} and set(table.variant) == {"pretrained"}
    assert set(table[table.task == "demo_asr"].metric) == {"one_minus_wer", "one_minus_wer_whisper_decoder"}
    assert set(pd.read_parquet(out / "probe_selection.parquet").task) == {"demo_word", "demo_asr"}
    word = table[(table.task == "demo_word") & (table.metric == "accuracy")].value.iloc[0]
    assert word > 0.5
    assert (out / "downstream.png").stat().st_size > 10_000
    assert json.loads((out / "run.json").read_text())["parameters"]["tasks"] == ["demo_word", "demo_asr"]
