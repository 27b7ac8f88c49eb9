"""Frozen-encoder features of downstream examples: every layer, pooled per example, cached on disk.

Hidden states are mean-pooled over the frames computed from real audio (inside the example's span, if any). Only
clips of equal length share an encoder pass where padding would change the features (:func:`source_batches`)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cache_root
from ..models.encoder import WHISPER_HOP, WHISPER_N_FFT, SpeechEncoder
from ..models.tuning import masked_mean
from ..results import atomic_path
from .tasks import SAMPLE_RATE, DownstreamTask, Example, audio_length, load_audio

log = logging.getLogger(__name__)

_FEATURE_VERSION = 2  # part of the feature cache key: raise it when the same encoder and examples give other features


def _frame_layers(encoder: SpeechEncoder) -> list[tuple[int, int, int]]:
    """The layers that turn samples into encoder frames, first to last, as ``(kernel, stride, padding)``."""
    if encoder.family == "whisper":
        convolutions = [(conv.kernel_size[0], conv.stride[0], conv.padding[0])
                        for conv in (encoder.encoder.conv1, encoder.encoder.conv2)]
        return [(WHISPER_N_FFT, WHISPER_HOP, WHISPER_N_FFT // 2), *convolutions]
    config = encoder.encoder.config
    return [(kernel, stride, 0) for kernel, stride in zip(config.conv_kernel, config.conv_stride)]


def frame_centres(encoder: SpeechEncoder, n_frames: int) -> np.ndarray:
    """Time of the centre of each encoder frame's receptive field, in seconds.

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
    """Where the features of ``task`` under the encoder with ``fingerprint`` are cached."""
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


def padding_changes_features(encoder: SpeechEncoder) -> bool:
    """Whether zero-padding a clip to a longer one in its batch changes its features."""
    if encoder.family == "whisper":
        return encoder.native_length
    return not encoder.settings["attention_mask"]


def source_batches(examples: Sequence[Example], batch_size: int, equal_lengths: bool) -> list[list[list[int]]]:
    """Indices of ``examples`` grouped by source, sources sorted by length (longest first), in batches of at
    most ``batch_size`` sources; with ``equal_lengths``, only sources of the same length share a batch."""
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.source, []).append(index)
    lengths = {source: audio_length(examples[group[0]]) for source, group in groups.items()}
    ordered = sorted(groups, key=lambda source: -lengths[source])
    batches = []
    for _, run in itertools.groupby(ordered, key=lambda source: lengths[source] if equal_lengths else 0):
        run = [groups[source] for source in run]
        batches += [run[i:i + batch_size] for i in range(0, len(run), batch_size)]
    return batches


def padded_audio(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples' whole audio, zero-padded to the longest: (B, n_samples) float32, and the lengths (B,)."""
    audio = [load_audio(example) for example in examples]
    lengths = torch.tensor([len(a) for a in audio])
    padded = torch.zeros(len(audio), int(lengths.max()))
    for row, samples in enumerate(audio):
        padded[row, : len(samples)] = torch.from_numpy(samples)
    return padded, lengths


@torch.inference_mode()
def _encode_batch(encoder: SpeechEncoder, task: DownstreamTask, sources: list[list[int]], out: np.ndarray) -> None:
    """Pool every layer for the examples of a batch of sources into ``out`` (N, n_layers + 1, D)."""
    output = encoder(*padded_audio([task.examples[group[0]] for group in sources]))
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
    batches = source_batches(task.examples, batch_size, equal_lengths=padding_changes_features(encoder))
    for sources in tqdm(batches, desc=f"features {task.name}", disable=not progress):
        _encode_batch(encoder, task, sources, out)
    if cache:
        with atomic_path(path) as staged:
            np.savez(staged, features=out, ids=ids)
    return out


@torch.inference_mode()
def encode_frames(encoder: SpeechEncoder, examples: Sequence[Example], batch_size: int = 8) -> list[torch.Tensor]:
    """Hidden states of every layer at every frame computed from each example's real audio.

    Returns
    -------
    list of Tensor of shape (n_layers + 1, n_frames_i, D)
        float16 on the CPU, in the order of ``examples``.
    """
    encoder.eval()
    frames: list[torch.Tensor | None] = [None] * len(examples)
    for sources in source_batches(examples, batch_size, equal_lengths=padding_changes_features(encoder)):
        output = encoder(*padded_audio([examples[group[0]] for group in sources]))
        states = torch.stack(output.hidden_states)  # (n_layers + 1, B, F, D)
        for row, (group, n_valid) in enumerate(zip(sources, output.frame_mask.sum(dim=1).tolist())):
            kept = states[:, row, :n_valid].to("cpu", torch.float16)
            for index in group:  # examples of one source share its frames
                frames[index] = kept
    return frames


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one CPU thread inside the block: the probes' and heads' matrices are so small that
    thread start-up and synchronisation cost more than they save (up to 30x on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
