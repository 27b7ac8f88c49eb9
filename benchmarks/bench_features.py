"""Benchmark layer-feature extraction: the reference and the fast mode, on CPU.

For each encoder, on one story of synthesised speech, prints the wall time per minute of audio of
each mode, the encoder compute (frames the transformer layers run on, and multiply-adds including
attention) and its ratio to the reference, and each mode's agreement with the reference at TR level
(per layer, Pearson r of each feature dimension over the story's ``[10:-5]`` TRs). The reference with
0.1 s more context is the yardstick: an approximation cannot be expected to agree better than that.

Usage::

    .venv/bin/python benchmarks/bench_features.py [--seconds 120] [--threads 1]
        [--models tiny-wav2vec2 tiny-hubert tiny-whisper whisper-tiny.en whisper-tiny.en:native]
        [--modes fast reference+0.1s]

A ``:native`` suffix runs Whisper on each window's real length instead of 30 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bt_utils.data.dataset import Dataset
from bt_utils.data.timing import trim_trs
from bt_utils.demo.simulation import DemoConfig, build_demo_dataset
from bt_utils.features import (
    CHUNK_S,
    CONTEXT_S,
    WindowSettings,
    encoder_plan,
    extract_layer_features,
    kept_frame_index,
    pads_to_30s,
    tr_features,
    zscore_per_story,
)
from bt_utils.features.whisper_edge import SPAN_FRAMES, member_rows, shared_groups
from bt_utils.models.encoder import SAMPLE_RATE, WHISPER_FRAMES, SpeechEncoder
from bt_utils.models.registry import load_encoder

MODELS = ("tiny-wav2vec2", "tiny-hubert", "tiny-whisper", "whisper-tiny.en", "whisper-tiny.en:native")
MODES = {"reference": WindowSettings("reference"), "fast": WindowSettings("fast"),
         "reference+0.1s": WindowSettings("reference", context_s=CONTEXT_S + CHUNK_S),
         "fast-bf16": WindowSettings("fast", precision="bf16")}
"""Feature modes by name: the protocol, the fast mode, the protocol with one more chunk of context, and the fast
mode under bfloat16 autocast."""


def layer_compute(encoder: SpeechEncoder, n_samples: int, settings: WindowSettings) -> tuple[int, float]:
    """Frames the transformer layers run on and their multiply-adds per layer, summed over a story's windows.

    Per window: ``n`` query frames reading ``m`` key frames cost ``n * (12 D^2 + 2 D m)``. In the fast mode of
    Whisper padded to 30 s, a group's lead runs all 1,500 frames; its members' pass also projects the lead's
    frames that any member reads to keys and values (``2 D^2`` each), and each span's queries read all of them
    (those another member reads masked) besides the span.
    """
    width = encoder.hidden_size
    plan = encoder_plan(encoder, n_samples, settings)
    if not (settings.mode == "fast" and pads_to_30s(encoder)):
        frames = encoder.frame_lengths(torch.as_tensor(plan.ends - plan.starts)).numpy()
        if pads_to_30s(encoder):
            frames = np.full_like(frames, WHISPER_FRAMES)
        return int(frames.sum()), float((frames * (12 * width ** 2 + 2 * width * frames.astype(np.float64))).sum())
    kept_frames = kept_frame_index(encoder, plan)[plan.first]
    frames_run, multiply_adds = 0, 0.0
    for _, members in shared_groups(plan, kept_frames):
        frames_run += WHISPER_FRAMES  # the lead: a whole forward pass
        multiply_adds += WHISPER_FRAMES * (12 * width ** 2 + 2 * width * WHISPER_FRAMES)
        if len(members):
            read = int((member_rows(kept_frames[members])[1].sum(0) > 0).sum())
            queries, keys = len(members) * SPAN_FRAMES, SPAN_FRAMES + read
            frames_run += queries
            multiply_adds += read * 2 * width ** 2 + queries * (12 * width ** 2 + 2 * width * keys)
    return frames_run, multiply_adds


def speech_story(seconds: float, folder: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Audio (n_samples,) and TR midpoints (n_trs,) of one synthesised story of about ``seconds``."""
    config = DemoConfig(n_train_stories=1, n_validation_stories=0, story_seconds=seconds, test_story_seconds=40,
                        n_voxels=100, n_repeats=(2, 2, 2))
    dataset = Dataset(build_demo_dataset(folder / "demo", config))
    story = dataset.split().train[0]
    return dataset.load_audio(story), dataset.tr_times(story), story


def agreement(reference: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """Mean and 10th percentile over dimensions of the per-dimension r of two (n_trs, d) series."""
    r = (zscore_per_story(reference) * zscore_per_story(fast)).mean(axis=0)
    return float(r.mean()), float(np.percentile(r, 10))


def bench_model(spec: str, audio: np.ndarray, tr_times: np.ndarray, batch_size: int,
                modes: dict[str, WindowSettings]) -> tuple[list, list, dict[int, np.ndarray]]:
    """Timing rows (one per mode of ``modes``, which starts with the reference), agreement rows (one per mode
    and layer, vs the reference) and the reference's trimmed TR features per layer, each of shape (n_trs, d)."""
    name, _, variant = spec.partition(":")
    encoder = load_encoder(name, "cpu", native_length=variant == "native")
    layers = range(encoder.n_layers + 1)
    minutes = len(audio) / SAMPLE_RATE / 60
    timing, tr_level = [], {}
    for mode, settings in modes.items():
        plan = encoder_plan(encoder, len(audio), settings)
        started = time.perf_counter()
        times, frames = extract_layer_features(encoder, audio, layers, settings, batch_size, progress=False)
        elapsed = time.perf_counter() - started
        tr_level[mode] = tr_features(times, frames, tr_times)
        frames_run, multiply_adds = layer_compute(encoder, len(audio), settings)
        timing.append([spec, mode, elapsed / minutes, len(plan.starts), frames_run / minutes, multiply_adds / minutes])
    for row in timing:
        row[6:] = [timing[0][4] / row[4], timing[0][5] / row[5]]
    reference = {layer: trim_trs(tr_level["reference"][layer]) for layer in layers}
    rows = [[spec, mode, layer, *agreement(reference[layer], trim_trs(values[layer]))]
            for mode, values in tr_level.items() if mode != "reference" for layer in layers]
    return timing, rows, reference


def print_table(header: list[str], rows: list[list], formats: list[str]) -> None:
    """Print ``rows`` under ``header`` in aligned columns, each cell formatted by ``formats``."""
    cells = [[fmt.format(value) for fmt, value in zip(formats, row)] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the synthesised story")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                        help="modes compared with the reference (which always runs)")
    args = parser.parse_args()
    modes = {mode: MODES[mode] for mode in ["reference", *args.modes]}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        audio, tr_times, story = speech_story(args.seconds, Path(folder))
    print(f"story {story!r}: {len(audio) / SAMPLE_RATE:.1f} s of speech, {len(tr_times)} TRs; "
          f"{args.threads} CPU thread(s), batch size {args.batch_size}")
    for mode, settings in modes.items():
        print(f"  {mode}: {settings.to_dict()}")
    print()
    references = {}
    for spec in args.models:  # each model's tables as soon as it is done (the Whisper reference runs take long)
        timing, agree, references[spec] = bench_model(spec, audio, tr_times, args.batch_size, modes)
        print_table(["model", "mode", "s / audio min", "forwards", "layer frames / audio min",
                     "layer multiply-adds / audio min", "less frames", "less compute"], timing,
                    ["{}", "{}", "{:.1f}", "{}", "{:.0f}", "{:.3g}", "{:.1f}x", "{:.1f}x"])
        print_table(["model", "mode", "layer", "r with reference: mean", "p10"], agree,
                    ["{}", "{}", "{}", "{:.3f}", "{:.3f}"])
    for spec, native in references.items():  # Whisper run both ways: how far native length is from the protocol
        padded = spec.removesuffix(":native")
        if spec != padded and padded in references:
            rows = [[padded, layer, *agreement(references[padded][layer], values)] for layer, values in native.items()]
            print_table(["model", "layer", "native vs padded reference r mean", "r p10"], rows,
                        ["{}", "{}", "{:.3f}", "{:.3f}"])


if __name__ == "__main__":
    main()
