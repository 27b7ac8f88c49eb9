"""Downstream evaluation: linear probes on frozen encoders, and ASR through a decoder or CTC head.

Protocol
--------
For every model variant (pretrained, brain-tuned, controls; a list of
:class:`ModelEntry`) and every classification or multi-label task:

1. The frozen encoder (eval mode, no gradients) encodes each example once; the
   hidden states of every layer (``n_layers + 1``, the input of the first
   transformer layer included) are mean-pooled over the frames computed from
   real audio (and inside the example's span, if it has one: the frames whose
   receptive field is centred in it, see :func:`frame_centres`). A clip's
   features do not depend on the other clips of its batch: where padding
   would change them (group-norm wav2vec2/HuBERT, Whisper at native length),
   only clips of equal length share a batch. Features of
   shape (n_examples, n_layers + 1, D) are cached under
   ``cache_root()/downstream/<encoder fingerprint>/``, keyed by the task name
   and the examples' ids, spans and audio.
2. For each seed, one linear probe per layer (features standardised with the
   training split's mean and standard deviation) is trained with Adam (lr
   1e-3) and mini-batches for a fixed number of epochs: with cross-entropy
   for a classification task; for a multi-label task with binary
   cross-entropy of each class's logit (the mean over classes and examples),
   a class being predicted where its sigmoid is at least 0.5 (logit >= 0).
   After every epoch the probes are scored on the validation split; the
   layer and epoch with the best validation macro-F1 (ties: lower validation
   loss, then the lower layer and earlier epoch) are chosen. Test labels are
   not read until the chosen probe has predicted the test split.
3. Test scores (:data:`PROBE_METRICS`) are reported per seed, with
   percentile bootstrap intervals over test examples; :func:`summarize`
   averages the seeds and bootstraps the seed average (the same resampled
   examples for all seeds). Classification: macro-F1 over the classes present
   in the scored labels (:func:`bt_utils.downstream.metrics.macro_f1`) and accuracy.
   Multi-label: the per-class F1 over examples averaged over the classes
   present in the scored labels (macro-F1), and the micro-F1 of all
   (example, class) decisions (:func:`bt_utils.downstream.metrics.multilabel_f1`).

ASR tasks are scored as 1 - WER (all edits over all reference words, after
Whisper's English text normaliser: :func:`bt_utils.downstream.metrics.normalize_words`) on
the test split, once per variant (decoding is deterministic, greedy):

- Whisper: the variant's encoder weights are put into the full
  :class:`transformers.WhisperForConditionalGeneration` of its base model
  (the pretrained decoder), which decodes with ``generate`` on 30-s inputs.
- Wav2vec2 / HuBERT: decoding needs a CTC head. A CTC fine-tuned checkpoint
  (e.g. ``facebook/wav2vec2-base-960h``) is used as it is; for an encoder
  without one (a self-supervised or brain-tuned encoder), pass
  ``ctc_checkpoint``: the encoder's weights are swapped into that CTC model,
  which must have the same architecture. The head was trained on the
  checkpoint's own encoder, so this measures how well the tuned encoder still
  serves that head; fine-tune a CTC head on the tuned encoder for the paper's
  protocol.

Tables
------
``downstream.parquet`` (:attr:`DownstreamResults.scores`): one row per model,
variant, subject, task, seed and metric, with columns ``model, variant,
subject, task, layer, metric, value, seed, ci_low, ci_high, n_test``.
``layer`` is the chosen layer (ASR: the last layer). ``metric`` is
``macro_f1``, ``accuracy`` (classification), ``micro_f1`` (multi-label) or
``one_minus_wer``. In ``downstream_predictions.parquet`` a multi-label
``label`` or ``prediction`` is a string: the names of the classes present, in
the task's class order, separated by spaces (``""`` for none; see
:func:`bt_utils.downstream.tasks.encode_multilabel`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..cache import cache_root
from .tasks import (
    SAMPLE_RATE,
    DownstreamTask,
    Example,
    audio_length,
    decode_multilabel,
    encode_multilabel,
    load_audio,
)
from .metrics import accuracy, bootstrap_ci, macro_f1, multilabel_f1, normalize_words, word_edits
from ..models.encoder import WHISPER_HOP, WHISPER_N_FFT, SpeechEncoder
from ..models.registry import MODELS, RANDOM_INIT, load_encoder
from ..results import atomic_path, write_table
from ..models.tuning import masked_mean

log = logging.getLogger(__name__)

PROBE_METRICS = {
    "classification": {"macro_f1": macro_f1, "accuracy": accuracy},
    "multilabel": {"macro_f1": functools.partial(multilabel_f1, average="macro"),
                   "micro_f1": functools.partial(multilabel_f1, average="micro")},
}
"""Metrics of the probed task kinds: kind -> {name: ``f(y_true, y_pred) -> float``}. Classification: labels of
shape (n,); multi-label: multi-hot arrays of shape (n, n_classes). Validation and test use the same ones."""
ASR_METRIC = "one_minus_wer"
KEYS = ("model", "variant", "subject", "task")
SCORE_COLUMNS = ("model", "variant", "subject", "task", "layer", "metric", "value", "seed", "ci_low", "ci_high",
                 "n_test")

_FEATURE_VERSION = 2  # part of the feature cache key: raise it when the same encoder and examples give other features
_METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "micro_f1": "micro-F1", ASR_METRIC: "1 - WER"}
_HATCHES = ("", "//", "..", "xx")


# ======================================================================================
# Model variants
# ======================================================================================


@dataclass(frozen=True)
class ModelEntry:
    """One model variant to evaluate.

    Attributes
    ----------
    variant : str
        Its name in tables and figures, e.g. ``"pretrained"``, ``"brain-tuned"``.
    path : str
        Anything :func:`bt_utils.models.registry.load_encoder` loads: a registry name,
        a Hub id, a folder, or a brain-tuned checkpoint (or the run folder of
        :func:`bt_utils.models.tuning.tune` that holds ``checkpoint/``).
    model : str
        The base model (registry name or Hub id): the decoder or CTC head for ASR comes from it.
    subject : str
        The participant whose fMRI tuned it; empty for a pretrained model.
    """

    variant: str
    path: str
    model: str
    subject: str = ""


def _checkpoint_folder(path: Path) -> Path | None:
    for folder in (path, path / "checkpoint"):
        if (folder / "training_record.json").is_file():
            return folder
    return None


def model_entry(spec: ModelEntry | Mapping | str) -> ModelEntry:
    """A :class:`ModelEntry` from a dict ``{"variant", "path"[, "model", "subject"]}`` or a path.

    Missing fields are read from a brain-tuned checkpoint's
    ``training_record.json`` (base model, subject; variant ``"brain-tuned"``,
    or ``"control: <name>"`` for a control run); for anything else the base
    model is the path itself and the variant ``"pretrained"``.

    Parameters
    ----------
    spec : ModelEntry, mapping or str

    Returns
    -------
    ModelEntry
    """
    if isinstance(spec, ModelEntry):
        return spec
    spec = {"path": spec} if isinstance(spec, (str, os.PathLike)) else dict(spec)
    unknown = set(spec) - {"variant", "path", "model", "subject"}
    if "path" not in spec or unknown:
        raise ValueError(f"a model entry needs 'path' and may have 'variant', 'model', 'subject'; got {spec}")
    path = str(spec["path"])
    checkpoint = _checkpoint_folder(Path(path).expanduser())
    if checkpoint is None:
        defaults = {"variant": "pretrained", "model": path, "subject": ""}
    else:
        parameters = json.loads((checkpoint / "training_record.json").read_text())["parameters"]
        control = parameters.get("control", "none")
        defaults = {"variant": "brain-tuned" if control == "none" else f"control: {control}",
                    "model": str(parameters["model"]), "subject": str(parameters.get("subject", ""))}
        path = str(checkpoint)
    return ModelEntry(**(defaults | {k: str(v) for k, v in spec.items() if k != "path"} | {"path": path}))


# ======================================================================================
# Features
# ======================================================================================


def _frame_layers(encoder: SpeechEncoder) -> list[tuple[int, int, int]]:
    """The layers that turn samples into encoder frames, first to last, as ``(kernel, stride, padding)``.

    wav2vec2/HuBERT: the convolutions of the feature encoder (no padding).
    Whisper: the log-mel STFT (400-sample windows every 160 samples, centred:
    padded by 200), then ``conv1`` and ``conv2`` (kernel 3, stride 1 and 2, padding 1).
    """
    if encoder.family == "whisper":
        convolutions = [(conv.kernel_size[0], conv.stride[0], conv.padding[0])
                        for conv in (encoder.encoder.conv1, encoder.encoder.conv2)]
        return [(WHISPER_N_FFT, WHISPER_HOP, WHISPER_N_FFT // 2), *convolutions]
    config = encoder.encoder.config
    return [(kernel, stride, 0) for kernel, stride in zip(config.conv_kernel, config.conv_stride)]


def frame_centres(encoder: SpeechEncoder, n_frames: int) -> np.ndarray:
    """Time of the centre of each encoder frame's receptive field, in seconds.

    Frame ``k`` is centred at ``k * hop + offset``, from the layers that make
    the frames (:func:`_frame_layers`): the hop is the product of their
    strides; the receptive field of frame 0 starts at ``-sum(padding * hop
    of the layer's input)`` and spans ``1 + sum((kernel - 1) * hop of the
    layer's input)`` samples; ``offset`` is its start plus half its span.
    wav2vec2/HuBERT: hop 320 samples (0.02 s), receptive field 400 samples,
    so frame ``k`` is centred at ``0.0125 + 0.02 k`` s. Whisper: mel frame
    ``m`` is centred on sample ``160 m``, ``conv1`` keeps that and the
    stride-2 ``conv2`` keeps every other one: ``0.02 k`` s.

    Parameters
    ----------
    encoder : SpeechEncoder
    n_frames : int

    Returns
    -------
    ndarray of shape (n_frames,)
        float64, seconds from the start of the audio.
    """
    hop, start, field = 1, 0, 1  # in samples
    for kernel, stride, padding in _frame_layers(encoder):
        start -= padding * hop
        field += (kernel - 1) * hop
        hop *= stride
    return (np.arange(n_frames) * hop + start + field / 2) / SAMPLE_RATE


def feature_cache_path(fingerprint: str, task: DownstreamTask, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the features of ``task`` under the encoder with ``fingerprint`` are cached.

    The key holds the task's name, its examples' signatures and the version of
    the feature computation, so that features computed differently are never reused.
    """
    digest = hashlib.sha256(f"{task.name}\nversion {_FEATURE_VERSION}".encode())
    for example in task.examples:
        digest.update(example.signature().encode())
    return cache_root(cache_dir) / "downstream" / fingerprint / f"{task.name}-{digest.hexdigest()[:16]}.npz"


def _span_masks(examples: Sequence[Example], valid: torch.Tensor, centres: np.ndarray) -> torch.Tensor:
    """Frames to pool per example, shape (E, F): the valid frames of its source row ``valid`` (E, F),
    inside its span if it has one (frame centres ``centres`` (F,), in seconds; the frame nearest the
    span's middle if no centre falls inside)."""
    masks = valid.clone()
    centres = torch.from_numpy(centres)
    for i, example in enumerate(examples):
        if example.span is None:
            continue
        start, end = example.span
        inside = valid[i] & (centres >= start) & (centres < end)
        if not inside.any():
            nearest = int(torch.argmin((centres - (start + end) / 2).abs() + (~valid[i]) * 1e9))
            inside = torch.zeros_like(inside)
            inside[nearest] = True
        masks[i] = inside
    return masks


def _padding_changes_features(encoder: SpeechEncoder) -> bool:
    """Whether zero-padding a clip to a longer one in its batch changes its features.

    Group-norm wav2vec2/HuBERT (no attention mask): the padding enters the
    first GroupNorm's statistics and the attention. Whisper at native length:
    the padding changes the last mel frames and what the convolutions see
    past the clip's end. Not so for an attention mask over the padding, nor
    for Whisper padded to 30 s (every clip is padded the same way).
    """
    if encoder.family == "whisper":
        return encoder.native_length
    return not encoder.settings["attention_mask"]


def _source_batches(task: DownstreamTask, batch_size: int, equal_lengths: bool) -> list[list[list[int]]]:
    """Example indices grouped by source, sources sorted by length (longest first), in batches of at most
    ``batch_size`` sources; with ``equal_lengths``, only sources of the same length share a batch."""
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(task.examples):
        groups.setdefault(example.source, []).append(index)
    lengths = {source: audio_length(task.examples[group[0]]) for source, group in groups.items()}
    ordered = sorted(groups, key=lambda source: -lengths[source])
    batches = []
    for _, run in itertools.groupby(ordered, key=lambda source: lengths[source] if equal_lengths else 0):
        run = [groups[source] for source in run]
        batches += [run[i:i + batch_size] for i in range(0, len(run), batch_size)]
    return batches


@torch.inference_mode()
def _encode_batch(encoder: SpeechEncoder, task: DownstreamTask, sources: list[list[int]], out: np.ndarray) -> None:
    """Pool every layer for the examples of a batch of sources into ``out`` (N, n_layers + 1, D)."""
    audio = [load_audio(task.examples[group[0]]) for group in sources]
    lengths = torch.tensor([len(a) for a in audio])
    padded = torch.zeros(len(audio), int(lengths.max()))
    for row, samples in enumerate(audio):
        padded[row, : len(samples)] = torch.from_numpy(samples)
    output = encoder(padded, lengths)
    n_frames = int(output.frame_mask.sum(dim=1).max())  # frames past this are padding for every row
    rows = torch.tensor([row for row, group in enumerate(sources) for _ in group])
    indices = [index for group in sources for index in group]
    valid = output.frame_mask[rows, :n_frames].cpu()
    masks = _span_masks([task.examples[i] for i in indices], valid, frame_centres(encoder, n_frames))
    masks = masks.to(output.frame_mask.device)
    for layer, hidden in enumerate(output.hidden_states):
        out[indices, layer] = masked_mean(hidden[rows, :n_frames].float(), masks).cpu().numpy()


def extract_features(encoder: SpeechEncoder, task: DownstreamTask, batch_size: int = 8, cache: bool = True,
                     cache_dir: str | os.PathLike | None = None, fingerprint: str | None = None,
                     progress: bool = True) -> np.ndarray:
    """Mean-pooled hidden states of every layer for every example of a task.

    Parameters
    ----------
    encoder : SpeechEncoder
        Used frozen, in eval mode.
    task : DownstreamTask
    batch_size : int
        Most sources (utterances) per encoder pass. Where padding would change
        a clip's features (see the module documentation), only sources of equal
        length share a pass, so the features equal those of one clip at a time.
    cache : bool
        Read and write the on-disk cache (:func:`feature_cache_path`).
    cache_dir : path-like, optional
        Root of the cache (default :func:`bt_utils.cache.cache_root`).
    fingerprint : str, optional
        ``encoder.fingerprint()``, if already computed.
    progress : bool
        Show a progress bar.

    Returns
    -------
    features : ndarray of shape (n_examples, n_layers + 1, D)
        float32, in the order of ``task.examples``.
    """
    ids = np.array([e.id for e in task.examples])
    path = feature_cache_path(fingerprint or encoder.fingerprint(), task, cache_dir)
    if cache and path.is_file():
        with np.load(path) as stored:
            if np.array_equal(stored["ids"], ids):
                return stored["features"]
        log.warning("feature cache %s holds other examples; recomputing", path)
    encoder.eval()
    out = np.zeros((len(task.examples), encoder.n_layers + 1, encoder.hidden_size), dtype=np.float32)
    batches = _source_batches(task, batch_size, equal_lengths=_padding_changes_features(encoder))
    for sources in tqdm(batches, desc=f"features {task.name}", disable=not progress):
        _encode_batch(encoder, task, sources, out)
    if cache:
        with atomic_path(path) as staged:
            np.savez(staged, features=out, ids=ids)
    return out


# ======================================================================================
# Linear probes
# ======================================================================================


@dataclass(frozen=True)
class ProbeConfig:
    """Training of the linear probes.

    Attributes
    ----------
    max_epochs : int
        Epochs trained; the epoch used is chosen on the validation split.
    batch_size : int
    learning_rate : float
        Adam's learning rate.
    """

    max_epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3

    def __post_init__(self):
        for name in ("max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be positive")


@dataclass(frozen=True, eq=False)
class ProbeFit:
    """The probe chosen on the validation split.

    Attributes
    ----------
    layer, epoch : int
        Chosen hidden-state index (0 = input of the first layer) and epoch (1-based).
    weight : torch.Tensor
        Shape (D, n_classes).
    bias : torch.Tensor
        Shape (n_classes,).
    mean, std : torch.Tensor
        Shape (D,): the standardisation of the chosen layer (training split).
    history : pandas.DataFrame
        Validation scores (:data:`PROBE_METRICS` of the task kind) and ``loss`` per ``layer`` and ``epoch``.
    layers : pandas.DataFrame
        The best epoch of each layer: ``layer, epoch``, the scores, ``loss``.
    multilabel : bool
        Trained on multi-hot labels (binary cross-entropy per class).
    """

    layer: int
    epoch: int
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    history: pd.DataFrame
    layers: pd.DataFrame
    multilabel: bool = False

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predictions from features of shape (N, n_layers + 1, D): class indices of shape (N,), or for a
        multi-label probe a bool multi-hot array of shape (N, n_classes) (sigmoid >= 0.5)."""
        x = (torch.as_tensor(features[:, self.layer], dtype=torch.float32) - self.mean) / self.std
        return _decide(x @ self.weight + self.bias, self.multilabel).numpy()


def _decide(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Predictions from logits (..., C): the argmax (...), or multi-hot where sigmoid >= 0.5 (..., C)."""
    return logits >= 0 if multilabel else logits.argmax(dim=-1)


def _layer_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of each layer's probe, shape (L,), from logits (L, N, C) and labels: class indices (N,)
    (cross-entropy) or multi-hot (N, C) (binary cross-entropy of every class, averaged over classes and examples)."""
    if labels.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none").mean(dim=(1, 2))
    return F.cross_entropy(logits.permute(1, 2, 0), labels[:, None].expand(-1, logits.shape[0]),
                           reduction="none").mean(dim=0)


def _validation_scores(logits: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Per-layer validation scores from logits (L, N, C) and labels (N,) or multi-hot (N, C)."""
    multilabel = labels.ndim == 2
    metrics = PROBE_METRICS["multilabel" if multilabel else "classification"]
    losses, predicted, y = _layer_losses(logits, labels), _decide(logits, multilabel).numpy(), labels.numpy()
    return [{name: metric(y, p) for name, metric in metrics.items()} | {"loss": float(loss)}
            for p, loss in zip(predicted, losses)]


@contextlib.contextmanager
def _one_thread():
    """Run torch on one CPU thread inside the block: the probes' matrices are so small that
    thread start-up and synchronisation cost more than they save (up to 30x on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _labels_tensor(labels: np.ndarray, n_classes: int, split: str) -> torch.Tensor:
    """Class indices (N,) as int64, or multi-hot labels (N, n_classes) as float32, checked."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != n_classes or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{split} labels of shape {labels.shape} are not multi-hot over n_classes={n_classes}: "
                             "give class indices of shape (N,) or 0/1 labels of shape (N, n_classes)")
        return torch.as_tensor(labels, dtype=torch.float32)
    if labels.ndim != 1 or (len(labels) and not (0 <= labels.min() and labels.max() < n_classes)):
        raise ValueError(f"{split} labels must be class indices in [0, {n_classes}) of shape (N,), or multi-hot of "
                         f"shape (N, {n_classes}); got shape {labels.shape}")
    return torch.as_tensor(labels, dtype=torch.long)


def fit_probe(train_features: np.ndarray, train_labels: np.ndarray, validation_features: np.ndarray,
              validation_labels: np.ndarray, n_classes: int, seed: int = 0,
              config: ProbeConfig = ProbeConfig()) -> ProbeFit:
    """Train one linear probe per layer and choose the layer and epoch on the validation split.

    All layers' probes are trained side by side (independent weights, the
    same mini-batches); the sum of their losses has each probe's gradient, so
    this is the same as training them one by one.

    Parameters
    ----------
    train_features, validation_features : ndarray of shape (N, n_layers + 1, D)
    train_labels, validation_labels : ndarray of shape (N,) or (N, n_classes)
        Class indices in ``[0, n_classes)`` (classification: cross-entropy),
        or multi-hot 0/1 labels (multi-label: binary cross-entropy per class,
        validation scored with :data:`PROBE_METRICS` ``["multilabel"]``).
    n_classes : int
    seed : int
        Seed of the initial weights and of the mini-batch order.
    config : ProbeConfig

    Returns
    -------
    ProbeFit
    """
    x = torch.as_tensor(train_features, dtype=torch.float32)
    y = _labels_tensor(train_labels, n_classes, "training")
    y_validation = _labels_tensor(validation_labels, n_classes, "validation")
    if len(x) != len(y) or len(validation_features) != len(y_validation) or not len(x) or not len(y_validation):
        raise ValueError(f"need matching, non-empty features and labels; got {len(x)} / {len(y)} training and "
                         f"{len(validation_features)} / {len(y_validation)} validation examples")
    if y.ndim != y_validation.ndim:
        raise ValueError(f"training labels have shape {tuple(y.shape)} but validation labels "
                         f"{tuple(y_validation.shape)}: give class indices for both, or multi-hot labels for both")
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)  # (L, D)
    x = ((x - mean) / std).transpose(0, 1).contiguous()  # (L, N, D): one batched matmul for all layers
    x_validation = ((torch.as_tensor(validation_features, dtype=torch.float32) - mean) / std).transpose(0, 1)
    with _one_thread():
        history, best = _train_probes(x, y, x_validation, y_validation, n_classes, seed, config)
    layer = max(range(len(best)), key=lambda i: (best[i]["macro_f1"], -best[i]["loss"], -i))
    chosen = best[layer]
    columns = list(history[0])  # layer, epoch, the scores, loss
    layers = pd.DataFrame([{"layer": i} | b for i, b in enumerate(best)])[columns]
    return ProbeFit(layer, chosen["epoch"], chosen["weight"], chosen["bias"], mean[layer], std[layer],
                    pd.DataFrame(history), layers, multilabel=y.ndim == 2)


def _train_probes(x: torch.Tensor, y: torch.Tensor, x_validation: torch.Tensor, y_validation: torch.Tensor,
                  n_classes: int, seed: int, config: ProbeConfig) -> tuple[list[dict], list[dict]]:
    """Train probes on standardised features ``x`` (L, N, D); score them on ``x_validation`` (L, Nv, D).

    ``y`` and ``y_validation``: class indices (N,) or multi-hot (N, C) (see :func:`_layer_losses`).
    Returns the validation history (one dict per layer and epoch) and, per layer, its best epoch
    (highest macro-F1, then lowest loss, then earliest) with the weights (D, C) and bias (C,) of then.
    """
    n_layers, _, width = x.shape
    generator = torch.Generator().manual_seed(seed)
    bound = width**-0.5  # torch.nn.Linear's initialisation range
    weight = ((torch.rand(n_layers, width, n_classes, generator=generator) * 2 - 1) * bound).requires_grad_()
    bias = ((torch.rand(n_layers, 1, n_classes, generator=generator) * 2 - 1) * bound).requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=config.learning_rate)
    history, best = [], [None] * n_layers
    for epoch in range(1, config.max_epochs + 1):
        for batch in torch.randperm(len(y), generator=generator).split(config.batch_size):
            loss = _layer_losses(torch.baddbmm(bias, x[:, batch], weight), y[batch]).sum()  # (L, B, C) logits
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = _validation_scores(torch.baddbmm(bias, x_validation, weight), y_validation)
        for layer, score in enumerate(scores):
            history.append({"layer": layer, "epoch": epoch, **score})
            previous = best[layer]
            if previous is None or (score["macro_f1"], -score["loss"]) > (previous["macro_f1"], -previous["loss"]):
                best[layer] = score | {"epoch": epoch, "weight": weight[layer].detach().clone(),
                                       "bias": bias[layer, 0].detach().clone()}
    return history, best


def _targets(task: DownstreamTask, examples: Sequence[Example]) -> np.ndarray:
    """What a probe learns of ``examples``: class indices (N,), or a multi-hot array (N, n_classes) (multi-label)."""
    if task.kind == "multilabel":
        return encode_multilabel([e.label for e in examples], task.classes)
    index = {c: i for i, c in enumerate(task.classes)}
    return np.array([index[e.label] for e in examples])


def _prediction_labels(task: DownstreamTask, predicted: np.ndarray) -> list[str]:
    """Labels of a probe's predictions (see :meth:`ProbeFit.predict`), as in :attr:`Example.label`."""
    if task.kind == "multilabel":
        return decode_multilabel(predicted, task.classes)
    return [task.classes[p] for p in predicted]


def probe_task(features: np.ndarray, task: DownstreamTask, seeds: Iterable[int] = (0, 1, 2),
               config: ProbeConfig = ProbeConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit probes for several seeds and predict the test split with the chosen ones.

    Parameters
    ----------
    features : ndarray of shape (n_examples, n_layers + 1, D)
        From :func:`extract_features`, in the order of ``task.examples``.
    task : DownstreamTask
        A classification or multi-label task.
    seeds : iterable of int
    config : ProbeConfig

    Returns
    -------
    predictions : pandas.DataFrame
        Test predictions: ``seed, layer, example_id, label, prediction``
        (multi-label: the predicted classes separated by spaces, as labels are).
    selection : pandas.DataFrame
        Validation scores of every layer at its best epoch: ``seed, layer,
        epoch``, the metrics of the task's kind (:data:`PROBE_METRICS`), ``loss, chosen``.
    """
    if task.kind not in PROBE_METRICS:
        raise ValueError(f"task {task.name!r} is an {task.kind} task; probes are for "
                         f"{' and '.join(PROBE_METRICS)} tasks")
    splits = np.array([e.split for e in task.examples])
    for split in ("train", "validation", "test"):
        if not (splits == split).any():
            raise ValueError(f"task {task.name!r} has no {split} examples")
    labels = _targets(task, [e for e in task.examples if e.split != "test"])
    train, validation = splits[splits != "test"] == "train", splits[splits != "test"] == "validation"
    learn_features = features[splits != "test"]
    predictions, selections = [], []
    for seed in seeds:
        fit = fit_probe(learn_features[train], labels[train], learn_features[validation], labels[validation],
                        len(task.classes), seed, config)
        # the test split is touched only now, by the chosen probe
        test_examples = [e for e in task.examples if e.split == "test"]
        predicted = _prediction_labels(task, fit.predict(features[splits == "test"]))
        predictions += [{"seed": seed, "layer": fit.layer, "example_id": e.id, "label": e.label, "prediction": p}
                        for e, p in zip(test_examples, predicted)]
        selections.append(fit.layers.assign(seed=seed, chosen=fit.layers.layer == fit.layer))
    selection = pd.concat(selections, ignore_index=True)
    return pd.DataFrame(predictions), selection[["seed", "layer", "epoch", *PROBE_METRICS[task.kind], "loss", "chosen"]]


# ======================================================================================
# ASR
# ======================================================================================


class Transcriber:
    """Greedy speech recognition with a Whisper decoder or a CTC head, around a given encoder.

    Built by :func:`load_transcriber`. Call it with a list of 16-kHz waveforms
    (each of shape (n_samples,)) to get their transcripts. Whisper generates
    at most ``10 + 8 * seconds`` tokens (the longest waveform of the batch).
    """

    def __init__(self, model, processor, kind: str):
        self.model, self.processor, self.kind = model.eval(), processor, kind

    @torch.inference_mode()
    def __call__(self, audio: Sequence[np.ndarray]) -> list[str]:
        device = next(self.model.parameters()).device
        if self.kind == "whisper":
            features = self.processor.feature_extractor(list(audio), sampling_rate=SAMPLE_RATE,
                                                        return_tensors="pt").input_features.to(device)
            options = {"language": "en", "task": "transcribe"} if self.model.generation_config.is_multilingual else {}
            seconds = max(len(a) for a in audio) / SAMPLE_RATE
            tokens = self.model.generate(features, max_new_tokens=_token_budget(seconds), num_beams=1, **options)
            return self.processor.batch_decode(tokens, skip_special_tokens=True)
        inputs = self.processor(list(audio), sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
        return self.processor.batch_decode(logits.argmax(dim=-1))


def _token_budget(seconds: float) -> int:
    """Most tokens Whisper may generate for ``seconds`` of speech: about twice a fast speaker's rate
    (3 words/s, ~1.3 tokens a word), so that a decoder stuck repeating itself stops early."""
    return min(440, 10 + round(8 * seconds))


@contextlib.contextmanager
def _unavailable_model(source: str):
    """Turn Hugging Face's error for a model that is neither a folder nor downloaded into one that says what to do."""
    try:
        yield
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load {source!r} for ASR: it is not a local folder with a config.json and not in the Hugging Face "
            f"cache. Download it on a machine with internet (`hf download {source}`) and copy the cache here, or "
            f"pass a local folder ({error.__class__.__name__}: {str(error).splitlines()[0]})") from error


def _full_whisper(base: str):
    """The full pretrained Whisper (model, processor) of a registry name, Hub id or folder."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    spec = MODELS[base] if base in MODELS else None
    source = spec.source if spec else base
    if spec and spec.local_folder is not None:
        source = spec.local_folder()
    if source == RANDOM_INIT:
        raise ValueError(f"{base!r} is a random test model without a trained decoder; ASR needs a pretrained "
                         "Whisper such as 'whisper-tiny.en'")
    with _unavailable_model(source):
        model, info = WhisperForConditionalGeneration.from_pretrained(source, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"{base!r} is not a complete Whisper ({len(info['missing_keys'])} weights missing, e.g. "
                         f"{info['missing_keys'][0]}): ASR needs the full pretrained model the encoder was tuned "
                         "from, e.g. 'openai/whisper-small'")
    return model.eval(), WhisperProcessor.from_pretrained(source)


def _ctc_model(checkpoint: str, family: str):
    """A CTC model and its processor; a clear error if ``checkpoint`` has no CTC head."""
    from transformers import AutoConfig, AutoModelForCTC, AutoProcessor

    source = MODELS[checkpoint].source if checkpoint in MODELS else checkpoint
    architectures = []
    if source != RANDOM_INIT:
        with _unavailable_model(source):
            architectures = AutoConfig.from_pretrained(source).architectures or []
    if not any(a.endswith("ForCTC") for a in architectures):
        raise ValueError(
            f"ASR with a {family} encoder needs a CTC head, and {checkpoint!r} has none (architectures: "
            f"{architectures or 'not given'}). Pass ctc_checkpoint= a CTC fine-tuned model of the same size, e.g. "
            "'facebook/wav2vec2-base-960h' (wav2vec2-base) or 'facebook/hubert-large-ls960-ft' (hubert-large); "
            "the encoder's weights are swapped into it")
    return AutoModelForCTC.from_pretrained(source).eval(), AutoProcessor.from_pretrained(source)


def swap_encoder(target: torch.nn.Module, encoder: SpeechEncoder) -> torch.nn.Module:
    """Copy ``encoder``'s weights into the encoder part of a full model, in place.

    Parameters
    ----------
    target : torch.nn.Module
        The Hugging Face module that plays the encoder's role: ``model.model.encoder``
        of a WhisperForConditionalGeneration, ``model.wav2vec2`` / ``model.hubert``
        of a CTC model.
    encoder : SpeechEncoder
        The (brain-tuned) encoder; same architecture as ``target``.

    Returns
    -------
    torch.nn.Module
        ``target``.
    """
    state = encoder.encoder.state_dict()
    mismatched = [k for k, v in target.state_dict().items() if k in state and state[k].shape != v.shape]
    result = target.load_state_dict(state, strict=False) if not mismatched else None
    ignored = {"masked_spec_embed"}  # SpecAugment's mask vector: no part of inference
    problems = mismatched or sorted((set(result.missing_keys) | set(result.unexpected_keys)) - ignored)
    if problems:
        raise ValueError(f"encoder {encoder.name!r} does not fit the decoding model's encoder "
                         f"({len(problems)} weights differ, e.g. {problems[:3]}): use a decoder or CTC head "
                         "of the same base architecture")
    return target


def load_transcriber(encoder: SpeechEncoder, base_model: str, ctc_checkpoint: str | None = None) -> Transcriber:
    """A greedy ASR model that runs ``encoder``: its weights inside a pretrained decoder or CTC head.

    Parameters
    ----------
    encoder : SpeechEncoder
    base_model : str
        Registry name, Hub id or folder of the model the encoder was tuned
        from; Whisper's decoder comes from it, and so does the CTC head when it
        is a CTC fine-tuned checkpoint.
    ctc_checkpoint : str, optional
        Wav2vec2 / HuBERT: the CTC model to take the head from when
        ``base_model`` has none.

    Returns
    -------
    Transcriber
    """
    if encoder.family == "whisper":
        model, processor = _full_whisper(base_model)
        swap_encoder(model.model.encoder, encoder)
        return Transcriber(model.to(encoder.device), processor, "whisper")
    model, processor = _ctc_model(ctc_checkpoint or base_model, encoder.family)
    swap_encoder(getattr(model, model.base_model_prefix), encoder)
    return Transcriber(model.to(encoder.device), processor, "ctc")


def transcribe_task(transcriber: Transcriber, task: DownstreamTask, batch_size: int = 8,
                    progress: bool = True) -> pd.DataFrame:
    """Transcripts of the test split of an ASR task.

    Returns
    -------
    pandas.DataFrame
        ``example_id, label`` (reference) ``, prediction`` (hypothesis).
    """
    examples = task.split("test")
    hypotheses = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"ASR {task.name}", disable=not progress):
        hypotheses += transcriber([load_audio(e) for e in examples[start:start + batch_size]])
    return pd.DataFrame({"example_id": [e.id for e in examples], "label": [e.label for e in examples],
                         "prediction": [h.strip() for h in hypotheses]})


# ======================================================================================
# Scores
# ======================================================================================


def _multi_hot(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Multi-label strings of any shape (...) -> multi-hot array (..., n_classes)."""
    return encode_multilabel(labels.ravel(), classes).reshape(*labels.shape, len(classes))


def _scored_classes(*labels: np.ndarray) -> list[str]:
    """The classes named in arrays of multi-label strings (a table does not keep the task's classes: a class that no
    label or prediction names changes no score)."""
    return sorted({name for array in labels for label in array.ravel() for name in label.split()})


def _metric_samples(group: pd.DataFrame) -> tuple[tuple[np.ndarray, ...], dict]:
    """Per-example arrays of a prediction group (one task, one or several seeds) and the metrics on them.

    Returns arrays of shape (n_examples, ...) and ``{metric: f(*arrays) -> float}``; each metric
    averages the seeds. Classification: labels (n_examples,) and predictions (n_examples, n_seeds);
    multi-label: multi-hot labels (n_examples, n_classes) and predictions (n_examples, n_seeds, n_classes).
    """
    wide = group.pivot(index="example_id", columns="seed", values="prediction")
    labels = group.drop_duplicates("example_id").set_index("example_id").loc[wide.index, "label"].to_numpy()
    predictions = wide.to_numpy()  # (n_examples, n_seeds)
    kind = group["kind"].iloc[0]
    if kind == "asr":
        edits = np.array([[word_edits(r, h) for h in row] for r, row in zip(labels, predictions)], dtype=float)
        n_words = np.array([len(normalize_words(r)) for r in labels], dtype=float)
        return (edits, n_words), {ASR_METRIC: lambda e, n: 1.0 - float(e.sum(axis=0).mean() / max(n.sum(), 1.0))}
    if kind == "multilabel":
        classes = _scored_classes(labels, predictions)
        labels, predictions = _multi_hot(labels, classes), _multi_hot(predictions, classes)

    def averaged(metric):
        return lambda y, p: float(np.mean([metric(y, p[:, s]) for s in range(p.shape[1])]))

    return (labels, predictions), {name: averaged(f) for name, f in PROBE_METRICS[kind].items()}


def _score_rows(group: pd.DataFrame, n_resamples: int, confidence: float, seed: int) -> list[dict]:
    samples, metrics = _metric_samples(group)
    rows = []
    for name, metric in metrics.items():
        ci = bootstrap_ci(metric, *samples, n_resamples=n_resamples, confidence=confidence, seed=seed)
        rows.append({"metric": name, "value": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                     "n_test": len(samples[0])})
    return rows


def score_predictions(predictions: pd.DataFrame, n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """Test scores per model, variant, subject, task and seed, with bootstrap intervals over test examples.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :attr:`DownstreamResults.predictions`.
    n_resamples, confidence, seed
        See :func:`bt_utils.downstream.metrics.bootstrap_ci`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SCORE_COLUMNS` (the ``downstream.parquet`` schema).
    """
    rows = []
    for key, group in predictions.groupby([*KEYS, "seed", "layer"], sort=False):
        fields = dict(zip([*KEYS, "seed", "layer"], key))
        rows += [fields | row for row in _score_rows(group, n_resamples, confidence, seed)]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def summarize(predictions: pd.DataFrame, n_resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """Scores averaged over seeds, with a bootstrap interval of that average and the chance level.

    Each bootstrap replicate resamples the test examples once and scores every
    seed's predictions on them, so the interval reflects the test set's size
    with the seeds averaged. ``chance`` is the mean score of predictions that
    are a random permutation of the test labels (guessing with the label
    frequencies; multi-label: whole label sets are permuted, which keeps each
    class's frequency); NaN for ASR. A multi-label probe can beat this chance
    without reading the audio: predicting a class of frequency ``p`` in every
    example scores its F1 ``2p / (1 + p)``, above the ``p`` of guessing.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :attr:`DownstreamResults.predictions`.
    n_resamples, confidence, seed
        See :func:`bt_utils.downstream.metrics.bootstrap_ci`.

    Returns
    -------
    pandas.DataFrame
        ``model, variant, subject, task, metric, value, ci_low, ci_high,
        chance, n_test, n_seeds, layers`` (chosen layer per seed, e.g. ``"3,3,4"``).
    """
    rows = []
    for key, group in predictions.groupby(list(KEYS), sort=False):
        layers = group.drop_duplicates("seed").sort_values("seed").layer.astype(str)
        chance = _chance_levels(group, seed)
        for row in _score_rows(group, n_resamples, confidence, seed):
            rows.append(dict(zip(KEYS, key)) | row | {"chance": chance.get(row["metric"], np.nan),
                                                      "n_seeds": group.seed.nunique(), "layers": ",".join(layers)})
    columns = [*KEYS, "metric", "value", "ci_low", "ci_high", "chance", "n_test", "n_seeds", "layers"]
    return pd.DataFrame(rows, columns=columns)


def _chance_levels(group: pd.DataFrame, seed: int, n_permutations: int = 200) -> dict[str, float]:
    """Mean scores of random permutations of the test labels (see :func:`summarize`); empty for ASR."""
    kind = group["kind"].iloc[0]
    if kind == "asr":
        return {}
    labels = group.drop_duplicates("example_id").label.to_numpy()
    if kind == "multilabel":
        labels = _multi_hot(labels, _scored_classes(labels))
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(labels) for _ in range(n_permutations)]  # permutes rows: whole label sets
    return {name: float(np.mean([metric(labels, s) for s in shuffled])) for name, metric in PROBE_METRICS[kind].items()}


# ======================================================================================
# Running a comparison
# ======================================================================================


@dataclass
class DownstreamResults:
    """Everything a downstream run produced.

    Attributes
    ----------
    scores : pandas.DataFrame
        Per-seed test scores (:data:`SCORE_COLUMNS`): ``downstream.parquet``.
    predictions : pandas.DataFrame
        Test predictions: ``model, variant, subject, task, kind, seed, layer,
        example_id, label, prediction``.
    selection : pandas.DataFrame
        Validation scores per layer at its best epoch: ``model, variant,
        subject, task, seed, layer, epoch, macro_f1, accuracy, micro_f1, loss,
        chosen`` (``accuracy`` NaN for multi-label tasks, ``micro_f1`` for
        classification tasks).
    """

    scores: pd.DataFrame
    predictions: pd.DataFrame
    selection: pd.DataFrame

    def write(self, output_dir: str | os.PathLike) -> list[Path]:
        """Write ``downstream.parquet``, ``downstream_predictions.parquet`` and ``probe_selection.parquet``."""
        output_dir = Path(output_dir)
        return [write_table(self.scores, output_dir / "downstream.parquet"),
                write_table(self.predictions, output_dir / "downstream_predictions.parquet"),
                write_table(self.selection, output_dir / "probe_selection.parquet")]


def run_downstream(entries: Iterable[ModelEntry | Mapping | str], tasks: Iterable[DownstreamTask],
                   seeds: Iterable[int] = (0, 1, 2), probe: ProbeConfig = ProbeConfig(), device: str = "auto",
                   native_length: bool = False, batch_size: int = 8, ctc_checkpoint: str | None = None,
                   n_resamples: int = 1000, confidence: float = 0.95, cache: bool = True,
                   cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DownstreamResults:
    """Evaluate every model variant on every task (see the module documentation for the protocol).

    Parameters
    ----------
    entries : iterable of ModelEntry, mapping or str
        The variants (see :func:`model_entry`), e.g. ``[{"variant": "pretrained",
        "path": "whisper-tiny.en"}, {"variant": "brain-tuned", "path": "runs/DEMO01/01_brain_tuning"}]``.
    tasks : iterable of DownstreamTask
    seeds : iterable of int
        Probe seeds (classification and multi-label tasks); ASR is decoded once, under the first seed.
    probe : ProbeConfig
    device : str
        See :func:`bt_utils.models.registry.select_device`.
    native_length : bool
        Whisper: encode the real length instead of 30 s for the probes (much
        faster on short clips; the paper pads to 30 s). ASR always decodes 30-s inputs.
    batch_size : int
        Most utterances per encoder pass (see :func:`extract_features`) and per ASR batch.
    ctc_checkpoint : str, optional
        CTC model for wav2vec2 / HuBERT variants whose base has no CTC head.
    n_resamples, confidence : int, float
        Bootstrap of the per-seed intervals.
    cache, cache_dir
        Feature cache (see :func:`extract_features`).
    progress : bool

    Returns
    -------
    DownstreamResults
    """
    entries, tasks, seeds = [model_entry(e) for e in entries], list(tasks), list(seeds)
    keys = [(e.model, e.variant, e.subject) for e in entries]
    if len(set(keys)) != len(keys) or not entries or not tasks or not seeds:
        raise ValueError(f"need at least one entry, task and seed, and distinct (model, variant, subject) "
                         f"entries; got {keys}, {len(tasks)} tasks, seeds {seeds}")
    predictions, selections = [], []
    for entry in entries:
        encoder = load_encoder(entry.path, device=device)
        if encoder.family == "whisper":
            encoder.native_length = native_length
        fingerprint = encoder.fingerprint()
        labels = {"model": entry.model, "variant": entry.variant, "subject": entry.subject}
        for task in tasks:
            log.info("%s (%s) on %s", entry.variant, entry.path, task.name)
            if task.kind == "asr":
                transcriber = load_transcriber(encoder, entry.model, ctc_checkpoint)
                table = transcribe_task(transcriber, task, batch_size, progress).assign(seed=seeds[0],
                                                                                          layer=encoder.n_layers)
                del transcriber
            else:
                features = extract_features(encoder, task, batch_size, cache, cache_dir, fingerprint, progress)
                table, selection = probe_task(features, task, seeds, probe)
                selections.append(selection.assign(**labels, task=task.name))
            predictions.append(table.assign(**labels, task=task.name, kind=task.kind))
        del encoder
    predictions = pd.concat(predictions, ignore_index=True)[
        [*KEYS, "kind", "seed", "layer", "example_id", "label", "prediction"]]
    selection_columns = [*KEYS, "seed", "layer", "epoch", "macro_f1", "accuracy", "micro_f1", "loss", "chosen"]
    selection = (pd.concat(selections, ignore_index=True).reindex(columns=selection_columns) if selections
                 else pd.DataFrame(columns=selection_columns))
    return DownstreamResults(score_predictions(predictions, n_resamples, confidence), predictions, selection)


# ======================================================================================
# Figure
# ======================================================================================


def plot_downstream(summary: pd.DataFrame, metric: str = "macro_f1", tasks: Sequence[str] | None = None):
    """Bar chart per task, variants side by side with their confidence intervals (the paper's Figure 4).

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`summarize`.
    metric : str
        Metric of the probed (classification and multi-label) tasks; ASR tasks show ``one_minus_wer``.
    tasks : sequence of str, optional
        Tasks and their order (default: as in ``summary``).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per task; a group of bars per model, one bar per variant (and
        subject); dashed line: chance.
    """
    import matplotlib.pyplot as plt

    tasks = list(tasks or summary.task.unique())
    bars = list(dict.fromkeys(zip(summary.variant, summary.subject)))  # a variant tuned on each subject
    colours = dict(zip(dict.fromkeys(summary.variant), plt.get_cmap("tab10").colors))
    models = list(dict.fromkeys(summary.model))
    width = 0.8 / len(bars)
    figure, axes = plt.subplots(1, len(tasks), figsize=(2.2 + 0.5 * len(bars) * len(models) * len(tasks), 3.6),
                                squeeze=False)
    legend = {}
    for ax, task in zip(axes[0], tasks):
        rows = summary[(summary.task == task) & summary.metric.isin([metric, ASR_METRIC])]
        if rows.empty:
            raise ValueError(f"summary has no {metric!r} or {ASR_METRIC!r} rows for task {task!r}")
        for row in rows.itertuples():
            b = bars.index((row.variant, row.subject))
            x = models.index(row.model) - 0.4 + width * (b + 0.5)
            label = f"{row.variant} ({row.subject})" if row.subject else row.variant
            hatch = _HATCHES[[v for v, _ in bars[:b]].count(row.variant) % len(_HATCHES)]  # subjects of a variant
            legend[label] = ax.bar(x, row.value, width, color=colours[row.variant], hatch=hatch, edgecolor="white")
            ax.errorbar(x, row.value, yerr=[[row.value - row.ci_low], [row.ci_high - row.value]], color="black",
                        capsize=3, linewidth=1)
        chance = rows.chance.dropna()
        if len(chance):
            legend["chance"] = ax.axhline(chance.mean(), color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(_METRIC_NAMES[rows.metric.iloc[0]])
        ax.set_ylim(0, 1.05)
    figure.legend(legend.values(), legend.keys(), loc="upper center", ncol=len(legend), frameon=False,
                  bbox_to_anchor=(0.5, 1.08))
    figure.tight_layout()
    return figure


def plot_layer_selection(selection: pd.DataFrame):
    """Validation macro-F1 of each layer's probe (mean over seeds), one panel per task, one line per variant.

    Parameters
    ----------
    selection : pandas.DataFrame
        :attr:`DownstreamResults.selection`.

    Returns
    -------
    matplotlib.figure.Figure
        Chosen layers are marked with a dot per seed.
    """
    import matplotlib.pyplot as plt

    tasks = list(selection.task.unique())
    if not tasks:
        raise ValueError("selection is empty: no classification or multi-label task was probed")
    figure, axes = plt.subplots(1, len(tasks), figsize=(1.5 + 3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = selection[selection.task == task]
        for (model, variant, subject), group in rows.groupby(["model", "variant", "subject"], sort=False):
            label = " ".join(part for part in (model, variant, subject) if part)
            mean = group.groupby("layer").macro_f1.mean()
            line, = ax.plot(mean.index, mean.to_numpy(), marker="", label=label)
            chosen = group[group.chosen]
            ax.scatter(chosen.layer, chosen.macro_f1, color=line.get_color(), s=18, zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("layer (0 = input of layer 1)")
        ax.set_ylabel("validation macro-F1")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure
