"""Brain-tuning the top layers only: the frozen layers' output per TR, computed once and cached.

Below the trained layers the output is the same in every epoch and run, so :func:`frozen_inputs` stores it per story
(float16, memory-mapped) and :meth:`bt_utils.models.encoder.SpeechEncoder.run_layers` continues from it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cache_root
from ..results import atomic_path, in_turn
from .brain_model import masked_mean
from .encoder import SpeechEncoder
from .precision import autocast_context

log = logging.getLogger(__name__)

CACHE_FOLDER = "tuning_inputs"
CACHE_VERSION = 2
"""Version of the cache files (2: the initial model's pooled outputs beside the states)."""


class FrozenStates(torch.utils.data.Dataset):
    """States entering the first trained layer, one (F, D) array per item, with their targets.

    Parameters
    ----------
    states : dict of str to ndarray of shape (n_story_trs, F, D)
        Per story, the states of every trimmed TR (float16, possibly memory-mapped).
    targets : torch.Tensor of shape (n_items, n_targets)
    pooled : dict of str to ndarray of shape (n_story_trs, D)
        Per story, the initial model's output averaged over frames (the head's input before any tuning).

    Attributes
    ----------
    initial_pooled : torch.Tensor of shape (n_items, D)
        ``pooled`` of every item, float32.
    """

    def __init__(self, states: dict[str, np.ndarray], items: list[tuple[str, int]], targets: torch.Tensor,
                 n_valid_frames: int, heads: dict[str, slice], pooled: dict[str, np.ndarray]):
        self.states, self.items, self.targets, self.heads = states, list(items), targets, dict(heads)
        n_frames = next(iter(states.values())).shape[1]
        self.frame_mask = torch.arange(n_frames) < n_valid_frames
        self.initial_pooled = torch.from_numpy(np.stack([pooled[story][row] for story, row in self.items]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        story, row = self.items[index]
        return torch.from_numpy(np.asarray(self.states[story][row], dtype=np.float32)), self.targets[index]


def _cache_file(encoder: SpeechEncoder, fingerprint: str, start: int, spec, story: str, audio: np.ndarray,
                n_trs: int, cache_dir, precision: str) -> Path:
    described = [CACHE_VERSION, fingerprint, start, repr(spec), n_trs,
                 hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()]
    if precision != "off":  # float32 states keep the keys of the files written before precision
        described.append(precision)
    key = json.dumps(described)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root(cache_dir) / CACHE_FOLDER / f"{encoder.family}-layer{start}" / f"{story}-{digest}.npy"


@torch.no_grad()
def _story_states(encoder: SpeechEncoder, data, story: str, rows: list[int], start: int, batch_size: int,
                  precision: str) -> tuple[np.ndarray, np.ndarray]:
    """``hidden_states[start]`` of the encoder (eval mode) for the windows of ``rows`` of ``data``, float16 of
    shape (n_rows, F, D), and its output averaged over valid frames, float32 of shape (n_rows, D)."""
    windows = [data.window(story, tr) for tr in rows]
    out, pooled = None, np.empty((len(windows), encoder.hidden_size), np.float32)
    for first in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.stack(windows[first:first + batch_size])).to(encoder.device)
        with autocast_context(encoder.device, precision):
            output = encoder(batch)
        states = output.hidden_states[start].to("cpu", torch.float16).numpy()
        if out is None:
            out = np.empty((len(windows), *states.shape[1:]), dtype=np.float16)
        out[first:first + len(states)] = states
        pooled[first:first + len(states)] = masked_mean(output.last_hidden_state.float(), output.frame_mask).cpu()
    return out, pooled


def frozen_inputs(encoder: SpeechEncoder, data, start: int, fingerprint: str | None = None,
                  cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                  progress: bool = True, precision: str = "off") -> FrozenStates:
    """The states entering layer ``start + 1`` for every item of a tuning set, from the cache or computed (under
    autocast to ``precision``, a resolved precision of :mod:`bt_utils.models.precision`)."""
    if not 0 <= start < encoder.n_layers:
        raise ValueError(f"start={start!r} must lie in 0..{encoder.n_layers - 1}: {encoder.name} has "
                         f"{encoder.n_layers} layers")
    fingerprint = fingerprint or encoder.fingerprint()
    stories = list(dict.fromkeys(story for story, _ in data.items))
    paths = {story: _cache_file(encoder, fingerprint, start, data.spec, story, data.audio[story],
                                len(data.story_rows(story)), cache_dir, precision) for story in stories}

    def load_or_compute(story: str) -> tuple[np.ndarray, np.ndarray]:
        path = paths[story]
        pooled_path = path.with_suffix(".pooled.npy")
        if not path.is_file():
            values, means = _story_states(encoder, data, story, data.story_rows(story), start, batch_size, precision)
            for target, array in ((pooled_path, means), (path, values)):  # the states last: the flag
                with atomic_path(target) as staged, open(staged, "wb") as handle:
                    np.save(handle, array)
        return np.load(path, mmap_mode="r"), np.load(pooled_path)

    was_training = encoder.training
    encoder.eval()
    try:  # parallel tunings split the stories: each computes those no other is computing
        with tqdm(total=len(stories), desc=f"frozen layers 0-{start} of {encoder.name}", disable=not progress) as bar:
            loaded = in_turn(stories, lambda story: [paths[story].with_name(paths[story].name + ".lock")],
                             load_or_compute, bar.update)
    finally:
        encoder.train(was_training)
    states = {story: values for story, (values, _) in loaded.items()}
    pooled = {story: means for story, (_, means) in loaded.items()}
    row_of = {story: {tr: row for row, tr in enumerate(data.story_rows(story))} for story in states}
    items = [(story, row_of[story][tr]) for story, tr in data.items]
    n_valid = int(encoder.frame_lengths(torch.tensor([data.spec.window_samples]))[0])
    return FrozenStates(states, items, data.targets, n_valid, data.heads, pooled)
