"""Low-level speech features per TR, computed from the stimuli themselves, for a dataset's stories.

Each space of :data:`LOW_LEVEL_FEATURES` is an array of shape (n_trs, n_dims) at a story's TR midpoints;
:func:`stack_low_level_features` trims and z-scores them per story. docs/method.md ("Low-level features") lists
them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np
from tqdm.auto import tqdm

from ..data.dataset import SAMPLE_RATE, Dataset
from ..data.timing import trim_trs
from ..data.transcripts import Transcript
from ..validation import check_option
from .feature_space import FeatureSpace
from .design import zscore_per_story
from .phonetic import (ARTICULATION, ARTICULATORY_FEATURES, NON_SPEECH_LABELS, articulation, clean_transcript,
                       diphones, is_non_speech, normalize_phone, phone_ngram_vocabulary, phoneme_rate, phonemes,
                       triphones, word_rate)
from .spectral import mel_band_edges, power_spectrum

__all__ = [
    "ARTICULATION",
    "ARTICULATORY_FEATURES",
    "DEFAULT_LOW_LEVEL_FEATURES",
    "LOW_LEVEL_FEATURES",
    "NON_SPEECH_LABELS",
    "FeatureSpace",
    "LowLevelStack",
    "StoryStimulus",
    "articulation",
    "build_vocabularies",
    "clean_transcript",
    "diphones",
    "is_non_speech",
    "low_level_features",
    "mel_band_edges",
    "normalize_phone",
    "phone_ngram_vocabulary",
    "phoneme_rate",
    "phonemes",
    "power_spectrum",
    "stack_low_level_features",
    "triphones",
    "word_rate",
]

DURATION_TOLERANCE_S = 1.0
"""How much shorter than its TextGrid a story's audio may be, in seconds."""


def _clean_story_transcript(dataset: Dataset, story: str, phone_map: Mapping[str, str | None] | None) -> Transcript:
    source = f"story {story!r} ({dataset.textgrid_path(story)})"
    return clean_transcript(dataset.transcript(story), source, phone_map)


def build_vocabularies(dataset: Dataset, stories: Sequence[str] | None = None,
                       phone_map: Mapping[str, str | None] | None = None) -> dict[str, tuple[str, ...]]:
    """Fixed diphone and triphone vocabularies of a dataset."""
    stories = dataset.stories if stories is None else list(stories)
    transcripts = [_clean_story_transcript(dataset, story, phone_map) for story in stories]
    return {"diphones": phone_ngram_vocabulary(transcripts, 2), "triphones": phone_ngram_vocabulary(transcripts, 3)}


class StoryStimulus:
    """What the feature spaces of one story are computed from, read when first needed."""

    def __init__(self, dataset: Dataset, story: str, vocabularies: Mapping[str, Sequence[str]],
                 phone_map: Mapping[str, str | None] | None = None, duration_tolerance: float = DURATION_TOLERANCE_S):
        self.dataset, self.story = dataset, story
        self.vocabularies, self.phone_map = vocabularies, phone_map
        self.duration_tolerance = duration_tolerance
        self.tr_times = dataset.tr_times(story)

    @cached_property
    def transcript(self) -> Transcript:
        """The story's cleaned transcript."""
        return _clean_story_transcript(self.dataset, self.story, self.phone_map)

    @cached_property
    def audio(self) -> np.ndarray:
        """The story's audio at 16 kHz, shape (n_samples,), checked against the TextGrid's duration."""
        audio = self.dataset.load_audio(self.story, SAMPLE_RATE)
        audio_seconds, textgrid_seconds = len(audio) / SAMPLE_RATE, self.transcript.duration
        if audio_seconds < textgrid_seconds - self.duration_tolerance:
            raise ValueError(
                f"the audio of story {self.story!r} lasts {audio_seconds:.2f} s but its TextGrid "
                f"{textgrid_seconds:.2f} s (tolerance {self.duration_tolerance} s): "
                f"{self.dataset.audio_path(self.story)} does not match {self.dataset.textgrid_path(self.story)}; "
                "replace the truncated or wrong file"
            )
        return audio

    def vocabulary(self, space: str) -> Sequence[str]:
        """Columns of ``space`` (``"diphones"`` or ``"triphones"``)."""
        if space not in self.vocabularies:
            raise ValueError(
                f"vocabularies has no {space!r} entry (keys: {sorted(self.vocabularies)}); "
                "pass build_vocabularies(dataset) or leave vocabularies=None"
            )
        return self.vocabularies[space]


LOW_LEVEL_FEATURES: Mapping[str, Callable[[StoryStimulus], FeatureSpace]] = MappingProxyType({
    "power_spectrum": lambda s: power_spectrum(s.audio, s.tr_times),
    "phonemes": lambda s: phonemes(s.transcript, s.tr_times),
    "diphones": lambda s: diphones(s.transcript, s.tr_times, s.vocabulary("diphones")),
    "triphones": lambda s: triphones(s.transcript, s.tr_times, s.vocabulary("triphones")),
    "articulation": lambda s: articulation(s.transcript, s.tr_times),
    "word_rate": lambda s: word_rate(s.transcript, s.tr_times),
    "phoneme_rate": lambda s: phoneme_rate(s.transcript, s.tr_times),
})
"""Every low-level feature space by name: a function of a :class:`StoryStimulus`."""

DEFAULT_LOW_LEVEL_FEATURES = ("power_spectrum", "phonemes", "diphones", "articulation", "word_rate", "phoneme_rate")
"""The protocol's spaces (docs/method.md, "Low-level features") plus the rates; triphones are left out by default
(thousands of columns)."""

_NGRAM_SPACES = frozenset({"diphones", "triphones"})


def _check_names(names: str | Sequence[str]) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"no low-level feature spaces requested; choose some of {list(LOW_LEVEL_FEATURES)}")
    for name in names:
        check_option("low-level feature space", name, LOW_LEVEL_FEATURES)
    if len(set(names)) != len(names):
        raise ValueError(f"low-level feature spaces {list(names)} name a space more than once")
    return names


def _story_spaces(dataset: Dataset, story: str, names: tuple[str, ...], vocabularies: Mapping[str, Sequence[str]],
                  phone_map, duration_tolerance: float) -> dict[str, FeatureSpace]:
    stimulus = StoryStimulus(dataset, story, vocabularies, phone_map, duration_tolerance)
    return {name: LOW_LEVEL_FEATURES[name](stimulus) for name in names}


def _vocabularies_for(dataset: Dataset, names: tuple[str, ...], vocabularies, phone_map) -> Mapping[str, Sequence[str]]:
    if vocabularies is None and _NGRAM_SPACES & set(names):
        return build_vocabularies(dataset, phone_map=phone_map)
    return vocabularies or {}


def low_level_features(dataset: Dataset, story: str, names: str | Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES,
                       vocabularies: Mapping[str, Sequence[str]] | None = None,
                       phone_map: Mapping[str, str | None] | None = None,
                       duration_tolerance: float = DURATION_TOLERANCE_S) -> dict[str, np.ndarray]:
    """Low-level feature spaces of one story at its TR midpoints, untrimmed.

    Parameters
    ----------
    names : str or sequence of str
        Spaces from :data:`LOW_LEVEL_FEATURES`.
    vocabularies : mapping, optional
        Columns of ``diphones`` and ``triphones`` (:func:`build_vocabularies`); by default built from every
        TextGrid of the dataset, so pass them when computing many stories.
    phone_map : mapping, optional
        Extra phone labels, see :func:`normalize_phone`.
    duration_tolerance : float
        How much shorter than its TextGrid the audio may be, in seconds.

    Returns
    -------
    features : dict of str to ndarray
        ``{name: values of shape (n_trs, n_dims)}`` in the order of ``names``.

    Raises
    ------
    ValueError
        No or unknown names, phone labels outside the 39 ARPAbet phones, or audio shorter than its TextGrid by more
        than ``duration_tolerance``.
    """
    names = _check_names(names)
    vocabularies = _vocabularies_for(dataset, names, vocabularies, phone_map)
    spaces = _story_spaces(dataset, story, names, vocabularies, phone_map, duration_tolerance)
    return {name: space.values for name, space in spaces.items()}


@dataclass(frozen=True)
class LowLevelStack:
    """Several low-level feature spaces of several stories, ready for regression.

    Attributes
    ----------
    features : dict of str to ndarray
        ``{story: values of shape (n_trs - 15, n_columns)}``, float32, trimmed ``[10:-5]`` and z-scored per story
        and column (constant columns become 0).
    """

    features: dict[str, np.ndarray]
    columns: dict[str, slice]
    column_names: tuple[str, ...]

    def concatenate(self, stories: Sequence[str] | None = None) -> np.ndarray:
        """Rows of ``stories`` (default: all, in stacking order) one after another: shape (sum of n_trs - 15,
        n_columns).
        """
        stories = list(self.features) if stories is None else list(stories)
        missing = [story for story in stories if story not in self.features]
        if missing:
            raise KeyError(f"stories {missing} are not in this stack; it holds {list(self.features)}")
        return np.concatenate([self.features[story] for story in stories])


def stack_low_level_features(dataset: Dataset, stories: Sequence[str],
                             names: str | Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES,
                             vocabularies: Mapping[str, Sequence[str]] | None = None,
                             phone_map: Mapping[str, str | None] | None = None,
                             duration_tolerance: float = DURATION_TOLERANCE_S,
                             progress: bool = True) -> LowLevelStack:
    """Feature spaces of several stories side by side, trimmed and z-scored per story."""
    names = _check_names(names)
    stories = list(stories)
    if not stories:
        raise ValueError(f"no stories given; choose some of {dataset.stories}")
    vocabularies = _vocabularies_for(dataset, names, vocabularies, phone_map)
    features = {}
    for story in tqdm(stories, desc="low-level features", disable=not progress):
        spaces = _story_spaces(dataset, story, names, vocabularies, phone_map, duration_tolerance)
        stacked = np.concatenate([trim_trs(space.values) for space in spaces.values()], axis=1)
        features[story] = zscore_per_story(stacked)
    # every story has the same dimensions (fixed vocabularies), so the last one names the columns
    widths = np.cumsum([0] + [len(space.names) for space in spaces.values()])
    columns = {name: slice(int(start), int(stop)) for name, start, stop in zip(names, widths[:-1], widths[1:])}
    column_names = tuple(f"{name}:{dim}" for name, space in spaces.items() for dim in space.names)
    return LowLevelStack(features, columns, column_names)
