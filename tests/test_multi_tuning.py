"""Brain-tuning one encoder on several participants: checks, heads, pooled loss, checkpoints."""

import json

import h5py
import numpy as np
import pytest
import torch

from bt_utils.data.dataset import Dataset
from bt_utils.encoding.alignment import tuned_on
from bt_utils.models.brain_model import BrainTuningModel, by_participant, participant_losses, pooled_loss
from bt_utils.models.registry import load_encoder
from bt_utils.models.tuning import (
    TuningConfig, accumulate_gradients, build_tuning_sets, evaluate, load_brain_tuned, load_head, tune,
    tuned_participants,
)
from bt_utils.models.tuning_data import selected_voxels, subject_or_subjects, target_names, tuning_participants
from bt_utils.viz import plots
from conftest import QUICK_TUNING, write_small_dataset

PAIR = ["DEMO01", "DEMO02"]


def test_participant_lists_are_checked(demo):
    assert tuning_participants(demo, "DEMO01") == ["DEMO01"]
    assert tuning_participants(demo, ("DEMO02", "DEMO01")) == ["DEMO02", "DEMO01"]
    with pytest.raises(ValueError, match=r"subjects=\[\] is empty; give one participant or a list.*DEMO01"):
        tuning_participants(demo, [])
    with pytest.raises(ValueError, match=r"names \['DEMO01'\] more than once"):
        tuning_participants(demo, ["DEMO01", "DEMO02", "DEMO01"])
    with pytest.raises(ValueError, match=r"subjects \['DEMO09'\] have no responses in .*available: \['DEMO01'"):
        tuning_participants(demo, ["DEMO01", "DEMO09"])
    with pytest.raises(ValueError, match=r"holds \[1\], not participant names"):
        tuning_participants(demo, ["DEMO01", 1])
    with pytest.raises(ValueError, match="text_embedding.*belong to no participant: tune it with one participant"):
        tuning_participants(demo, PAIR, control="text_embedding")
    assert tuning_participants(demo, ["DEMO01"], control="text_embedding") == ["DEMO01"]
    # the run refuses them before any work
    with pytest.raises(ValueError, match="is empty"):
        build_tuning_sets(demo, [], TuningConfig(**QUICK_TUNING))


def test_notebook_takes_subject_or_subjects():
    assert subject_or_subjects("DEMO01", None) == "DEMO01"
    assert subject_or_subjects(None, ("DEMO01", "DEMO02")) == PAIR
    with pytest.raises(ValueError, match=r"set either subject .*got subject='DEMO01', subjects=\['DEMO02'\]"):
        subject_or_subjects("DEMO01", ["DEMO02"])
    with pytest.raises(ValueError, match="set either subject"):
        subject_or_subjects(None, None)
    with pytest.raises(ValueError, match="subjects='DEMO01' is a string; give a list"):
        subject_or_subjects(None, "DEMO01")


def _losses_by_hand(name, prediction, target, heads):
    """Each participant's loss over its complete rows, in numpy."""
    losses = {}
    for subject, columns in heads.items():
        p, t = prediction[:, columns], target[:, columns]
        rows = np.isfinite(t).all(axis=1)
        p, t = p[rows], t[rows]
        if name == "mse":
            losses[subject] = np.mean((p - t) ** 2)
        else:
            losses[subject] = np.mean([1 - np.corrcoef(a, b)[0, 1] for a, b in zip(p, t)])
    return losses


@pytest.mark.parametrize("loss", ["mse", "pearson"])
def test_pooled_loss_is_the_mean_of_the_participants_losses(loss):
    rng = np.random.default_rng(0)
    heads = {"A": slice(0, 3), "B": slice(3, 8)}  # different voxel counts
    prediction, target = rng.standard_normal((10, 8)), rng.standard_normal((10, 8))
    target[[1, 4, 7], 3:] = np.nan  # B has no response for three items
    by_hand = _losses_by_hand(loss, prediction, target, heads)
    losses = participant_losses(loss, torch.tensor(prediction), torch.tensor(target), heads)
    assert {s: float(v) for s, v in losses.items()} == pytest.approx(by_hand, rel=1e-6)
    assert float(pooled_loss(losses)) == pytest.approx((by_hand["A"] + by_hand["B"]) / 2, rel=1e-6)
    # a participant without any response in the rows is left out of the mean, not counted as 0
    target[:, 3:] = np.nan
    only_a = participant_losses(loss, torch.tensor(prediction), torch.tensor(target), heads)
    assert set(only_a) == {"A"} and float(pooled_loss(only_a)) == pytest.approx(by_hand["A"], rel=1e-6)
    pairs = by_participant(prediction, target, heads)
    assert set(pairs) == {"A"} and pairs["A"][0].shape == (10, 3)


class _Linear(torch.nn.Module):
    """A stand-in for BrainTuningModel: a linear map of the first samples of the input."""

    def __init__(self, n_inputs, n_targets):
        super().__init__()
        self.map = torch.nn.Linear(n_inputs, n_targets)

    def forward(self, inputs):
        return self.map(inputs[:, :self.map.in_features])


class _Items:
    def __init__(self, inputs, targets, heads):
        self.inputs, self.targets, self.heads = inputs, targets, heads

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]


def test_micro_batches_add_up_to_the_pooled_loss_of_the_batch():
    torch.manual_seed(0)
    heads = {"A": slice(0, 2), "B": slice(2, 5)}
    inputs, targets = torch.randn(12, 6), torch.randn(12, 5)
    targets[[0, 1, 2, 9], 2:] = float("nan")  # B lacks some items, unevenly over the micro-batches
    data, batch = _Items(inputs, targets, heads), torch.tensor([0, 3, 1, 9, 2, 5, 7])
    model = _Linear(4, 5)
    expected = pooled_loss(participant_losses("mse", model(inputs[batch]), targets[batch], heads))
    expected.backward()
    whole = [p.grad.clone() for p in model.parameters()]
    for micro in (1, 3, 7):
        model.zero_grad()
        total = accumulate_gradients(model, data, batch, micro, "mse", torch.device("cpu"))
        assert float(total) == pytest.approx(float(expected.detach()) * len(batch), rel=1e-5)
        for grad, reference in zip((p.grad for p in model.parameters()), whole):
            torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-7)


def test_sets_of_several_participants_hold_each_ones_responses(demo):
    config = TuningConfig(**QUICK_TUNING)
    alone = {s: build_tuning_sets(demo, s, config) for s in PAIR}
    train, validation, selection = build_tuning_sets(demo, PAIR, config)
    widths = [len(alone[s][2]["voxels"]) for s in PAIR]
    assert train.heads == {"DEMO01": slice(0, widths[0]), "DEMO02": slice(widths[0], sum(widths))}
    assert selection["subjects"] == PAIR and selection["n_outputs"] == dict(zip(PAIR, widths))
    assert selected_voxels(selection) == {s: alone[s][2]["voxels"] for s in PAIR}
    assert target_names(selection)[widths[0]] == f"DEMO02 voxel {alone['DEMO02'][2]['voxels'][0]}"
    for subject in PAIR:  # the same items (the subset draw is shared) and each participant's own responses
        for joint, single in ((train, alone[subject][0]), (validation, alone[subject][1])):
            assert joint.items == single.items
            torch.testing.assert_close(joint.targets[:, joint.heads[subject]], single.targets)


def test_block_shuffle_draws_per_participant(demo):
    config = TuningConfig(**QUICK_TUNING | {"max_train_trs": None}, control="block_shuffle")
    joint, _, _ = build_tuning_sets(demo, PAIR, config)
    first, _, _ = build_tuning_sets(demo, "DEMO01", config)
    real, _, _ = build_tuning_sets(demo, PAIR, TuningConfig(**QUICK_TUNING | {"max_train_trs": None}))
    # the first participant's blocks are those of a run on it alone; the second gets its own shuffle
    torch.testing.assert_close(joint.targets[:, joint.heads["DEMO01"]], first.targets)
    second = joint.heads["DEMO02"]
    assert not torch.equal(joint.targets[:, second], real.targets[:, second])
    assert torch.equal(joint.targets[:, second].sort(dim=0).values, real.targets[:, second].sort(dim=0).values)


@pytest.fixture
def uneven(tmp_path):
    """Two participants with 3 and 5 voxels, a train, a validation and a test story."""
    root = write_small_dataset(tmp_path / "data", {"a": 30, "b": 28, "c": 26}, subjects={"S01": 3, "S02": 5},
                               split={"train": ["a"], "validation": ["b"], "test": "c"})
    rng = np.random.default_rng(1)
    for subject in ("S01", "S02"):  # reliable repeats: every voxel's cc_max is well above the 0.4 threshold
        with h5py.File(root / "derivative" / "preprocessed_data" / subject / "c.hf5", "r+") as handle:
            repeats = handle["individual_repeats"]
            repeats[...] = repeats[0][None] + 0.1 * rng.standard_normal(repeats.shape)
    return Dataset(root)


def test_one_encoder_pass_serves_every_participant(uneven, tmp_path, monkeypatch):
    counted = []
    original = BrainTuningModel.forward

    def counting(self, inputs):
        counted[-1] += len(inputs)
        return original(self, inputs)

    monkeypatch.setattr(BrainTuningModel, "forward", counting)
    config = TuningConfig(model="tiny-hubert", **QUICK_TUNING | {"epochs": 2, "max_train_trs": None})
    results = {}
    for name, subjects in (("one", "S01"), ("two", ["S01", "S02"])):
        counted.append(0)
        results[name] = tune(uneven, subjects, config, tmp_path / name, progress=False)
    assert counted[0] == counted[1] > 0
    result = results["two"]
    validation = result.history[result.history.split == "validation"].pivot(index="epoch", columns="subject",
                                                                             values="loss")
    assert list(validation.columns) == ["S01", "S02", "pooled"]
    np.testing.assert_allclose(validation.pooled, validation[["S01", "S02"]].mean(axis=1), rtol=1e-6)
    assert result.best_epoch == int(validation.pooled.idxmin())
    best = result.record["best_validation_losses"]
    assert best == pytest.approx(validation.loc[result.best_epoch, ["S01", "S02"]].to_dict())
    # each participant's head, loaded alone, reproduces its recorded loss on that participant's validation set
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=result.record["precision"] == "bf16"):
        for subject in ("S01", "S02"):
            model = load_brain_tuned(result.checkpoint_dir, device="cpu", subject=subject)
            _, validation_set, _ = build_tuning_sets(uneven, subject, config)
            loss, _ = evaluate(model, validation_set, "mse", 8, torch.device("cpu"))
            assert loss == pytest.approx(best[subject], rel=1e-3)
    figure = plots.plot_training_curves(result.history, result.best_epoch)
    labels = {line.get_label() for line in figure.axes[0].get_lines()}
    assert {"validation S01", "validation S02", "validation pooled", "train pooled"} <= labels
    (line,) = plots.plot_validation_curves({"several": result.history}).axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), validation.pooled.to_numpy())  # the pooled loss, once per epoch


def test_participants_with_different_voxel_counts_get_their_own_heads(uneven, tmp_path):
    config = TuningConfig(model="tiny-hubert", **QUICK_TUNING | {"epochs": 1, "spec_augment": None},
                          trainable_layers=1)  # the top layer, on shared cached states
    result = tune(uneven, ["S02", "S01"], config, tmp_path / "run", progress=False)
    checkpoint = result.checkpoint_dir
    saved = torch.load(checkpoint / "head.pt", weights_only=True)
    assert saved["subjects"] == ["S02", "S01"] and saved["n_outputs"] == [5, 3]
    assert saved["voxels"] == [0, 1, 2, 3, 4, 0, 1, 2]
    record = json.loads((checkpoint / "training_record.json").read_text())
    assert record["parameters"]["subjects"] == ["S02", "S01"] and record["selection"]["voxels"]["S01"] == [0, 1, 2]
    assert tuned_participants(checkpoint) == ["S02", "S01"] and tuned_on(str(checkpoint)) == "S02+S01"
    assert tuned_participants("tiny-hubert") is None and tuned_on("tiny-hubert") == ""
    for subject, rows, n in (("S02", slice(0, 5), 5), ("S01", slice(5, 8), 3)):
        head, voxels = load_head(checkpoint, subject)
        assert voxels == list(range(n))
        torch.testing.assert_close(head.weight, saved["state_dict"]["weight"][rows])
        torch.testing.assert_close(head.bias, saved["state_dict"]["bias"][rows])
        assert load_brain_tuned(checkpoint, device="cpu", subject=subject).head.out_features == n
    with pytest.raises(ValueError, match=r"was tuned on \['S02', 'S01'\], with one head each: name the participant"):
        load_head(checkpoint)
    with pytest.raises(ValueError, match=r"not on 'S03': it has no head for 'S03'"):
        load_head(checkpoint, "S03")
    assert load_brain_tuned(checkpoint, device="cpu").head.out_features == 8


def test_single_participant_checkpoints_load_as_before(uneven, tmp_path):
    config = TuningConfig(model="tiny-hubert", **QUICK_TUNING | {"epochs": 1})
    checkpoint = tune(uneven, "S01", config, tmp_path / "run", progress=False).checkpoint_dir
    head, voxels = load_head(checkpoint)
    assert head.out_features == 3 and voxels == [0, 1, 2]
    assert load_head(checkpoint, "S01")[1] == voxels and tuned_participants(checkpoint) == ["S01"]
    with pytest.raises(ValueError, match="not on 'S02'"):
        load_head(checkpoint, "S02")
    # a checkpoint written before several participants (no subjects in head.pt nor in the selection)
    saved = torch.load(checkpoint / "head.pt", weights_only=True)
    torch.save({k: v for k, v in saved.items() if k not in ("subjects", "n_outputs")}, checkpoint / "head.pt")
    record = json.loads((checkpoint / "training_record.json").read_text())
    del record["selection"]["subjects"]
    (checkpoint / "training_record.json").write_text(json.dumps(record))
    assert load_head(checkpoint)[1] == voxels and load_head(checkpoint, "S01")[1] == voxels
    assert tuned_participants(checkpoint) == ["S01"]


def test_lora_tunes_one_encoder_on_a_participant_list(demo, tmp_path):
    config = TuningConfig(model="tiny-hubert", lora=True, lora_lr=1e-2, **QUICK_TUNING | {"epochs": 1})
    result = tune(demo, PAIR, config, tmp_path, progress=False)
    before = load_encoder("tiny-hubert", device="cpu").state_dict()  # tuning starts from the model as named
    after = load_encoder(result.checkpoint_dir, device="cpu").state_dict()
    assert set(after) == set(before)  # adapters merged into a plain encoder
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(p in k for p in ("q_proj", "k_proj", "v_proj", "out_proj")) for k in changed)
    assert tuned_participants(result.checkpoint_dir) == PAIR
    assert set(result.history.subject) == {"DEMO01", "DEMO02", "pooled"}
