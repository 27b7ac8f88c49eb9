"""Tests of the ASR measure: CTC heads on frozen encoders (bt_utils.downstream.asr)."""

import numpy as np
import pandas as pd
import pytest
import torch

from bt_utils.demo.tasks import demo_task
from bt_utils.downstream.asr import (
    CharacterVocabulary,
    CtcConfig,
    FrameSet,
    ctc_task,
    ctc_text,
    fit_ctc_heads,
    load_whisper_transcriber,
    swap_encoder,
)
from bt_utils.downstream.features import encode_frames
from bt_utils.downstream.metrics import corpus_word_error_rate
from bt_utils.downstream.probes import run_downstream, summarize
from bt_utils.models.registry import load_encoder
from bt_utils.viz.plots import plot_downstream, plot_layer_selection

WORDS = ("cat", "dog", "bird", "fish", "tree", "road", "sun", "hat")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ctc_text_and_vocabulary():
    assert ctc_text("  It’s Café-time, 5 O'Clock!? ") == "it's cafe time o'clock"
    vocabulary = CharacterVocabulary.from_texts(["A cab.", "bad"])
    assert vocabulary.characters == (" ", "a", "b", "c", "d") and len(vocabulary) == 6  # and the blank
    assert vocabulary.encode("Dab, cab!") == [5, 2, 3, 1, 4, 2, 3]
    assert vocabulary.encode("axe") == [2]  # characters not seen in training are left out
    # greedy CTC: repeats merge unless a blank separates them; blanks and extra spaces go
    assert vocabulary.decode([0, 3, 3, 0, 2, 2, 4, 0, 1, 1, 0, 4, 0, 4, 0]) == "bac cc"
    assert vocabulary.decode([1, 0, 2, 1, 1]) == "a"


def _planted_frames(texts, rng, informative_layer, codes, noise=0.3):
    """Frames (2, n_frames, D): one layer spells each character in two frames of its code vector (then a
    frame of the blank's code), the other is noise."""
    frames = []
    for text in texts:
        spelled = [row for c in ctc_text(text) for row in (codes[c], codes[c], codes["blank"])]
        signal = np.array(spelled) + noise * rng.standard_normal((len(spelled), codes["blank"].size))
        layers = [rng.standard_normal(signal.shape), rng.standard_normal(signal.shape)]
        if informative_layer is not None:
            layers[informative_layer] = signal
        frames.append(torch.tensor(np.stack(layers), dtype=torch.float16))
    return frames


@pytest.mark.parametrize("informative_layer", [1, None])
def test_ctc_heads_decode_planted_characters_but_not_noise(informative_layer):
    rng = np.random.default_rng(0)
    characters = sorted(set("".join(WORDS))) + [" ", "blank"]
    codes = {c: rng.standard_normal(24) for c in characters}
    texts = {split: [" ".join(rng.choice(WORDS, size=rng.integers(2, 5))) for _ in range(n)]
             for split, n in (("train", 64), ("validation", 16), ("test", 16))}
    frames = {split: FrameSet(kept=_planted_frames(t, rng, informative_layer, codes)) for split, t in texts.items()}
    fit = fit_ctc_heads(frames["train"], texts["train"], frames["validation"], texts["validation"], seed=0,
                        config=CtcConfig(max_epochs=15, learning_rate=1e-2))
    wer = corpus_word_error_rate(texts["test"], fit.transcribe(frames["test"].get(range(16))))
    if informative_layer is None:
        assert wer > 0.9
    else:
        assert fit.layer == informative_layer and wer < 0.05
        assert fit.layers.set_index("layer").wer[0] > 0.9  # the noise layer's head spells nothing
    history = fit.history[fit.history.layer == fit.layer]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]  # the head trains, even on noise
    assert list(fit.layers.columns) == ["layer", "epoch", "wer", "loss"] and len(fit.history) == 2 * 15


def test_frames_are_kept_or_computed_again_alike():
    encoder = load_encoder("tiny-wav2vec2", device="cpu")
    examples = demo_task("demo_asr", per_class=8).examples[:4]
    kept = FrameSet.encode(encoder, examples, batch_size=4)
    again = FrameSet.encode(encoder, examples, batch_size=4, memory_gb=1e-9)
    assert kept.kept is not None and again.kept is None and len(kept) == len(again) == 4
    for a, b in zip(kept.get([2, 0]), again.get([2, 0])):
        torch.testing.assert_close(a, b)
    # a clip's frames: the encoder's hidden states at its valid frames, whatever else is in the batch
    audio = torch.from_numpy(examples[1].audio)[None]
    with torch.inference_mode():
        output = encoder(audio, torch.tensor([audio.shape[1]]))
    alone = torch.stack(output.hidden_states)[:, 0, : int(output.frame_mask.sum())]
    torch.testing.assert_close(kept.get([1])[0].float(), alone, atol=2e-2, rtol=1e-2)  # float16
    assert encode_frames(encoder, examples[1:2])[0].shape == alone.shape
    with pytest.raises(ValueError, match="give the frames"):
        FrameSet()


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-hubert", "tiny-whisper"])
def test_asr_runs_end_to_end_for_every_family(name, tmp_path):
    """The CTC heads train on the frozen tiny random encoder of each family, WER is computed and the rows written."""
    task = demo_task("demo_asr", per_class=16)  # 12 train, 2 validation, 2 test utterances
    results = run_downstream([name], [task], seeds=(0, 1), ctc=CtcConfig(max_epochs=2), device="cpu",
                             native_length=True, whisper_decoder=False, n_resamples=50, progress=False)
    encoder = load_encoder(name, device="cpu")
    test = task.split("test")
    predictions = results.predictions
    assert set(predictions.kind) == {"asr"} and len(predictions) == 2 * len(test)
    assert set(predictions.label) == {e.label for e in test}
    assert predictions.layer.between(0, encoder.n_layers).all()
    scores = results.scores
    assert set(scores.metric) == {"one_minus_wer"} and list(scores.seed) == [0, 1]
    for seed, group in predictions.groupby("seed"):
        expected = 1 - corpus_word_error_rate(group.label.tolist(), group.prediction.tolist())
        assert scores.set_index("seed").value[seed] == pytest.approx(expected)
    selection = results.selection
    assert len(selection) == 2 * (encoder.n_layers + 1) and selection.wer.notna().all()
    assert selection.macro_f1.isna().all() and selection.groupby("seed").chosen.sum().tolist() == [1, 1]
    written = results.write(tmp_path)
    assert [p.name for p in written] == ["downstream.parquet", "downstream_predictions.parquet",
                                         "probe_selection.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "downstream.parquet"), scores)
    assert len(plot_layer_selection(selection).axes) == 1
    # the heads learn: every layer's training loss falls
    frames = {split: FrameSet.encode(encoder, task.split(split)) for split in ("train", "validation")}
    fit = fit_ctc_heads(frames["train"], [e.label for e in task.split("train")], frames["validation"],
                        [e.label for e in task.split("validation")], config=CtcConfig(max_epochs=5))
    losses = fit.history.pivot(index="epoch", columns="layer", values="train_loss")
    assert (losses.loc[5] < losses.loc[1]).all()


def test_demo_asr_has_three_splits_with_disjoint_speakers():
    task = demo_task("demo_asr", per_class=16)
    assert task.kind == "asr" and [len(task.split(s)) for s in ("train", "validation", "test")] == [12, 2, 2]
    speakers = {split: {e.speaker for e in task.split(split)} for split in ("train", "validation", "test")}
    assert not (speakers["train"] & speakers["validation"] or speakers["train"] & speakers["test"]
                or speakers["validation"] & speakers["test"])
    assert all(e.label.endswith((".", "?")) and len(e.label.split()) >= 3 for e in task.examples)  # sentences
    assert [len(demo_task("demo_asr").split(s)) for s in ("train", "validation", "test")] == [96, 16, 16]
    with pytest.raises(ValueError, match="at least 8 utterances"):
        demo_task("demo_asr", per_class=7)


def test_ctc_task_needs_every_split():
    encoder = load_encoder("tiny-hubert", device="cpu")
    task = demo_task("demo_asr", per_class=8)
    no_train = type(task)(task.name, "asr", tuple(e for e in task.examples if e.split != "train"))
    with pytest.raises(ValueError, match="no train utterances"):
        ctc_task(encoder, no_train, progress=False)
    with pytest.raises(ValueError, match="CTC heads are for ASR tasks"):
        ctc_task(encoder, demo_task("demo_word", per_class=4), progress=False)


def test_whisper_decoder_rows_stay_apart_from_the_ctc_rows():
    """whisper-tiny.en is scored by CTC heads (one_minus_wer) and, separately, by its own decoder."""
    task = demo_task("demo_asr", per_class=16)  # 12 train, 2 validation, 2 test utterances
    results = run_downstream(["whisper-tiny.en"], [task], seeds=(0, 1), ctc=CtcConfig(max_epochs=2), device="cpu",
                             native_length=True, n_resamples=50, progress=False)
    predictions = results.predictions
    assert predictions.groupby("kind").size().to_dict() == {"asr": 4, "asr_whisper_decoder": 2}
    decoded = predictions[predictions.kind == "asr_whisper_decoder"]
    assert set(decoded.layer) == {4} and set(decoded.seed) == {0} and decoded.prediction.str.len().min() > 0
    scores = results.scores
    assert scores.groupby("metric").size().to_dict() == {"one_minus_wer": 2, "one_minus_wer_whisper_decoder": 1}
    expected = 1 - corpus_word_error_rate(decoded.label.tolist(), decoded.prediction.tolist())
    assert scores.set_index("metric").value["one_minus_wer_whisper_decoder"] == pytest.approx(expected)
    summary = summarize(predictions, n_resamples=50)
    assert set(summary.metric) == {"one_minus_wer", "one_minus_wer_whisper_decoder"}
    assert summary.set_index("metric").n_seeds.to_dict() == {"one_minus_wer": 2, "one_minus_wer_whisper_decoder": 1}
    assert len(plot_downstream(summary).axes) == 1  # the bars show the CTC heads


def test_whisper_decoder_needs_a_pretrained_whisper():
    from bt_utils.demo.offline_whisper import load_offline_whisper

    model, _ = load_offline_whisper()
    with pytest.raises(ValueError, match="does not fit"):
        swap_encoder(model.model.encoder, load_encoder("tiny-whisper", device="cpu"))
    with pytest.raises(ValueError, match="random test model.*whisper_decoder=False"):
        load_whisper_transcriber(load_encoder("tiny-whisper", device="cpu"), "tiny-whisper")
    with pytest.raises(ValueError, match="only Whisper has a decoder"):
        load_whisper_transcriber(load_encoder("tiny-hubert", device="cpu"), "tiny-hubert")
