"""Training and validation sets of brain-tuning: 10-s input windows per TR paired with responses.

:func:`build_tuning_sets` reads a participant's split, selects the target
voxels by their noise ceiling, applies the random-fMRI controls
(:func:`block_shuffle`, :func:`story_derangement`) or the text-embedding
targets, and returns :class:`TuningSet` objects that cut the input windows on
access. :mod:`bt_utils.models.tuning` trains on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.dataset import Dataset
from ..data.noise_ceiling import cc_max, select_voxels
from ..data.stimulus import WindowSpec, tr_input_window, trimmed_tr_indices
from ..validation import DataError
from .text_embeddings import embed_texts, window_texts

if TYPE_CHECKING:
    from .tuning import TuningConfig


class TuningSet(torch.utils.data.Dataset):
    """Input windows and targets of a set of TRs; windows are cut on access.

    Parameters
    ----------
    audio : dict of str to ndarray of shape (n_samples,)
        Audio of every story used.
    tr_times : dict of str to ndarray of shape (n_trs,)
    items : list of (str, int)
        (story, untrimmed TR index) per sample.
    targets : ndarray of shape (n_items, n_targets)
    spec : WindowSpec
    """

    def __init__(self, audio, tr_times, items, targets, spec: WindowSpec = WindowSpec()):
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} target rows")
        self.audio, self.tr_times, self.items, self.spec = audio, tr_times, list(items), spec
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        story, tr = self.items[index]
        return torch.from_numpy(self.window(story, tr)), self.targets[index]

    def window(self, story: str, tr: int) -> np.ndarray:
        """The input audio of one TR of a story (untrimmed index), shape (window_samples,)."""
        return tr_input_window(self.audio[story], self.tr_times[story], tr, self.spec)

    def story_rows(self, story: str) -> list[int]:
        """Untrimmed indices of every TR of ``story`` that has a response row."""
        return [int(i) for i in trimmed_tr_indices(len(self.tr_times[story]))]


def block_shuffle(responses: np.ndarray, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """Permute a story's responses in blocks of ``block_size`` TRs so that no TR keeps its own block's.

    The story is cut into blocks of ``block_size`` TRs (the last one may be
    shorter), and the blocks are concatenated in a random order in which
    every output TR gets a response from another block than the one it lies
    in: no block stays in place (a derangement), and when the shorter last
    block moves forward, the blocks after it, shifted by the difference, do
    not overlap their own place either. Orders are drawn uniformly among those.

    Parameters
    ----------
    responses : ndarray of shape (n_trs, n_voxels)
    block_size : int
    rng : numpy.random.Generator

    Returns
    -------
    shuffled : ndarray of shape (n_trs, n_voxels)
        The rows of ``responses``, reordered.

    Raises
    ------
    ValueError
        The story has fewer than 2 blocks, or 2 blocks of unequal lengths: no
        order moves every TR out of its block (a control that kept the real
        responses would be no control).
    """
    n_trs = len(responses)
    n_blocks = -(-n_trs // block_size)
    if n_blocks < 2 or (n_blocks == 2 and n_trs % block_size):
        remedy = f"use a block_size of at most {n_trs // 2} TRs" if n_trs >= 2 else "a story needs at least 2 TRs"
        raise ValueError(
            f"a story of {n_trs} TRs cannot be block-shuffled in blocks of block_size={block_size} TRs: it makes "
            f"{n_blocks} block(s){' of unequal lengths' if n_blocks == 2 else ''}, and no order of them moves every "
            f"TR out of its own block; {remedy}"
        )
    own_block = np.arange(n_trs) // block_size
    while True:  # rejection sampling: between 1 in 6 and 1 in 2 of the orders qualify
        order = rng.permutation(n_blocks)
        source = np.concatenate([np.arange(b * block_size, min((b + 1) * block_size, n_trs)) for b in order])
        if np.all(source // block_size != own_block):
            return responses[source]


def _block_shuffle_story(story: str, responses: np.ndarray, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`block_shuffle` with the story named in its error."""
    try:
        return block_shuffle(responses, block_size, rng)
    except ValueError as error:
        raise DataError(f"story {story!r}: {error}") from error


def story_derangement(stories: list[str], rng: np.random.Generator) -> dict[str, str]:
    """Pair every story with a different one (a random derangement)."""
    if len(stories) < 2:
        raise DataError(f"the story-swap control needs at least two stories, got {stories}")
    while True:
        order = rng.permutation(len(stories))
        if not np.any(order == np.arange(len(stories))):
            return {stories[i]: stories[j] for i, j in enumerate(order)}


def _subset(items: list, targets: np.ndarray, limit: int | None, rng: np.random.Generator):
    if limit is None or limit >= len(items):
        return items, targets
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep], targets[keep]


def build_tuning_sets(dataset: Dataset, subject: str, config: TuningConfig, spec: WindowSpec = WindowSpec()):
    """Training and validation sets of a subject, with the control of ``config`` applied.

    Returns
    -------
    train, validation : TuningSet
    selection : dict
        ``target_kind`` (``"voxels"``, or ``"text_embedding"`` for that control),
        ``n_targets``, ``voxels`` (the selected voxel indices, the targets; None
        when the targets are embedding dimensions), ``cc_max`` of those voxels
        (or None), the stories, the control and its story pairing.
    """
    split = dataset.split(subject)
    brain_targets = config.control != "text_embedding"
    if brain_targets:
        ceiling = cc_max(dataset.load_repeats(subject))
        voxels = select_voxels(ceiling, config.cc_max_threshold)
    rng = np.random.default_rng(config.seed)  # the controls' draws
    subset_rng = np.random.default_rng([config.seed, 1])  # apart, so that every control keeps the same TRs
    stories = [*split.train, *split.validation]
    audio = {s: dataset.load_audio(s) for s in stories}
    tr_times = {s: dataset.tr_times(s) for s in stories}
    selection = {"subject": subject, "target_kind": "voxels" if brain_targets else "text_embedding",
                 "voxels": voxels.tolist() if brain_targets else None,
                 "cc_max": ceiling[voxels].tolist() if brain_targets else None,
                 "train_stories": list(split.train), "validation_stories": list(split.validation),
                 "control": config.control}

    if config.control == "story_swap":  # pairs span both splits, so a single validation story works
        pairing = story_derangement(stories, rng)
        selection["story_swap"] = pairing

    def story_targets(group: list[str]) -> dict[str, np.ndarray]:
        if not brain_targets:
            return {s: embed_texts(window_texts(dataset.transcript(s), tr_times[s], trimmed_tr_indices(len(tr_times[s])), spec))
                    for s in group}
        source = pairing if config.control == "story_swap" else {s: s for s in group}
        responses = {s: dataset.load_responses(subject, source[s])[:, voxels] for s in group}
        if config.control == "block_shuffle":
            return {s: _block_shuffle_story(s, r, config.block_size, rng) for s, r in responses.items()}
        return responses

    def make_set(group: list[str], limit: int | None) -> TuningSet:
        if not group:
            raise DataError(f"the split of {dataset.root} has no stories for this set; tuning needs training and validation stories")
        targets = story_targets(group)
        items, rows = [], []
        for story in group:
            indices = trimmed_tr_indices(len(tr_times[story]))
            n = min(len(indices), len(targets[story]))  # swapped stories differ in length
            items += [(story, int(i)) for i in indices[:n]]
            rows.append(targets[story][:n])
        items, rows = _subset(items, np.concatenate(rows), limit, subset_rng)
        return TuningSet(audio, tr_times, items, rows, spec)

    train = make_set(list(split.train), config.max_train_trs)
    validation = make_set(list(split.validation), config.max_validation_trs)
    selection["n_targets"] = int(train.targets.shape[1])
    return train, validation, selection


def target_names(selection: dict) -> list[str]:
    """Names of the targets of a selection, one per head output: ``"voxel 1234"`` or ``"embedding dimension 7"``.

    Parameters
    ----------
    selection : dict
        As returned by :func:`build_tuning_sets` (or stored in a training record).

    Returns
    -------
    names : list of str, length ``n_targets``
    """
    if selection["voxels"] is None:
        return [f"embedding dimension {i}" for i in range(selection["n_targets"])]
    return [f"voxel {v}" for v in selection["voxels"]]
