"""Cost of the checks made when a dataset is opened, on a dataset shaped like ds003020.

Writes a dataset in the ds003020 layout with its 84 stories (durations 5-15 min; each story's
audio as a short WAV whose header gives the story's duration, since opening reads headers
only; a TextGrid of realistic size, ~2.5 words and ~8 phones a second) and 8 subjects (3 with
all 84 stories, 5 with the 27 shared ones; few voxels, as checking reads the hf5 headers
only). Then times, on a warm file cache: ``Dataset(root)`` (layout and :meth:`Dataset.validate`:
respdict, every story's audio header and TextGrid header), ``validate_responses`` of a subject
with 84 stories (run when the subject is first used), and, for scale, parsing every TextGrid
as ``stories_table`` does. Prints a markdown table (median and min of ``--repeats`` runs).

Run: ``.venv/bin/python benchmarks/bench_dataset_open.py [--repeats 5] [--folder DIR]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile

from bench_scaling import markdown_table
from bt_utils.data.dataset import DS003020_TEST_STORY, DS003020_TRAIN_STORIES, DS003020_VALIDATION_STORIES, Dataset
from bt_utils.data.timing import DS003020_TR_S, RESPDICT_PAD, SOUND_ONSET_S, trimmed_length
from bt_utils.data.transcripts import Interval, Transcript, read_textgrid, write_textgrid

WAV_RATE = 100
"""Sample rate of the benchmark's WAV files, in Hz: only their headers are read."""


def write_dataset(root: Path, seed: int = 0) -> Path:
    """A ds003020-shaped dataset (see the module docstring) in ``root``."""
    rng = np.random.default_rng(seed)
    shared = [*DS003020_TRAIN_STORIES, *DS003020_VALIDATION_STORIES, DS003020_TEST_STORY]
    stories = shared + [f"story{index:02d}" for index in range(84 - len(shared))]
    (root / "stimuli").mkdir(parents=True)
    (root / "derivative" / "TextGrids").mkdir(parents=True)
    n_trs = {}
    for story in stories:
        seconds = float(rng.uniform(300, 900))
        n_trs[story] = int(np.ceil((seconds + 2 * SOUND_ONSET_S) / DS003020_TR_S))
        soundfile.write(root / "stimuli" / f"{story}.wav", np.zeros(round(seconds * WAV_RATE)), WAV_RATE)
        words = [Interval(t, t + 0.3, "word") for t in np.arange(0.5, seconds - 1, 0.4)]
        phones = [Interval(t, t + 0.1, "AH") for t in np.arange(0.5, seconds - 1, 0.125)]
        write_textgrid(Transcript(words, phones, round(seconds * WAV_RATE) / WAV_RATE),
                       root / "derivative" / "TextGrids" / f"{story}.TextGrid")
    (root / "derivative" / "respdict.json").write_text(json.dumps({s: n + RESPDICT_PAD for s, n in n_trs.items()}))
    for index in range(8):
        folder = root / "derivative" / "preprocessed_data" / f"UTS0{index + 1}"
        folder.mkdir(parents=True)
        for story in stories if index < 3 else shared:
            with h5py.File(folder / f"{story}.hf5", "w") as handle:
                handle["data"] = np.zeros((trimmed_length(n_trs[story]), 8), np.float32)
    return root


def timed(function, repeats: int) -> tuple[float, float]:
    """Median and minimum wall time of ``function()`` over ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", help="write the dataset here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = write_dataset(Path(args.folder or scratch) / "ds003020")
        dataset = Dataset(root)
        unchecked = iter([Dataset(root) for _ in range(args.repeats)])  # responses checked once per instance
        rows = []
        for label, step in (
            ("open: `Dataset(root)` (validate 84 stories)", lambda: Dataset(root)),
            ("first use of UTS01: `validate_responses` (84 hf5 headers)",
             lambda: next(unchecked).validate_responses("UTS01")),
            ("for scale: parse the 84 TextGrids (`stories_table`)",
             lambda: [read_textgrid(dataset.textgrid_path(s)) for s in dataset.stories]),
        ):
            median, fastest = timed(step, args.repeats)
            rows.append([label, f"{median * 1000:.0f}", f"{fastest * 1000:.0f}"])
        print(markdown_table(["step", "median ms", "min ms"], rows))


if __name__ == "__main__":
    main()
