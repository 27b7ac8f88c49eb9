"""The embedded demo dataset: synthesised stories and simulated participants.

The demo is a small dataset in the ds003020 layout that the package builds itself, offline, so that every notebook
and test runs anywhere and the loaders of real data read it unchanged. Only the responses are simulated; the speech
is real synthesised English (:mod:`bt_utils.demo.speech`), with word and phone TextGrids from the synthesiser's own
timings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.signal
import scipy.stats
import soundfile

from .. import __version__
from ..results import exclusive_lock
from ..features import low_level
from .template import sample_layout
from ..data.dataset import SAMPLE_RATE
from .speech import synthesize
from ..data.timing import DS003020_TR_S, RESPDICT_PAD, SOUND_ONSET_S, check_tr, tr_midpoints, trim_trs
from ..data.transcripts import Interval, Transcript, write_textgrid

log = logging.getLogger(__name__)

GENERATOR_VERSION = 4
"""Bumped whenever the generator's output changes for the same settings."""

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": ("dog", "horse", "rabbit", "tiger", "sheep", "eagle", "whale", "monkey"),
    "food": ("bread", "apple", "cheese", "soup", "rice", "cake", "honey", "butter"),
    "places": ("city", "forest", "river", "mountain", "village", "beach", "garden", "market"),
    "people": ("mother", "father", "sister", "brother", "teacher", "doctor", "neighbour", "child"),
    "body": ("hand", "head", "heart", "shoulder", "foot", "finger", "face", "mouth"),
    "objects": ("hammer", "knife", "rope", "lamp", "boat", "window", "key", "book"),
    "time": ("morning", "evening", "winter", "summer", "sunday", "night", "autumn", "moment"),
    "feelings": ("happy", "angry", "afraid", "proud", "lonely", "calm", "excited", "tired"),
}
"""Semantic categories and their words; ``feelings`` are adjectives, the rest nouns."""

NOUN_CATEGORIES = tuple(c for c in CATEGORIES if c != "feelings")

TEMPLATES = (
    "the {n} and the {n} were waiting near the {n}",
    "my {n} found a {n} by the {n}",
    "in the {n} we saw a {n} with a {n}",
    "everyone was {f} about the {n}",
    "a {f} {n} looked at the {n} for a long time",
    "then the {n} gave the {n} to my {n}",
    "i remember the {n} and how {f} we were",
    "nobody knew why the {n} was so {f}",
    "we carried the {n} past the {n} and into the {n}",
    "she said the {n} reminded her of the {n}",
    "after the {n} he felt {f} and went to the {n}",
    "there was a {n} on the {n} every {n}",
)
"""Sentence templates: ``{n}`` takes a noun, ``{f}`` a feelings adjective."""

STORY_NAMES = (
    "lighthouse", "orchard", "ferryman", "snowfall", "bakery", "caravan", "riverbend",
    "stargazer", "marketday", "oldpiano", "northwind", "homecoming", "glasshouse", "tidepool",
)
TEST_STORY = "echoes"
SUBJECTS = ("DEMO01", "DEMO02", "DEMO03")
AUDITORY_BANDS_HZ = ((100.0, 500.0), (500.0, 2000.0), (2000.0, 6000.0))
"""Frequency ranges of the band levels of the auditory features (mel-band centres inside them)."""
AUDITORY_FEATURES = ("level_db", "band_0.1-0.5kHz_db", "band_0.5-2kHz_db", "band_2-6kHz_db", "phone_rate")
SEMANTIC_TIMESCALE_S = 12.0
"""Time constant of the leaky integration of word meanings in the semantic features, in seconds."""
WORD_JITTER = 0.35
NOISE_AR = 0.3
SIGNAL_R_RANGE = (0.2, 0.7)
NAN_VOXEL_FRACTION = 0.005

CLASS_PROBABILITIES: dict[str, dict[str, float]] = {
    "auditory": {"auditory": 0.65, "semantic": 0.10, "noise": 0.25},
    "language": {"auditory": 0.05, "semantic": 0.65, "noise": 0.30},
    "other": {"auditory": 0.03, "semantic": 0.12, "noise": 0.85},
}
"""Probability of each planted class given the ROI group of a voxel (see :func:`roi_group`)."""

AUDITORY_ROIS = frozenset({"AC"})
LANGUAGE_ROIS = frozenset({"Broca", "sPMv"})


def roi_group(roi: str) -> str:
    """ROI group (``auditory``, ``language`` or ``other``) that sets a voxel's class probabilities."""
    if roi in AUDITORY_ROIS:
        return "auditory"
    if roi in LANGUAGE_ROIS:
        return "language"
    return "other"


@dataclass(frozen=True)
class DemoConfig:
    """Size and randomness of the demo dataset.

    Attributes
    ----------
    n_train_stories, n_validation_stories : int
        Stories of the training and validation splits (plus one test story).
    """

    seed: int = 0
    n_train_stories: int = 10
    n_validation_stories: int = 1
    story_seconds: float = 140.0
    test_story_seconds: float = 200.0
    n_voxels: int = 3000
    n_repeats: tuple[int, ...] = (10, 10, 5)
    subjects: tuple[str, ...] = field(default=SUBJECTS)
    tr: float = DS003020_TR_S

    def __post_init__(self):
        object.__setattr__(self, "tr", check_tr(self.tr))
        if len(self.n_repeats) != len(self.subjects):
            raise ValueError(
                f"n_repeats has {len(self.n_repeats)} entries but there are {len(self.subjects)} subjects"
            )
        if min(self.n_repeats) < 2:
            raise ValueError(f"every subject needs at least 2 test repeats, got n_repeats={self.n_repeats}")
        n_stories = self.n_train_stories + self.n_validation_stories
        if not 1 <= n_stories <= len(STORY_NAMES) or self.n_train_stories < 1:
            raise ValueError(
                f"n_train_stories + n_validation_stories must lie in 1..{len(STORY_NAMES)} "
                f"with at least one training story, got {self.n_train_stories} + {self.n_validation_stories}"
            )
        if self.story_seconds < 40 or self.test_story_seconds < 40:
            raise ValueError("stories must last at least 40 s to survive the [10:-5] trim with signal left")

    @property
    def stories(self) -> tuple[str, ...]:
        n = self.n_train_stories + self.n_validation_stories
        return STORY_NAMES[:n]


# ----- stories --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """A synthesised story: audio (16 kHz, float32, shape (n_samples,)) and its alignment."""

    name: str
    audio: np.ndarray
    transcript: Transcript
    n_trs: int


def _story_sentences(rng: np.random.Generator, n_sentences: int) -> list[tuple[str, bool]]:
    """Sentences of one story with a flag that marks the last sentence of a paragraph."""
    sentences = []
    while len(sentences) < n_sentences:
        topic = rng.choice(len(NOUN_CATEGORIES), size=2, replace=False)
        weights = np.ones(len(NOUN_CATEGORIES))
        weights[topic] = 6.0
        weights /= weights.sum()
        paragraph_length = int(rng.integers(4, 8))
        for index in range(paragraph_length):
            template = TEMPLATES[rng.integers(len(TEMPLATES))]
            words = []
            for token in template.split():
                if token == "{n}":
                    category = NOUN_CATEGORIES[rng.choice(len(NOUN_CATEGORIES), p=weights)]
                    words.append(CATEGORIES[category][rng.integers(8)])
                elif token == "{f}":
                    words.append(CATEGORIES["feelings"][rng.integers(8)])
                else:
                    words.append(token)
            sentences.append((" ".join(words) + ".", index == paragraph_length - 1))
    return sentences[:n_sentences]


def synthesize_story(name: str, target_seconds: float, voice: str, rng: np.random.Generator, tr: float) -> Story:
    """Speak sentences until the story lasts about ``target_seconds``."""
    chunks = [np.zeros(int(0.5 * SAMPLE_RATE), dtype=np.float32)]
    clock = 0.5
    words: list[Interval] = []
    phones: list[Interval] = []
    while clock < target_seconds:
        for sentence, ends_paragraph in _story_sentences(rng, 8):
            utterance = synthesize(
                sentence,
                voice=voice,
                words_per_minute=int(rng.integers(130, 201)),
                pitch=int(rng.integers(30, 71)),
                sample_rate=SAMPLE_RATE,
            )
            words += [Interval(clock + w.start, clock + w.end, w.label) for w in utterance.words]
            phones += [Interval(clock + p.start, clock + p.end, p.label) for p in utterance.phones]
            pause = rng.uniform(1.0, 2.5) if ends_paragraph else rng.uniform(0.2, 0.7)
            n_pause = int(round(pause * SAMPLE_RATE))
            chunks += [utterance.audio.astype(np.float32), np.zeros(n_pause, dtype=np.float32)]
            clock += len(utterance.audio) / SAMPLE_RATE + n_pause / SAMPLE_RATE
            if clock >= target_seconds:
                break
    audio = np.concatenate(chunks)
    duration = len(audio) / SAMPLE_RATE
    n_trs = int(np.ceil((SOUND_ONSET_S + duration + 10.0) / tr))
    return Story(name, audio, Transcript(words, phones, duration), n_trs)


# ----- stimulus features ----------------------------------------------------------------------


def word_embeddings(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Embedding of every category word: category prototype + jitter, shape (8,) each."""
    prototypes = scipy.stats.ortho_group.rvs(len(CATEGORIES), random_state=rng)
    embeddings = {}
    for prototype, words in zip(prototypes, CATEGORIES.values()):
        for word in words:
            embeddings[word] = prototype + WORD_JITTER * rng.standard_normal(len(CATEGORIES)) / np.sqrt(len(CATEGORIES))
    return embeddings


def semantic_features(transcript: Transcript, tr_times: np.ndarray, embeddings: dict[str, np.ndarray],
                      timescale_s: float = SEMANTIC_TIMESCALE_S) -> np.ndarray:
    """Leaky integration of the meanings of the content words heard up to each TR midpoint.

    Parameters
    ----------
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset, in seconds.
    embeddings : dict of str to ndarray of shape (dim,)

    Returns
    -------
    features : ndarray of shape (n_trs, dim)
    """
    if timescale_s <= 0:
        raise ValueError(f"timescale_s must be > 0, got {timescale_s!r}")
    dim = len(next(iter(embeddings.values())))
    content = [w for w in transcript.words if w.label in embeddings]
    if not content:
        return np.zeros((len(tr_times), dim))
    centres = np.array([(w.start + w.end) / 2 for w in content])
    vectors = np.array([embeddings[w.label] for w in content])
    age = np.asarray(tr_times, float)[:, None] - centres[None, :]
    heard = age >= 0
    # ages counted from the newest word heard (0 before any), so that long silences cannot underflow the sum
    newest = np.where(heard, age, np.inf).min(axis=1, keepdims=True)
    weights = np.where(heard, np.exp(-(age - np.where(heard.any(axis=1, keepdims=True), newest, 0.0)) / timescale_s), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights @ vectors, total, out=np.zeros((len(tr_times), dim)), where=total > 0)


def auditory_features(audio: np.ndarray, transcript: Transcript, tr_times: np.ndarray) -> np.ndarray:
    """Mean level, three band levels (dB) and the phone rate per TR, from the low-level feature spaces.

    Parameters
    ----------
    audio : ndarray of shape (n_samples,)
        16 kHz audio; sample 0 is sound onset.
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset.

    Returns
    -------
    features : ndarray of shape (n_trs, 5)
        Columns as in :data:`AUDITORY_FEATURES`: means over the mel bands of
        :func:`bt_utils.features.low_level.power_spectrum` (all bands, then the bands centred in each range of
        :data:`AUDITORY_BANDS_HZ`) and :func:`bt_utils.features.low_level.phoneme_rate`.
    """
    spectrum = low_level.power_spectrum(audio, tr_times, SAMPLE_RATE)
    centres = low_level.mel_band_edges()[1:-1]
    levels = [spectrum.values.mean(axis=1)]
    levels += [spectrum.values[:, (centres >= low) & (centres < high)].mean(axis=1) for low, high in AUDITORY_BANDS_HZ]
    rate = low_level.phoneme_rate(transcript, tr_times).values[:, 0]
    return np.column_stack([*levels, rate])


def canonical_hrf(tr: float, length_s: float = 32.0) -> np.ndarray:
    """SPM canonical double-gamma haemodynamic response sampled every ``tr``, unit sum.

    Returns
    -------
    hrf : ndarray of shape (ceil(length_s / tr),)
    """
    t = np.arange(0, length_s, tr)
    response = scipy.stats.gamma.pdf(t, 6) - scipy.stats.gamma.pdf(t, 16) / 6.0
    return response / response.sum()


def _zscore_across(stories: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    stacked = np.concatenate(list(stories.values()))
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std[std == 0] = 1.0
    return {story: (values - mean) / std for story, values in stories.items()}


# ----- participants ---------------------------------------------------------------------------


def _ar1_noise(rng: np.random.Generator, shape: tuple[int, ...], coefficient: float) -> np.ndarray:
    """Unit-variance AR(1) noise along axis -2 (time), shape ``shape``."""
    innovations = rng.standard_normal(shape) * np.sqrt(1 - coefficient**2)
    innovations[..., 0, :] /= np.sqrt(1 - coefficient**2)
    return scipy.signal.lfilter([1.0], [1.0, -coefficient], innovations, axis=-2)


def simulate_subject(
    features: dict[str, dict[str, np.ndarray]],
    split_stories: tuple[str, ...],
    test_story: str,
    n_voxels: int,
    n_repeats: int,
    rng: np.random.Generator,
    tr: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Simulate one participant.

    Parameters
    ----------
    features : dict
        ``features["semantic"|"auditory"][story]``: z-scored stimulus features, shape (n_trs, n_features),
        untrimmed.

    Returns
    -------
    responses : dict of str to ndarray of shape (n_trs - 15, n_voxels)
        One presentation per training/validation story.
    repeats : ndarray of shape (n_repeats, n_test_trs - 15, n_voxels)
    """
    layout = sample_layout(n_voxels, rng)
    groups = np.array([roi_group(r) for r in layout.roi])
    classes = np.empty(n_voxels, dtype="<U8")
    for group, probabilities in CLASS_PROBABILITIES.items():
        members = np.flatnonzero(groups == group)
        classes[members] = rng.choice(list(probabilities), size=members.size, p=list(probabilities.values()))

    weights = {
        name: rng.standard_normal((n_voxels, next(iter(features[name].values())).shape[1]))
        * (classes == name)[:, None]
        for name in ("semantic", "auditory")
    }
    hrf = canonical_hrf(tr)
    stories = (*split_stories, test_story)
    signal = {}
    for story in stories:
        drive = features["semantic"][story] @ weights["semantic"].T + features["auditory"][story] @ weights["auditory"].T
        signal[story] = trim_trs(scipy.signal.lfilter(hrf, [1.0], drive, axis=0))
    scale = np.concatenate([signal[s] for s in stories]).std(axis=0)
    scale[scale == 0] = 1.0

    signal_r = np.where(classes == "noise", 0.0, rng.uniform(*SIGNAL_R_RANGE, size=n_voxels))
    noise_sd = np.sqrt(1 - signal_r**2)

    def presentation(story: str, n: int) -> np.ndarray:
        clean = signal[story] / scale * signal_r
        runs = clean + noise_sd * _ar1_noise(rng, (n, *clean.shape), NOISE_AR)
        return scipy.stats.zscore(runs, axis=1).astype(np.float32)  # per run, as in ds003020

    responses = {story: presentation(story, 1)[0] for story in split_stories}
    repeats = presentation(test_story, n_repeats)

    noise_voxels = np.flatnonzero(classes == "noise")
    n_nan = max(1, int(NAN_VOXEL_FRACTION * n_voxels))
    nan_voxels = np.sort(rng.choice(noise_voxels, size=min(n_nan, noise_voxels.size), replace=False))
    responses[split_stories[0]][:, nan_voxels] = np.nan

    cc_max_true = np.sqrt(signal_r**2 / (signal_r**2 + noise_sd**2 / n_repeats))
    truth = {
        "voxel_class": classes,
        "signal_r": signal_r,
        "noise_sd": noise_sd,
        "cc_max_true": cc_max_true,
        "semantic_weights": weights["semantic"],
        "auditory_weights": weights["auditory"],
        "nan_voxels": nan_voxels,
        "nan_story": np.array(split_stories[0]),
        "roi": layout.roi.astype("<U16"),
    }
    return responses, repeats, {"truth": truth, "layout": layout.arrays()}


# ----- writing ------------------------------------------------------------------------------


def _write_hf5(path: Path, **datasets: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, values in datasets.items():
            handle.create_dataset(key, data=values)


def build_demo_dataset(out_dir: str | os.PathLike, config: DemoConfig = DemoConfig(), overwrite: bool = False) -> Path:
    """Build the demo dataset in the ds003020 layout, unless ``out_dir`` holds it intact already.

    Raises
    ------
    FileExistsError
        ``out_dir`` is not empty and holds something other than this demo, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    settings = _settings(config)
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        state, reason = _demo_state(out_dir, settings)
        if state == "intact" and not overwrite:
            log.info("demo dataset in %s is up to date", out_dir)
            return out_dir
        if state == "damaged":
            log.warning("the demo dataset in %s is damaged (%s): rebuilding it", out_dir, reason)
        elif state == "other" and not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty and does not hold a demo dataset built with these settings ({reason}); "
                "choose another folder or pass overwrite=True (--overwrite)"
            )
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            info = _build_into(staging, config) | settings
            info["build_seconds"] = round(time.perf_counter() - started, 2)
            info["files"] = _file_sizes(staging)
            (staging / "derivative" / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("built the demo dataset in %s in %.1f s", out_dir, info["build_seconds"])
    return out_dir


def _settings(config: DemoConfig) -> dict:
    """Generator version and config as ``demo.json`` records them."""
    return {"generator_version": GENERATOR_VERSION, "config": json.loads(json.dumps(asdict(config)))}


def _file_sizes(root: Path) -> dict[str, int]:
    """Size in bytes of every file of a demo dataset but ``derivative/demo.json``, by path relative to ``root``."""
    return {path.relative_to(root).as_posix(): path.stat().st_size for path in sorted(root.rglob("*"))
            if path.is_file() and path.relative_to(root).as_posix() != "derivative/demo.json"}


def _read_info(root: Path) -> dict | None:
    """Content of a demo's ``demo.json``: None without one, {} when it is not a JSON mapping."""
    path = root / "derivative" / "demo.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _demo_state(root: Path, settings: dict) -> tuple[str, str]:
    """What ``root`` holds: ``("empty", "")``, ``("intact", "")``, ``("damaged", why)`` (this demo with missing
    or changed files) or ``("other", what)`` (something else)."""
    if not root.exists() or not any(root.iterdir()):
        return "empty", ""
    info = _read_info(root)
    if info is None:
        return "other", "no derivative/demo.json"
    if not info:
        return "damaged", "derivative/demo.json is not a JSON mapping"
    built = {key: info.get(key) for key in settings}
    if built != settings:
        return "other", f"a demo of generator version {built['generator_version']} with config {built['config']}"
    recorded = info.get("files")
    if not isinstance(recorded, dict):
        return "damaged", "derivative/demo.json lists no files"
    present = _file_sizes(root)
    missing = sorted(set(recorded) - set(present))
    changed = sorted(name for name in recorded if name in present and present[name] != recorded[name])
    if missing or changed:
        return "damaged", "; ".join(f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                                    for label, names in (("missing", missing), ("size changed", changed)) if names)
    return "intact", ""


def _built_settings(root: Path) -> dict | None:
    """Generator version and config recorded in a demo dataset's ``demo.json`` (None for both when it cannot
    be read), or None if there is none."""
    info = _read_info(root)
    if info is None:
        return None
    return {"generator_version": info.get("generator_version"), "config": info.get("config")}


def prepare_demo_outputs(out_dir: str | os.PathLike, config: DemoConfig = DemoConfig()) -> tuple[Path, Path]:
    """Build (or update) the demo data under ``out_dir`` and keep the demo sweep consistent with it."""
    out_dir = Path(out_dir).expanduser().resolve()
    data_dir, sweep_dir = out_dir / "data", out_dir / "sweep"
    before = _built_settings(data_dir)
    build_demo_dataset(data_dir, config, overwrite=before is not None and before != _settings(config))
    if before is not None and before != _built_settings(data_dir) and sweep_dir.exists():
        kept = out_dir / f"sweep-before-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_dir.rename(kept)
        log.warning("the demo data changed (generator version %s -> %s or another config): the previous sweep, "
                    "computed on the old data, is kept in %s", before["generator_version"], GENERATOR_VERSION, kept)
    return data_dir, sweep_dir


def _build_into(root: Path, config: DemoConfig) -> dict:
    """Write the dataset's files into ``root``; return the content of ``demo.json``."""
    rng = np.random.default_rng(config.seed)
    derivative = root / "derivative"
    (root / "stimuli").mkdir(parents=True)
    (derivative / "TextGrids").mkdir(parents=True)

    voices = ("en-us", "en", "en-us", "en")
    stories: dict[str, Story] = {}
    for index, name in enumerate((*config.stories, TEST_STORY)):
        seconds = config.test_story_seconds if name == TEST_STORY else config.story_seconds
        stories[name] = synthesize_story(name, seconds, voices[index % len(voices)], rng, config.tr)
        soundfile.write(root / "stimuli" / f"{name}.wav", stories[name].audio, SAMPLE_RATE, subtype="PCM_16")
        write_textgrid(stories[name].transcript, derivative / "TextGrids" / f"{name}.TextGrid")
    respdict = {s.name: s.n_trs + RESPDICT_PAD for s in stories.values()}  # ds003020 counts 5 more TRs
    (derivative / "respdict.json").write_text(json.dumps(respdict, indent=2))

    embeddings = word_embeddings(rng)
    raw = {"semantic": {}, "auditory": {}}
    for name, story in stories.items():
        times = tr_midpoints(story.n_trs, config.tr)
        raw["semantic"][name] = semantic_features(story.transcript, times, embeddings)
        raw["auditory"][name] = auditory_features(story.audio, story.transcript, times)
    features = {kind: _zscore_across(values) for kind, values in raw.items()}
    (derivative / "truth").mkdir()
    np.savez(
        derivative / "truth" / "stimulus_features.npz",
        **{f"{kind}/{story}": values for kind, per_story in features.items() for story, values in per_story.items()},
        auditory_feature_names=np.array(AUDITORY_FEATURES),
        semantic_categories=np.array(list(CATEGORIES)),
    )

    split_stories = config.stories
    for subject, n_repeats in zip(config.subjects, config.n_repeats):
        responses, repeats, extra = simulate_subject(
            features, split_stories, TEST_STORY, config.n_voxels, n_repeats, rng, config.tr
        )
        folder = derivative / "preprocessed_data" / subject
        for story, values in responses.items():
            _write_hf5(folder / f"{story}.hf5", data=values)
        _write_hf5(folder / f"{TEST_STORY}.hf5", data=repeats.mean(axis=0), individual_repeats=repeats)
        np.savez(derivative / "truth" / f"{subject}.npz", **extra["truth"])
        (derivative / "voxel_layout").mkdir(exist_ok=True)
        np.savez(derivative / "voxel_layout" / f"{subject}.npz", **extra["layout"])

    n_train = config.n_train_stories
    return {
        "bt_utils_version": __version__,
        "split": {
            "train": list(split_stories[:n_train]),
            "validation": list(split_stories[n_train:]),
            "test": TEST_STORY,
        },
        "subjects": list(config.subjects),
        "tr": config.tr,
        "generative_model": "see bt_utils.demo.simulation (module docstring)",
    }


DEMO_LOCATION = ("demo_output", "data")
"""The last two parts of the demo's own folder (``<checkout>/demo_output/data``, where ``make demo`` builds it)."""


def build_if_demo_location(data_root: str | os.PathLike) -> bool:
    """Build the demo at ``data_root`` if that is the demo's own location; say whether it did."""
    root = Path(data_root).expanduser().resolve()
    if root.parts[-2:] != DEMO_LOCATION:
        return False
    build_demo_dataset(root)
    return True
