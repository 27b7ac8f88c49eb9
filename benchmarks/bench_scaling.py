"""Cost growth with problem size, and the projected time of the paper's full protocol.

Measured on this machine, one thread, printed as markdown tables: the encoding fit
(:class:`bt_utils.encoding.ridge.EigenRidgeCV`) while TRs, feature width or voxels move around a base
point, with fitted log-log exponents against the solver's flop model; encoder forward seconds per
window at several window lengths; brain-tuning seconds per step on 10-s inputs. From these unit costs
and the protocol's sizes (docs/method.md) it projects feature extraction, brain-tuning and encoding
fits on this CPU, one GPU and a Dask cluster of GPU workers. GPU costs are counted FLOPs divided by an
assumed throughput (``--gpu-tflops``, ``--gpu-ridge-tflops``): no GPU was measured.

Run: ``.venv/bin/python benchmarks/bench_scaling.py [--quick] [--repeats 3] [--gpu-tflops 50]
[--gpu-ridge-tflops 20] [--workers 1 8 24] [--voxels 90000]``. ``--quick`` is a smoke run on tiny
problems and models; its projection means nothing.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_encoding import floor_products, machine_lines, make_problem, timed
from threadpoolctl import threadpool_limits

from bt_utils.data.timing import DS003020_TR_S
from bt_utils.encoding.ridge import (
    HIMALAYA_ALPHAS,
    EigenRidgeCV,
    _strategy_costs,
    story_folds,
)

THREADS = 1
"""Threads of every measurement: unit costs are per core, and stable on a shared machine."""

# ----------------------------------------------------------------------------- protocol sizes (docs/method.md)

N_SUBJECTS = 8
FAMILIES = ("wav2vec2-base", "hubert-base", "whisper-small")
N_TRAIN_STORIES = 24
N_FEATURISED_STORIES = 27
"""Stories whose features every model variant needs: 24 training, 2 validation, 1 test."""
STORY_SECONDS = 6.4 * 3600 / 27
"""Mean story length: the 27 stories all participants heard last about 6.4 h."""
TRIMMED_TRS = 15
"""TRs every stored response lacks (``[10:-5]``)."""
N_LAYERS = 7
"""Layers 2, 5, 7, 8, 10, 11, 12 (12 is the output)."""
N_FEATURES = 768 * 4
"""768 hidden dimensions x FIR delays 1-4."""
N_FOLDS = 5
N_EPOCHS = 30
WINDOW_S = 16.1
"""Reference feature window: 16 s of context + a 0.1-s chunk, one window every 0.1 s."""
CHUNK_S = 0.1
TUNING_INPUT_S = 10.0
N_TUNED_VARIANTS = 3
"""Tuned models per (subject, family): brain-tuned, random-fMRI control, LM-tuned control."""
N_ENCODED_VARIANTS = 4
"""Variants with encoding fits per (subject, family): the tuned three and the pretrained model."""
FITS_PER_LAYER = 2
"""Encoding fits per variant and layer: brain alignment, and the refit on low-level residual features."""
DEFAULT_VOXELS = 90_000
"""Voxels per participant in the preprocessed responses (whole cortex, about 80-95 thousand; the protocol gives
no exact count)."""

# ----------------------------------------------------------------------------- measurement grids

RIDGE_BASE = {"n_stories": 20, "trs_per_story": 200, "n_base": 384, "n_voxels": 2000}
"""4,000 TRs x 1,536 features (384 x 4 delays) x 2,000 voxels."""
RIDGE_FACTORS = {"trs": (0.5, 1, 2, 4), "features": (0.25, 0.5, 1, 2), "voxels": (0.5, 1, 2, 4)}
"""Feature widths stop at 2x so that every point keeps TRs >= features (the primal form of the protocol)."""
QUICK_RIDGE_BASE = {"n_stories": 10, "trs_per_story": 40, "n_base": 24, "n_voxels": 200}
QUICK_RIDGE_FACTORS = {"trs": (0.5, 1, 2), "features": (0.5, 1, 2), "voxels": (0.5, 1, 2)}
CHECK_VOXEL_FACTOR = 16
"""The check point beyond the grid: the base point with 16x the voxels, timed once."""
_AXIS_KEY = {"trs": "trs_per_story", "features": "n_base", "voxels": "n_voxels"}

WINDOW_LENGTHS_S = (4.1, 8.1, 16.1)
QUICK_WINDOW_LENGTHS_S = (2.1, 4.1)
LENGTH_MODELS = ("whisper-tiny.en", "whisper-tiny.en:native", "tiny-wav2vec2", "tiny-hubert")
QUICK_LENGTH_MODELS = ("whisper-tiny.en", "whisper-tiny.en:native", "tiny-wav2vec2")
QUICK_STAND_INS = {"wav2vec2-base": "tiny-wav2vec2", "hubert-base": "tiny-hubert", "whisper-small": "tiny-whisper"}


# ----------------------------------------------------------------------------- the projection


@dataclass(frozen=True)
class Protocol:
    """Sizes of the paper's full protocol that its cost depends on.

    Attributes
    ----------
    n_subjects : int
    n_families : int
    n_train_trs : int
        Training TRs per participant after the ``[10:-5]`` trim: rows of the
        encoding design and brain-tuning samples per epoch.
    n_windows : int
        Feature windows per model variant (audio seconds / 0.1 s).
    n_voxels : int
        Voxels of each encoding fit.
    n_epochs : int
    n_fits_per_run : int
        Encoding fits per (subject, family): variants x layers x fits per layer.
    """

    n_subjects: int = N_SUBJECTS
    n_families: int = len(FAMILIES)
    n_train_trs: int = round(N_TRAIN_STORIES * (STORY_SECONDS / DS003020_TR_S - TRIMMED_TRS))
    n_windows: int = round(N_FEATURISED_STORIES * STORY_SECONDS / CHUNK_S)
    n_voxels: int = DEFAULT_VOXELS
    n_epochs: int = N_EPOCHS
    n_fits_per_run: int = N_ENCODED_VARIANTS * N_LAYERS * FITS_PER_LAYER

    @property
    def n_runs(self) -> int:
        """Independent (subject, family) runs."""
        return self.n_subjects * self.n_families


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of work of one model family on one device.

    Attributes
    ----------
    window_s : float
        One feature window (encoder forward).
    sample_s : float
        One brain-tuning training sample (forward and backward).
    fit_s : float
        One encoding fit at the protocol's size.
    """

    window_s: float
    sample_s: float
    fit_s: float


def shared_seconds(protocol: Protocol, costs: UnitCosts) -> float:
    """Seconds of the work every participant shares: the pretrained model's features of one family."""
    return protocol.n_windows * costs.window_s


def run_seconds(protocol: Protocol, costs: UnitCosts) -> float:
    """Seconds of one (subject, family) run: its tunings, its tuned models' features and its encoding fits."""
    tuning = N_TUNED_VARIANTS * protocol.n_epochs * protocol.n_train_trs * costs.sample_s
    features = N_TUNED_VARIANTS * protocol.n_windows * costs.window_s
    return tuning + features + protocol.n_fits_per_run * costs.fit_s


def stage_seconds(protocol: Protocol, costs: dict[str, UnitCosts]) -> dict[str, float]:
    """Seconds of each stage summed over the whole protocol (one device, one job at a time).

    Parameters
    ----------
    protocol : Protocol
    costs : dict of str to UnitCosts
        One entry per model family.

    Returns
    -------
    dict of str to float
        ``features``, ``tuning``, ``fits`` and their ``total``.
    """
    tuned = protocol.n_subjects * N_TUNED_VARIANTS
    stages = {
        "features": sum((1 + tuned) * protocol.n_windows * c.window_s for c in costs.values()),
        "tuning": sum(tuned * protocol.n_epochs * protocol.n_train_trs * c.sample_s for c in costs.values()),
        "fits": sum(protocol.n_subjects * protocol.n_fits_per_run * c.fit_s for c in costs.values()),
    }
    stages["total"] = sum(stages.values())
    return stages


def makespan(durations: list[float], n_workers: int) -> float:
    """Wall time of independent jobs on ``n_workers`` workers, longest job first to the least loaded worker.

    For ``n`` equal jobs of ``t`` seconds this is ``ceil(n / n_workers) * t``.
    """
    loads = [0.0] * n_workers
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


def cluster_seconds(protocol: Protocol, costs: dict[str, UnitCosts], n_workers: int) -> float:
    """Wall time of the protocol on ``n_workers`` equal workers (a Dask cluster; 1: one device).

    The shared pretrained features of each family run first, then the
    ``n_subjects x n_families`` independent runs; scheduling and data transfer
    are free. With one worker this equals ``stage_seconds(...)["total"]``.
    """
    shared = [shared_seconds(protocol, c) for c in costs.values()]
    runs = [run_seconds(protocol, c) for c in costs.values() for _ in range(protocol.n_subjects)]
    return makespan(shared, n_workers) + makespan(runs, n_workers)


def ridge_flops(n_trs: int, n_features: int, n_voxels: int, n_alphas: int = len(HIMALAYA_ALPHAS),
                n_folds: int = N_FOLDS) -> float:
    """FLOPs of one :class:`EigenRidgeCV` fit from its matrix sizes (primal form, ``n_trs >= n_features``).

    The solver's own flop model (``bt_utils.encoding.ridge._strategy_costs``, the
    cheaper strategy; float64 work counted twice, an eigendecomposition as
    ``EIGH_COST * k**3`` multiply-adds) plus the steps both strategies share:
    the float64 Gram matrix (``2 n p^2``), the data in the eigenbasis
    (``n p^2``), the responses projected on it (``n p m``) and the refit
    (``p^2 m``); two FLOPs per multiply-add. Folds: ``n_folds`` equal blocks of TRs.
    """
    groups = np.arange(n_trs) * n_folds // n_trs
    splits = story_folds(groups, n_folds)
    solver = min(_strategy_costs(n_trs, n_features, n_voxels, n_alphas, splits).values())
    shared = 3 * n_trs * n_features**2 + n_trs * n_features * n_voxels + n_features**2 * n_voxels
    return 2.0 * (solver + shared)


def power_law_seconds(base_seconds: float, base_sizes: dict[str, int], sizes: dict[str, int],
                      exponents: dict[str, float]) -> float:
    """``base_seconds`` times ``(sizes[axis] / base_sizes[axis]) ** exponents[axis]`` over every axis."""
    return base_seconds * math.prod((sizes[axis] / base_sizes[axis]) ** exponents[axis] for axis in exponents)


# ----------------------------------------------------------------------------- 1. encoding fit


def _ridge_sizes(problem: dict) -> dict[str, int]:
    return {"trs": problem["n_stories"] * problem["trs_per_story"], "features": 4 * problem["n_base"],
            "voxels": problem["n_voxels"]}


def time_ridge_point(problem: dict, repeats: int) -> dict:
    """Median seconds of the fit and of the floor products on one synthetic problem, and the load after."""
    X, Y, groups, _ = make_problem(**problem)
    folds = story_folds(groups, N_FOLDS)
    floor_s, _, _, _ = timed(lambda: floor_products(X, Y), repeats)
    fit_s, _, _, load = timed(lambda: EigenRidgeCV(cv=folds).fit(X, Y), repeats)
    return {"fit_s": fit_s, "floor_s": floor_s, "load": load}


def measure_ridge(base: dict, factors: dict[str, tuple], repeats: int) -> list[dict]:
    """Fit time of :class:`EigenRidgeCV` at every point of the grid (the base point measured once).

    Returns
    -------
    list of dict
        One per (axis, factor): ``axis``, ``factor``, ``sizes`` (trs, features,
        voxels), ``fit_s`` and ``floor_s`` (medians over ``repeats``), ``gflop``
        (:func:`ridge_flops`) and ``load`` (1-minute load average after the fit).
    """
    measured = {}
    rows = []
    for axis, axis_factors in factors.items():
        for factor in axis_factors:
            problem = dict(base, **{_AXIS_KEY[axis]: round(base[_AXIS_KEY[axis]] * factor)})
            sizes = _ridge_sizes(problem)
            key = tuple(sizes.values())
            if key not in measured:
                measured[key] = {**time_ridge_point(problem, repeats), "gflop": ridge_flops(*key) / 1e9}
            rows.append({"axis": axis, "factor": factor, "sizes": sizes, **measured[key]})
    return rows


def log_log_slope(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of ``log(values)`` against ``log(sizes)``."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def ridge_exponents(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Per axis: the measured exponent of fit time and the exponent of :func:`ridge_flops`."""
    exponents = {}
    for axis in dict.fromkeys(row["axis"] for row in rows):
        points = [row for row in rows if row["axis"] == axis]
        sizes = [row["sizes"][axis] for row in points]
        exponents[axis] = (log_log_slope(sizes, [row["fit_s"] for row in points]),
                           log_log_slope(sizes, [row["gflop"] for row in points]))
    return exponents


# ----------------------------------------------------------------------------- 2. and 3. encoders


def base_architecture(family: str):
    """A random-initialised :class:`~bt_utils.models.encoder.SpeechEncoder` with the compute of a protocol checkpoint.

    Hugging Face's default ``Wav2Vec2Config`` and ``HubertConfig`` are the
    base models (12 layers, 768, 7-layer CNN); whisper-small's encoder is
    12 layers of 768 with 80 mel bins.
    """
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
        WhisperConfig,
    )
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from bt_utils.models.encoder import SpeechEncoder

    modules = {
        "wav2vec2-base": ("wav2vec2", lambda: Wav2Vec2Model(Wav2Vec2Config())),
        "hubert-base": ("hubert", lambda: HubertModel(HubertConfig())),
        "whisper-small": ("whisper", lambda: WhisperEncoder(WhisperConfig(
            d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, num_mel_bins=80))),
    }
    model_family, build = modules[family]
    return SpeechEncoder(build().eval(), model_family, f"{family} architecture (random init)", "random-init")


def counted_flops(encoder, run) -> float:
    """FLOPs of ``run()`` counted by ``torch.utils.flop_counter``, with the encoder on eager attention.

    The counter does not see fused attention kernels (``sdpa`` on CPU), so
    ``encoder`` runs eager attention meanwhile and gets its own back after.
    """
    from torch.utils.flop_counter import FlopCounterMode

    original = encoder.encoder.config._attn_implementation
    encoder.encoder.set_attn_implementation("eager")
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        encoder.encoder.set_attn_implementation(original)
    return float(counter.get_total_flops())


def window_seconds(encoder, audio: np.ndarray, window_s: float, batch_size: int, repeats: int) -> tuple[float, float]:
    """Median seconds of encoder forward per window, and counted GFLOP per window.

    Parameters
    ----------
    encoder : SpeechEncoder
    audio : ndarray of shape (n_samples,)
        16 kHz speech, at least ``window_s`` + ``batch_size`` x 0.1 s long.
    window_s : float
        Window length; a batch holds ``batch_size`` windows of it, 0.1 s apart.
    batch_size, repeats : int
        Windows per forward; timed forwards after one warm-up.
    """
    import torch

    from bt_utils.models.encoder import SAMPLE_RATE

    length, step = round(window_s * SAMPLE_RATE), round(CHUNK_S * SAMPLE_RATE)
    if len(audio) < length + (batch_size - 1) * step:
        raise ValueError(f"audio of {len(audio) / SAMPLE_RATE:.1f} s is too short for {batch_size} windows of "
                         f"{window_s} s")
    batch = torch.from_numpy(np.stack([audio[i * step:i * step + length] for i in range(batch_size)]))
    times = []
    with torch.no_grad():
        for repeat in range(repeats + 1):
            started = time.perf_counter()
            encoder(batch)
            if repeat:
                times.append(time.perf_counter() - started)
        flops = counted_flops(encoder, lambda: encoder(batch[:1]))
    return statistics.median(times) / batch_size, flops / 1e9


def training_gflop(encoder) -> float:
    """Counted GFLOP of one training sample (10 s; forward and backward) of ``encoder``, whose CNN front end it freezes."""
    import torch
    from bench_tuning import N_VOXELS, SAMPLES_PER_INPUT

    from bt_utils.models.tuning import BrainTuningModel, compute_loss

    encoder.freeze_feature_encoder()
    model = BrainTuningModel(encoder, N_VOXELS).train()
    audio, target = 0.1 * torch.randn(1, SAMPLES_PER_INPUT), torch.randn(1, N_VOXELS)
    flops = counted_flops(encoder, lambda: compute_loss("mse", model(audio), target).backward())
    encoder.eval()
    return flops / 1e9


def measure_lengths(models: tuple[str, ...], audio: np.ndarray, lengths: tuple[float, ...], batch_size: int,
                    repeats: int) -> list[dict]:
    """Seconds and counted GFLOP per window of registry models at several window lengths.

    Parameters
    ----------
    models : tuple of str
        Registry names; a ``:native`` suffix runs Whisper on the window's own length.
    audio : ndarray of shape (n_samples,)
    lengths : tuple of float
        Window lengths in seconds.
    batch_size, repeats : int
        See :func:`window_seconds`.

    Returns
    -------
    list of dict
        One per (model, length): ``model``, ``window_s``, ``seconds``, ``gflop``.
    """
    from bt_utils.models.registry import load_encoder

    rows = []
    for spec in models:
        name, _, variant = spec.partition(":")
        encoder = load_encoder(name, "cpu", native_length=variant == "native")
        for window_s in lengths:
            seconds, gflop = window_seconds(encoder, audio, window_s, batch_size, repeats)
            rows.append({"model": spec, "window_s": window_s, "seconds": seconds, "gflop": gflop})
    return rows


def input_label(encoder, seconds: float) -> str:
    """What the encoder computes on for audio of ``seconds``, e.g. ``'16.1 s'`` or ``'16.1 s padded to 30 s'``."""
    padded = encoder.family == "whisper" and not encoder.native_length
    return f"{seconds:g} s" + (" padded to 30 s" if padded else "")


def measure_families(models: dict[str, str], audio: np.ndarray, window_s: float, batch_size: int, repeats: int,
                     tuning_batch: int, tuning_steps: int, folder: Path) -> list[dict]:
    """Unit costs of each protocol family: feature window and training sample, measured and counted.

    Parameters
    ----------
    models : dict of str to str
        Family to a registry name, or to ``"base"`` for :func:`base_architecture`
        (saved under ``folder`` for ``bench_tuning.measure``, which loads it in a fresh process).
    audio : ndarray of shape (n_samples,)
    window_s : float
        Feature window length in seconds.
    batch_size, repeats : int
        See :func:`window_seconds`.
    tuning_batch, tuning_steps : int
        Batch size and timed steps of ``bench_tuning.measure``.
    folder : Path

    Returns
    -------
    list of dict
        One per family: ``family``, ``model``, ``params_m``, ``window`` and
        ``tuning_input`` (labels), ``window_s`` and ``sample_s`` (seconds),
        ``window_gflop`` and ``sample_gflop`` (counted), ``peak_mib`` (of the training process).
    """
    from bench_tuning import measure

    from bt_utils.models.registry import load_encoder

    rows = []
    for family, model in models.items():
        if model == "base":
            encoder = base_architecture(family)
            model = str(encoder.save_pretrained(folder / family))
        else:
            encoder = load_encoder(model, "cpu")
        window_s_cost, window_gflop = window_seconds(encoder, audio, window_s, batch_size, repeats)
        sample_gflop = training_gflop(encoder)
        step_s, peak_mib = measure(model, False, tuning_batch, tuning_steps, "cpu")
        rows.append({"family": family, "model": encoder.name, "window": input_label(encoder, window_s),
                     "tuning_input": input_label(encoder, TUNING_INPUT_S), "window_s": window_s_cost,
                     "window_gflop": window_gflop, "sample_s": step_s / tuning_batch,
                     "sample_gflop": sample_gflop, "peak_mib": peak_mib,
                     "params_m": sum(p.numel() for p in encoder.parameters()) / 1e6})
        del encoder  # free it before the next architecture is built
    return rows


# ----------------------------------------------------------------------------- report


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def hours(seconds: float) -> str:
    """Seconds as hours with 3 significant figures, or days beyond 1,000 h."""
    value = seconds / 3600
    return f"{value / 24:,.0f} d" if value >= 1000 else f"{value:.3g} h"


def print_ridge(rows: list[dict], exponents: dict[str, tuple[float, float]]) -> None:
    print("### Encoding fit: time against each size (measured)\n")
    print(markdown_table(
        ["axis", "factor", "TRs", "features", "voxels", "fit s", "floor s", "model GFLOP", "GFLOP/s", "load"],
        [[row["axis"], f"{row['factor']:g}x", f"{row['sizes']['trs']:,}", f"{row['sizes']['features']:,}",
          f"{row['sizes']['voxels']:,}", f"{row['fit_s']:.2f}", f"{row['floor_s']:.3f}", f"{row['gflop']:.0f}",
          f"{row['gflop'] / row['fit_s']:.0f}", f"{row['load']:.1f}"] for row in rows]))
    print("\n" + markdown_table(
        ["axis", "measured exponent", "flop-model exponent"],
        [[axis, f"{measured:.2f}", f"{model:.2f}"] for axis, (measured, model) in exponents.items()]))
    print()


def seconds_text(seconds: float) -> str:
    """Seconds with 3 significant figures, without an exponent: ``'0.0123'``, ``'67.2'``, ``'2,633'``."""
    return f"{seconds:,.0f}" if seconds >= 100 else f"{seconds:.3g}"


def print_extrapolation(rows: list[list]) -> None:
    print("### Encoding fit beyond the grid: extrapolations against a measurement\n")
    print(markdown_table(["fit", "TRs", "features", "voxels", "GFLOP (flop model)", "measured s",
                          "flop model at the median GFLOP/s, s", "power law of the exponents, s"], rows))
    print()


def print_lengths(rows: list[dict]) -> None:
    print("### Feature extraction: encoder forward per window (measured)\n")
    print(markdown_table(["model", "window s", "s / window", "GFLOP / window (counted)", "GFLOP/s"],
                         [[row["model"], f"{row['window_s']:g}", f"{row['seconds']:.4f}", f"{row['gflop']:.2f}",
                           f"{row['gflop'] / row['seconds']:.0f}"] for row in rows]))
    slopes = []
    for model in dict.fromkeys(row["model"] for row in rows):
        points = [row for row in rows if row["model"] == model]
        slope = log_log_slope([row["window_s"] for row in points], [row["seconds"] for row in points])
        slopes.append([model, f"{slope:.2f}"])
    print("\n" + markdown_table(["model", "exponent of s / window against window length"], slopes))
    print()


def print_families(rows: list[dict], batch_size: int, tuning_batch: int) -> None:
    print("### Protocol architectures: unit costs on this CPU (measured) and counted FLOPs\n")
    print(markdown_table(
        ["family", "model", "params M", f"window (batch {batch_size})", "s / window", "GFLOP / window",
         f"training input (batch {tuning_batch})", "s / sample", "GFLOP / sample", "peak MiB"],
        [[row["family"], row["model"], f"{row['params_m']:.1f}", row["window"], f"{row['window_s']:.3f}",
          f"{row['window_gflop']:.1f}", row["tuning_input"], f"{row['sample_s']:.2f}", f"{row['sample_gflop']:.1f}",
          f"{row['peak_mib']:.0f}"] for row in rows]))
    print()


def print_projection(protocol: Protocol, cpu: dict[str, UnitCosts], gpu: dict[str, UnitCosts],
                     workers: list[int], args) -> None:
    print("### Projection of the full protocol (projected, not measured)\n")
    print(f"Protocol: {protocol.n_subjects} subjects x {protocol.n_families} families = {protocol.n_runs} "
          f"independent runs; {protocol.n_train_trs:,} training TRs per subject ({N_TRAIN_STORIES} stories of "
          f"{STORY_SECONDS / DS003020_TR_S:.0f} TRs on average, [10:-5] trimmed), {protocol.n_epochs} epochs; "
          f"{protocol.n_windows:,} windows per model variant ({N_FEATURISED_STORIES} stories, one 16.1-s window per "
          f"0.1 s); {N_TUNED_VARIANTS} tuned models per run (brain, random-fMRI, LM-tuned) + the pretrained one per "
          f"family; {protocol.n_fits_per_run} encoding fits per run ({N_ENCODED_VARIANTS} variants x {N_LAYERS} layers "
          f"x {FITS_PER_LAYER}: alignment and low-level refit) of {protocol.n_train_trs:,} TRs x {N_FEATURES:,} "
          f"features x {protocol.n_voxels:,} voxels.")
    print(f"Assumptions: GPU sustains {args.gpu_tflops:g} TFLOP/s on the encoders (--gpu-tflops) and "
          f"{args.gpu_ridge_tflops:g} TFLOP/s on the ridge fits (--gpu-ridge-tflops); CPU = this machine, 1 thread, "
          f"measured unit costs (fits: flop model at the median measured GFLOP/s). Not counted: data loading, "
          f"low-level features and residualisation, validation passes, downstream tasks, Dask overheads.\n")
    cpu_stages, gpu_stages = stage_seconds(protocol, cpu), stage_seconds(protocol, gpu)
    count = {"features": protocol.n_families * (1 + protocol.n_subjects * N_TUNED_VARIANTS),
             "tuning": protocol.n_runs * N_TUNED_VARIANTS, "fits": protocol.n_runs * protocol.n_fits_per_run}
    labels = {"features": "feature extraction (model variants)", "tuning": "brain-tuning (trainings)",
              "fits": "encoding fits", "total": "total"}
    print(markdown_table(
        ["stage", "jobs", "this CPU, 1 thread", "1 GPU"],
        [[labels[stage], f"{count[stage]:,}" if stage in count else "", hours(cpu_stages[stage]),
          hours(gpu_stages[stage])] for stage in labels]))
    print("\n" + markdown_table(
        ["GPU workers (Dask)", "makespan", "one run (slowest family)", "shared pretrained features (slowest)"],
        [[n, hours(cluster_seconds(protocol, gpu, n)), hours(max(run_seconds(protocol, c) for c in gpu.values())),
          hours(max(shared_seconds(protocol, c) for c in gpu.values()))] for n in workers]))
    print("\nEvery GPU number scales as 1 / the assumed throughput.\n")


def main(argv=None) -> None:
    """Parse the options, measure with one thread, print the tables and the projection."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes and tiny stand-in models")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per point (median)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per encoder forward")
    parser.add_argument("--tuning-batch", type=int, default=2, help="samples per training step")
    parser.add_argument("--tuning-steps", type=int, default=2, help="timed training steps (median) after a warm-up")
    parser.add_argument("--gpu-tflops", type=float, default=50.0,
                        help="ASSUMED sustained GPU throughput on the encoders, TFLOP/s (default 50: mixed "
                             "precision, well below an A100's 312 or an H100's 989 bf16 peak)")
    parser.add_argument("--gpu-ridge-tflops", type=float, default=20.0,
                        help="ASSUMED sustained GPU throughput of the float32/float64 ridge fits, TFLOP/s (default 20)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 24], help="Dask GPU workers to project")
    parser.add_argument("--voxels", type=int, default=DEFAULT_VOXELS, help="voxels per encoding fit")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # for bench_tuning's fresh processes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(THREADS)
    with threadpool_limits(THREADS):
        run(args)


def run(args) -> None:
    """Measure, then project."""
    from bench_features import speech_story

    started = time.perf_counter()
    print(f"date: {datetime.date.today().isoformat()}; " + "; ".join(machine_lines()))
    print(f"threads: {THREADS} (BLAS and torch); {'QUICK smoke run: numbers mean nothing' if args.quick else 'full'}\n")

    base = QUICK_RIDGE_BASE if args.quick else RIDGE_BASE
    ridge_rows = measure_ridge(base, QUICK_RIDGE_FACTORS if args.quick else RIDGE_FACTORS, args.repeats)
    exponents = ridge_exponents(ridge_rows)
    print_ridge(ridge_rows, exponents)

    with tempfile.TemporaryDirectory() as folder:
        audio, _, _ = speech_story(40.0, Path(folder))
        length_rows = measure_lengths(QUICK_LENGTH_MODELS if args.quick else LENGTH_MODELS, audio,
                                      QUICK_WINDOW_LENGTHS_S if args.quick else WINDOW_LENGTHS_S,
                                      args.batch_size, args.repeats)
        print_lengths(length_rows)
        models = QUICK_STAND_INS if args.quick else dict.fromkeys(FAMILIES, "base")
        family_rows = measure_families(models, audio, WINDOW_S, args.batch_size, args.repeats, args.tuning_batch,
                                       args.tuning_steps, Path(folder))
    print_families(family_rows, args.batch_size, args.tuning_batch)

    protocol = Protocol(n_voxels=args.voxels)
    base_row = next(row for row in ridge_rows if row["factor"] == 1)
    measured = {axis: slope for axis, (slope, _) in exponents.items()}
    cpu_rate = statistics.median(row["gflop"] / row["fit_s"] for row in ridge_rows)
    check_problem = dict(base, n_voxels=base["n_voxels"] * CHECK_VOXEL_FACTOR)
    check_s = time_ridge_point(check_problem, 1)["fit_s"]
    points = {f"check: base x {CHECK_VOXEL_FACTOR} voxels": (_ridge_sizes(check_problem), seconds_text(check_s)),
              "one fit of the protocol": ({"trs": protocol.n_train_trs, "features": N_FEATURES,
                                           "voxels": protocol.n_voxels}, "not measured")}
    extrapolation = []
    for name, (sizes, measured_s) in points.items():
        gflop = ridge_flops(*sizes.values()) / 1e9
        extrapolation.append([name, f"{sizes['trs']:,}", f"{sizes['features']:,}", f"{sizes['voxels']:,}",
                              f"{gflop:,.0f}", measured_s, seconds_text(gflop / cpu_rate),
                              seconds_text(power_law_seconds(base_row["fit_s"], base_row["sizes"], sizes, measured))])
    print_extrapolation(extrapolation)
    fit_gflop = ridge_flops(protocol.n_train_trs, N_FEATURES, protocol.n_voxels) / 1e9
    cpu_fit_s = fit_gflop / cpu_rate
    cpu = {row["family"]: UnitCosts(row["window_s"], row["sample_s"], cpu_fit_s) for row in family_rows}
    gpu = {row["family"]: UnitCosts(row["window_gflop"] / args.gpu_tflops / 1e3,
                                    row["sample_gflop"] / args.gpu_tflops / 1e3,
                                    fit_gflop / args.gpu_ridge_tflops / 1e3) for row in family_rows}
    print_projection(protocol, cpu, gpu, args.workers, args)
    print(f"(measuring took {time.perf_counter() - started:.0f} s wall)")


if __name__ == "__main__":
    main()
