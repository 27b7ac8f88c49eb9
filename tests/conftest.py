"""Shared fixtures. The environment is made offline before anything imports transformers."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Caches (converted models, ROI table, features) go to a fresh folder per test session, shared by the pytest-xdist
# workers of the session (the caches lock what they compute) and by the notebooks papermill runs, so no test passes
# thanks to a stale user cache.
_SESSION = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _SESSION:  # a pytest-xdist worker: its share of the cores, for torch here and the notebooks' kernels
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, str(_THREADS))
    _CACHE = os.path.join(tempfile.gettempdir(), f"bt_utils-test-cache-{_SESSION}")
    os.makedirs(_CACHE, exist_ok=True)
else:
    _CACHE = tempfile.mkdtemp(prefix="bt_utils-test-cache-")
os.environ.setdefault("BT_UTILS_CACHE_DIR", _CACHE)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402

from bt_utils.data.timing import DS003020_TR_S, RESPDICT_PAD, SOUND_ONSET_S  # noqa: E402
from bt_utils.data.transcripts import Interval, Transcript, write_textgrid  # noqa: E402


TEST_WINDOW_KW = {"mode": "fast", "context_s": 4.0}
"""Feature windows of the tests that run the real Whisper on the whole demo: 4 s of context (the protocol has 16 s)
is enough for the planted classes to separate by layer, and every such test uses it, so they share one feature
cache."""


QUICK_TUNING = dict(epochs=3, batch_size=8, warmup_epochs=1, head_lr=1e-2, encoder_lr=1e-4, max_train_trs=24,
                    max_validation_trs=8, spec_augment=False, layerdrop=False, device="cpu")
"""Brain-tuning settings small enough for a test on the demo (a few seconds with the tiny models)."""


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The default demo dataset, built once per test session."""
    from bt_utils.demo.simulation import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="session")
def demo(demo_root):
    from bt_utils.data.dataset import Dataset

    return Dataset(demo_root)


SMALL_DATASET_RATE = 8000
"""Sample rate of the audio of :func:`write_small_dataset`, in Hz."""


def small_story_seconds(n_trs: int) -> float:
    """Audio duration of a story of ``n_trs`` TRs in :func:`write_small_dataset`: the TR grid less the 10 s
    of scanning before the sound and 10 s after it, as in ds003020 and the demo."""
    return n_trs * DS003020_TR_S - 2 * SOUND_ONSET_S


def write_small_dataset(root: Path, stories: dict[str, int], n_voxels: int = 4, seed: int = 0,
                        subjects: dict[str, int] | None = None, split: dict | None = None) -> Path:
    """A minimal hand-made dataset in the ds003020 layout.

    Each story gets noise audio at 8 kHz that covers its TR grid
    (:func:`small_story_seconds`), a one-word TextGrid of the same duration,
    and responses of the right trimmed length for subject ``S01`` (or for each
    of ``subjects``: name -> number of voxels, instead of ``n_voxels``); the
    last story also gets three ``individual_repeats``. ``split`` (``{"train":
    [...], "validation": [...], "test": ...}``) is written as the dataset's own
    split (``derivative/demo.json``), for datasets that are not ds003020.
    """
    rng = np.random.default_rng(seed)
    (root / "stimuli").mkdir(parents=True)
    (root / "derivative" / "TextGrids").mkdir(parents=True)
    respdict = {story: n_trs + RESPDICT_PAD for story, n_trs in stories.items()}  # as ds003020 counts them
    (root / "derivative" / "respdict.json").write_text(json.dumps(respdict))
    if split is not None:
        (root / "derivative" / "demo.json").write_text(json.dumps({"split": split}))
    subjects = subjects or {"S01": n_voxels}
    for subject in subjects:
        (root / "derivative" / "preprocessed_data" / subject).mkdir(parents=True)
    for index, (story, n_trs) in enumerate(stories.items()):
        n_samples = round(small_story_seconds(n_trs) * SMALL_DATASET_RATE)
        soundfile.write(root / "stimuli" / f"{story}.wav", 0.1 * rng.standard_normal(n_samples), SMALL_DATASET_RATE)
        transcript = Transcript([Interval(0.2, 0.6, "hello")], [Interval(0.2, 0.4, "HH"), Interval(0.4, 0.6, "AH")],
                                n_samples / SMALL_DATASET_RATE)
        write_textgrid(transcript, root / "derivative" / "TextGrids" / f"{story}.TextGrid")
        for subject, width in subjects.items():
            with h5py.File(root / "derivative" / "preprocessed_data" / subject / f"{story}.hf5", "w") as handle:
                handle["data"] = rng.standard_normal((n_trs - 15, width)).astype(np.float32)
                if index == len(stories) - 1:
                    handle["individual_repeats"] = rng.standard_normal((3, n_trs - 15, width)).astype(np.float32)
    return root


@pytest.fixture(scope="session")
def map_cache(tmp_path_factory) -> Path:
    """A cache root holding the demo's S1 -> fsaverage5 fit (a few seconds, computed once per session)."""
    from bt_utils.demo.surface import template_to_fsaverage

    root = tmp_path_factory.getbasetemp() / "bt_utils_cache"
    template_to_fsaverage("thin", cache_dir=root)
    return root


def cut_audio(dataset, seconds: float):
    """Cut the audio of every story of an opened dataset to ``seconds``, and return the dataset.

    Opening checks that each story's audio covers its TR grid; tests of feature
    extraction that need only a few frames per story cut it afterwards.
    """
    for story in dataset.stories:
        path = dataset.audio_path(story)
        audio, rate = soundfile.read(path)
        soundfile.write(path, audio[:round(seconds * rate)], rate)
    return dataset


def authors_whisper_frame(encoder, n_samples: int) -> int:
    """The frame the authors' extraction keeps for Whisper padded to 30 s: the feature extractor's
    attention mask (one entry per 160 samples, 3,000 entries) convolved with ones shaped like conv1
    and conv2, and its last non-zero entry."""
    import torch

    mask = torch.zeros(1, 1, 3000)
    mask[..., :int(np.ceil(n_samples / 160))] = 1
    for conv in (encoder.encoder.conv1, encoder.encoder.conv2):
        mask = torch.nn.functional.conv1d(mask, torch.ones(1, 1, conv.kernel_size[0]), stride=conv.stride,
                                          padding=conv.padding)
    return int(mask[0, 0].nonzero().max())
