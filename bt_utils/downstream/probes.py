"""Downstream evaluation: linear probes on frozen encoders, ASR with CTC heads, scores and tables.

Per model variant, task and seed, one linear probe per layer; the layer and epoch with the best validation score
are chosen before the test split is predicted. docs/method.md ("Downstream probes") states the protocol."""

from __future__ import annotations

import functools
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

from ..models.registry import load_encoder
from ..results import write_table
from .asr import ASR_METRICS, WHISPER_DECODER_KIND, CtcConfig, ctc_task, whisper_decoder_task
from .features import extract_features, one_torch_thread
from .metrics import accuracy, bootstrap_ci, macro_f1, multilabel_f1, normalize_words, word_edits
from .tasks import DownstreamTask, Example, decode_multilabel, encode_multilabel

log = logging.getLogger(__name__)

PROBE_METRICS = {
    "classification": {"macro_f1": macro_f1, "accuracy": accuracy},
    "multilabel": {"macro_f1": functools.partial(multilabel_f1, average="macro"),
                   "micro_f1": functools.partial(multilabel_f1, average="micro")},
}
"""Metrics of the probed task kinds: kind -> {name: ``f(y_true, y_pred) -> float``}. Classification: labels of
shape (n,); multi-label: multi-hot arrays of shape (n, n_classes). Validation and test use the same ones."""
KEYS = ("model", "variant", "subject", "task")
SCORE_COLUMNS = ("model", "variant", "subject", "task", "layer", "metric", "value", "seed", "ci_low", "ci_high",
                 "n_test")
SELECTION_COLUMNS = (*KEYS, "seed", "layer", "epoch", "macro_f1", "accuracy", "micro_f1", "wer", "loss", "chosen")
"""Columns of ``probe_selection.parquet`` (:attr:`DownstreamResults.selection`)."""


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
        Anything :func:`bt_utils.models.registry.load_encoder` loads, or the run folder of
        :func:`bt_utils.models.tuning.tune`.
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
    """A :class:`ModelEntry` from a dict ``{"variant", "path"[, "model", "subject"]}`` or a path."""
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
# Linear probes
# ======================================================================================


@dataclass(frozen=True)
class ProbeConfig:
    """Training of the linear probes.

    Attributes
    ----------
    max_epochs : int
        Epochs trained; the epoch used is chosen on the validation split.
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
    """The probe chosen on the validation split: ``weight`` of shape (D, n_classes), ``bias`` of shape (n_classes,)."""

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

    Parameters
    ----------
    train_features, validation_features : ndarray of shape (N, n_layers + 1, D)
    train_labels, validation_labels : ndarray of shape (N,) or (N, n_classes)
        Class indices in ``[0, n_classes)`` (classification: cross-entropy), or multi-hot 0/1 labels (multi-label:
        binary cross-entropy per class, validation scored with :data:`PROBE_METRICS` ``["multilabel"]``).
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
    with one_torch_thread():
        history, best = _train_probes(x, y, x_validation, y_validation, n_classes, seed, config)
    layer = max(range(len(best)), key=lambda i: (best[i]["macro_f1"], -best[i]["loss"], -i))
    chosen = best[layer]
    columns = list(history[0])  # layer, epoch, the scores, loss
    layers = pd.DataFrame([{"layer": i} | b for i, b in enumerate(best)])[columns]
    return ProbeFit(layer, chosen["epoch"], chosen["weight"], chosen["bias"], mean[layer], std[layer],
                    pd.DataFrame(history), layers, multilabel=y.ndim == 2)


def _train_probes(x: torch.Tensor, y: torch.Tensor, x_validation: torch.Tensor, y_validation: torch.Tensor,
                  n_classes: int, seed: int, config: ProbeConfig) -> tuple[list[dict], list[dict]]:
    """Train probes on standardised features ``x`` (L, N, D); score them on ``x_validation`` (L, Nv, D)."""
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
    """Fit probes for several seeds and predict the test split with the chosen ones, from ``features`` of shape
    (n_examples, n_layers + 1, D) in the order of ``task.examples``.
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
    """Per-example arrays of a prediction group (one task, one or several seeds) and the metrics on them."""
    wide = group.pivot(index="example_id", columns="seed", values="prediction")
    labels = group.drop_duplicates("example_id").set_index("example_id").loc[wide.index, "label"].to_numpy()
    predictions = wide.to_numpy()  # (n_examples, n_seeds)
    kind = group["kind"].iloc[0]
    if kind in ASR_METRICS:
        edits = np.array([[word_edits(r, h) for h in row] for r, row in zip(labels, predictions)], dtype=float)
        n_words = np.array([len(normalize_words(r)) for r in labels], dtype=float)
        return (edits, n_words), {ASR_METRICS[kind]: lambda e, n: 1.0 - float(e.sum(axis=0).mean() / max(n.sum(), 1.0))}
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
    """Test scores per model, variant, subject, task and seed, with bootstrap intervals over test examples."""
    rows = []
    for key, group in predictions.groupby([*KEYS, "kind", "seed", "layer"], sort=False):  # kind: CTC or decoder
        fields = dict(zip([*KEYS, "kind", "seed", "layer"], key))
        rows += [fields | row for row in _score_rows(group, n_resamples, confidence, seed)]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def summarize(predictions: pd.DataFrame, n_resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """Scores averaged over seeds, with a bootstrap interval of that average and the chance level.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :attr:`DownstreamResults.predictions`.

    Returns
    -------
    pandas.DataFrame
        ``model, variant, subject, task, metric, value, ci_low, ci_high, chance, n_test, n_seeds, layers`` (chosen
        layer per seed, e.g. ``"3,3,4"``).
    """
    rows = []
    for key, group in predictions.groupby([*KEYS, "kind"], sort=False):  # kind: CTC or decoder rows of ASR
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
    if kind in ASR_METRICS:
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
        Test predictions: ``model, variant, subject, task, kind, seed, layer, example_id, label, prediction``;
        ``kind`` is the task's, or ``"asr_whisper_decoder"`` for the transcripts of Whisper's decoder.
    selection : pandas.DataFrame
        Validation scores per layer at its best epoch (:data:`SELECTION_COLUMNS`): ``model, variant, subject, task,
        seed, layer, epoch, macro_f1, accuracy, micro_f1, wer, loss, chosen``; the scores a task's kind has no use
        for are NaN (``accuracy`` for multi-label tasks, ``micro_f1`` for classification tasks, ``wer`` for both,
        the F1s and accuracy for ASR, whose ``loss`` is the CTC loss per character).
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
                   seeds: Iterable[int] = (0, 1, 2), probe: ProbeConfig = ProbeConfig(), ctc: CtcConfig = CtcConfig(),
                   device: str = "auto", native_length: bool = False, batch_size: int = 8,
                   whisper_decoder: bool = True, n_resamples: int = 1000, confidence: float = 0.95, cache: bool = True,
                   cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DownstreamResults:
    """Evaluate every model variant on every task (see the module documentation for the protocol).

    Parameters
    ----------
    entries : iterable of ModelEntry, mapping or str
        The variants (see :func:`model_entry`), e.g. ``[{"variant": "pretrained", "path": "whisper-tiny.en"},
        {"variant": "brain-tuned", "path": "runs/DEMO01/01_brain_tuning"}]``.
    tasks : iterable of DownstreamTask
    seeds : iterable of int
        Seeds of the probes and of the CTC heads; Whisper's decoder runs once, under the first seed.
    ctc : CtcConfig
        Training of the CTC heads (ASR tasks).
    native_length : bool
        Whisper: encode the real length instead of 30 s for the probes and CTC heads (much faster on short clips;
        the paper pads to 30 s).
    batch_size : int
        Most utterances per encoder pass (see :func:`bt_utils.downstream.features.extract_features`) and per batch
        of Whisper's decoder.
    whisper_decoder : bool
        Also transcribe ASR tasks with Whisper's pretrained decoder around each Whisper variant's encoder (``kind``
        ``"asr_whisper_decoder"``, metric ``one_minus_wer_whisper_decoder``).
    n_resamples, confidence : int, float
        Bootstrap of the per-seed intervals.
    cache, cache_dir
        Feature cache of the probes (see :func:`bt_utils.downstream.features.extract_features`).
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
                table, selection = ctc_task(encoder, task, seeds, ctc, batch_size, progress)
                if whisper_decoder and encoder.family == "whisper":
                    decoded = whisper_decoder_task(encoder, entry.model, task, batch_size, progress)
                    predictions.append(decoded.assign(**labels, task=task.name, kind=WHISPER_DECODER_KIND,
                                                      seed=seeds[0], layer=encoder.n_layers))
            else:
                features = extract_features(encoder, task, batch_size, cache, cache_dir, fingerprint, progress)
                table, selection = probe_task(features, task, seeds, probe)
            selections.append(selection.assign(**labels, task=task.name))
            predictions.append(table.assign(**labels, task=task.name, kind=task.kind))
        del encoder
    predictions = pd.concat(predictions, ignore_index=True)[
        [*KEYS, "kind", "seed", "layer", "example_id", "label", "prediction"]]
    selection = pd.concat(selections, ignore_index=True).reindex(columns=list(SELECTION_COLUMNS))
    return DownstreamResults(score_predictions(predictions, n_resamples, confidence), predictions, selection)
