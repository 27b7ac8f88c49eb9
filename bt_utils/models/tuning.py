"""Brain-tuning: fine-tune a speech encoder to predict the fMRI responses of one participant or several.

Defaults follow the protocol (docs/method.md, "Brain-tuning"); the checkpoint kept has the lowest validation loss.
Several participants share the encoder, with one head each (:func:`tune`)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import numbers
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.dataset import Dataset
from .brain_model import (  # noqa: F401  (masked_mean, by_participant: re-exported)
    LOSSES, BrainTuningModel, by_participant, compute_loss, masked_mean, participant_losses, pooled_loss,
)
from .encoder import SpeechEncoder
from .frozen import FrozenStates, frozen_inputs
from .precision import PRECISIONS, autocast_context, resolve_precision
from .registry import load_encoder, select_device
from .resume_state import load_resume_state, restore_rng_states, rng_states, save_resume_state
from ..results import atomic_path, run_record, write_json, write_table
from .tuning_data import (  # noqa: F401  (re-exported)
    TuningSet, block_shuffle, build_tuning_sets, selected_voxels, story_derangement, target_names, tuning_participants,
    zscore_targets,
)
from ..validation import check_option

log = logging.getLogger(__name__)

POOLED = "pooled"
"""The ``subject`` of the pooled losses of a run on several participants in its history."""
CONTROLS = ("none", "story_swap", "block_shuffle", "text_embedding")
HEAD_INITS = ("random", "probe")
PROBE_PENALTIES = tuple(np.logspace(-3, 2, 11))
"""Ridge penalties of :func:`probe_head`, relative to the mean eigenvalue of the pooled outputs' scatter matrix."""


@dataclass(frozen=True)
class TuningConfig:
    """Parameters of one brain-tuning run (defaults: the paper's protocol).

    Attributes
    ----------
    model : str
        Registry name, Hub id or folder (see :func:`bt_utils.models.registry.load_encoder`).
    epochs, batch_size, grad_accumulation : int
        ``batch_size`` is the effective batch; it is split into ``grad_accumulation`` micro-batches.
    encoder_lr, head_lr : float
        Adam learning rates of the encoder and the head (> 0).
    warmup_epochs : float
        Linear warm-up of the encoder learning rate, then linear decay to the end (>= 0).
    head_lr_decay, head_lr_floor : float
        Head learning rate factor ``max(decay ** epoch, floor)``; decay in (0, 1], floor in [0, 1].
    loss : {"mse", "pearson", "huber_cosine"}
    lora : bool
        Train LoRA adapters (r, alpha, dropout on q/k/v/out projections) with AdamW at ``lora_lr`` (> 0) and a
        warm-up over ``lora_warmup_fraction`` (in [0, 1]) of the steps instead of the full encoder.
    spec_augment : bool or None
        SpecAugment masking in train mode. None (default): as the checkpoint's config says (on for wav2vec2/HuBERT,
        off for Whisper); the choice made is recorded in the run record's ``encoder_settings``.
    layerdrop : bool
        Keep the checkpoint's LayerDrop rate in train mode (Whisper checkpoints: 0).
    native_length : bool
        Whisper only: run the encoder on the real 10 s instead of padding to 30 s.
    mixed_precision : {"auto", "off", "bf16", "fp16"}
        Autocast of the training and validation passes (weights stay float32). "auto": bf16 on CUDA devices that
        support it (else fp16) and on CPUs with native bf16 instructions, else off. fp16 needs CUDA.
    device : str
        "auto" (CUDA, then MPS, then CPU) or a torch device string.
    seed : int
        Seed of the batch order, the controls' draws, dropout and the head's initialisation; the encoder starts
        from the model as loaded by name everywhere else (a tiny random model from its registry seed).
    patience : int
        Epochs without a validation improvement before stopping.
    cc_max_threshold : float
        Voxels with ``cc_max`` above it are the targets (unused by the ``text_embedding`` control, whose targets
        are embedding dimensions).
    control : {"none", "story_swap", "block_shuffle", "text_embedding"}
        Random-fMRI controls (responses of another story; responses shuffled in ``block_size``-TR blocks) or the
        non-brain target (text embeddings).
    max_train_trs, max_validation_trs : int or None
        Use a deterministic random subset of at most this many TRs (>= 1; for quick runs); None = all.
    trainable_layers : int or None
        Train only the top ``trainable_layers`` transformer layers and the head. None (the protocol): every
        transformer layer is trained, from audio.
    head_init : {"random", "probe"}
        ``"random"`` (the protocol): the head starts from PyTorch's default initialisation. ``"probe"``: before the
        first epoch the head is set to a ridge regression of the training targets on the initial model's pooled
        outputs, its penalty chosen on the validation TRs (:func:`probe_head`), so that the encoder learns from
        the first step instead of after the head has caught up (linear probing, then fine-tuning).
    """

    model: str = "whisper-tiny.en"
    epochs: int = 30
    batch_size: int = 128
    grad_accumulation: int = 1
    encoder_lr: float = 5e-5
    head_lr: float = 1e-4
    warmup_epochs: float = 5.0
    head_lr_decay: float = 0.8
    head_lr_floor: float = 0.1
    loss: str = "mse"
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_lr: float = 1e-4
    lora_warmup_fraction: float = 0.1
    spec_augment: bool | None = None
    layerdrop: bool = True
    native_length: bool = False
    mixed_precision: str = "auto"
    device: str = "auto"
    seed: int = 42
    patience: int = 5
    cc_max_threshold: float = 0.4
    control: str = "none"
    block_size: int = 15
    max_train_trs: int | None = None
    max_validation_trs: int | None = None
    trainable_layers: int | None = None
    head_init: str = "random"

    def __post_init__(self):
        check_option("loss", self.loss, LOSSES)
        check_option("head_init", self.head_init, HEAD_INITS)
        check_option("control", self.control, CONTROLS)
        check_option("mixed_precision", self.mixed_precision, PRECISIONS)
        for name in ("epochs", "batch_size", "grad_accumulation", "patience", "block_size", "lora_rank", "seed"):
            value, least = getattr(self, name), 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"{name}={value!r} is not valid: give a whole number of at least {least}")
        if self.trainable_layers is not None and (not isinstance(self.trainable_layers, numbers.Integral)
                                                  or self.trainable_layers < 1):
            raise ValueError(f"trainable_layers={self.trainable_layers!r} is not valid: give a number of layers of at "
                             "least 1, or None to train every layer")
        if self.trainable_layers is not None and self.spec_augment:
            raise ValueError("spec_augment=True needs the audio of every step, but trainable_layers trains on cached "
                             "states of the frozen layers: set spec_augment=None or False")
        for name in ("max_train_trs", "max_validation_trs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{name}={value!r} is not valid: give a number of TRs of at least 1, "
                                 "or None for all TRs")
        for name in ("encoder_lr", "head_lr", "lora_lr"):
            _check_interval(name, getattr(self, name), 0.0, math.inf, closed=(False, False))
        _check_interval("head_lr_decay", self.head_lr_decay, 0.0, 1.0, closed=(False, True))
        _check_interval("head_lr_floor", self.head_lr_floor, 0.0, 1.0)
        _check_interval("warmup_epochs", self.warmup_epochs, 0.0, math.inf, closed=(True, False))
        _check_interval("lora_warmup_fraction", self.lora_warmup_fraction, 0.0, 1.0)
        _check_interval("lora_dropout", self.lora_dropout, 0.0, 1.0, closed=(True, False))
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of grad_accumulation={self.grad_accumulation}"
            )


def _check_interval(name: str, value: float, low: float, high: float, closed: tuple[bool, bool] = (True, True)) -> None:
    """Raise a ValueError naming ``name`` and ``value`` unless ``value`` lies between ``low`` and
    ``high`` (each end included where ``closed`` says so; NaN never lies in between)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is not valid: give a number")
    above = value >= low if closed[0] else value > low
    below = value <= high if closed[1] else value < high
    if not (above and below):
        interval = f"{'[' if closed[0] else '('}{low:g}, {high:g}{']' if closed[1] else ')'}"
        raise ValueError(f"{name}={value!r} is not valid: it must lie in {interval}")


def encoder_lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def head_lr_factor(epoch: int, decay: float, floor: float) -> float:
    """``max(decay ** epoch, floor)``."""
    return max(decay**epoch, floor)


def _add_lora(model: BrainTuningModel, config: TuningConfig) -> None:
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    model.encoder.encoder = LoraModel(model.encoder.encoder, lora_config, "default")
    for name, parameter in model.encoder.named_parameters():
        parameter.requires_grad = "lora_" in name


def _plain_encoder(encoder: SpeechEncoder) -> SpeechEncoder:
    """The encoder with LoRA adapters merged into its weights (a copy), or itself."""
    from peft.tuners.lora import LoraModel

    if not isinstance(encoder.encoder, LoraModel):
        return encoder
    merged = copy.deepcopy(encoder)
    merged.encoder = merged.encoder.merge_and_unload()
    return merged


# ----- training -------------------------------------------------------------------------------


@dataclass
class TuningResult:
    """Outcome of :func:`tune`: per-epoch losses, the chosen epoch and where things are.

    ``validation_predictions`` are the chosen epoch's predictions of the validation items, float32 of shape
    (n_validation_items, n_targets) in the items' and the heads' order (None without a checkpoint).
    """

    history: pd.DataFrame
    best_epoch: int
    stop_reason: str
    checkpoint_dir: Path
    record: dict = field(default_factory=dict)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation_predictions: np.ndarray | None = None


def accumulate_gradients(model: BrainTuningModel, data: TuningSet, batch: torch.Tensor, micro_batch: int,
                         loss: str, device: torch.device, autocast=contextlib.nullcontext(), scaler=None) -> torch.Tensor:
    """Backpropagate the pooled loss of a batch (indices into ``data``, LongTensor of shape (batch_size,)) in
    micro-batches of ``micro_batch`` samples.
    """
    batch_targets = data.targets[batch]
    counts = {subject: int(torch.isfinite(batch_targets[:, columns]).all(dim=1).sum())
              for subject, columns in data.heads.items()}
    n_present = sum(1 for n in counts.values() if n)
    total = torch.zeros((), device=device)
    for micro in batch.split(micro_batch):
        audio, target = (torch.stack(x) for x in zip(*(data[int(i)] for i in micro)))
        audio, target = audio.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast:
            pairs = by_participant(model(audio), target, data.heads)
            share = sum(compute_loss(loss, p, t) * (len(p) / counts[subject]) for subject, (p, t) in pairs.items())
        share = share / n_present
        (scaler.scale(share) if scaler else share).backward()
        total += share.detach() * len(batch)
    return total


def _eval_outputs(model: BrainTuningModel, forward, data: TuningSet, batch_size: int, device: torch.device,
                  autocast) -> torch.Tensor:
    """``forward(audio)`` of every item of ``data``, stacked as float32 on the CPU, with ``model`` in eval mode (no
    dropout, no SpecAugment, no LayerDrop) and no gradient."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for audio, _ in torch.utils.data.DataLoader(data, batch_size=batch_size):
                with autocast:
                    outputs.append(forward(audio.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def evaluate(model: BrainTuningModel, data: TuningSet, loss: str, batch_size: int, device: torch.device,
             autocast=contextlib.nullcontext()):
    """Validation loss (:func:`pooled_loss` over all items) and predictions of shape (n_items, n_targets), in eval mode.
    """
    predictions = _eval_outputs(model, model, data, batch_size, device, autocast)
    return float(pooled_loss(participant_losses(loss, predictions, data.targets, data.heads))), predictions.numpy()


def pooled_outputs(model: BrainTuningModel, data: TuningSet, batch_size: int, device: torch.device,
                   autocast=contextlib.nullcontext()) -> torch.Tensor:
    """The head's inputs of every item, float64 of shape (n_items, D), in eval mode."""
    return _eval_outputs(model, model.pooled, data, batch_size, device, autocast).double()


def probe_head(model: BrainTuningModel, train_set: TuningSet, validation_set: TuningSet, batch_size: int,
               device: torch.device, autocast=contextlib.nullcontext()) -> dict[str, float]:
    """Set each participant's head to the ridge regression of its training targets on the model's pooled outputs
    (cached with the frozen layers' states when only the top layers are tuned).

    The penalty of each participant is the one of :data:`PROBE_PENALTIES` (times the mean eigenvalue of the
    centred training outputs' scatter matrix) with the lowest mean squared error on its validation items. Items
    without a response of the participant (NaN targets) are left out of its fit.

    Returns
    -------
    penalties : dict of str to float
        The relative penalty chosen per participant.
    """
    train_x, validation_x = (data.initial_pooled.double() if isinstance(data, FrozenStates)
                             else pooled_outputs(model, data, batch_size, device, autocast)
                             for data in (train_set, validation_set))
    chosen = {}
    for subject, columns in train_set.heads.items():
        y = train_set.targets[:, columns].double()
        rows = torch.isfinite(y).all(dim=1)
        x, y = train_x[rows], y[rows]
        x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
        eigenvalues, eigenvectors = torch.linalg.eigh((x - x_mean).T @ (x - x_mean))
        projected = eigenvectors.T @ ((x - x_mean).T @ (y - y_mean))
        y_validation = validation_set.targets[:, columns].double()
        validation_rows = torch.isfinite(y_validation).all(dim=1)
        best = None
        for penalty in PROBE_PENALTIES:
            weights = eigenvectors @ (projected / (eigenvalues.clamp(min=0) + penalty * eigenvalues.mean())[:, None])
            bias = y_mean - x_mean @ weights
            error = float(((validation_x[validation_rows] @ weights + bias - y_validation[validation_rows]) ** 2).mean())
            if best is None or error < best[0]:
                best = (error, penalty, weights, bias)
        _, chosen[subject], weights, bias = best
        with torch.no_grad():
            model.head.weight[columns] = weights.T.to(model.head.weight)
            model.head.bias[columns] = bias.to(model.head.bias)
    return chosen


VALIDATION_PREDICTIONS = "validation_predictions.npy"
"""File of a checkpoint folder: its epoch's predictions of the validation items, (n_items, n_targets) float32."""


def _save_checkpoint(model: BrainTuningModel, folder: Path, record: dict, selection: dict,
                     heads: Mapping[str, slice], validation_predictions: np.ndarray) -> None:
    voxels = selection["voxels"]
    if isinstance(voxels, dict):  # several participants: one list each, in head order
        voxels = [v for subject in heads for v in voxels[subject]]
    with atomic_path(folder) as staged:
        staged.mkdir()
        _plain_encoder(model.encoder).save_pretrained(staged / "encoder")
        torch.save({"state_dict": model.head.state_dict(), "n_targets": model.head.out_features,
                    "target_kind": selection["target_kind"], "voxels": voxels, "subjects": list(heads),
                    "n_outputs": [columns.stop - columns.start for columns in heads.values()],
                    "target_scaling": selection.get("target_scaling")}, staged / "head.pt")
        (staged / "training_record.json").write_text(json.dumps(record, indent=2, default=str))
        np.save(staged / VALIDATION_PREDICTIONS, validation_predictions.astype(np.float32))


def tuned_participants(checkpoint: str | os.PathLike) -> list[str] | None:
    """The participants a brain-tuning checkpoint was tuned on, from its ``training_record.json``."""
    folder = Path(checkpoint)
    if not (folder / "head.pt").is_file() or not (folder / "training_record.json").is_file():
        return None
    record = json.loads((folder / "training_record.json").read_text())
    selection = record.get("selection", {})
    if selection.get("target_kind") == "text_embedding":
        return []
    subjects = selection.get("subjects")  # absent from records written before several participants
    return list(subjects) if subjects else [record["parameters"]["subject"]]


def _read_head(checkpoint: str | os.PathLike) -> tuple[nn.Linear, list[int] | None, list[str], list[int]]:
    """The whole head of a checkpoint, its voxels (or None), its participants and their numbers of outputs."""
    path = Path(checkpoint) / "head.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a brain-tuning checkpoint: {path} is missing")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    weight = saved["state_dict"]["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(saved["state_dict"])
    voxels = saved["voxels"]
    # older text_embedding checkpoints stored the voxel selection beside a head of embedding dimensions
    voxels = None if voxels is None or len(voxels) != head.out_features else list(voxels)
    subjects = saved.get("subjects") or tuned_participants(checkpoint) or []
    return head, voxels, list(subjects), list(saved.get("n_outputs", [head.out_features]))


def load_head(checkpoint: str | os.PathLike, subject: str | None = None) -> tuple[nn.Linear, list[int] | None]:
    """The linear head of a brain-tuned checkpoint and the voxels it predicts.

    Raises
    ------
    ValueError
        ``subject`` is missing for a checkpoint of several participants, or names a participant the checkpoint was
        not tuned on.
    """
    head, voxels, subjects, n_outputs = _read_head(checkpoint)
    if subject is None:
        if len(subjects) > 1:
            raise ValueError(f"{checkpoint} was tuned on {subjects}, with one head each: name the participant whose "
                             "head to load (subject=...)")
        return head, voxels
    if subject not in subjects:
        raise ValueError(f"{checkpoint} was tuned on {subjects}, not on {subject!r}: it has no head for {subject!r}")
    index = subjects.index(subject)
    start, stop = sum(n_outputs[:index]), sum(n_outputs[:index + 1])
    own = nn.Linear(head.in_features, stop - start)
    own.load_state_dict({"weight": head.weight.detach()[start:stop], "bias": head.bias.detach()[start:stop]})
    return own, None if voxels is None else voxels[start:stop]


def load_brain_tuned(checkpoint: str | os.PathLike, device: str | torch.device = "auto",
                     subject: str | None = None) -> BrainTuningModel:
    """Encoder and head of a brain-tuning checkpoint, in eval mode on ``device``."""
    head = _read_head(checkpoint)[0] if subject is None else load_head(checkpoint, subject)[0]
    encoder = load_encoder(checkpoint, device=device)
    model = BrainTuningModel(encoder, head.out_features)
    model.head.load_state_dict(head.state_dict())
    return model.to(encoder.device).eval()


def seed_everything(seed: int) -> None:
    """Seed every generator training draws from: torch (dropout), numpy (Hugging Face's
    SpecAugment masks use numpy's global generator) and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tune(dataset: Dataset, subjects: str | Sequence[str], config: TuningConfig, out_dir: str | os.PathLike,
         progress: bool = True, stop_after_epochs: int | None = None) -> TuningResult:
    """Brain-tune a speech encoder on one participant or several; resume if ``out_dir`` holds an interrupted run.

    Parameters
    ----------
    subjects : str or sequence of str
        One participant, or a list of distinct participants (see
        :func:`bt_utils.models.tuning_data.tuning_participants`).
    out_dir : path-like
        Run folder: ``checkpoint/``, ``resume_state.pt``, ``training_log.parquet`` (losses per epoch),
        ``training_steps.parquet`` (the training loss of every step).
    progress : bool
        Show a progress bar over epochs.
    stop_after_epochs : int, optional
        Stop (as if interrupted) after this many epochs of this call; for tests and for splitting a long run into
        sessions.

    Returns
    -------
    result : TuningResult
        ``history`` has the columns ``epoch, split, subject, loss``: ``subject`` is the participant, or
        ``"pooled"`` for the pooled losses of several.
    """
    participants = tuning_participants(dataset, subjects, config.control)
    several = len(participants) > 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "resume_state.pt"
    parameters = (asdict(config) | ({"subjects": participants} if several else {"subject": participants[0]})
                  | {"data_root": str(dataset.root)})
    started = time.perf_counter()

    seed_everything(config.seed)
    device = select_device(config.device)
    train_set, validation_set, selection = build_tuning_sets(dataset, participants, config)
    # the model as every other notebook loads it by name: a tiny random model's initial weights are its registry
    # seed's, not the tuning seed's, so that "pretrained" and "brain-tuned" start from the same network
    encoder = load_encoder(config.model, device=device, native_length=config.native_length)
    initial_fingerprint = encoder.fingerprint()
    encoder.freeze_feature_encoder()
    model = BrainTuningModel(encoder, train_set.targets.shape[1]).to(device)
    spec_augment = encoder.checkpoint_spec_augment if config.spec_augment is None else config.spec_augment
    precision = resolve_precision(device, config.mixed_precision)
    autocast = autocast_context(device, precision)
    encoder.frozen_layers = 0
    if config.trainable_layers is not None:
        frozen = encoder.n_layers - config.trainable_layers
        if frozen < 0:
            raise ValueError(f"trainable_layers={config.trainable_layers} but {config.model} has {encoder.n_layers} "
                             "layers")
        train_set, validation_set = (frozen_inputs(encoder, data, frozen, initial_fingerprint, progress=progress,
                                                   precision=precision)
                                     for data in (train_set, validation_set))
        encoder.train_top_layers(config.trainable_layers)
        encoder.frozen_layers = frozen
        model.take_frozen_states(frozen, train_set.frame_mask)
        spec_augment = False
    encoder.set_regularisation(spec_augment=spec_augment, layerdrop=config.layerdrop)
    if config.lora:
        _add_lora(model, config)

    micro_batch = config.batch_size // config.grad_accumulation
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if config.lora:
        optimizer = torch.optim.AdamW([{"params": encoder_params, "lr": config.lora_lr},
                                       {"params": model.head.parameters(), "lr": config.head_lr}])
        warmup = max(1, round(config.lora_warmup_fraction * total_steps))
        schedules = [lambda s: encoder_lr_factor(s, warmup, total_steps)] * 2
    else:
        optimizer = torch.optim.Adam([{"params": encoder_params, "lr": config.encoder_lr},
                                      {"params": model.head.parameters(), "lr": config.head_lr}])
        warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
        schedules = [lambda s: encoder_lr_factor(s, warmup, total_steps),
                     lambda s: head_lr_factor(s // steps_per_epoch, config.head_lr_decay, config.head_lr_floor)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None  # bf16 needs no loss scaling

    history: list[dict] = []
    steps: list[dict] = []
    best = {"loss": math.inf, "epoch": -1}
    bad_epochs, first_epoch, stop_reason, finished = 0, 0, "completed all epochs", False
    if state_path.is_file():
        # on the CPU: the RNG states must stay CPU byte tensors; the model and optimiser
        # states move to the parameters' device when loaded into them
        state = load_resume_state(state_path)
        if state["parameters"] != parameters:
            raise ValueError(
                f"{out_dir} holds a run with other parameters; choose another out_dir or delete {state_path} "
                f"(differences: { {k: (state['parameters'].get(k), v) for k, v in parameters.items() if state['parameters'].get(k) != v} })"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        history, steps, best = state["history"], state.get("steps", []), state["best"]
        bad_epochs, first_epoch = state["bad_epochs"], state["epoch"] + 1
        stop_reason, finished = state["stop_reason"], state["finished"]
        log.info("resuming %s from epoch %d", out_dir, first_epoch)

    probe_penalties = None
    if config.head_init == "probe" and not history:
        probe_penalties = probe_head(model, train_set, validation_set, micro_batch, device, autocast)
    record = run_record(parameters, selection=selection, n_train=len(train_set), n_validation=len(validation_set),
                        encoder_settings=getattr(encoder, "settings", {}), precision=precision,
                        initial_fingerprint=initial_fingerprint, probe_penalties=probe_penalties)
    label = POOLED if several else participants[0]
    bar = tqdm(range(first_epoch, config.epochs if not finished else first_epoch),
               desc=f"brain-tuning {config.model} on {'+'.join(participants)}", disable=not progress)
    train_samples, train_seconds = 0, 0.0
    for epoch_count, epoch in enumerate(bar, start=1):
        model.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed + epoch))
        total = torch.zeros((), device=device)
        for step, step_start in enumerate(range(0, len(order), config.batch_size)):
            batch = order[step_start:step_start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            batch_loss = accumulate_gradients(model, train_set, batch, micro_batch, config.loss, device, autocast, scaler)
            total += batch_loss
            steps.append({"epoch": epoch, "step": step, "n_items": len(batch), "loss": float(batch_loss) / len(batch)})
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
        train_loss = float(total) / len(train_set)
        train_samples += len(train_set)
        train_seconds += time.perf_counter() - epoch_started
        validation_loss, predictions = evaluate(model, validation_set, config.loss, micro_batch, device, autocast)
        history += [{"epoch": epoch, "split": "train", "subject": label, "loss": train_loss},
                    {"epoch": epoch, "split": "validation", "subject": label, "loss": validation_loss}]
        if several:
            history += [{"epoch": epoch, "split": "validation", "subject": subject, "loss": float(value)}
                        for subject, value in participant_losses(config.loss, predictions, validation_set.targets,
                                                                 validation_set.heads).items()]
        bar.set_postfix(train=f"{train_loss:.4f}", validation=f"{validation_loss:.4f}")

        if not math.isfinite(validation_loss) or (best["epoch"] >= 0 and validation_loss > 10 * best["loss"]):
            stop_reason, finished = f"validation loss diverged at epoch {epoch} ({validation_loss:.4g})", True
        elif validation_loss < best["loss"]:
            best, bad_epochs = {"loss": validation_loss, "epoch": epoch}, 0
            _save_checkpoint(model, out_dir / "checkpoint", record | {"history": history, "best_epoch": epoch,
                                                                      "stop_reason": "in progress"}, selection,
                             train_set.heads, predictions)
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                stop_reason, finished = f"no validation improvement for {bad_epochs} epochs (early stopping)", True
        finished = finished or epoch == config.epochs - 1
        save_resume_state({"parameters": parameters, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                           "rng": rng_states(), "history": history, "steps": steps,
                           "best": best, "bad_epochs": bad_epochs, "epoch": epoch, "finished": finished,
                           "stop_reason": stop_reason}, state_path)
        if finished:
            break
        if stop_after_epochs is not None and epoch_count >= stop_after_epochs:
            stop_reason = f"interrupted after epoch {epoch}"
            break

    table = pd.DataFrame(history, columns=["epoch", "split", "subject", "loss"])
    write_table(table, out_dir / "training_log.parquet")
    step_table = pd.DataFrame(steps, columns=["epoch", "step", "n_items", "loss"])
    write_table(step_table, out_dir / "training_steps.parquet")
    best_by_participant = {row.get("subject"): row["loss"] for row in history if row["epoch"] == best["epoch"]
                           and row["split"] == "validation" and row.get("subject") != POOLED}
    record |= {"history": history, "best_epoch": best["epoch"], "best_validation_loss": best["loss"],
               "best_validation_losses": best_by_participant,
               "stop_reason": stop_reason, "timings_s": {"total": time.perf_counter() - started},
               "train_samples_per_s": train_samples / train_seconds if train_seconds else None}
    checkpoint = out_dir / "checkpoint"
    validation_predictions = None
    if checkpoint.is_dir():
        write_json(record, checkpoint / "training_record.json")
        if not (checkpoint / VALIDATION_PREDICTIONS).is_file():
            raise FileNotFoundError(f"{checkpoint / VALIDATION_PREDICTIONS} is missing: an earlier version of "
                                    f"bt_utils wrote this checkpoint; tune into a new out_dir or delete {out_dir}")
        validation_predictions = np.load(checkpoint / VALIDATION_PREDICTIONS)
    return TuningResult(table, best["epoch"], stop_reason, checkpoint, record, step_table, validation_predictions)
