"""Layer features of a speech encoder per story: sliding windows, the kept frames, the disk cache.

:func:`extract_layer_features` runs an encoder over the windows of :mod:`bt_utils.features.windows`;
:func:`story_features` caches the result per story and layer (:func:`feature_tag`); :func:`dataset_tr_features`
resamples it to TRs."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cache_root
from ..data.dataset import Dataset
from ..models.encoder import SAMPLE_RATE, WHISPER_MAX_SAMPLES, SpeechEncoder
from ..models.precision import autocast_context, resolve_precision
from ..results import atomic_path, in_turn
from . import whisper_edge
from .design import tr_features
from .windows import (
    FAST_STRIDE_S,
    WindowPlan,
    WindowSettings,
    pads_to_30s,
    plan_windows,
)

log = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "PROTOCOL_LAYERS", "check_layers", "dataset_tr_features", "default_layers",
           "encoder_plan", "extract_layer_features", "feature_tag", "kept_frame_index", "story_features",
           "window_stride_s"]

PROTOCOL_LAYERS = (2, 5, 7, 8, 10, 11, 12)
"""The protocol's layers of 12-layer models (layer 12 is the model's output)."""

CACHE_VERSION = 2
"""Version of the feature cache files; part of their path (2: padded Whisper keeps the authors' last frame)."""

_WARNED_NATIVE_WHISPER: set[str] = set()
"""Feature tags for which the fast-mode warning about native-length Whisper was logged in this process."""


# ----- layers ------------------------------------------------------------------------------------


def check_layers(layers: Iterable[int], n_layers: int) -> tuple[int, ...]:
    """Validate layer indices into ``hidden_states`` (0, the input of the first layer, to ``n_layers``) against a
    model's depth; returns them sorted, without repeats.
    """
    layers = list(layers)
    if not layers:
        raise ValueError(f"no layers given; choose from 0 to {n_layers}")
    bad = [layer for layer in layers
           if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are not available: this model has {n_layers} layers, so choose integers "
                         f"from 0 (input of the first layer) to {n_layers} (output of the last layer)")
    return tuple(sorted({int(layer) for layer in layers}))


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The protocol's layers for 12-layer models, else every layer's output (1 .. n_layers)."""
    return PROTOCOL_LAYERS if n_layers == 12 else tuple(range(1, n_layers + 1))


# ----- windows of an encoder ---------------------------------------------------------------------


def _shares_spans(encoder: SpeechEncoder, settings: WindowSettings) -> bool:
    """Whether the windows run as :mod:`whisper_edge` groups: the fast mode of Whisper padded to 30 s."""
    return settings.mode == "fast" and pads_to_30s(encoder)


def window_stride_s(encoder: SpeechEncoder, settings: WindowSettings) -> float:
    """Step between the windows ``encoder`` runs in ``settings.mode``, in seconds."""
    if settings.mode == "fast" and not pads_to_30s(encoder):
        return FAST_STRIDE_S
    return settings.chunk_s


def encoder_plan(encoder: SpeechEncoder, n_samples: int, settings: WindowSettings) -> WindowPlan:
    """The windows ``encoder`` runs over a story of ``n_samples`` samples: :func:`plan_windows` with
    :func:`window_stride_s`."""
    return plan_windows(n_samples, settings, window_stride_s(encoder, settings))


def feature_tag(encoder: SpeechEncoder, settings: WindowSettings) -> str:
    """Text that names exactly which features ``encoder`` computes with ``settings``, used in cache paths."""
    tag = f"{settings.mode}-ctx{settings.context_s!r}-chunk{settings.chunk_s!r}"
    if _shares_spans(encoder, settings):
        tag = f"{tag}-{whisper_edge.TAG}"
    else:
        tag = f"{tag}-stride{window_stride_s(encoder, settings)!r}"
    return tag if settings.precision == "off" else f"{tag}-{settings.precision}"


def kept_frame_index(encoder: SpeechEncoder, plan: WindowPlan) -> np.ndarray:
    """Index, within its window's frames, of each grid point's frame, shape (n_times,)."""
    heard = plan.grid_ends - plan.starts[plan.window_of_frame]
    frames = encoder.frame_lengths(torch.as_tensor(heard)).numpy()
    if pads_to_30s(encoder):
        last_frame = int(encoder.frame_lengths(torch.tensor([WHISPER_MAX_SAMPLES]))[0]) - 1
        index = np.minimum(frames, last_frame)
    else:
        index = frames - 1
    if index.min() < 0:
        shortest = int(heard[index < 0].min())
        raise ValueError(f"a window of {shortest} samples yields no {encoder.family} frame; make chunk_s longer "
                         f"than {shortest / SAMPLE_RATE:g} s")
    return index


# ----- extraction --------------------------------------------------------------------------------


def _chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def _passes(encoder: SpeechEncoder, settings: WindowSettings, plan: WindowPlan, frame_index: np.ndarray,
            batch_size: int) -> list[tuple[np.ndarray, str]]:
    """The forward passes in order, as (windows, role)."""
    if _shares_spans(encoder, settings):
        passes = []
        for lead, members in whisper_edge.shared_groups(plan, frame_index[plan.first]):
            passes += [(np.array([lead]), "lead")] + ([(members, "members")] if len(members) else [])
        return passes
    lengths = plan.ends - plan.starts
    keys = np.zeros_like(lengths) if pads_to_30s(encoder) else lengths
    return [(batch, "whole") for key in np.unique(keys) for batch in _chunks(np.flatnonzero(keys == key), batch_size)]


def _window_inputs(audio: np.ndarray, plan: WindowPlan, windows: np.ndarray,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio of ``windows`` as a (B, T) float tensor on ``device``, zero after each window's end, and the
    windows' lengths in samples, shape (B,)."""
    lengths = plan.ends[windows] - plan.starts[windows]
    inputs = np.zeros((len(windows), lengths.max()), np.float32)
    for row, window in enumerate(windows):
        inputs[row, :lengths[row]] = audio[plan.starts[window]:plan.ends[window]]
    return torch.from_numpy(inputs).to(device), torch.from_numpy(lengths)


def _check_audio(audio) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be a 1-D float array of 16 kHz samples; got dtype {audio.dtype} and shape "
                         f"{audio.shape}")
    return audio.astype(np.float32, copy=False)


def _warn_native_whisper(encoder: SpeechEncoder, settings: WindowSettings) -> None:
    """In the fast mode of Whisper at native length, log once per process and settings that its frames are not
    the reference's edge frames."""
    if encoder.family != "whisper" or settings.mode != "fast" or pads_to_30s(encoder):
        return
    tag = feature_tag(encoder, settings)
    if tag not in _WARNED_NATIVE_WHISPER:
        _WARNED_NATIVE_WHISPER.add(tag)
        log.warning("the fast mode of Whisper at native length keeps interior frames of longer windows, which "
                    "Whisper represents unlike the last frame of a window that the reference keeps (see "
                    "docs/feature_windows.md); use mode='reference' to follow the protocol, or native_length=False "
                    "for the fast mode that keeps the reference's edge frames")


def reuses_frozen_layers(encoder: SpeechEncoder, settings: WindowSettings) -> bool:
    """Whether :func:`story_features` continues ``encoder`` from cached states of its frozen layers: a brain-tuned
    model whose lower layers were left as loaded (``encoder.frozen_layers``), in the strided fast mode (the other
    modes run too many windows to keep their states)."""
    return encoder.frozen_layers > 0 and settings.mode == "fast" and not pads_to_30s(encoder)


def extract_layer_features(encoder: SpeechEncoder, audio: np.ndarray, layers: Iterable[int],
                           settings: WindowSettings = WindowSettings(), batch_size: int = 8,
                           progress: bool = True, frozen_states: dict | None = None,
                           keep_frozen_states: bool = False) -> tuple:
    """Frame features of a story's audio from causal sliding windows, one frame per grid point.

    Parameters
    ----------
    audio : ndarray of shape (n_samples,)
        16 kHz; sample 0 is sound onset.
    batch_size : int
        Windows per forward pass (a shared group's members run in one pass).
    progress : bool
        Show a progress bar over batches.
    frozen_states : dict, optional
        Continue from these states of ``encoder``'s frozen layers instead of running them (see
        :func:`reuses_frozen_layers`): ``states`` (n_windows, F, D) entering layer ``encoder.frozen_layers + 1``
        (float16), ``frames`` (n_windows,) valid frames per window and ``low`` (frozen_layers + 1, n_times, D) the
        features of the frozen layers.
    keep_frozen_states : bool
        Also return such a dict, computed on the way.

    Returns
    -------
    times : ndarray of shape (n_times,)
        Time of each frame (end of its window's chunk), seconds after sound onset.
    features : dict of int to ndarray of shape (n_times, hidden_size)
        float32, one entry per layer.
    kept_states : dict
        Only with ``keep_frozen_states``: the ``frozen_states`` of this story.
    """
    layers = check_layers(layers, encoder.n_layers)
    audio = _check_audio(audio)
    autocast = autocast_context(encoder.device, resolve_precision(encoder.device, settings.precision))
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    plan = encoder_plan(encoder, len(audio), settings)
    if encoder.family == "whisper" and plan.window_samples > WHISPER_MAX_SAMPLES:
        raise ValueError(f"windows of {plan.window_samples / SAMPLE_RATE:g} s ({feature_tag(encoder, settings)}) "
                         f"exceed Whisper's 30 s input; lower context_s")
    _warn_native_whisper(encoder, settings)
    frame_index = kept_frame_index(encoder, plan)
    features = {layer: np.empty((len(plan.grid_ends), encoder.hidden_size), np.float32) for layer in layers}
    passes = _passes(encoder, settings, plan, frame_index, batch_size)
    depth = encoder.frozen_layers
    if (frozen_states is not None or keep_frozen_states) and not reuses_frozen_layers(encoder, settings):
        raise ValueError(f"{encoder.name} has no frozen layers to continue from in mode {settings.mode!r}")
    if keep_frozen_states:
        n_frames = encoder.frame_lengths(torch.as_tensor(plan.ends - plan.starts)).numpy()
        kept_states = {"states": np.zeros((len(plan.starts), n_frames.max(), encoder.hidden_size), np.float16),
                       "frames": n_frames,
                       "low": np.empty((depth + 1, len(plan.grid_ends), encoder.hidden_size), np.float32)}
    lead_inputs = None  # a shared group's lead: its inputs to every layer, read by the group's members
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), autocast:
            for batch, role in tqdm(passes, desc=f"{encoder.name} {settings.mode} windows", disable=not progress,
                                    leave=False):
                if frozen_states is None:
                    inputs, lengths = _window_inputs(audio, plan, batch, encoder.device)
                kept = np.concatenate([np.arange(plan.first[window], plan.stop[window]) for window in batch])
                rows = np.repeat(np.arange(len(batch)), plan.stop[batch] - plan.first[batch])
                positions = frame_index[kept]
                if role == "members":
                    spans, context_counts, positions = whisper_edge.member_rows(positions)
                    states = whisper_edge.frame_states(encoder, inputs, lengths, spans, context=lead_inputs,
                                                       context_counts=context_counts)
                elif frozen_states is not None:  # windows of a batch have one length: no padding to mask
                    n_frames = int(frozen_states["frames"][batch].max())
                    hidden = torch.from_numpy(frozen_states["states"][batch, :n_frames].astype(np.float32))
                    mask = torch.ones(hidden.shape[:2], dtype=torch.bool)
                    above = encoder.hidden_states_from(hidden.to(encoder.device), mask, depth)[1:]
                    states = (None,) * (depth + 1) + above  # the frozen layers: their stored features
                else:
                    states = encoder(inputs, lengths).hidden_states
                    if role == "lead":
                        lead_inputs = states[:-1]
                rows_t = torch.from_numpy(rows).to(encoder.device)
                frames_t = torch.from_numpy(np.asarray(positions)).to(encoder.device)
                for layer in layers:
                    if states[layer] is None:
                        features[layer][kept] = frozen_states["low"][layer][kept]
                    else:
                        features[layer][kept] = states[layer][rows_t, frames_t].float().cpu().numpy()
                if keep_frozen_states:
                    frozen = states[depth]
                    kept_states["states"][batch, :frozen.shape[1]] = frozen.to("cpu", torch.float16).numpy()
                    for layer in range(depth + 1):
                        kept_states["low"][layer][kept] = states[layer][rows_t, frames_t].float().cpu().numpy()
    finally:
        encoder.train(was_training)
    if keep_frozen_states:
        return plan.times, features, kept_states
    return plan.times, features


# ----- cache -------------------------------------------------------------------------------------


def _audio_hash(audio: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the 16 kHz float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()[:16]


def _read_cached(path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(times, values)`` from a cache file, or None if it is missing, unreadable or for another key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            times, values, stored_key = stored["times"], stored["values"], str(stored["key"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("feature cache file %s is unreadable (%s); recomputing it", path, error)
        return None
    if stored_key != key or values.ndim != 2 or times.shape != (values.shape[0],):
        log.warning("feature cache file %s does not hold the expected features; recomputing it", path)
        return None
    return times, values


def _write_cached(path: Path, key: str, times: np.ndarray, values: np.ndarray) -> None:
    with atomic_path(path) as staged, open(staged, "wb") as handle:
        np.savez(handle, times=times, values=values, key=np.array(key))


def _cache_key(encoder: SpeechEncoder, settings: WindowSettings, fingerprint: str, story: str,
               audio_hash: str) -> str:
    """The full key of a story's cache files (JSON); its settings are those of :func:`feature_tag`."""
    described = settings.to_dict()
    if described["precision"] == "off":
        del described["precision"]  # float32 features keep the keys of the cache files written before precision
    if _shares_spans(encoder, settings):
        described["method"] = whisper_edge.TAG
    else:
        described["stride_s"] = window_stride_s(encoder, settings)
    return json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "settings": described,
                       "story": story, "audio_sha256": audio_hash}, sort_keys=True)


class _StoryCache:
    """The cache files of one encoder's features at some settings: where a story's files lie, the locks to hold
    while reading or computing them, and the features themselves."""

    def __init__(self, encoder: SpeechEncoder, dataset: Dataset, layers: tuple[int, ...], settings: WindowSettings,
                 cache_dir, batch_size: int, progress: bool, fingerprint: str):
        self.encoder, self.dataset, self.layers, self.settings = encoder, dataset, layers, settings
        self.cache_dir, self.batch_size, self.progress, self.fingerprint = cache_dir, batch_size, progress, fingerprint
        self.root = cache_root(cache_dir) / "features" / f"v{CACHE_VERSION}"
        self.tag = feature_tag(encoder, settings)
        self._audio_hashes: dict[str, str] = {}

    def audio_hash(self, story: str) -> str:
        if story not in self._audio_hashes:
            self._audio_hashes[story] = _audio_hash(self.dataset.load_audio(story))
        return self._audio_hashes[story]

    def folder(self, story: str) -> Path:
        return self.root / self.fingerprint / self.tag / f"{story}-{self.audio_hash(story)}"

    @functools.cached_property
    def frozen_prefix(self) -> str:
        """Names the encoder's frozen layers and everything below them (see :func:`reuses_frozen_layers`)."""
        depth = self.encoder.frozen_layers
        return f"{self.encoder.prefix_fingerprint(depth)}-layer{depth:02d}"

    def frozen_file(self, story: str) -> tuple[Path, str]:
        """The file of the frozen layers' states of a story and its key."""
        key = _cache_key(self.encoder, self.settings, self.frozen_prefix, story, self.audio_hash(story))
        return self.root / "frozen" / self.frozen_prefix / self.tag / f"{story}-{self.audio_hash(story)}.npz", key

    def locks(self, story: str) -> list[Path]:
        """The story's lock files: its features', and the frozen layers' states' where they are reused."""
        locks = [self.folder(story) / ".lock"]
        if reuses_frozen_layers(self.encoder, self.settings):
            path, _ = self.frozen_file(story)
            locks.append(path.with_name(path.name + ".lock"))
        return locks

    def features(self, story: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The story's ``times`` and ``{layer: features}``, read from the cache or computed and cached; call it
        holding :meth:`locks`."""
        key = _cache_key(self.encoder, self.settings, self.fingerprint, story, self.audio_hash(story))
        paths = {layer: self.folder(story) / f"layer-{layer:02d}.npz" for layer in self.layers}
        cached = {layer: _read_cached(path, key) for layer, path in paths.items()}
        missing = tuple(layer for layer, entry in cached.items() if entry is None)
        if missing:
            times, computed = self._compute(story, missing)
            for layer in missing:
                _write_cached(paths[layer], key, times, computed[layer])
                cached[layer] = (times, computed[layer])
        times = cached[self.layers[0]][0]
        return times, {layer: values for layer, (_, values) in cached.items()}

    def _compute(self, story: str, layers: tuple[int, ...]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """:func:`extract_layer_features`, continued from the cached states of the encoder's frozen layers where
        :func:`reuses_frozen_layers`: the first model with those frozen layers computes and caches them (keyed by
        :meth:`SpeechEncoder.prefix_fingerprint`), every other one runs only its upper layers."""
        audio = self.dataset.load_audio(story)
        extract = {"encoder": self.encoder, "audio": audio, "layers": layers, "settings": self.settings,
                   "batch_size": self.batch_size, "progress": self.progress}
        if not reuses_frozen_layers(self.encoder, self.settings):
            return extract_layer_features(**extract)
        path, key = self.frozen_file(story)
        stored = _read_frozen_states(path, key)
        if stored is not None:
            return extract_layer_features(**extract, frozen_states=stored)
        times, features, stored = extract_layer_features(**extract, keep_frozen_states=True)
        with atomic_path(path) as staged, open(staged, "wb") as handle:
            np.savez(handle, key=np.array(key), **stored)
        return times, features


def story_features(encoder: SpeechEncoder, dataset: Dataset, story: str, layers: Iterable[int],
                   settings: WindowSettings = WindowSettings(), cache_dir: str | os.PathLike | None = None,
                   batch_size: int = 8, progress: bool = True,
                   fingerprint: str | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frame features of one story, read from the disk cache or computed and cached: ``times`` (n_times,) and
    ``{layer: ndarray of shape (n_times, hidden_size)}``. ``fingerprint`` (``encoder.fingerprint()``) saves hashing
    the weights. While another process computes the story, it waits, then reads.
    """
    cache = _StoryCache(encoder, dataset, check_layers(layers, encoder.n_layers), settings, cache_dir, batch_size,
                        progress, fingerprint or encoder.fingerprint())
    return in_turn([story], cache.locks, cache.features)[story]


def _read_frozen_states(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The frozen layers' states of a story from their cache file, or None if it is missing, unreadable or for
    another story or settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            return {name: stored[name] for name in ("states", "frames", "low")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("frozen-layer cache file %s is unreadable (%s); recomputing it", path, error)
        return None


def dataset_tr_features(encoder: SpeechEncoder, dataset: Dataset, stories: Iterable[str], layers: Iterable[int],
                        settings: WindowSettings = WindowSettings(), cache_dir: str | os.PathLike | None = None,
                        batch_size: int = 8, progress: bool = True) -> dict[str, dict[int, np.ndarray]]:
    """TR features of several stories: :func:`story_features` (cached), then :func:`tr_features`; ``{story: {layer:
    float32 ndarray of shape (n_trs, hidden_size)}}``, untrimmed, at each story's :meth:`Dataset.tr_times`.

    Stories that another process is computing are done last (:func:`bt_utils.results.in_turn`): parallel runs
    that need the same features split the stories between them.
    """
    stories = list(stories)
    cache = _StoryCache(encoder, dataset, check_layers(layers, encoder.n_layers), settings, cache_dir, batch_size,
                        progress, encoder.fingerprint())
    log.info("%s features: %s", encoder.name, cache.tag)

    def tr_features_of(story: str) -> dict[int, np.ndarray]:
        return tr_features(*cache.features(story), dataset.tr_times(story))

    with tqdm(total=len(stories), desc=f"{encoder.name} features", disable=not progress) as bar:
        return in_turn(stories, cache.locks, tr_features_of, bar.update)
