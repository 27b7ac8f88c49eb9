"""Read a dataset in the OpenNeuro ds003020 layout (real data or the embedded demo).

Layout (relative to ``data_root``)::

    stimuli/<story>.wav
    derivative/TextGrids/<story>.TextGrid          tiers "phone" and "word"
    derivative/respdict.json                       {story: n_trs + 5} (see bt_utils.data.timing)
    derivative/preprocessed_data/<subject>/<story>.hf5
        data                (n_trs - 15, n_voxels)  responses, already trimmed [10:-5]
        individual_repeats  (n_repeats, n_trs - 15, n_voxels)  test story only

The demo dataset adds ``derivative/demo.json`` (its split, TR and generator
settings), ``derivative/voxel_layout/<subject>.npz`` and
``derivative/truth/<subject>.npz``; nothing else differs, so the same code
reads both.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import soundfile
import soxr

from .timing import DS003020_TR_S, RESPDICT_PAD, TRIM_END, TRIM_START, check_tr, tr_midpoints, trimmed_length
from .transcripts import Transcript, read_textgrid
from ..registry import DATASET_BUILDERS
from ..validation import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Sample rate every speech model of the suite expects, in Hz."""

DS003020_TEST_STORY = "wheretheressmoke"
DS003020_VALIDATION_STORIES = ("stagefright", "life")
DS003020_TRAIN_STORIES = (
    "souls", "howtodraw", "alternateithicatom", "hangtime", "swimmingwithastronauts", "eyespy",
    "itsabox", "myfirstdaywiththeyankees", "legacy", "theclosetthatateeverything",
    "haveyoumethimyet", "thatthingonmyarm", "undertheinfluence", "avatar", "tildeath", "naked",
    "fromboyhoodtofatherhood", "adollshouse", "odetostepfather", "adventuresinsayingyes", "sloth",
    "exorcism", "buck", "inamoment",
)
"""The authors' split of the 27 stories every ds003020 participant heard (METHOD.md)."""

EXPECTED_LAYOUT = (
    "stimuli/<story>.wav, derivative/TextGrids/<story>.TextGrid, derivative/respdict.json and "
    "derivative/preprocessed_data/<subject>/<story>.hf5 (the OpenNeuro ds003020 layout; "
    "build the offline demo with `bt demo-data --out DIR`)"
)


@dataclass(frozen=True)
class StorySplit:
    """Stories used to train, validate and test, in a fixed order."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: str

    def __post_init__(self):
        groups = [set(self.train), set(self.validation), {self.test}]
        overlap = (groups[0] & groups[1]) | (groups[0] & groups[2]) | (groups[1] & groups[2])
        if overlap:
            raise ValueError(f"stories {sorted(overlap)} appear in more than one split")

    @property
    def all(self) -> tuple[str, ...]:
        """Every story of the split: train, then validation, then test."""
        return (*self.train, *self.validation, self.test)


class Dataset:
    """A story-listening fMRI dataset in the ds003020 layout.

    Parameters
    ----------
    data_root : path-like
        Folder that holds ``stimuli/`` and ``derivative/``.
    tr : float, optional
        Repetition time of the TR grid in seconds (see :attr:`tr`); None: the
        TR the dataset declares, else :data:`bt_utils.data.timing.DS003020_TR_S`.

    Raises
    ------
    FileNotFoundError
        If the folder or one of the required parts of the layout is missing.
    ValueError
        If ``tr`` is not a positive number of seconds.
    """

    def __init__(self, data_root: str | os.PathLike, tr: float | None = None):
        self._tr = None if tr is None else check_tr(tr)
        self.root = Path(data_root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist; expected {EXPECTED_LAYOUT}")
        required = [self.root / "stimuli", self.derivative / "respdict.json", self.derivative / "preprocessed_data"]
        missing = [str(p.relative_to(self.root)) for p in required if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"data root {self.root} lacks {', '.join(missing)}; expected {EXPECTED_LAYOUT}"
            )

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, tr={self.tr!r})"

    @property
    def derivative(self) -> Path:
        return self.root / "derivative"

    @cached_property
    def demo_info(self) -> dict | None:
        """Generator settings of the embedded demo dataset, or None for real data."""
        path = self.derivative / "demo.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def tr(self) -> float:
        """Repetition time of the TR grid in seconds, used wherever TR times are computed.

        The ``tr`` given to the constructor; else the ``tr`` that the dataset
        declares in ``derivative/demo.json`` (the demo records the TR it was
        simulated with); else :data:`bt_utils.data.timing.DS003020_TR_S` (2.0 s),
        the TR with which the reference pipeline simulates ds003020's TR files.
        """
        if self._tr is not None:
            return self._tr
        declared = (self.demo_info or {}).get("tr")
        if declared is None:
            return DS003020_TR_S
        try:
            return check_tr(declared)
        except ValueError as error:
            raise DataError(f"{self.derivative / 'demo.json'} declares an invalid TR: {error}") from None

    @cached_property
    def n_trs(self) -> dict[str, int]:
        """Number of TRs of every story before the ``[10:-5]`` trim.

        ``respdict.json`` minus :data:`bt_utils.data.timing.RESPDICT_PAD` (5), as the
        reference pipeline reads it: ds003020 counts 5 TRs beyond the TR grid.
        """
        path = self.derivative / "respdict.json"
        try:
            respdict = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error}") from error
        too_short = {story: n for story, n in respdict.items() if trimmed_length(int(n) - RESPDICT_PAD) < 1}
        if too_short:
            raise DataError(f"{path} gives stories {too_short} no TR left after the [{TRIM_START}:-{TRIM_END}] trim "
                            f"(it counts {RESPDICT_PAD} TRs beyond each story's TR grid, as ds003020 does)")
        return {story: int(n) - RESPDICT_PAD for story, n in sorted(respdict.items())}

    @property
    def stories(self) -> list[str]:
        """All stories of the dataset, sorted."""
        return list(self.n_trs)

    @property
    def subjects(self) -> list[str]:
        """Participants with preprocessed responses, sorted."""
        folder = self.derivative / "preprocessed_data"
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def _check_story(self, story: str) -> None:
        if story not in self.n_trs:
            raise KeyError(f"unknown story {story!r}; {self.derivative / 'respdict.json'} lists {self.stories}")

    def _check_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            raise KeyError(f"unknown subject {subject!r} in {self.root}; available: {self.subjects}")

    def stories_for(self, subject: str) -> list[str]:
        """Stories with a response file for ``subject``, sorted."""
        self._check_subject(subject)
        folder = self.derivative / "preprocessed_data" / subject
        return sorted(p.stem for p in folder.glob("*.hf5") if p.stem in self.n_trs)

    # ----- stimuli -------------------------------------------------------------------------

    def audio_path(self, story: str) -> Path:
        self._check_story(story)
        return self.root / "stimuli" / f"{story}.wav"

    def textgrid_path(self, story: str) -> Path:
        self._check_story(story)
        return self.derivative / "TextGrids" / f"{story}.TextGrid"

    def load_audio(self, story: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Audio of a story as mono float32, resampled to ``sample_rate`` if needed.

        Returns
        -------
        audio : ndarray of shape (n_samples,)
            Samples in [-1, 1] at ``sample_rate`` Hz.
        """
        path = self.audio_path(story)
        if not path.is_file():
            raise FileNotFoundError(f"audio of story {story!r} not found: {path}")
        audio, native_rate = soundfile.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if native_rate != sample_rate:
            log.info("resampling %s from %d Hz to %d Hz", path.name, native_rate, sample_rate)
            audio = soxr.resample(audio, native_rate, sample_rate).astype(np.float32)
        return audio

    def transcript(self, story: str) -> Transcript:
        """Word and phone alignment of a story, from its TextGrid."""
        path = self.textgrid_path(story)
        if not path.is_file():
            has_audio = self.audio_path(story).is_file()
            raise DataError(
                f"story {story!r} has {'audio but ' if has_audio else ''}no TextGrid: expected {path}"
            )
        return read_textgrid(path)

    def tr_times(self, story: str) -> np.ndarray:
        """TR midpoints relative to sound onset on the grid of :attr:`tr`, untrimmed, shape (n_trs,), in seconds."""
        self._check_story(story)
        return tr_midpoints(self.n_trs[story], self.tr)

    # ----- responses -----------------------------------------------------------------------

    def response_path(self, subject: str, story: str) -> Path:
        self._check_subject(subject)
        self._check_story(story)
        return self.derivative / "preprocessed_data" / subject / f"{story}.hf5"

    def _existing_response_path(self, subject: str, story: str) -> Path:
        path = self.response_path(subject, story)
        if not path.is_file():
            raise FileNotFoundError(
                f"no responses of {subject} to story {story!r}: {path} is missing "
                f"(stories with responses: {self.stories_for(subject)})"
            )
        return path

    def n_voxels(self, subject: str) -> int:
        """Voxels of a subject's responses (read from the header of one story's file, not its data)."""
        stories = self.stories_for(subject)
        if not stories:
            raise FileNotFoundError(f"{subject} has no responses under {self.derivative / 'preprocessed_data'}")
        path = self._existing_response_path(subject, stories[0])
        with h5py.File(path, "r") as handle:
            if "data" not in handle:
                raise DataError(f"{path} has no dataset 'data' (datasets found: {sorted(handle.keys())})")
            return int(handle["data"].shape[-1])

    def _read_hf5(self, subject: str, story: str, key: str) -> np.ndarray:
        path = self._existing_response_path(subject, story)
        with h5py.File(path, "r") as handle:
            if key not in handle:
                raise DataError(f"{path} has no dataset {key!r} (datasets found: {sorted(handle.keys())})")
            values = np.asarray(handle[key], dtype=np.float32)
        expected = trimmed_length(self.n_trs[story])
        if values.shape[-2] != expected:
            raise DataError(
                f"{path}: dataset {key!r} has {values.shape[-2]} TRs but respdict.json gives story {story!r} "
                f"{self.n_trs[story] + RESPDICT_PAD} TRs, i.e. a grid of {self.n_trs[story]} TRs "
                f"(respdict counts {RESPDICT_PAD} more) and {expected} after the [10:-5] trim"
            )
        n_nan = int(np.isnan(values).sum())
        if n_nan:
            log.warning("%s/%s: set %d NaN values to 0", path.name, key, n_nan)
            values = np.nan_to_num(values, nan=0.0)
        return values

    def load_responses(self, subject: str, story: str) -> np.ndarray:
        """Responses of a subject to a story.

        Returns
        -------
        responses : ndarray of shape (n_trs - 15, n_voxels)
            float32, NaN set to 0 (the count is logged).
        """
        return self._read_hf5(subject, story, "data")

    def load_repeats(self, subject: str, story: str | None = None) -> np.ndarray:
        """Individual repeats of the test story (default: the split's test story).

        Returns
        -------
        repeats : ndarray of shape (n_repeats, n_trs - 15, n_voxels)
        """
        story = story or self.split().test  # only the test story is needed, not the whole split
        return self._read_hf5(subject, story, "individual_repeats")

    # ----- splits and tables ---------------------------------------------------------------

    def split(self, subject: str | None = None) -> StorySplit:
        """Train / validation / test stories.

        ds003020: the authors' split of the 27 shared stories. The demo: the
        split recorded by its generator. If ``subject`` is given, every story of
        the split must have responses for that subject.
        """
        if self.demo_info is not None:
            info = self.demo_info["split"]
            split = StorySplit(tuple(info["train"]), tuple(info["validation"]), info["test"])
        elif all(s in self.n_trs for s in (*DS003020_TRAIN_STORIES, DS003020_TEST_STORY)):
            validation = tuple(s for s in DS003020_VALIDATION_STORIES if s in self.n_trs)
            split = StorySplit(DS003020_TRAIN_STORIES, validation, DS003020_TEST_STORY)
        else:
            raise DataError(
                f"{self.root} is neither ds003020 (its split stories are missing from respdict.json) "
                "nor a demo dataset (no derivative/demo.json); cannot choose a split"
            )
        if subject is not None:
            missing = sorted(set(split.all) - set(self.stories_for(subject)))
            if missing:
                raise DataError(f"{subject} has no responses for stories of the split: {missing}")
        return split

    def stories_table(self) -> pd.DataFrame:
        """One row per story: TRs, trimmed TRs, duration, word and phone counts, split.

        Returns
        -------
        table : DataFrame
            Columns ``story, split, n_trs, n_trs_trimmed, duration_s, n_words, n_phones``.
        """
        split = self.split()
        role = {s: "train" for s in split.train} | {s: "validation" for s in split.validation}
        role[split.test] = "test"
        rows = []
        for story in self.stories:
            transcript = self.transcript(story)
            info = soundfile.info(self.audio_path(story))
            rows.append({
                "story": story,
                "split": role.get(story, "unused"),
                "n_trs": self.n_trs[story],
                "n_trs_trimmed": trimmed_length(self.n_trs[story]),
                "duration_s": info.frames / info.samplerate,
                "n_words": len(transcript.words),
                "n_phones": len(transcript.phones),
            })
        return pd.DataFrame(rows)

    def voxel_layout(self, subject: str) -> dict[str, np.ndarray] | None:
        """Template placement and ROI labels of a demo subject's voxels, or None if absent."""
        self._check_subject(subject)
        path = self.derivative / "voxel_layout" / f"{subject}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as layout:
            return {key: layout[key] for key in layout.files}

    def truth(self, subject: str) -> dict[str, np.ndarray]:
        """Planted ground truth of a demo subject (``derivative/truth/<subject>.npz``)."""
        self._check_subject(subject)
        path = self.derivative / "truth" / f"{subject}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no planted truth for {subject}: {path} (only demo datasets have one)")
        with np.load(path, allow_pickle=False) as truth:
            return {key: truth[key] for key in truth.files}


__all__ = ["Dataset", "StorySplit", "SAMPLE_RATE"]


def open_dataset(data_root: str | os.PathLike, build_demo_if_missing: bool = False, tr: float | None = None) -> Dataset:
    """Open a dataset in the ds003020 layout, building it first where an extension owns that folder.

    Parameters
    ----------
    data_root : path-like
        A ds003020-layout folder (real data or a demo).
    build_demo_if_missing : bool
        If True and ``data_root`` does not exist, let the registered dataset
        builders (:data:`bt_utils.registry.DATASET_BUILDERS`; the demo's) build
        it when it is theirs to build.
    tr : float, optional
        TR of the grid in seconds, see :class:`Dataset` (None: the dataset's own).

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        No dataset at ``data_root`` and no builder claims it.
    """
    root = Path(data_root).expanduser()
    if build_demo_if_missing and not root.exists():
        for build in DATASET_BUILDERS.values():
            if build(root):
                break
    return Dataset(root, tr=tr)
