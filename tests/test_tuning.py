"""Brain-tuning on the demo data with the tiny offline models."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bt_utils.models import tuning
from bt_utils.viz import plots
from bt_utils.encoding.ridge import correlation_score
from bt_utils.data.stimulus import WindowSpec
from bt_utils.models.registry import load_encoder
from bt_utils.models.text_embeddings import embed_texts, window_texts
from bt_utils.models.tuning import (
    BrainTuningModel, TuningConfig, block_shuffle, build_tuning_sets, compute_loss, encoder_lr_factor,
    head_lr_factor, load_brain_tuned, load_head, masked_mean, story_derangement, target_names, tune,
)
from bt_utils.models.resume_state import load_resume_state, restore_rng_states, rng_states, save_resume_state
from bt_utils.validation import DataError
from conftest import QUICK_TUNING


def test_schedules_follow_the_protocol():
    # encoder: linear warm-up over 5 epochs then linear decay; here 2 steps per epoch, 30 epochs
    factors = [encoder_lr_factor(step, warmup_steps=10, total_steps=60) for step in range(60)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[59] == pytest.approx(1 / 50)
    assert np.all(np.diff(factors[10:]) < 0)
    assert [head_lr_factor(e, 0.8, 0.1) for e in (0, 1, 2, 20)] == pytest.approx([1.0, 0.8, 0.64, 0.1])


def test_losses_match_their_definitions():
    rng = np.random.default_rng(0)
    p, t = torch.tensor(rng.standard_normal((4, 30))), torch.tensor(rng.standard_normal((4, 30)))
    assert float(compute_loss("mse", p, t)) == pytest.approx(float(((p - t) ** 2).mean()), rel=1e-6)
    r = [np.corrcoef(p[i], t[i])[0, 1] for i in range(4)]
    assert float(compute_loss("pearson", p, t)) == pytest.approx(1 - np.mean(r), rel=1e-5)
    assert float(compute_loss("pearson", 3 * t + 1, t)) == pytest.approx(0.0, abs=1e-6)
    cosine = np.mean([float(p[i] @ t[i] / (p[i].norm() * t[i].norm())) for i in range(4)])
    huber = float(torch.nn.functional.huber_loss(p, t))
    assert float(compute_loss("huber_cosine", p, t)) == pytest.approx(huber + 1 - cosine, rel=1e-5)
    with pytest.raises(ValueError, match="'l1' is not valid"):
        compute_loss("l1", p, t)


def test_masked_mean_ignores_padded_frames():
    hidden = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = hidden.clone()
    changed[0, 3:] = 1e6
    torch.testing.assert_close(masked_mean(hidden, mask), masked_mean(changed, mask))
    torch.testing.assert_close(masked_mean(hidden, mask)[0], hidden[0, :3].mean(0))


def test_whisper_pooling_uses_only_the_real_ten_seconds():
    """Padded to 30 s, a 10-s input has 500 valid frames of 1500; what the encoder puts in the
    padded frames does not reach the pooled features."""
    encoder = load_encoder("tiny-whisper", device="cpu")
    model = BrainTuningModel(encoder, 5).eval()
    audio = torch.randn(2, 160_000) * 0.1
    output = encoder(audio)
    assert output.hidden_states[-1].shape[1] == 1500
    assert output.frame_mask.sum(dim=1).tolist() == [500, 500]
    poisoned = list(output.hidden_states)
    poisoned[-1] = torch.where(output.frame_mask[..., None], poisoned[-1], torch.full_like(poisoned[-1], 1e3))
    torch.testing.assert_close(masked_mean(poisoned[-1], output.frame_mask),
                               masked_mean(output.hidden_states[-1], output.frame_mask))
    with torch.no_grad():
        torch.testing.assert_close(model(audio), model.head(masked_mean(output.hidden_states[-1], output.frame_mask)))


@pytest.mark.parametrize("name", ["tiny-hubert", "tiny-wav2vec2"])
def test_head_pools_the_models_last_hidden_state(name):
    """The head pools Hugging Face's ``last_hidden_state`` (after the final layer norm of layer-norm
    models such as tiny-hubert, unlike ``hidden_states[-1]``), averaged over the valid frames only."""
    encoder = load_encoder(name, device="cpu")
    model = BrainTuningModel(encoder, 3).eval()
    audio, lengths = torch.randn(2, 32_000) * 0.1, torch.tensor([32_000, 32_000])  # tuning windows: all one length
    pooled = []
    model.head.register_forward_pre_hook(lambda module, args: pooled.append(args[0]))
    with torch.no_grad():
        model(audio)
        hf = encoder.encoder(**encoder.preprocess(audio, lengths))
    expected = hf.last_hidden_state.mean(dim=1)
    torch.testing.assert_close(pooled[0], expected, rtol=1e-5, atol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss='l2'"):
        TuningConfig(loss="l2")
    with pytest.raises(ValueError, match="control='shuffle'.*story_swap"):
        TuningConfig(control="shuffle")
    with pytest.raises(ValueError, match="batch_size=10 must be a multiple of grad_accumulation=3"):
        TuningConfig(batch_size=10, grad_accumulation=3)
    with pytest.raises(ValueError, match="epochs=0 is not valid: give a whole number of at least 1"):
        TuningConfig(epochs=0)


@pytest.mark.parametrize("field, value, allowed", [
    ("epochs", "3", "a whole number of at least 1"),
    ("epochs", 1.5, "a whole number of at least 1"),
    ("epochs", True, "a whole number of at least 1"),
    ("batch_size", 8.0, "a whole number of at least 1"),
    ("seed", None, "a whole number of at least 0"),
    ("seed", -1, "a whole number of at least 0"),
    ("encoder_lr", "1e-4", "a number"),
])
def test_config_rejects_values_of_the_wrong_type(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^{field}={value!r} is not valid: give {allowed}$"):
        TuningConfig(**{field: value})


@pytest.mark.parametrize("field, value, allowed", [
    ("max_train_trs", 0, "number of TRs of at least 1, or None"),
    ("max_train_trs", -5, "number of TRs of at least 1, or None"),
    ("max_train_trs", 2.5, "number of TRs of at least 1, or None"),
    ("max_validation_trs", 0, "number of TRs of at least 1, or None"),
    ("encoder_lr", 0.0, r"\(0, inf\)"),
    ("encoder_lr", -1e-5, r"\(0, inf\)"),
    ("head_lr", float("nan"), r"\(0, inf\)"),
    ("lora_lr", float("inf"), r"\(0, inf\)"),
    ("head_lr_decay", 0.0, r"\(0, 1\]"),
    ("head_lr_decay", 1.5, r"\(0, 1\]"),
    ("head_lr_floor", -0.1, r"\[0, 1\]"),
    ("head_lr_floor", 2.0, r"\[0, 1\]"),
    ("warmup_epochs", -1.0, r"\[0, inf\)"),
    ("lora_warmup_fraction", 1.5, r"\[0, 1\]"),
    ("lora_warmup_fraction", -0.1, r"\[0, 1\]"),
    ("lora_dropout", 1.0, r"\[0, 1\)"),
])
def test_config_rejects_bad_sizes_and_rates(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^{field}={value!r} is not valid: .*{allowed}"):
        TuningConfig(**{field: value})


def test_config_accepts_the_edges_of_the_ranges():
    TuningConfig(max_train_trs=1, max_validation_trs=1, head_lr_decay=1.0, head_lr_floor=0.0, warmup_epochs=0.0,
                 lora_warmup_fraction=0.0, lora_dropout=0.0)


def test_training_sets_pair_windows_with_trimmed_responses(demo):
    config = TuningConfig(**QUICK_TUNING)
    train, validation, selection = build_tuning_sets(demo, "DEMO01", config)
    assert len(train) == 24 and len(validation) == 8
    window, target = train[0]
    assert window.shape == (160_000,) and target.shape == (len(selection["voxels"]),)
    story, tr = train.items[0]
    row = tr - 10  # response rows start at TR 10
    np.testing.assert_array_equal(target.numpy(), demo.load_responses("DEMO01", story)[row, selection["voxels"]])
    assert set(s for s, _ in validation.items) <= set(selection["validation_stories"])
    assert all(c > 0.4 for c in selection["cc_max"])
    with pytest.raises(DataError, match="no voxel has cc_max > 0.999"):
        build_tuning_sets(demo, "DEMO01", TuningConfig(**QUICK_TUNING | {"cc_max_threshold": 0.999}))


def test_controls_change_the_targets(demo):
    full = dict(QUICK_TUNING, max_train_trs=None, max_validation_trs=None)
    real, _, selection = build_tuning_sets(demo, "DEMO01", TuningConfig(**full))
    swapped, _, swap = build_tuning_sets(demo, "DEMO01", TuningConfig(**full, control="story_swap"))
    shuffled, _, _ = build_tuning_sets(demo, "DEMO01", TuningConfig(**full, control="block_shuffle"))
    text, _, text_selection = build_tuning_sets(demo, "DEMO01", TuningConfig(**full, control="text_embedding"))
    pairing = swap["story_swap"]
    assert all(story != partner for story, partner in pairing.items())
    # swapped targets are the responses to the partner story, truncated to the shorter story
    story = selection["train_stories"][0]
    rows = [i for i, (s, _) in enumerate(swapped.items) if s == story]
    partner = demo.load_responses("DEMO01", pairing[story])[:, selection["voxels"]]
    np.testing.assert_array_equal(swapped.targets[rows].numpy(), partner[:len(rows)])
    # block shuffle keeps the rows of each story but not their order
    assert not torch.equal(shuffled.targets, real.targets)
    assert torch.equal(shuffled.targets.sort(dim=0).values, real.targets.sort(dim=0).values)
    assert text.targets.shape[1] == 384
    # the text-embedding targets are embedding dimensions, not the selected voxels
    assert selection["target_kind"] == "voxels" and selection["n_targets"] == len(selection["voxels"])
    assert text_selection["target_kind"] == "text_embedding" and text_selection["n_targets"] == 384
    assert text_selection["voxels"] is None and text_selection["cc_max"] is None
    assert target_names(text_selection) == [f"embedding dimension {i}" for i in range(384)]
    assert target_names(selection) == [f"voxel {v}" for v in selection["voxels"]]
    real_row = {item: i for i, item in enumerate(real.items)}
    for control in (swapped, shuffled):
        aligned = real.targets[[real_row[item] for item in control.items]].numpy()
        assert np.median(correlation_score(control.targets.numpy(), aligned)) < 0.3
    # quick runs keep the same random TRs whatever the control draws
    quick = {c: build_tuning_sets(demo, "DEMO01", TuningConfig(**QUICK_TUNING, control=c))[0]
             for c in ("none", "block_shuffle", "text_embedding")}
    assert quick["none"].items == quick["block_shuffle"].items == quick["text_embedding"].items


def test_block_shuffle_moves_whole_blocks():
    responses = np.arange(70)[:, None].repeat(2, axis=1)
    blocks = [np.arange(start, min(start + 15, 70)) for start in range(0, 70, 15)]
    seen = set()
    for seed in range(10):
        shuffled = block_shuffle(responses, 15, np.random.default_rng(seed))
        orders = [order for order in itertools.permutations(range(5))
                  if np.array_equal(shuffled, responses[np.concatenate([blocks[i] for i in order])])]
        assert len(orders) == 1  # whole blocks
        seen.add(orders[0])
    assert len(seen) >= 3  # in random orders
    with pytest.raises(DataError, match=r"at least two stories, got \['a'\]"):
        story_derangement(["a"], np.random.default_rng(0))


@pytest.mark.parametrize("n_trs", [30, 40, 45, 50, 65, 100, 353])
def test_block_shuffle_moves_every_tr_out_of_its_block(n_trs):
    """No block stays in place, and no TR gets a response of its own 15-TR block, even when the shorter
    last block moves forward and shifts the blocks after it."""
    responses = np.arange(n_trs)[:, None] * np.ones(3)
    own_block = np.arange(n_trs) // 15
    for seed in range(200):
        source = block_shuffle(responses, 15, np.random.default_rng(seed))[:, 0].astype(int)
        np.testing.assert_array_equal(np.sort(source), np.arange(n_trs))  # the same rows, as many
        assert np.all(source // 15 != own_block), f"seed {seed}: a TR kept a response of its own block"


@pytest.mark.parametrize("n_trs", [1, 10, 15, 20, 29])
def test_block_shuffle_refuses_stories_it_cannot_shuffle(n_trs):
    """One block, or two of unequal lengths: every order leaves some TRs in their own block."""
    expected = rf"a story of {n_trs} TRs cannot be block-shuffled in blocks of block_size=15"
    with pytest.raises(ValueError, match=expected):
        block_shuffle(np.zeros((n_trs, 2)), 15, np.random.default_rng(0))


def test_block_shuffle_control_names_a_story_too_short(demo):
    config = TuningConfig(**QUICK_TUNING, control="block_shuffle", block_size=1000)
    with pytest.raises(DataError, match=r"story '\w+': a story of \d+ TRs cannot be block-shuffled.*block_size=1000"):
        build_tuning_sets(demo, "DEMO01", config)


def test_loss_falls_and_checkpoint_round_trips(demo, tmp_path):
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING | {"mixed_precision": "off"})  # evaluated in float32 below
    result = tune(demo, "DEMO01", config, tmp_path / "run", progress=False)
    train = result.history[result.history.split == "train"].loss.to_numpy()
    validation = result.history[result.history.split == "validation"]
    assert np.all(np.diff(train) < 0) and train[-1] < train[0] - 0.05
    # the steps of each epoch: one per batch, their losses averaging (by batch size) to the epoch's
    steps = result.steps
    assert len(steps) == config.epochs * -(-result.record["n_train"] // config.batch_size)
    by_epoch = steps.assign(weighted=steps.loss * steps.n_items).groupby("epoch")
    np.testing.assert_allclose(by_epoch.weighted.sum() / by_epoch.n_items.sum(), train, rtol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "training_steps.parquet"), steps)
    figure = plots.plot_training_curves(result.history, result.best_epoch, steps=steps)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    np.testing.assert_allclose(lines["train"].get_xdata(), np.arange(1, config.epochs + 1))  # epochs trained
    assert lines["train, per step"].get_xdata()[-1] == config.epochs
    assert result.best_epoch == int(validation.loc[validation.loss.idxmin(), "epoch"])
    record = json.loads((result.checkpoint_dir / "training_record.json").read_text())
    assert record["best_epoch"] == result.best_epoch and record["parameters"]["model"] == "tiny-wav2vec2"
    assert len(record["selection"]["voxels"]) > 100
    head, voxels = load_head(result.checkpoint_dir)
    assert voxels == record["selection"]["voxels"] and head.out_features == len(voxels)
    # the checkpoint reloads through the registry and reproduces the kept model's validation loss
    reloaded = load_brain_tuned(result.checkpoint_dir, device="cpu")
    _, validation_set, _ = build_tuning_sets(demo, "DEMO01", config)
    loss, predictions = tuning.evaluate(reloaded, validation_set, "mse", 8, torch.device("cpu"))
    assert loss == pytest.approx(record["best_validation_loss"], rel=1e-5)
    # the kept epoch's validation predictions come with the checkpoint
    assert result.validation_predictions.shape == (len(validation_set), len(voxels))
    np.testing.assert_allclose(result.validation_predictions, predictions, rtol=1e-4, atol=1e-5)
    (result.checkpoint_dir / tuning.VALIDATION_PREDICTIONS).unlink()  # as in a checkpoint of an earlier version
    with pytest.raises(FileNotFoundError, match="validation_predictions.npy is missing.*tune into a new out_dir"):
        tune(demo, "DEMO01", config, tmp_path / "run", progress=False)  # resumes the finished run


def _raw_embeddings(demo, items) -> np.ndarray:
    """Embeddings of the words heard in each (story, TR) input window, computed afresh, shape (n_items, 384)."""
    texts = [window_texts(demo.transcript(story), demo.tr_times(story), np.array([tr]), WindowSpec())[0]
             for story, tr in items]
    return embed_texts(texts)


def test_text_embedding_targets_are_zscored_with_training_statistics(demo):
    config = TuningConfig(**QUICK_TUNING, control="text_embedding")
    train, validation, selection = build_tuning_sets(demo, "DEMO01", config)
    raw_train, raw_validation = _raw_embeddings(demo, train.items), _raw_embeddings(demo, validation.items)
    mean, std = raw_train.mean(axis=0), raw_train.std(axis=0)
    assert np.median(std) < 0.1  # unit-norm embeddings: a small spread per dimension
    constant = std < 1e-6 * std.max()  # MiniLM's dimensions that are always ~0 (1e-33, 1e-9): only centred
    assert constant.sum() == 3 and np.sort(std)[3] > 0.1 * std.max()
    std[constant] = 1.0
    np.testing.assert_allclose(train.targets.numpy(), (raw_train - mean) / std, atol=1e-3)
    np.testing.assert_allclose(validation.targets.numpy(), (raw_validation - mean) / std, atol=1e-3)
    np.testing.assert_allclose(train.targets.mean(dim=0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(train.targets.std(dim=0, unbiased=False).numpy(), np.where(constant, 0, 1), atol=1e-4)
    assert np.abs(validation.targets.mean(dim=0).numpy()).max() > 0.1  # not z-scored with its own statistics
    np.testing.assert_allclose(selection["target_scaling"]["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(selection["target_scaling"]["std"], std, rtol=1e-4)
    assert "target_scaling" not in build_tuning_sets(demo, "DEMO01", TuningConfig(**QUICK_TUNING))[2]


def _target_driven_gradient(control: str, demo) -> float:
    """Norm of the encoder gradient that the targets drive at the first step: MSE's cross term
    ``-2 mean(prediction * target)`` (the rest of the loss does not depend on the targets), tiny-wav2vec2, 8 TRs."""
    config = TuningConfig(model="tiny-wav2vec2", control=control, **QUICK_TUNING)
    train, _, _ = build_tuning_sets(demo, "DEMO01", config)
    encoder = load_encoder(config.model, device="cpu", seed=config.seed)
    encoder.freeze_feature_encoder()  # as brain-tuning does
    torch.manual_seed(0)
    model = BrainTuningModel(encoder, train.targets.shape[1]).eval()
    audio, target = (torch.stack(x) for x in zip(*(train[i] for i in range(8))))
    (-2 * (model(audio) * target).mean()).backward()
    return float(torch.sqrt(sum((p.grad**2).sum() for p in encoder.parameters() if p.grad is not None)))


def test_text_embedding_control_drives_the_encoder_as_hard_as_brain_tuning(demo):
    """Raw unit-norm embeddings drove the encoder about 7x less than the voxels under the same loss;
    z-scored, they drive it about as hard."""
    ratio = _target_driven_gradient("none", demo) / _target_driven_gradient("text_embedding", demo)
    assert 1 / 3 < ratio < 3


def test_text_embedding_checkpoint_records_embedding_dimensions(demo, tmp_path):
    """The LM-tuned control predicts embedding dimensions: its checkpoint and record say so (no voxel
    list), and it reloads like any other checkpoint."""
    config = TuningConfig(model="tiny-hubert", control="text_embedding", **QUICK_TUNING | {"epochs": 1})
    result = tune(demo, "DEMO01", config, tmp_path, progress=False)
    record = json.loads((result.checkpoint_dir / "training_record.json").read_text())
    assert record["selection"]["target_kind"] == "text_embedding" and record["selection"]["n_targets"] == 384
    assert record["selection"]["voxels"] is None
    saved = torch.load(result.checkpoint_dir / "head.pt", weights_only=True)
    assert saved["target_kind"] == "text_embedding" and saved["voxels"] is None and saved["n_targets"] == 384
    scaling = record["selection"]["target_scaling"]
    assert saved["target_scaling"] == scaling and len(scaling["mean"]) == len(scaling["std"]) == 384
    head, voxels = load_head(result.checkpoint_dir)
    assert voxels is None and head.out_features == 384
    reloaded = load_brain_tuned(result.checkpoint_dir, device="cpu")
    assert reloaded(torch.zeros(1, 160_000)).shape == (1, 384)


def test_validation_runs_in_eval_mode(demo, tmp_path, monkeypatch):
    modes = []
    original = BrainTuningModel.forward

    def spy(self, inputs):
        modes.append((self.training, torch.is_grad_enabled()))
        return original(self, inputs)

    monkeypatch.setattr(BrainTuningModel, "forward", spy)
    tune(demo, "DEMO01", TuningConfig(model="tiny-hubert", **QUICK_TUNING | {"epochs": 1}), tmp_path, progress=False)
    n_train_batches = 3
    assert modes[:n_train_batches] == [(True, True)] * n_train_batches
    assert modes[n_train_batches:] == [(False, False)]


def test_resume_equals_an_uninterrupted_run(demo, tmp_path):
    """Dropout, SpecAugment (numpy's generator) and LayerDrop draw random numbers: resuming restores
    their states, the optimiser, the schedules and the data order, so the result is bitwise equal."""
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING | {"spec_augment": True, "layerdrop": True})
    straight = tune(demo, "DEMO01", config, tmp_path / "straight", progress=False)
    interrupted = tune(demo, "DEMO01", config, tmp_path / "resumed", progress=False, stop_after_epochs=1)
    assert interrupted.stop_reason == "interrupted after epoch 0" and len(interrupted.history) == 2
    resumed = tune(demo, "DEMO01", config, tmp_path / "resumed", progress=False)
    assert resumed.history[["epoch", "split"]].equals(straight.history[["epoch", "split"]])
    np.testing.assert_allclose(resumed.history.loss, straight.history.loss, rtol=0)
    a = torch.load(tmp_path / "straight" / "checkpoint" / "head.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoint" / "head.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="other parameters.*'loss'"):
        resumed_with_other_loss = QUICK_TUNING | {"spec_augment": True, "layerdrop": True, "loss": "pearson"}
        tune(demo, "DEMO01", TuningConfig(model="tiny-wav2vec2", **resumed_with_other_loss), tmp_path / "straight")


class _RunsCode:
    """Pickles as a call of ``os.mkdir(marker)``: what a hostile resume file could run when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_resume_state_that_would_run_code_is_refused(demo, tmp_path):
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING)
    state_path = tmp_path / "run" / "resume_state.pt"
    state_path.parent.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"parameters": _RunsCode(marker), "history": []}, state_path)
    crafted = state_path.read_bytes()
    with pytest.raises(DataError, match=rf"{state_path} was not loaded: it holds more than tensors and plain values "
                                        r"\(.*posix.mkdir.*\).*loading it could run code"):
        tune(demo, "DEMO01", config, tmp_path / "run", progress=False)
    assert not marker.exists()  # the function was never called
    assert state_path.read_bytes() == crafted and not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("cut", [0, 200])
def test_a_damaged_resume_state_is_named_with_what_to_do(tmp_path, cut):
    path = save_resume_state({"epoch": 3, "rng": rng_states(), "weights": torch.ones(3)}, tmp_path / "resume_state.pt")
    assert load_resume_state(path)["epoch"] == 3
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match=rf"{path} is damaged \((EOFError|RuntimeError): .*\); deleting it is safe "
                                        r"\(nothing else is lost: the run starts again from its first epoch"):
        load_resume_state(path)


def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    tuning.seed_everything(7)
    np.random.standard_normal()  # a cached Gaussian in numpy's legacy state
    path = save_resume_state({"rng": rng_states()}, tmp_path / "state.pt")
    expected = random.random(), np.random.standard_normal(3), torch.rand(3)
    tuning.seed_everything(8)
    restore_rng_states(load_resume_state(path)["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.standard_normal(3), expected[1])
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)


def test_lora_trains_adapters_and_saves_a_plain_encoder(demo, tmp_path):
    config = TuningConfig(model="tiny-hubert", lora=True, lora_lr=1e-2, **QUICK_TUNING | {"epochs": 2})
    before = load_encoder("tiny-hubert", device="cpu").state_dict()  # tuning starts from the model as named
    result = tune(demo, "DEMO01", config, tmp_path, progress=False)
    after = load_encoder(result.checkpoint_dir, device="cpu").state_dict()
    assert set(after) == set(before)  # merged: no adapter tensors left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(p in k for p in ("q_proj", "k_proj", "v_proj", "out_proj")) for k in changed)


def test_gradient_accumulation_matches_one_large_batch(demo):
    """Micro-batches of 2 accumulate the gradient of the whole batch of 8 (eval mode: no dropout)."""
    train, _, selection = build_tuning_sets(demo, "DEMO01", TuningConfig(**QUICK_TUNING | {"max_train_trs": 8}))
    model = BrainTuningModel(load_encoder("tiny-hubert", device="cpu"), len(selection["voxels"])).eval()
    batch = torch.arange(8)
    gradients = []
    for micro_batch in (8, 2):
        model.zero_grad()
        tuning.accumulate_gradients(model, train, batch, micro_batch, "mse", torch.device("cpu"))
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) > 10
    for name in gradients[0]:
        torch.testing.assert_close(gradients[0][name], gradients[1][name], rtol=1e-4, atol=1e-7)


def _scripted_validation(monkeypatch, losses):
    """Make ``tune`` see the given validation losses, one per epoch (the real evaluation still runs)."""
    scripted = iter(losses)

    def evaluate(*args, **kwargs):
        _, predictions = real_evaluate(*args, **kwargs)
        return next(scripted), predictions

    real_evaluate = tuning.evaluate
    monkeypatch.setattr(tuning, "evaluate", evaluate)


@pytest.mark.parametrize("losses, stopped_after, reason", [
    ([1.0, 0.8, 0.9, 0.85, 0.5, 0.4], 3, "no validation improvement for 2 epochs (early stopping)"),
    ([1.0, 0.8, 9.0, 0.5, 0.4, 0.3], 2, "validation loss diverged at epoch 2"),
])
def test_early_stopping_keeps_the_best_epoch(demo, tmp_path, monkeypatch, losses, stopped_after, reason):
    """Training stops after `patience` epochs without improvement (or when the validation loss
    exceeds 10x the best) and the checkpoint holds the best epoch's model."""
    _scripted_validation(monkeypatch, losses)
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING | {"epochs": 6, "patience": 2})
    result = tune(demo, "DEMO01", config, tmp_path, progress=False)
    assert sorted(set(result.history.epoch)) == list(range(stopped_after + 1))
    assert result.stop_reason.startswith(reason)
    assert result.best_epoch == 1
    record = json.loads((tmp_path / "checkpoint" / "training_record.json").read_text())
    assert record["best_epoch"] == 1


def test_spec_augment_follows_the_checkpoint_unless_chosen(demo, tmp_path):
    """Whisper's config keeps SpecAugment off, wav2vec2's on: the default keeps each as it is and records it."""
    assert not load_encoder("tiny-whisper", device="cpu").checkpoint_spec_augment
    assert load_encoder("tiny-wav2vec2", device="cpu").checkpoint_spec_augment
    quick = QUICK_TUNING | {"epochs": 1, "spec_augment": None}
    for model, expected in (("tiny-whisper", False), ("tiny-wav2vec2", True)):
        result = tune(demo, "DEMO01", TuningConfig(model=model, **quick), tmp_path / model, progress=False)
        assert result.record["encoder_settings"]["spec_augment"] is expected
    chosen = tune(demo, "DEMO01", TuningConfig(model="tiny-whisper", **quick | {"spec_augment": True}),
                  tmp_path / "chosen", progress=False)
    assert chosen.record["encoder_settings"]["spec_augment"] is True


def test_tuning_starts_from_the_model_every_notebook_loads_by_name(demo, tmp_path):
    """A tiny random model is initialised by its registry seed, whatever the tuning seed, so that the
    "pretrained" variant of the alignment notebook is the network that was tuned."""
    result = tune(demo, "DEMO01", TuningConfig(model="tiny-hubert", seed=7, **QUICK_TUNING | {"epochs": 1}),
                  tmp_path, progress=False)
    assert result.record["initial_fingerprint"] == load_encoder("tiny-hubert", device="cpu").fingerprint()


@pytest.mark.parametrize("name", ["tiny-wav2vec2", "tiny-whisper"])
def test_frozen_states_equal_the_forward_and_are_cached(demo, tmp_path, name):
    from bt_utils.models.frozen import frozen_inputs

    encoder = load_encoder(name, device="cpu", native_length=True)
    train, _, _ = build_tuning_sets(demo, "DEMO01", TuningConfig(model=name, **QUICK_TUNING))
    states = frozen_inputs(encoder, train, 1, cache_dir=tmp_path, progress=False)
    assert len(states) == len(train) and torch.equal(states.targets, train.targets)
    for index in (0, len(train) - 1):
        with torch.no_grad():
            expected = encoder(train[index][0][None]).hidden_states[1][0]
        torch.testing.assert_close(states[index][0], expected, atol=2e-3, rtol=1e-2)  # stored in float16
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 2 * len({story for story, _ in train.items})  # the states and the pooled outputs
    stamps = [f.stat().st_mtime_ns for f in files]
    again = frozen_inputs(encoder, train, 1, cache_dir=tmp_path, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps and torch.equal(again[3][0], states[3][0])


def test_frozen_states_being_computed_elsewhere_are_waited_for_then_read(demo, tmp_path, monkeypatch):
    """Parallel tunings (a participant and its controls) compute the shared frozen states once."""
    import contextlib
    import shutil
    import threading

    from bt_utils.models import frozen
    from bt_utils.results import exclusive_lock

    encoder = load_encoder("tiny-wav2vec2", device="cpu")
    train, _, _ = build_tuning_sets(demo, "DEMO01", TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING))
    states = frozen.frozen_inputs(encoder, train, 1, cache_dir=tmp_path / "done", progress=False)
    done = sorted((tmp_path / "done").rglob("*.npy"))
    shared = [tmp_path / "shared" / f.relative_to(tmp_path / "done") for f in done]

    def no_computing(*args, **kwargs):
        raise AssertionError("computed the states again")

    monkeypatch.setattr(frozen, "_story_states", no_computing)
    results = {}
    with contextlib.ExitStack() as held:  # another tuning is computing every story
        for path in shared:
            held.enter_context(exclusive_lock(path.with_name(path.name + ".lock")))
        waiter = threading.Thread(target=lambda: results.update(
            states=frozen.frozen_inputs(encoder, train, 1, cache_dir=tmp_path / "shared", progress=False)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()
        for source, target in zip(done, shared):
            shutil.copy(source, target)
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert torch.equal(results["states"][3][0], states[3][0])


def test_tuning_only_the_top_layer_changes_only_the_top_layer(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("BT_UTILS_CACHE_DIR", str(tmp_path / "cache"))
    config = TuningConfig(model="tiny-wav2vec2", trainable_layers=1, **QUICK_TUNING | {"spec_augment": None})
    result = tune(demo, "DEMO01", config, tmp_path / "run", progress=False)
    before = load_encoder("tiny-wav2vec2", device="cpu").state_dict()
    after = load_encoder(result.checkpoint_dir, device="cpu").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.encoder.layers.1.") for k in changed)
    tuned = load_encoder(result.checkpoint_dir, device="cpu")
    assert tuned.frozen_layers == 1  # recorded, so that feature extraction continues from layer 1's states
    assert tuned.prefix_fingerprint(1) == load_encoder("tiny-wav2vec2", device="cpu").prefix_fingerprint(1)
    assert result.record["encoder_settings"]["spec_augment"] is False  # no audio to mask: switched off
    losses = result.history[result.history.split == "train"].loss.to_numpy()
    assert losses[-1] < losses[0]


def test_trainable_layers_is_checked():
    with pytest.raises(ValueError, match="trainable_layers=0"):
        TuningConfig(trainable_layers=0)
    with pytest.raises(ValueError, match="spec_augment=True"):
        TuningConfig(trainable_layers=1, spec_augment=True)


def test_probe_head_is_the_validated_ridge_of_the_targets_on_the_pooled_outputs(demo):
    """The probe equals a ridge regression computed independently (numpy, with intercept), at the penalty with the
    lowest validation error, and recovers a head planted in the targets."""
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING | {"max_train_trs": 120, "mixed_precision": "off"})
    train_set, validation_set, _ = build_tuning_sets(demo, "DEMO01", config)
    model = tuning.BrainTuningModel(load_encoder("tiny-wav2vec2", "cpu"), 5)
    cpu = torch.device("cpu")
    x = tuning.pooled_outputs(model, train_set, 8, cpu).numpy()
    x_validation = tuning.pooled_outputs(model, validation_set, 8, cpu).numpy()
    rng = np.random.default_rng(0)
    planted, offset = rng.standard_normal((x.shape[1], 5)), rng.standard_normal(5)
    noise = 0.1 * (x @ planted).std()
    noisy = x @ planted + offset + noise * rng.standard_normal((len(x), 5))
    train_set.targets = torch.tensor(noisy, dtype=torch.float32)
    validation_set.targets = torch.tensor(x_validation @ planted + offset, dtype=torch.float32)

    penalty = tuning.probe_head(model, train_set, validation_set, 8, cpu)["DEMO01"]
    centred = x - x.mean(axis=0)
    scatter = centred.T @ centred
    absolute = penalty * np.linalg.eigvalsh(scatter).clip(min=0).mean()
    targets = train_set.targets.numpy()
    weights = np.linalg.solve(scatter + absolute * np.eye(len(scatter)), centred.T @ (targets - targets.mean(axis=0)))
    bias = targets.mean(axis=0) - x.mean(axis=0) @ weights
    np.testing.assert_allclose(model.head.weight.detach().numpy(), weights.T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(model.head.bias.detach().numpy(), bias, rtol=1e-3, atol=1e-4)
    predicted = x_validation @ weights + bias
    for column in range(5):
        assert np.corrcoef(predicted[:, column], validation_set.targets[:, column])[0, 1] > 0.9
    with pytest.raises(ValueError, match="head_init='linear' is not valid"):
        TuningConfig(head_init="linear")


def test_a_probed_head_starts_below_the_random_head_and_is_recorded(demo, tmp_path):
    config = TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING | {"epochs": 1, "head_init": "probe"})
    train_set, validation_set, _ = build_tuning_sets(demo, "DEMO01", config)
    model = tuning.BrainTuningModel(load_encoder("tiny-wav2vec2", "cpu"), train_set.targets.shape[1])
    cpu = torch.device("cpu")
    random_head, _ = tuning.evaluate(model, validation_set, "mse", 8, cpu)
    tuning.probe_head(model, train_set, validation_set, 8, cpu)
    probed, _ = tuning.evaluate(model, validation_set, "mse", 8, cpu)
    mean_only = float(((validation_set.targets - train_set.targets.nanmean(dim=0)) ** 2).mean())
    assert probed < random_head and probed <= mean_only + 1e-3  # the largest penalty is close to the mean alone
    result = tune(demo, "DEMO01", config, tmp_path / "run", progress=False)
    assert set(result.record["probe_penalties"]) == {"DEMO01"}


def test_frozen_states_carry_the_initial_models_pooled_outputs(demo, tmp_path):
    """The probe of a top-layer tuning reads the initial model's pooled outputs cached with the frozen states; they
    equal what the model computes from those states (up to their float16 rounding)."""
    from bt_utils.models import frozen

    encoder = load_encoder("tiny-wav2vec2", device="cpu")
    train, _, _ = build_tuning_sets(demo, "DEMO01", TuningConfig(model="tiny-wav2vec2", **QUICK_TUNING))
    states = frozen.frozen_inputs(encoder, train, 1, cache_dir=tmp_path, progress=False)
    model = BrainTuningModel(encoder, 3)
    model.take_frozen_states(1, states.frame_mask)
    computed = tuning.pooled_outputs(model, states, 8, torch.device("cpu")).float()
    assert states.initial_pooled.shape == computed.shape == (len(train), encoder.hidden_size)
    torch.testing.assert_close(states.initial_pooled, computed, rtol=0, atol=2e-2 * float(computed.abs().max()))
