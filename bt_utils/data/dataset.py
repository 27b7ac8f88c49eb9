"""Read a dataset in the OpenNeuro ds003020 layout (real data or the embedded demo).

Layout (relative to ``data_root``)::

    stimuli/<story>.wav
    derivative/TextGrids/<story>.TextGrid          tiers "phone" and "word"
    derivative/respdict.json                       {story: n_trs + 5} (see bt_utils.data.timing)
    derivative/preprocessed_data/<subject>/<story>.hf5
        data                (n_trs - 15, n_voxels)  responses, already trimmed [10:-5]
        individual_repeats  (n_repeats, n_trs - 15, n_voxels)  test story only

The demo adds ``derivative/demo.json``, ``voxel_layout/`` and ``truth/``; the same code reads both.
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
from .transcripts import Transcript, read_textgrid, textgrid_duration
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
"""The authors' split of the 27 stories every ds003020 participant heard (docs/method.md, "Data and splits")."""

AUDIO_COVERAGE_SLACK_S = 10.0
"""How long before the midpoint of a story's last TR with a response its audio may end, in seconds."""

TEXTGRID_TOLERANCE_S = 1.0
"""How far a story's TextGrid may end from the end of its audio, in seconds (Praat ends a
TextGrid where the sound it annotates ends)."""

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
        Repetition time of the TR grid in seconds (see :attr:`tr`); None: the TR the dataset declares, else
        :data:`bt_utils.data.timing.DS003020_TR_S`.

    Raises
    ------
    FileNotFoundError
        If the folder or one of the required parts of the layout is missing.
    DataError
        If ``data_root`` is a file, or :meth:`validate` finds a bad file.
    ValueError
        If ``tr`` is not a positive number of seconds.
    """

    def __init__(self, data_root: str | os.PathLike, tr: float | None = None):
        self._tr = None if tr is None else check_tr(tr)
        self.root = Path(data_root).expanduser()
        if self.root.is_file():
            raise DataError(f"data root {self.root} is a file, not a folder; give the folder that holds "
                            f"stimuli/ and derivative/ ({EXPECTED_LAYOUT})")
        if not self.root.is_dir():
            raise FileNotFoundError(f"no dataset at {self.root}: the folder does not exist; expected {EXPECTED_LAYOUT}")
        required = [self.root / "stimuli", self.derivative / "respdict.json", self.derivative / "preprocessed_data"]
        missing = [str(p.relative_to(self.root)) for p in required if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"data root {self.root} lacks {', '.join(missing)}; expected {EXPECTED_LAYOUT}"
            )
        self._valid_subjects: set[str] = set()
        self.validate()

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, tr={self.tr!r})"

    @property
    def derivative(self) -> Path:
        return self.root / "derivative"

    @cached_property
    def demo_info(self) -> dict | None:
        """Generator settings of the embedded demo dataset, or None for real data.

        Raises
        ------
        DataError
            ``derivative/demo.json`` is not JSON, or has no ``split`` with lists
            of story names ``train`` and ``validation`` and a story name ``test``.
        """
        path = self.derivative / "demo.json"
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path} is not valid JSON ({error}); rebuild the demo with `bt demo-data --out "
                            f"{self.root} --overwrite`") from None
        split = info.get("split") if isinstance(info, dict) else None
        names = (split.get("train"), split.get("validation")) if isinstance(split, dict) else (None, None)
        if not (all(isinstance(n, list) and all(isinstance(s, str) for s in n) for n in names)
                and isinstance(split.get("test"), str)):
            raise DataError(f"{path} has no valid 'split' (a mapping with lists of story names 'train' and "
                            f"'validation' and a story name 'test'), found {split!r}; rebuild the demo with "
                            f"`bt demo-data --out {self.root} --overwrite`")
        return info

    @cached_property
    def tr(self) -> float:
        """Repetition time of the TR grid in seconds, used wherever TR times are computed."""
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

        Raises
        ------
        DataError
            ``respdict.json`` is not a JSON mapping of story names to integers, or leaves a story no TR after the
            trim.
        """
        path = self.derivative / "respdict.json"
        try:
            respdict = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(respdict, dict):
            raise DataError(f"{path} holds a {type(respdict).__name__}; expected a mapping of story names to "
                            'numbers of TRs, e.g. {"wheretheressmoke": 311}')
        not_integers = {story: n for story, n in respdict.items() if isinstance(n, bool) or not isinstance(n, int)}
        if not_integers:
            raise DataError(f"{path} gives stories numbers of TRs that are not integers: {not_integers}; "
                            'write them as integers, e.g. {"wheretheressmoke": 311}')
        too_short = {story: n for story, n in respdict.items() if trimmed_length(n - RESPDICT_PAD) < 1}
        if too_short:
            raise DataError(f"{path} gives stories {too_short} no TR left after the [{TRIM_START}:-{TRIM_END}] trim "
                            f"(it counts {RESPDICT_PAD} TRs beyond each story's TR grid, as ds003020 does)")
        return {story: n - RESPDICT_PAD for story, n in sorted(respdict.items())}

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
            files = [self.root / "stimuli" / f"{story}.wav", *self.derivative.glob(f"preprocessed_data/*/{story}.hf5")]
            found = [str(path) for path in files if path.is_file()]
            if found:
                raise DataError(f"story {story!r} has files ({', '.join(found[:3])}) but "
                                f"{self.derivative / 'respdict.json'} has no entry for it (its number of TRs); add it")
            raise KeyError(f"unknown story {story!r}; {self.derivative / 'respdict.json'} lists {self.stories}")

    def _check_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            raise KeyError(f"unknown subject {subject!r} in {self.root}; available: {self.subjects}")

    def stories_for(self, subject: str) -> list[str]:
        """Stories with a response file for ``subject``, sorted (a broken link, e.g. a file not downloaded, is none)."""
        self._check_subject(subject)
        folder = self.derivative / "preprocessed_data" / subject
        return sorted(p.stem for p in folder.glob("*.hf5") if p.stem in self.n_trs and p.is_file())

    # ----- stimuli -------------------------------------------------------------------------

    def audio_path(self, story: str) -> Path:
        self._check_story(story)
        return self.root / "stimuli" / f"{story}.wav"

    def textgrid_path(self, story: str) -> Path:
        self._check_story(story)
        return self.derivative / "TextGrids" / f"{story}.TextGrid"

    def load_audio(self, story: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Audio of a story as mono float32 in [-1, 1], resampled to ``sample_rate`` if needed: shape (n_samples,)."""
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
                f"no responses of {subject} to story {story!r}: {path} is "
                f"{'a broken link (not downloaded?)' if path.is_symlink() else 'missing'} "
                f"(stories with responses: {self.stories_for(subject)})"
            )
        self.validate_responses(subject)
        return path

    def n_voxels(self, subject: str) -> int:
        """Voxels of a subject's responses (read from the header of one story's file, not its data)."""
        stories = self.stories_for(subject)
        if not stories:
            raise FileNotFoundError(f"{subject} has no responses under {self.derivative / 'preprocessed_data'}")
        return _hf5_shapes(self._existing_response_path(subject, stories[0]))["data"][-1]

    def _read_hf5(self, subject: str, story: str, key: str) -> np.ndarray:
        path = self._existing_response_path(subject, story)
        with _open_hf5(path) as handle:
            if key not in handle:
                raise DataError(f"{path} has no dataset {key!r} (datasets found: {sorted(handle.keys())})")
            values = np.asarray(handle[key], dtype=np.float32)
        return _zero_dropped_voxels(values, path, story, key)

    def load_responses(self, subject: str, story: str) -> np.ndarray:
        """Responses of a subject to a story.

        Returns
        -------
        responses : ndarray of shape (n_trs - 15, n_voxels)
            float32; dropped-out voxels (NaN in every TR) set to 0, the count logged.

        Raises
        ------
        DataError
            The file holds NaN or infinite values other than dropped-out voxels, or no voxel with data.
        """
        return self._read_hf5(subject, story, "data")

    def load_repeats(self, subject: str, story: str | None = None) -> np.ndarray:
        """Individual repeats of the test story (default: the split's test story), dropped-out voxels set to 0:
        float32 of shape (n_repeats, n_trs - 15, n_voxels).
        """
        story = story or self.split().test  # only the test story is needed, not the whole split
        return self._read_hf5(subject, story, "individual_repeats")

    # ----- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check the dataset's descriptions and stimuli, reading file headers only; raises DataError naming the file,
        the story and what was expected.
        """
        if self.demo_info is not None:
            split = self.demo_info["split"]
            unlisted = [s for s in (*split["train"], *split["validation"], split["test"]) if s not in self.n_trs]
            if unlisted:
                raise DataError(f"{self.derivative / 'respdict.json'} has no entry (number of TRs) for stories "
                                f"{unlisted} of the split in {self.derivative / 'demo.json'}; rebuild the demo "
                                f"with `bt demo-data --out {self.root} --overwrite`")
        for story in self.stories:
            audio = self.root / "stimuli" / f"{story}.wav"
            if audio.is_file():
                self._check_stimulus(story, audio)

    def _check_stimulus(self, story: str, audio: Path) -> None:
        try:
            info = soundfile.info(audio)
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise DataError(f"the audio of story {story!r} cannot be read: {audio} ({error}); replace the file") from None
        seconds = info.frames / info.samplerate
        last_response_s = float(self.tr_times(story)[-1 - TRIM_END])
        if seconds < last_response_s - AUDIO_COVERAGE_SLACK_S:
            raise DataError(
                f"the audio of story {story!r} lasts {seconds:.2f} s ({audio}) but its TR grid "
                f"({self.n_trs[story]} TRs, from respdict.json) has responses until {last_response_s:.1f} s after "
                "sound onset: the file is truncated or empty (or respdict.json's entry belongs to another story); "
                "replace the file"
            )
        textgrid = self.derivative / "TextGrids" / f"{story}.TextGrid"
        if textgrid.is_file():
            end = textgrid_duration(textgrid)
            if abs(end - seconds) > TEXTGRID_TOLERANCE_S:
                raise DataError(
                    f"the TextGrid of story {story!r} ends at {end:.2f} s but its audio lasts {seconds:.2f} s: "
                    f"{textgrid} does not belong to {audio} (a TextGrid of another story?); "
                    "replace it with the story's own"
                )

    def validate_responses(self, subject: str) -> None:
        """Check the headers of every response file of ``subject`` (once per subject; no data is read); raises DataError
        naming the file and what was expected.
        """
        if subject in self._valid_subjects:
            return
        folder = self.derivative / "preprocessed_data" / subject
        voxels = {}
        for story in self.stories_for(subject):
            path = folder / f"{story}.hf5"
            shapes = _hf5_shapes(path)
            if "data" not in shapes:
                raise DataError(f"{path} has no dataset 'data' (datasets found: {sorted(shapes)})")
            expected = trimmed_length(self.n_trs[story])
            if len(shapes["data"]) != 2:
                raise DataError(f"{path}: dataset 'data' has shape {shapes['data']}; expected 2 dimensions, "
                                f"(TRs, voxels) with {expected} TRs")
            if shapes["data"][0] != expected:
                raise DataError(
                    f"{path}: dataset 'data' has {shapes['data'][0]} TRs but respdict.json gives story {story!r} "
                    f"{self.n_trs[story] + RESPDICT_PAD} TRs, i.e. a grid of {self.n_trs[story]} TRs "
                    f"(respdict counts {RESPDICT_PAD} more) and {expected} after the [10:-5] trim"
                )
            repeats = shapes.get("individual_repeats")
            if repeats is not None and (len(repeats) != 3 or repeats[1:] != shapes["data"]):
                raise DataError(f"{path}: dataset 'individual_repeats' has shape {repeats}; expected "
                                f"(repeats, {expected}, {shapes['data'][1]}) like its 'data' {shapes['data']}")
            voxels[story] = shapes["data"][1]
        counts = pd.Series(voxels, dtype=int)
        if counts.nunique() > 1:
            usual = int(counts.mode()[0])
            odd = {story: int(n) for story, n in counts[counts != usual].items()}
            raise DataError(f"{subject}'s responses have {usual} voxels in {int((counts == usual).sum())} stories but "
                            f"{odd} in {[str(folder / f'{s}.hf5') for s in odd]}: every story of a subject must "
                            "have the same voxels; replace those files")
        self._valid_subjects.add(subject)

    # ----- splits and tables ---------------------------------------------------------------

    def split(self, subject: str | None = None) -> StorySplit:
        """Train / validation / test stories."""
        if subject is not None:
            self.validate_responses(subject)
        if self.demo_info is not None:
            info = self.demo_info["split"]
            split = StorySplit(tuple(info["train"]), tuple(info["validation"]), info["test"])
        else:
            unlisted = [s for s in (*DS003020_TRAIN_STORIES, DS003020_TEST_STORY) if s not in self.n_trs]
            if len(unlisted) == len(DS003020_TRAIN_STORIES) + 1:
                raise DataError(
                    f"{self.root} is neither ds003020 (none of its split stories is in respdict.json) "
                    "nor a demo dataset (no derivative/demo.json); cannot choose a split"
                )
            if unlisted:
                raise DataError(f"{self.derivative / 'respdict.json'} has no entry (number of TRs) for stories "
                                f"{unlisted} of ds003020's split; use the respdict.json of ds003020")
            validation = tuple(s for s in DS003020_VALIDATION_STORIES if s in self.n_trs)
            split = StorySplit(DS003020_TRAIN_STORIES, validation, DS003020_TEST_STORY)
        if subject is not None:
            missing = sorted(set(split.all) - set(self.stories_for(subject)))
            if missing:
                raise DataError(f"{subject} has no responses for stories of the split: {missing}")
        return split

    def stories_table(self) -> pd.DataFrame:
        """One row per story: ``story, split, n_trs, n_trs_trimmed, duration_s, n_words, n_phones``."""
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


def _open_hf5(path: Path) -> h5py.File:
    """``path`` opened for reading, or a DataError naming it when it is not a readable HDF5 file."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path} cannot be read as HDF5 ({error}): the file is empty, truncated or not an "
                        "hf5 file; copy it again from the dataset") from None


def _hf5_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every dataset at the top level of an hf5 file (its header only)."""
    with _open_hf5(path) as handle:
        return {key: tuple(item.shape) for key, item in handle.items() if isinstance(item, h5py.Dataset)}


def _zero_dropped_voxels(values: np.ndarray, path: Path, story: str, key: str) -> np.ndarray:
    """``values`` with dropped-out voxels set to 0, refusing every other NaN or infinite value."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    dropped = np.isnan(values).all(axis=-2, keepdims=True)  # (..., 1, n_voxels)
    bad = ~finite & ~dropped
    if bad.any():
        index = np.argwhere(bad)
        rows, voxels = np.unique(index[:, -2]), np.unique(index[:, -1])
        kinds = ", ".join(f"{n} {name}" for name, n in (("NaN", int(np.isnan(values[bad]).sum())),
                                                      ("+Inf", int(np.isposinf(values[bad]).sum())),
                                                      ("-Inf", int(np.isneginf(values[bad]).sum()))) if n)
        raise DataError(
            f"{path}: dataset {key!r} of story {story!r} holds {kinds} outside dropped-out voxels, in rows "
            f"{_some(rows)} and voxels {_some(voxels)} (rows count TRs after the [10:-5] trim); only voxels that "
            "are NaN in every TR are accepted (set to 0). Fix or replace the file"
        )
    if dropped.all(axis=-1).any():
        raise DataError(f"{path}: dataset {key!r} of story {story!r} has no data: every voxel is NaN in every TR; "
                        "replace the file or leave the story out")
    log.warning("%s/%s: %d dropped-out voxel(s) (NaN in every TR): set %d NaN values to 0",
                path.name, key, int(dropped.sum()), int((~finite).sum()))
    return np.where(finite, values, np.float32(0.0))


def _some(indices: np.ndarray, shown: int = 8) -> str:
    """The first ``shown`` of some indices, and how many more there are."""
    listed = ", ".join(str(int(i)) for i in indices[:shown])
    return f"[{listed}{f', ... ({len(indices) - shown} more)' if len(indices) > shown else ''}]"


__all__ = ["Dataset", "StorySplit", "SAMPLE_RATE"]


def open_dataset(data_root: str | os.PathLike, build_demo_if_missing: bool = False, tr: float | None = None) -> Dataset:
    """Open a dataset in the ds003020 layout, building it first where an extension owns that folder.

    Parameters
    ----------
    data_root : path-like
        A ds003020-layout folder (real data or a demo).
    build_demo_if_missing : bool
        If True and ``data_root`` does not exist, let the registered dataset builders
        (:data:`bt_utils.registry.DATASET_BUILDERS`; the demo's) build it when it is theirs to build.
    tr : float, optional
        TR of the grid in seconds, see :class:`Dataset` (None: the dataset's own).

    Raises
    ------
    FileNotFoundError
        No dataset at ``data_root`` and no builder claims it ("no dataset at PATH"): a mistyped path to real data
        is never replaced by a demo.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        if build_demo_if_missing and any(build(root) for build in DATASET_BUILDERS.values()):
            return Dataset(root, tr=tr)
        builders = (" (build_demo_if_missing builds the demo only at its own location, a folder ending in "
                    "demo_output/data)") if build_demo_if_missing else ""
        raise FileNotFoundError(f"no dataset at {root}: the folder does not exist{builders}. Check data_root; "
                                f"expected {EXPECTED_LAYOUT}")
    return Dataset(root, tr=tr)
