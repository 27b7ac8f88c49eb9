"""Training and validation sets of brain-tuning: 10-s input windows per TR paired with responses.

:func:`build_tuning_sets` selects each participant's target voxels, applies the controls and returns
:class:`TuningSet` objects; with several participants an item holds every participant's responses side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    ``audio`` and ``tr_times`` map each story used to its samples (n_samples,) and TR times (n_trs,); ``targets`` has
    shape (n_items, n_targets), NaN where a participant has no response for the item.
    """

    def __init__(self, audio, tr_times, items, targets, spec: WindowSpec = WindowSpec(), *,
                 heads: Mapping[str, slice]):
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} target rows")
        self.audio, self.tr_times, self.items, self.spec = audio, tr_times, list(items), spec
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.heads = dict(heads)

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
    """Permute a story's responses (n_trs, n_voxels) in blocks of ``block_size`` TRs so that no TR keeps its own
    block's.

    Raises
    ------
    ValueError
        The story has fewer than 2 blocks, or 2 blocks of unequal lengths: no order moves every TR out of its block.
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


def subject_or_subjects(subject: str | None, subjects: Sequence[str] | None) -> str | list[str]:
    """The participants of a tuning notebook, of which exactly one parameter is set: ``subject``, or ``subjects`` as a
    list (checked by :func:`tuning_participants` when the run starts).

    Raises
    ------
    ValueError
        Both or neither are set, or ``subjects`` is a single string.
    """
    if (subject is None) == (subjects is None):
        raise ValueError(f"set either subject (one participant) or subjects (a list of participants tuned together), "
                         f"and the other to None; got subject={subject!r}, subjects={subjects!r}")
    if isinstance(subjects, str):
        raise ValueError(f"subjects={subjects!r} is a string; give a list of participants, e.g. [{subjects!r}], "
                         "or set subject instead")
    return subject if subject is not None else list(subjects)


def tuning_participants(dataset: Dataset, subjects: str | Sequence[str], control: str = "none") -> list[str]:
    """The participants of a tuning run, checked: one name, or a list of distinct names the dataset has.

    Raises
    ------
    ValueError
        An empty list, a name given twice, a name the dataset has no responses for, or several participants with
        the ``text_embedding`` control.
    """
    if isinstance(subjects, str):
        return [subjects]
    participants = list(subjects)
    if not participants:
        raise ValueError(f"subjects={participants!r} is empty; give one participant or a list of them, from "
                         f"{dataset.subjects}")
    not_names = [s for s in participants if not isinstance(s, str)]
    if not_names:
        raise ValueError(f"subjects={participants!r} holds {not_names}, not participant names (strings)")
    repeated = sorted({s for s in participants if participants.count(s) > 1})
    if repeated:
        raise ValueError(f"subjects={participants!r} names {repeated} more than once; give each participant once")
    unknown = [s for s in participants if s not in dataset.subjects]
    if unknown:
        raise ValueError(f"subjects {unknown} have no responses in {dataset.root}; available: {dataset.subjects}")
    if control == "text_embedding" and len(participants) > 1:
        raise ValueError(f"control='text_embedding' predicts text embeddings, which belong to no participant: "
                         f"tune it with one participant, not {participants}")
    return participants


def build_tuning_sets(dataset: Dataset, subjects: str | Sequence[str], config: TuningConfig,
                      spec: WindowSpec = WindowSpec()):
    """Training and validation sets of one participant or several, with the control of ``config`` applied.

    Returns
    -------
    train, validation : TuningSet
    selection : dict
        ``subjects`` (the participants, in head order), ``target_kind`` (``"voxels"``, or ``"text_embedding"`` for
        that control), ``n_targets``, ``voxels`` (the selected voxel indices, the targets; None when the targets
        are embedding dimensions), ``cc_max`` of those voxels (or None), the stories, the control and its story
        pairing (``story_swap``).
    """
    participants = tuning_participants(dataset, subjects, config.control)
    splits = [dataset.split(subject) for subject in participants]  # each checks that its participant heard the stories
    split = splits[0]  # the dataset's split, the same for every participant
    brain_targets = config.control != "text_embedding"
    rng = np.random.default_rng(config.seed)  # the controls' draws
    subset_rng = np.random.default_rng([config.seed, 1])  # apart, so that every control keeps the same TRs
    stories = [*split.train, *split.validation]
    groups = {"train": list(split.train), "validation": list(split.validation)}
    audio = {s: dataset.load_audio(s) for s in stories}
    tr_times = {s: dataset.tr_times(s) for s in stories}

    def story_targets(subject: str, group: list[str], voxels: np.ndarray,
                      pairing: dict | None) -> dict[str, np.ndarray]:
        if not brain_targets:
            return {s: embed_texts(window_texts(dataset.transcript(s), tr_times[s], trimmed_tr_indices(len(tr_times[s])), spec))
                    for s in group}
        source = pairing or {s: s for s in group}
        responses = {s: dataset.load_responses(subject, source[s])[:, voxels] for s in group}
        if config.control == "block_shuffle":
            return {s: _block_shuffle_story(s, r, config.block_size, rng) for s, r in responses.items()}
        return responses

    chosen, targets = {}, {}  # per participant: selection entries, and targets per group and story
    for subject in participants:
        voxels = ceiling = pairing = None
        if brain_targets:
            ceiling = cc_max(dataset.load_repeats(subject))
            voxels = select_voxels(ceiling, config.cc_max_threshold)
        if config.control == "story_swap":  # pairs span both splits, so a single validation story works
            pairing = story_derangement(stories, rng)
        chosen[subject] = {"voxels": voxels.tolist() if brain_targets else None,
                           "cc_max": ceiling[voxels].tolist() if brain_targets else None, "story_swap": pairing}
        targets[subject] = {}
        for name, group in groups.items():
            if not group:
                raise DataError(f"the split of {dataset.root} has no {name} stories; tuning needs training and "
                                "validation stories")
            targets[subject][name] = story_targets(subject, group, voxels, pairing)

    widths = {subject: next(iter(targets[subject]["train"].values())).shape[1] for subject in participants}
    bounds = np.cumsum([0, *widths.values()])
    heads = {subject: slice(int(a), int(b)) for subject, a, b in zip(participants, bounds[:-1], bounds[1:])}

    def make_set(name: str, limit: int | None) -> TuningSet:
        items, rows = [], []
        for story in groups[name]:
            indices = trimmed_tr_indices(len(tr_times[story]))
            # swapped stories differ in length
            lengths = {s: min(len(indices), len(targets[s][name][story])) for s in participants}
            block = np.full((max(lengths.values()), int(bounds[-1])), np.nan, dtype=np.float32)
            for subject, n in lengths.items():
                block[:n, heads[subject]] = targets[subject][name][story][:n]
            items += [(story, int(i)) for i in indices[:len(block)]]
            rows.append(block)
        items, rows = _subset(items, np.concatenate(rows), limit, subset_rng)
        return TuningSet(audio, tr_times, items, rows, spec, heads=heads)

    train = make_set("train", config.max_train_trs)
    validation = make_set("validation", config.max_validation_trs)
    selection = {"subjects": participants, "target_kind": "voxels" if brain_targets else "text_embedding",
                 "train_stories": groups["train"], "validation_stories": groups["validation"],
                 "control": config.control, "n_targets": int(train.targets.shape[1])}
    if not brain_targets:
        train.targets, validation.targets, selection["target_scaling"] = zscore_targets(train.targets,
                                                                                        validation.targets)
    if len(participants) == 1:
        (subject,) = participants
        selection |= {"subject": subject, "voxels": chosen[subject]["voxels"], "cc_max": chosen[subject]["cc_max"]}
        if chosen[subject]["story_swap"] is not None:
            selection["story_swap"] = chosen[subject]["story_swap"]
    else:
        selection |= {key: {s: chosen[s][key] for s in participants} for key in ("voxels", "cc_max")}
        selection["n_outputs"] = {s: widths[s] for s in participants}
        if config.control == "story_swap":
            selection["story_swap"] = {s: chosen[s]["story_swap"] for s in participants}
    return train, validation, selection


def zscore_targets(train: torch.Tensor, validation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """z-score every target column of ``train`` (n_train, n_targets) and ``validation`` (n_validation, n_targets)
    with the mean and standard deviation of the training rows.
    """
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
    scaling = {"mean": mean.tolist(), "std": std.tolist()}
    return (train - mean) / std, (validation - mean) / std, scaling


def selected_voxels(selection: dict) -> dict[str, list[int]]:
    """Each participant's target voxels, in head order, from a selection of :func:`build_tuning_sets`: participant ->
    the voxel index of each head output (empty when the targets are embedding dimensions).
    """
    if selection["voxels"] is None:
        return {}
    if isinstance(selection["voxels"], dict):
        return {subject: list(selection["voxels"][subject]) for subject in selection["subjects"]}
    return {selection["subject"]: list(selection["voxels"])}


def target_names(selection: dict) -> list[str]:
    """Names of the targets of a selection (:func:`build_tuning_sets`, or a training record), one per head output:
    ``"voxel 1234"`` or ``"embedding dimension 7"`` (``"DEMO01 voxel 1234"`` when several participants were tuned
    together).
    """
    if selection["voxels"] is None:
        return [f"embedding dimension {i}" for i in range(selection["n_targets"])]
    if isinstance(selection["voxels"], dict):
        return [f"{subject} voxel {v}" for subject in selection["subjects"] for v in selection["voxels"][subject]]
    return [f"voxel {v}" for v in selection["voxels"]]
