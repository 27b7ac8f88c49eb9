"""Labelled speech for downstream tasks: :class:`Example`, :class:`DownstreamTask` and their audio.

A label is one class name (``"classification"``), class names separated by spaces (``"multilabel"``, see
:func:`encode_multilabel`) or a transcript (``"asr"``); audio is a file path or a waveform in memory."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
import soxr

from ..validation import check_option

SAMPLE_RATE = 16_000
"""Sample rate of the audio every task returns, in Hz."""

SPLITS = ("train", "validation", "test")
KINDS = ("classification", "multilabel", "asr")
"""Kinds of task: one class per example, any number of classes per example (multi-hot), transcription."""


# ======================================================================================
# Data types
# ======================================================================================


@dataclass(frozen=True, eq=False)
class Example:
    """One labelled piece of audio.

    Attributes
    ----------
    id : str
        Unique within its task.
    split : {"train", "validation", "test"}
    label : str
        Class name; for a multi-label task the names of the classes present, separated by spaces, in the task's
        class order (``""`` for none); for ASR the reference transcript.
    audio : str or ndarray of shape (n_samples,)
        Path of an audio file (any rate; read as mono and resampled to 16 kHz), or a float32 waveform at 16 kHz.
    source : str
        The utterance the audio comes from; examples with the same source share one encoder pass. Default: the id.
    span : tuple of float, optional
        ``(start, end)`` in seconds: only the frames in this span are pooled.
    """

    id: str
    split: str
    label: str
    audio: str | np.ndarray
    source: str = ""
    span: tuple[float, float] | None = None
    speaker: str = ""

    def __post_init__(self):
        check_option("split", self.split, SPLITS)
        if not self.source:
            object.__setattr__(self, "source", self.id)

    def signature(self) -> str:
        """What identifies the example's content: id, source, span and audio (bytes, or path, size and mtime)."""
        if isinstance(self.audio, np.ndarray):
            audio = hashlib.sha1(np.ascontiguousarray(self.audio, dtype=np.float32).tobytes()).hexdigest()
        else:
            stat = os.stat(self.audio)
            audio = f"{self.audio}:{stat.st_size}:{stat.st_mtime_ns}"
        return f"{self.id}|{self.source}|{self.span}|{audio}"


@dataclass(frozen=True, eq=False)
class DownstreamTask:
    """A downstream task: examples in three splits and what they mean.

    Attributes
    ----------
    kind : {"classification", "multilabel", "asr"}
    examples : tuple of Example
    classes : tuple of str
        Class names (classification, multi-label; no whitespace in a multi-label class name); empty for ASR.
    paper_task : str
        The task of the paper this is (or stands in for).
    origin : str
        Where the data came from (folder, dataset id or generator settings).
    """

    name: str
    kind: str
    examples: tuple[Example, ...]
    classes: tuple[str, ...] = ()
    description: str = ""
    paper_task: str = ""
    origin: str = ""

    def __post_init__(self):
        check_option("kind", self.kind, KINDS)
        ids = [e.id for e in self.examples]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"task {self.name!r} has duplicate example id {duplicate!r}")
        if self.kind == "multilabel":
            spaced = [c for c in self.classes if not c or c.split() != [c]]
            if spaced:
                raise ValueError(f"task {self.name!r}: multi-label class names must be non-empty and free of "
                                 f"whitespace (labels list them separated by spaces); got {spaced[:5]}")
        if self.kind != "asr":
            unknown = {name for e in self.examples for name in self._label_classes(e.label)} - set(self.classes)
            if unknown:
                raise ValueError(f"task {self.name!r} has labels {sorted(unknown)[:5]} outside its classes")

    def _label_classes(self, label: str) -> list[str]:
        """The classes a label names (classification and multi-label tasks)."""
        return label.split() if self.kind == "multilabel" else [label]

    def split(self, name: str) -> list[Example]:
        """The examples of one split, in task order."""
        check_option("split", name, SPLITS)
        return [e for e in self.examples if e.split == name]

    def counts(self) -> pd.DataFrame:
        """Examples per class (rows) and split (columns): for a multi-label task the examples each class
        occurs in (classes that never occur have no row); one row ``"all"`` for ASR."""
        pairs = [(name, e.split) for e in self.examples
                 for name in (self._label_classes(e.label) if self.kind != "asr" else ["all"])]
        classes, splits = zip(*pairs) if pairs else ((), ())
        table = pd.crosstab(pd.Series(classes, name="class", dtype=str), pd.Series(splits, name="split", dtype=str))
        return table.reindex(columns=list(SPLITS), fill_value=0)

    def subsample(self, max_per_split: int | None, seed: int = 0) -> DownstreamTask:
        """At most ``max_per_split`` examples per split, drawn stratified by label (deterministic).

        Parameters
        ----------
        max_per_split : int or None
            None keeps every example.

        Returns
        -------
        DownstreamTask
            A new task; examples keep their order.
        """
        if max_per_split is None:
            return self
        if max_per_split < 1:
            raise ValueError(f"max_per_split={max_per_split!r} must be at least 1 (or None for all)")
        rng = np.random.default_rng(seed)
        keep: set[str] = set()
        for split in SPLITS:
            keep.update(_stratified_ids(self.split(split), max_per_split, rng))
        return replace(self, examples=tuple(e for e in self.examples if e.id in keep))


def encode_multilabel(labels: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot matrix of multi-label labels (class names separated by spaces).

    Returns
    -------
    ndarray of shape (n, n_classes)
        bool; column ``j`` is ``classes[j]``.
    """
    index = {name: column for column, name in enumerate(classes)}
    rows = []
    for label in labels:
        row = np.zeros(len(classes), dtype=bool)
        for name in label.split():
            if name not in index:
                raise ValueError(f"label {label!r} names {name!r}, which is not a class; classes: "
                                 f"{', '.join(classes[:10])}{'...' if len(classes) > 10 else ''}")
            row[index[name]] = True
        rows.append(row)
    return np.array(rows, dtype=bool).reshape(len(rows), len(classes))


def decode_multilabel(multi_hot: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Labels (class names in class order, separated by spaces) of a multi-hot matrix.

    Parameters
    ----------
    multi_hot : ndarray of shape (n, n_classes)
        Nonzero / True where a class is present.
    """
    multi_hot = np.asarray(multi_hot)
    if multi_hot.ndim != 2 or multi_hot.shape[1] != len(classes):
        raise ValueError(f"multi_hot must have shape (n, {len(classes)}) for {len(classes)} classes; "
                         f"got {multi_hot.shape}")
    return [" ".join(name for name, present in zip(classes, row) if present) for row in multi_hot]


def _stratified_ids(examples: list[Example], n: int, rng: np.random.Generator) -> list[str]:
    """Ids of ``n`` of ``examples`` (all if fewer), taken round-robin over the labels in random order."""
    if len(examples) <= n:
        return [e.id for e in examples]
    by_label: dict[str, list[str]] = {}
    for index in rng.permutation(len(examples)):
        by_label.setdefault(examples[index].label, []).append(examples[index].id)
    queues = [by_label[label] for label in rng.permutation(sorted(by_label))]
    rounds = max(len(q) for q in queues)
    interleaved = [q[i] for i in range(rounds) for q in queues if i < len(q)]
    return interleaved[:n]


def load_audio(example: Example) -> np.ndarray:
    """The example's whole audio (not cut to its span) as mono float32 at 16 kHz, shape (n_samples,)."""
    if isinstance(example.audio, np.ndarray):
        return np.asarray(example.audio, dtype=np.float32)
    path = Path(example.audio)
    if not path.is_file():
        raise FileNotFoundError(f"audio of example {example.id!r} not found: {path}")
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def audio_length(example: Example) -> int:
    """Number of samples of the example's audio at 16 kHz (as :func:`load_audio` gives it), without reading it all."""
    if isinstance(example.audio, np.ndarray):
        return len(example.audio)
    info = soundfile.info(example.audio)
    # soxr rounds half up: floor(frames * 16000 / rate + 1/2), in integers
    return (2 * info.frames * SAMPLE_RATE + info.samplerate) // (2 * info.samplerate)


# ======================================================================================
# Errors and Hugging Face datasets
# ======================================================================================
