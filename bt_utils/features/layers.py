"""Layer features of a speech encoder per TR, ready for voxelwise encoding models (METHOD.md).

From audio to a design matrix, in this order:

1. **Windows** (:class:`WindowSettings`, :func:`plan_windows`,
   :func:`extract_layer_features`). Frames are read on a grid of *chunk ends*
   every ``chunk_s`` (0.1 s) after sound onset: grid point ``k`` is at
   ``(k + 1) * chunk_s``, the time up to which its frame has heard the story.
   Each encoder window is causal: it ends at a grid point and starts
   ``window_s = context_s + stride_s`` earlier, or at sound onset near the story
   start (shorter windows: only the available audio).

   - ``"reference"`` mode is the protocol: 16 s of context plus a 0.1 s chunk,
     stride 0.1 s, and only the last frame of each window is kept (Whisper padded
     to 30 s: the last frame that real audio reaches through the convolutions, as
     in the authors' code; it is centred on the window's end).
   - ``"fast"`` mode runs longer windows (16 s + ``stride_s``, default 2 s) with
     a stride of ``stride_s`` and keeps the frames at the ``stride_s / chunk_s``
     grid points in the last ``stride_s`` of each window. The kept frame of grid
     point ``t`` is the one a reference window ending at ``t`` keeps as its last
     (same index counted from the window start), so both modes give series at
     identical times; every kept frame has heard between ``context_s + chunk_s``
     and ``context_s + stride_s`` seconds of past audio (the reference: exactly
     ``context_s + chunk_s``). The difference: the encoders attend in both
     directions, so a kept frame also sees up to ``stride_s - chunk_s`` of audio
     *after* it, and Whisper places it at other absolute positions. The encoder
     compute (forward passes x input length) drops by
     ``(context_s + chunk_s) / chunk_s * stride_s / (context_s + stride_s)``
     (17.9x for the defaults; 20x for Whisper padded to 30 s).

     Agreement with the reference (``benchmarks/bench_features.py``, 2 min of
     synthesised speech, Pearson r per dimension over the ``[10:-5]`` TRs):
     mean r 0.97-0.98 for the random tiny wav2vec2 and HuBERT, but only
     0.46-0.67 per layer for the pretrained whisper-tiny.en. Whisper encodes
     the last frame of its input as an edge: giving that frame just 0.1 s of
     later audio already lowers its correlation with the edge frame to about
     0.6 in layers 1-4, whatever the stride. Fast mode is therefore a close
     approximation for wav2vec2-style encoders only (checked on random
     weights: pretrained wav2vec2/HuBERT do not install offline); for Whisper it yields
     different (interior-frame) features, and reference mode follows the
     protocol. On the demo's encoding models (``benchmarks/bench_alignment_modes.py``)
     the fast mode moves whisper-tiny.en's voxel r by 0.025-0.030 on average
     (leave-one-story-out scoring, native length; 0.03-0.08 on the short test
     story) and lowers the mean r of planted auditory voxels by up to 0.010 in
     deep layers.
     Other ways of sharing work between Whisper windows do no better (tried on
     whisper-tiny.en over 10-20 s of a demo story, frame-level r with the
     reference in layers 1-4, where the fast mode gives 0.50-0.68): a banded
     causal attention mask in each long window, so that every frame attends
     only to its own past 16.1 s (0.49-0.61), or a stream of each kept frame's
     last ``K`` frames computed as an edge beside the shared window, attending
     to its earlier frames (``K`` = 50: 0.61-0.74). In the reference every
     layer's state of every frame depends on where the window ends, so no
     window-sharing scheme reproduces it.
     Correcting fast frames with a linear map to reference frames, fitted on
     one reference window per 21 grid points pooled over the demo's stories
     (9.6x less compute), halves the voxel difference (0.013-0.018) but goes
     no further (``benchmarks/bench_alignment_modes.py --modes fast-calibrated``).

     Whisper's ``native_length`` (each window on its real length instead of
     padded to 30 s) makes the edge frame depend on the window's start as
     well: with 0.1 s more context, whisper-tiny.en's reference features keep
     only r 0.78-0.86 with themselves in layers 1-4 at the TR level (padded to
     30 s: 0.95-0.97; ``benchmarks/bench_features.py``), and the demo's voxel r
     moves by 0.006-0.013 on average (leave-one-story-out scoring, layers 1-4;
     the fast mode: 0.025-0.030). Its features also differ from the padded
     protocol's (TR-level r 0.41-0.57 in layers 1-4). Whisper was trained on
     padded input; native length is a speed option for exploration and the demo.
   - ``"edge"`` mode (Whisper padded to 30 s only) keeps the reference's
     windows and kept frames, but runs the transformer layers on a span of
     frames only: ``span_before_s`` (default 8 s) before the kept frame and
     ``span_after_s`` (default 2 s, padding frames) after it
     (:meth:`SpeechEncoder.whisper_frame_states`: the log-mel features,
     convolutions and positional embeddings are those of the padded window).
     The kept frame thus stays an edge frame at its own place in the 30 s
     input, which no window-sharing scheme gives. The span (10 s) instead of
     30 s cuts the encoder input 3.0x (4.8x less wall time on CPU: attention is
     quadratic). On 2 min of synthesised speech, whisper-tiny.en's TR-level
     features keep r 0.991, 0.958, 0.939, 0.862 with the reference in layers 1-4
     (the fast mode: 0.63, 0.67, 0.66, 0.46; the reference with 0.1 s more
     context: 0.95-0.97). Shorter spans lose agreement steadily, about as
     much per second cut after the kept frame (padding, which Whisper attends
     to) as before it; a 3-s span (2.5 s + 0.5 s, 9.9x less input) keeps only
     0.964, 0.870, 0.820, 0.695, so a plain span is the closest cheaper
     approximation of the padded protocol only at about 3x
     (``benchmarks/bench_features.py``). On encoding models (a 4-story demo,
     leave-one-story-out scoring, ``benchmarks/bench_alignment_modes.py
     --padded``) edge mode moves voxel r by 0.007-0.019 on average in layers
     1-4 and class means by at most 0.004; the padded fast mode by 0.028-0.046,
     and the planted auditory voxels' mean by up to 0.032 (docs/benchmarks.md).
     With ``sparse_stride_before`` / ``sparse_stride_after`` the layers also
     see, beyond the span, the middle frame of every block of that many
     frames, its attention logits raised by the log of the block's length
     (as if the block were that many copies of it). :data:`EDGE_SPARSE` (a
     1.5 s + 0.3 s span, blocks of 16 frames before and 128 after: about 140
     of 1500 frames, 10.7x less input) keeps TR-level r 0.993, 0.970, 0.918,
     0.851 in layers 1-4, as close as the 3x default span and far closer than
     a plain 3-s span; the attention weighting matters (without it: 0.970,
     0.886, 0.840, 0.708), and averaging each block's frames instead of taking
     its middle frame blurs their positions (0.951, 0.861, 0.797, 0.739).
     With ``shared_every`` the windows go in groups: the group's lead
     window runs a whole forward pass, and the others run their span alone,
     their attention reading that pass's layer states beyond the span (the
     frames the sparse strides name) at the same places in the input.
     Full-length windows share one layout, led by the group's middle window
     (its audio at most ``shared_every // 2`` strides off); the windows of
     the story's first 16 s all start at sample 0, so the first window, the
     lead, holds the same audio, and a group ends before a span would start
     past the lead's audio.
     :data:`EDGE_SHARED` (the sparse setting's span, every frame before it
     and one per 16 after it, groups of 23: 10.1-10.6x fewer layer
     multiply-adds than the reference for stories of 2-15 min, attention and
     the lead's key and value projections counted) moves the demo encoding
     models' voxel r by 0.003, 0.005, 0.006, 0.009 in layers 1-4, level with
     the protocol's own sensitivity to 0.1 s more context
     (:data:`EDGE_SPARSE`: 0.006, 0.010, 0.017, 0.024). Groups of 25 gave
     0.004, 0.005, 0.007, 0.010; leading full groups by their first window
     0.004, 0.007, 0.008, 0.012; sharing only the full windows (the story
     start in sparse frames) 0.005, 0.010, 0.017, 0.026: after the per-story
     z-scoring, the sparse start's features stand apart from the shared rest
     (docs/benchmarks.md).
   - ``"auto"`` mode (the notebooks' default) picks, once the encoder is known
     (:meth:`WindowSettings.for_encoder`), the cheap mode closest to the
     reference for it: edge mode with :data:`EDGE_SHARED` for Whisper padded
     to 30 s, fast mode for wav2vec2, HuBERT and Whisper at native length.

   Windows of equal length are batched together, so no window is padded
   (Whisper without ``native_length`` pads every window to 30 s, as in
   pretraining, so its windows batch freely): every kept frame is exactly what
   a forward pass on its window alone gives, up to float rounding.
2. **Cache** (:func:`story_features`): frame features of one story and layer in
   one file, keyed by the encoder's weights, the story's audio and the window
   settings (see :func:`story_features` for the key).
3. **TRs** (:func:`tr_features`): Lanczos resampling (window 3, cutoff 1/TR) of
   each layer's frame series, at the frame times, to the story's TR midpoints.
4. **Design** (:func:`layer_design`): per story, :func:`zscore_per_story` with
   the mean and standard deviation of the rows :func:`stimulus_rows` keeps (as
   the reference pipeline z-scores the trimmed series), then :func:`make_delays`
   (FIR delays 1-4 TRs, zero-filled), then that trim. The statistics leave out
   the trimmed TRs because the first five lie before sound onset, where the
   features are near 0: with them, a column with a large mean would be scaled
   down by its mean, not its spread. Delays come *before* the trim so that the
   delayed copies of the first kept TRs hold the real features of the TRs
   before them (trimmed away afterwards) rather than zeros; they come after the
   z-scoring so that the zero fill equals the story mean. Training and
   validation stories keep ``[10:-5]``; the test story keeps ``[50:-5]``, to be
   paired with its stored responses ``[40:]`` (:data:`response_rows_test`).

Layers are indices into ``EncoderOutput.hidden_states``: 0 is the input of the
first transformer layer, ``k`` the output of layer ``k`` and ``n_layers`` the
output of the last one (for Whisper, after the encoder's final layer norm). The
protocol's "layers 2, 5, 7, 8, 10, 11, 12 and the output" of its 12-layer
models (wav2vec2-base, hubert-base, whisper-small) are therefore
:data:`PROTOCOL_LAYERS`: layer 12 *is* the output. (Models with a final layer
norm after the last layer, such as the "large" wav2vec2 variants, return
layer ``n_layers`` before that norm.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cache_root
from ..data.dataset import Dataset, StorySplit
from .lanczos import LANCZOS_WINDOW, lanczos_matrix
from ..models.encoder import SAMPLE_RATE, WHISPER_FRAME_S, WHISPER_FRAMES, WHISPER_MAX_SAMPLES, SpeechEncoder
from ..results import atomic_path
from ..data.timing import TRIM_END, TRIM_START
from ..validation import DataError, check_option

log = logging.getLogger(__name__)

__all__ = [
    "DELAYS",
    "FAST_STRIDE_S",
    "PROTOCOL_LAYERS",
    "TEST_STIMULUS_START",
    "WindowPlan",
    "WindowSettings",
    "check_layers",
    "dataset_tr_features",
    "default_layers",
    "extract_layer_features",
    "layer_design",
    "make_delays",
    "plan_windows",
    "response_rows_test",
    "stimulus_rows",
    "story_features",
    "tr_features",
    "zscore_per_story",
]

MODES = ("auto", "reference", "fast", "edge")
CONTEXT_S = 16.0
"""Causal context of every kept frame, in seconds (protocol: 16 s)."""
CHUNK_S = 0.1
"""Spacing of the frame grid and the reference stride, in seconds."""
FAST_STRIDE_S = 2.0
"""Default stride of ``"fast"`` mode, in seconds: 20 frames kept per window."""
EDGE_SPAN_BEFORE_S = 8.0
"""Default ``span_before_s`` of ``"edge"`` mode: seconds of frames before the kept frame that the layers see."""
EDGE_SPAN_AFTER_S = 2.0
"""Default ``span_after_s`` of ``"edge"`` mode: seconds of (padding) frames after the kept frame that the layers see."""
EDGE_SPARSE = dict(span_before_s=1.5, span_after_s=0.3, sparse_stride_before=16, sparse_stride_after=128)
"""Edge-mode settings with 10x less encoder input than the padded reference (about 140 of 1500 frames per window):
``WindowSettings("edge", **EDGE_SPARSE)``."""
EDGE_SHARED = dict(span_before_s=1.5, span_after_s=0.3, sparse_stride_before=1, sparse_stride_after=16,
                   shared_every=23)
"""Edge-mode settings whose windows' spans read, beyond the span, the states of a whole forward pass made once per
23 windows (once per 15 at the story start): every frame before the span, one per 16 after it (10x less encoder
compute than the padded reference, attention included): ``WindowSettings("edge", **EDGE_SHARED)``."""

PROTOCOL_LAYERS = (2, 5, 7, 8, 10, 11, 12)
"""The protocol's layers of 12-layer models (layer 12 is the model's output)."""

DELAYS = (1, 2, 3, 4)
"""FIR delays of the encoding model, in TRs."""

TEST_STIMULUS_START = 50
"""First stimulus TR of the test story (the stimulus is sliced ``[50:-5]``)."""

response_rows_test = slice(TEST_STIMULUS_START - TRIM_START, None)
"""Rows of the test story's stored (already ``[10:-5]``-trimmed) responses that pair
with the stimulus ``[50:-5]``: ``[40:]``."""

CACHE_VERSION = 2
"""Version of the feature cache files; part of their path (2: padded Whisper keeps the authors' last frame)."""

_MULTI_FRAME_MODES = ("fast", "auto")
"""Modes whose ``stride_s`` may keep several frames per window (``"auto"`` may resolve to ``"fast"``)."""

_WARNED_FAST_WHISPER: set[str] = set()
"""Window settings for which the fast-mode warning about Whisper was logged in this process."""


# ----- windows -----------------------------------------------------------------------------------


def _samples(seconds: float, name: str) -> int:
    """``seconds`` as a whole number of samples at 16 kHz, or a ValueError naming ``name``."""
    samples = seconds * SAMPLE_RATE
    if abs(samples - round(samples)) > 1e-6:
        raise ValueError(f"{name}={seconds!r} s is not a whole number of samples at {SAMPLE_RATE} Hz")
    return round(samples)


@dataclass(frozen=True)
class WindowSettings:
    """How sliding windows are cut and which frames are kept (recorded with results).

    Parameters
    ----------
    mode : {"reference", "fast", "edge", "auto"}
        ``"reference"``: the protocol, one frame kept per window, stride =
        ``chunk_s``. ``"fast"``: windows of ``context_s + stride_s`` moved by
        ``stride_s``, keeping the ``stride_s / chunk_s`` grid frames of their last
        ``stride_s``. ``"edge"`` (Whisper padded to 30 s only): the reference's
        windows and kept frames, but the transformer layers run only on the
        frames from ``span_before_s`` before the kept frame to ``span_after_s``
        after it (see the module docstring). ``"auto"``: the cheap mode that
        stays closest to the reference for the encoder at hand, resolved by
        :meth:`for_encoder` (edge mode with :data:`EDGE_SHARED` for Whisper
        padded to 30 s, fast mode with ``stride_s`` for every other encoder).
    context_s : float
        Minimum causal context of each kept frame besides its chunk, in
        seconds (shorter at the story start).
    chunk_s : float
        Spacing of the output frame grid, in seconds (whole samples at 16 kHz).
    stride_s : float, optional
        Step between windows, a whole multiple of ``chunk_s``. Default:
        ``chunk_s`` in reference and edge mode, :data:`FAST_STRIDE_S` in fast and
        auto mode.
    span_before_s, span_after_s : float, optional
        Edge mode only: seconds of encoder frames before and after the kept
        frame that the transformer layers see, whole Whisper frames (0.02 s).
        Defaults :data:`EDGE_SPAN_BEFORE_S` and :data:`EDGE_SPAN_AFTER_S`.
    sparse_stride_before, sparse_stride_after : int, optional
        Edge mode only: beyond the span, the layers also see one frame in
        every ``sparse_stride_before`` frames before it (back to the window's
        first frame) and one in every ``sparse_stride_after`` after it (to the
        end of the 30 s), each frame standing for its stride's frames in
        attention (:meth:`SpeechEncoder.whisper_frame_states`). Default None:
        frames beyond the span are left out. :data:`EDGE_SPARSE` is the
        package's 10x setting.
    shared_every : int, optional
        Edge mode only: the windows are taken in consecutive groups of at
        most this many. The group's lead runs a whole forward pass (its
        frame is the reference's); the layers of the others run on their
        span alone, and the frames beyond the span that the sparse strides
        name (a stride of 1: every frame; None: none) are that forward pass's
        states (:meth:`SpeechEncoder.whisper_frame_states` with ``context``),
        which the span reads but does not update. Full-length windows share
        one layout in the padded input, led by the group's middle window: the
        lead's frames hold audio up to ``shared_every // 2`` strides older or
        newer at the same places. Windows of the story's first ``context_s``
        all start at sample 0, led by the group's first window: the lead's
        frames hold the same audio, and a group ends before a member's span
        would start past the lead's audio (15 windows with a 1.5-s span before
        the kept frame and 0.1-s strides). Default None: no sharing.
        :data:`EDGE_SHARED` is the package's setting.
    """

    mode: str = "reference"
    context_s: float = CONTEXT_S
    chunk_s: float = CHUNK_S
    stride_s: float | None = None
    span_before_s: float | None = None
    span_after_s: float | None = None
    sparse_stride_before: int | None = None
    sparse_stride_after: int | None = None
    shared_every: int | None = None

    def __post_init__(self):
        check_option("mode", self.mode, MODES)
        if self.context_s < 0 or self.chunk_s <= 0:
            raise ValueError(f"context_s={self.context_s!r} must be >= 0 and chunk_s={self.chunk_s!r} > 0")
        stride = self.stride_s
        if stride is None:
            stride = FAST_STRIDE_S if self.mode in _MULTI_FRAME_MODES else self.chunk_s
        for name, value in (("context_s", self.context_s), ("chunk_s", self.chunk_s), ("stride_s", stride)):
            object.__setattr__(self, name, float(value))  # 16 and 16.0 give the same tag and cache key
        self._check_span()
        chunk, stride_samples = _samples(self.chunk_s, "chunk_s"), _samples(self.stride_s, "stride_s")
        _samples(self.context_s, "context_s")
        if self.mode not in _MULTI_FRAME_MODES and stride_samples != chunk:
            raise ValueError(f"{self.mode} mode keeps one frame per window, so stride_s={self.stride_s!r} must equal "
                             f"chunk_s={self.chunk_s!r}; use mode='fast' for a larger stride")
        if stride_samples < chunk or stride_samples % chunk:
            raise ValueError(f"stride_s={self.stride_s!r} must be a whole multiple of chunk_s={self.chunk_s!r}")

    def _check_span(self) -> None:
        """Set edge mode's span defaults as floats; refuse spans outside edge mode or off Whisper's frame grid."""
        spans = {"span_before_s": self.span_before_s, "span_after_s": self.span_after_s}
        strides = {"sparse_stride_before": self.sparse_stride_before, "sparse_stride_after": self.sparse_stride_after,
                   "shared_every": self.shared_every}
        if self.mode != "edge":
            given = [name for name, value in (spans | strides).items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to mode='edge' only; got mode={self.mode!r}")
            return
        for name, value in strides.items():
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name}={value!r} must be a whole number >= 1 (or None)")
            object.__setattr__(self, name, None if value is None else int(value))
        defaults = {"span_before_s": EDGE_SPAN_BEFORE_S, "span_after_s": EDGE_SPAN_AFTER_S}
        for name, value in spans.items():
            value = float(defaults[name] if value is None else value)
            frames = value / WHISPER_FRAME_S
            if value < 0 or abs(frames - round(frames)) > 1e-6:
                raise ValueError(f"{name}={value!r} must be a whole number of Whisper frames "
                                 f"({WHISPER_FRAME_S} s) and >= 0")
            object.__setattr__(self, name, value)
        if self.span_frames > WHISPER_FRAMES:
            raise ValueError(f"span_before_s + span_after_s = {self.span_before_s + self.span_after_s:g} s exceeds "
                             f"Whisper's 30 s input; lower them")

    @classmethod
    def from_parameters(cls, mode: str, context_s: float = CONTEXT_S,
                        fast_stride_s: float = FAST_STRIDE_S) -> WindowSettings:
        """Settings from a notebook's ``feature_mode``, ``feature_context_s`` and ``feature_stride_s``.

        ``fast_stride_s`` applies where the mode may keep several frames per
        window (``"fast"``, ``"auto"``) and is ignored by the one-frame modes
        (``"reference"``, ``"edge"``), so one parameter set serves every mode.
        """
        return cls(mode, context_s, stride_s=fast_stride_s if mode in _MULTI_FRAME_MODES else None)

    def for_encoder(self, encoder: SpeechEncoder) -> WindowSettings:
        """These settings for ``encoder``: mode ``"auto"`` resolved, any other mode unchanged.

        ``"auto"`` becomes edge mode with :data:`EDGE_SHARED` (and these
        ``context_s`` and ``chunk_s``) for Whisper padded to 30 s, whose fast
        mode keeps interior frames far from the protocol's edge frames, and
        fast mode with ``stride_s`` for every other encoder (wav2vec2, HuBERT,
        Whisper at native length).
        """
        if self.mode != "auto":
            return self
        if encoder.family == "whisper" and not encoder.native_length:
            return WindowSettings("edge", self.context_s, self.chunk_s, **EDGE_SHARED)
        return WindowSettings("fast", self.context_s, self.chunk_s, self.stride_s)

    @property
    def span_before_frames(self) -> int:
        """Edge mode: encoder frames the transformer layers see before the kept frame."""
        return round(self.span_before_s / WHISPER_FRAME_S)

    @property
    def span_frames(self) -> int:
        """Edge mode: encoder frames the transformer layers see per window, the kept one included."""
        return self.span_before_frames + round(self.span_after_s / WHISPER_FRAME_S) + 1

    @property
    def chunk_samples(self) -> int:
        """Spacing of the frame grid in samples."""
        return _samples(self.chunk_s, "chunk_s")

    @property
    def window_samples(self) -> int:
        """Length of a full window, ``context_s + stride_s``, in samples."""
        return _samples(self.context_s, "context_s") + _samples(self.stride_s, "stride_s")

    @property
    def frames_per_window(self) -> int:
        """Grid frames kept from each full window (1 in reference mode)."""
        return _samples(self.stride_s, "stride_s") // self.chunk_samples

    @property
    def tag(self) -> str:
        """Text that names the settings exactly, used in cache paths, e.g. ``fast-ctx16.0-chunk0.1-stride2.0``."""
        tag = f"{self.mode}-ctx{self.context_s!r}-chunk{self.chunk_s!r}-stride{self.stride_s!r}"
        if self.mode == "edge":
            tag += f"-before{self.span_before_s!r}-after{self.span_after_s!r}"
            if (self.sparse_stride_before, self.sparse_stride_after) != (None, None):
                tag += f"-sparse{self.sparse_stride_before}x{self.sparse_stride_after}"
            if self.shared_every is not None:
                tag += f"-shared{self.shared_every}mid"  # "mid": full groups led by their middle window
        return tag

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict, for run records and cache keys (the span and stride fields in edge
        mode only, ``shared_every`` only when set, so that the keys of earlier settings stay valid)."""
        settings = asdict(self)
        if self.shared_every is None:
            del settings["shared_every"]
        if self.mode != "edge":
            for name in ("span_before_s", "span_after_s", "sparse_stride_before", "sparse_stride_after"):
                del settings[name]
        return settings


@dataclass(frozen=True)
class WindowPlan:
    """The windows that cover one story and the grid frames each one yields.

    Attributes
    ----------
    starts, ends : ndarray of shape (n_windows,)
        First and one-past-last sample of each window.
    first, stop : ndarray of shape (n_windows,)
        Window ``i`` yields grid points ``first[i] .. stop[i] - 1``.
    grid_ends : ndarray of shape (n_times,)
        Sample at which each grid point's chunk ends, ``(k + 1) * chunk_samples``.
    """

    starts: np.ndarray
    ends: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    grid_ends: np.ndarray

    @property
    def times(self) -> np.ndarray:
        """Time of each grid frame (end of its chunk), in seconds after sound onset, shape (n_times,)."""
        return self.grid_ends / SAMPLE_RATE

    @property
    def window_of_frame(self) -> np.ndarray:
        """Index of the window that yields each grid frame, shape (n_times,)."""
        return np.repeat(np.arange(len(self.starts)), self.stop - self.first)

    def input_seconds(self, padded_to_s: float | None = None) -> float:
        """Encoder input summed over windows (forward passes x input length), in seconds.

        Parameters
        ----------
        padded_to_s : float, optional
            Length every window is padded to (Whisper without ``native_length``: 30 s).
        """
        if padded_to_s is not None:
            return len(self.starts) * float(padded_to_s)
        return float((self.ends - self.starts).sum()) / SAMPLE_RATE


def plan_windows(n_samples: int, settings: WindowSettings) -> WindowPlan:
    """Windows over a story of ``n_samples`` samples at 16 kHz.

    The grid has ``n_samples // chunk_samples`` points (audio after the last
    full chunk is not used). Window ``j`` yields grid points ``j * m .. (j + 1) * m - 1``
    (``m`` = :attr:`WindowSettings.frames_per_window`; fewer for the last
    window), ends at the last of them and starts ``window_samples`` earlier,
    or at sample 0.

    Parameters
    ----------
    n_samples : int
    settings : WindowSettings

    Returns
    -------
    WindowPlan
    """
    if settings.mode == "auto":
        raise ValueError("mode='auto' depends on the encoder: plan the windows of settings.for_encoder(encoder)")
    chunk, per_window = settings.chunk_samples, settings.frames_per_window
    n_times = int(n_samples) // chunk
    if n_times < 1:
        raise ValueError(f"audio of {n_samples} samples is shorter than one chunk ({chunk} samples, "
                         f"chunk_s={settings.chunk_s})")
    grid_ends = (np.arange(n_times) + 1) * chunk
    first = np.arange(0, n_times, per_window)
    stop = np.minimum(first + per_window, n_times)
    ends = grid_ends[stop - 1]
    starts = np.maximum(ends - settings.window_samples, 0)
    return WindowPlan(starts, ends, first, stop, grid_ends)


# ----- layers ------------------------------------------------------------------------------------


def check_layers(layers: Iterable[int], n_layers: int) -> tuple[int, ...]:
    """Validate layer indices against a model's depth.

    Parameters
    ----------
    layers : iterable of int
        Indices into ``hidden_states``: 0 (input of the first layer) to
        ``n_layers`` (output of the last).
    n_layers : int
        Transformer layers of the model.

    Returns
    -------
    tuple of int
        The layers, sorted, without repeats.
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


# ----- extraction --------------------------------------------------------------------------------


def _batches(plan: WindowPlan, pads_to_30s: bool, batch_size: int) -> list[np.ndarray]:
    """Window indices grouped into batches of windows of equal length (any length if padded to 30 s)."""
    lengths = plan.ends - plan.starts
    keys = np.zeros_like(lengths) if pads_to_30s else lengths
    batches = []
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        batches += _chunks(members, batch_size)
    return batches


def _edge_passes(plan: WindowPlan, settings: WindowSettings, frame_index: np.ndarray,
                 batch_size: int) -> list[tuple[np.ndarray, str]]:
    """Edge mode's forward passes in order, as (windows, role): ``"edge"`` (``batch_size`` windows: the span
    and sparse frames), ``"lead"`` (one window, a whole forward pass, whose layer states the ``"shared"`` pass
    after it reads outside its spans) or ``"shared"`` (the rest of the lead's group, spans only, in one pass:
    its rows are a span long, and the lead's keys and values are projected once per pass; see
    ``WindowSettings.shared_every``). ``frame_index`` is :func:`_kept_frame_index`."""
    if settings.shared_every is None:
        return [(batch, "edge") for batch in _chunks(np.arange(len(plan.starts)), batch_size)]
    passes = []
    for lead, members in _shared_groups(plan, settings, frame_index[plan.first]):
        passes += [(np.array([lead]), "lead")] + ([(members, "shared")] if len(members) else [])
    return passes


def _shared_groups(plan: WindowPlan, settings: WindowSettings,
                   kept_frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Every window, in groups of at most ``shared_every`` consecutive windows, as (lead, other members) in order.

    Full-length windows share one layout in the padded input: a member holds
    the lead's layout with audio a few strides earlier or later. The lead is
    the group's middle window, so that what a member reads from it is at most
    half a group of strides out of date. Windows of the story start all begin
    at sample 0, so a member holds the lead's audio at the same places plus
    more at its end; there the lead is the group's first window, and a
    member joins while its span still starts at or before the lead's kept
    frame less one, so that every frame it reads from the lead before its
    span is computed from the lead's audio alone (a frame's receptive field
    reaches 520 samples past its centre), not from padding. ``kept_frames``
    has shape (n_windows,).
    """
    full = plan.ends - plan.starts == settings.window_samples
    start_windows = np.flatnonzero(~full)  # the story's first windows, before the full-length ones
    span_firsts = [_span(int(frame), settings)[0] for frame in kept_frames[start_windows]]
    groups, lead = [], 0
    for member in range(1, len(start_windows) + 1):
        if (member == len(start_windows) or member - lead == settings.shared_every
                or span_firsts[member] > kept_frames[start_windows[lead]] - 1):
            groups.append((int(start_windows[lead]), start_windows[lead + 1:member]))
            lead = member
    for group in _chunks(np.flatnonzero(full), settings.shared_every):
        middle = len(group) // 2
        groups.append((int(group[middle]), np.delete(group, middle)))
    return groups


def _chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def _window_inputs(audio: np.ndarray, plan: WindowPlan, windows: np.ndarray,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio of ``windows`` as a (B, T) float tensor on ``device``, zero after each window's end, and the
    windows' lengths in samples, shape (B,)."""
    lengths = plan.ends[windows] - plan.starts[windows]
    inputs = np.zeros((len(windows), lengths.max()), np.float32)
    for row, window in enumerate(windows):
        inputs[row, :lengths[row]] = audio[plan.starts[window]:plan.ends[window]]
    return torch.from_numpy(inputs).to(device), torch.from_numpy(lengths)


def _kept_frame_index(encoder: SpeechEncoder, plan: WindowPlan) -> np.ndarray:
    """Index, within its window's frames, of each grid point's frame, shape (n_times,).

    It is the last frame of a window that would end at the grid point: the
    number of frames computed from the audio up to there, minus one. Whisper
    padded to 30 s keeps, as the authors' extraction code does, the last frame
    that any real audio reaches: the feature extractor's attention mask
    (``ceil(samples / 160)`` mel frames) passed through ``conv1`` and ``conv2``.
    That is one frame later: the frame centred on the window's end, whose
    receptive field also covers padding.
    """
    heard = plan.grid_ends - plan.starts[plan.window_of_frame]
    frames = encoder.frame_lengths(torch.as_tensor(heard)).numpy()
    if not encoder.native_length:  # Whisper padded to 30 s (wav2vec2/hubert always run at native length)
        last_frame = int(encoder.frame_lengths(torch.tensor([WHISPER_MAX_SAMPLES]))[0]) - 1
        index = np.minimum(frames, last_frame)
    else:
        index = frames - 1
    if index.min() < 0:
        shortest = int(heard[index < 0].min())
        raise ValueError(f"a window of {shortest} samples yields no {encoder.family} frame; make chunk_s longer "
                         f"than {shortest / SAMPLE_RATE:g} s")
    return index


def _span(kept_frame: int, settings: WindowSettings) -> tuple[int, int]:
    """First and one-past-last frame of edge mode's span: ``span_before_frames`` before ``kept_frame`` to
    ``span_frames`` frames in all, moved back where it would pass frame 1499."""
    first = int(np.clip(kept_frame - settings.span_before_frames, 0, WHISPER_FRAMES - settings.span_frames))
    return first, first + settings.span_frames


def _edge_frames(kept_frame: int, settings: WindowSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """The frames edge mode's layers see for one kept frame, what each stands for, and the kept one's place.

    The span is :func:`_span`. With sparse strides, the frames before the
    span are cut, from its first frame backwards, into blocks of
    ``sparse_stride_before`` frames (the last one shorter at frame 0); those
    after it into blocks of ``sparse_stride_after``; each block is
    represented by its middle frame, counted as many times as the block has
    frames.

    Returns
    -------
    frames : ndarray of shape (n,)
        Increasing frame indices (0-1499).
    counts : ndarray of shape (n,)
        Frames each one stands for (1 in the span).
    position : int
        Index of ``kept_frame`` in ``frames``.
    """
    first, stop = _span(kept_frame, settings)
    blocks = [(frame, frame + 1) for frame in range(first, stop)]  # (first, stop) frames; the span's are single
    before, after = settings.sparse_stride_before, settings.sparse_stride_after
    if before is not None:
        blocks += [(max(0, end - before), end) for end in range(first, 0, -before)]
    if after is not None:
        blocks += [(start, min(WHISPER_FRAMES, start + after)) for start in range(stop, WHISPER_FRAMES, after)]
    starts, ends = np.array(sorted(blocks)).T
    frames, counts = (starts + ends) // 2, (ends - starts).astype(np.float64)
    return frames, counts, int(np.searchsorted(frames, kept_frame))


def _shared_rows(kept_frames: np.ndarray, settings: WindowSettings) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A shared edge pass's rows: span frames (B, span_frames), the lead's frames each row reads beyond its span
    as counts (B, 1500) (the sparse frames of :func:`_edge_frames`, 0 elsewhere) and the kept frames' places in
    the spans (B,), for the kept frames ``kept_frames`` (B,)."""
    spans = np.empty((len(kept_frames), settings.span_frames), np.int64)
    counts = np.zeros((len(kept_frames), WHISPER_FRAMES), np.float32)
    for row, kept_frame in enumerate(kept_frames):
        frames, weights, _ = _edge_frames(int(kept_frame), settings)
        first, stop = _span(int(kept_frame), settings)
        beyond = (frames < first) | (frames >= stop)
        counts[row, frames[beyond]] = weights[beyond]
        spans[row] = np.arange(first, stop)
    return torch.from_numpy(spans), torch.from_numpy(counts), np.asarray(kept_frames) - spans[:, 0]


def _pad_rows(rows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`_edge_frames` of a batch as (B, N) frames and counts, shorter rows padded with frame 0 of count 0
    (left out of attention), and the kept frames' places, shape (B,)."""
    width = max(len(frames) for frames, _, _ in rows)
    frames = np.zeros((len(rows), width), np.int64)
    counts = np.zeros((len(rows), width), np.float32)
    for row, (row_frames, row_counts, _) in enumerate(rows):
        frames[row, :len(row_frames)], counts[row, :len(row_counts)] = row_frames, row_counts
    return torch.from_numpy(frames), torch.from_numpy(counts), np.array([position for _, _, position in rows])


def _check_audio(audio) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be a 1-D float array of 16 kHz samples; got dtype {audio.dtype} and shape "
                         f"{audio.shape}")
    return audio.astype(np.float32, copy=False)


def extract_layer_features(encoder: SpeechEncoder, audio: np.ndarray, layers: Iterable[int],
                           settings: WindowSettings = WindowSettings(), batch_size: int = 8,
                           progress: bool = True) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frame features of a story's audio from causal sliding windows.

    Runs in eval mode without gradients on the encoder's device (the
    encoder's train/eval mode is restored afterwards).

    Parameters
    ----------
    encoder : SpeechEncoder
    audio : ndarray of shape (n_samples,)
        16 kHz; sample 0 is sound onset.
    layers : iterable of int
        See :func:`check_layers`.
    settings : WindowSettings
        Mode ``"auto"`` is resolved by :meth:`WindowSettings.for_encoder`.
    batch_size : int
        Windows per forward pass (a shared edge group's spans run in one pass, see
        ``WindowSettings.shared_every``).
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    times : ndarray of shape (n_times,)
        Time of each frame (end of its window's chunk), seconds after sound onset.
    features : dict of int to ndarray of shape (n_times, hidden_size)
        float32, one entry per layer.
    """
    layers = check_layers(layers, encoder.n_layers)
    audio = _check_audio(audio)
    settings = settings.for_encoder(encoder)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    pads_to_30s = encoder.family == "whisper" and not encoder.native_length
    if encoder.family == "whisper" and settings.window_samples > WHISPER_MAX_SAMPLES:
        raise ValueError(f"windows of {settings.window_samples / SAMPLE_RATE:g} s ({settings.tag}) exceed Whisper's "
                         f"30 s input; lower context_s or stride_s")
    if settings.mode == "edge" and not pads_to_30s:
        raise ValueError(f"mode='edge' cuts the layers of Whisper padded to 30 s down to a span of frames; "
                         f"{encoder.name} ({encoder.family}, native_length={encoder.native_length}) runs at its "
                         f"input length: use mode='reference' or 'fast'")
    if encoder.family == "whisper" and settings.mode == "fast" and settings.tag not in _WARNED_FAST_WHISPER:
        _WARNED_FAST_WHISPER.add(settings.tag)  # once per settings and process, not once per story
        log.warning("fast windows give Whisper interior frames, which it represents unlike the last frame of a "
                    "window that the reference keeps (whisper-tiny.en on the demo: TR-level r 0.46-0.67 with the "
                    "reference, voxel alignment r off by 0.025-0.03 on average; see bt_utils.features.layers and "
                    "docs/benchmarks.md); use mode='reference' to follow the protocol, or, padded to 30 s, "
                    "mode='auto' (edge mode with EDGE_SHARED) for 10x less compute with the reference's edge frames")
    plan = plan_windows(len(audio), settings)
    frame_index = _kept_frame_index(encoder, plan)
    features = {layer: np.empty((len(plan.grid_ends), encoder.hidden_size), np.float32) for layer in layers}
    passes = _edge_passes(plan, settings, frame_index, batch_size) if settings.mode == "edge" else [
        (batch, "whole") for batch in _batches(plan, pads_to_30s, batch_size)]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for batch, role in tqdm(passes, desc=f"{encoder.name} {settings.mode} windows", disable=not progress,
                                    leave=False):
                inputs, lengths = _window_inputs(audio, plan, batch, encoder.device)
                kept = np.concatenate([np.arange(plan.first[window], plan.stop[window]) for window in batch])
                rows = np.repeat(np.arange(len(batch)), plan.stop[batch] - plan.first[batch])
                positions = frame_index[kept]
                if role in ("whole", "lead"):
                    states = encoder(inputs, lengths).hidden_states
                    if role == "lead":  # its layer inputs: what the group's spans read outside themselves
                        context = states[:-1]
                elif role == "shared":
                    frames, context_counts, positions = _shared_rows(positions, settings)
                    states = encoder.whisper_frame_states(inputs, lengths, frames, context=context,
                                                          context_counts=context_counts)
                else:  # "edge": the span and sparse frames
                    frames, counts, positions = _pad_rows([_edge_frames(int(frame_index[window]), settings)
                                                           for window in batch])
                    states = encoder.whisper_frame_states(inputs, lengths, frames, counts)
                rows_t = torch.from_numpy(rows).to(encoder.device)
                frames_t = torch.from_numpy(np.asarray(positions)).to(encoder.device)
                for layer in layers:
                    features[layer][kept] = states[layer][rows_t, frames_t].float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return plan.times, features


# ----- cache -------------------------------------------------------------------------------------


def _audio_hash(audio: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the 16 kHz float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()[:16]


def _cache_folder(cache_dir, fingerprint: str, settings: WindowSettings, story: str, audio_hash: str) -> Path:
    return (cache_root(cache_dir) / "features" / f"v{CACHE_VERSION}" / fingerprint / settings.tag
            / f"{story}-{audio_hash}")


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


def story_features(encoder: SpeechEncoder, dataset: Dataset, story: str, layers: Iterable[int],
                   settings: WindowSettings = WindowSettings(), cache_dir: str | os.PathLike | None = None,
                   batch_size: int = 8, progress: bool = True,
                   fingerprint: str | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Frame features of one story, read from the disk cache or computed and cached.

    Cache key and layout: one ``.npz`` file per story and layer at
    ``<cache_root>/features/v<CACHE_VERSION>/<fingerprint>/<settings.tag>/<story>-<audio hash>/layer-<LL>.npz``,
    where ``fingerprint`` is :meth:`SpeechEncoder.fingerprint` (weights, family
    and input settings such as Whisper's ``native_length``), ``settings.tag``
    names every field of :class:`WindowSettings`, and the audio hash is the
    SHA-256 of the story's 16 kHz samples (so a moved or rebuilt identical
    dataset still hits the cache, and changed audio misses it). Each file holds
    ``times``, ``values`` and the full key, which is checked on reading.
    Files are written atomically; a missing, unreadable or mismatched file is
    recomputed. When every layer is cached the encoder's forward never runs.
    The device and batch size are not part of the key (they change the values
    only by float rounding).

    Parameters
    ----------
    encoder : SpeechEncoder
    dataset : Dataset
    story : str
    layers : iterable of int
        See :func:`check_layers`.
    settings : WindowSettings
        Mode ``"auto"`` is resolved by :meth:`WindowSettings.for_encoder`; the
        cache key holds the resolved settings, so ``"auto"`` shares the files
        of the mode it becomes.
    cache_dir : path-like, optional
        Cache root (see :func:`bt_utils.cache.cache_root`).
    batch_size, progress
        See :func:`extract_layer_features`.
    fingerprint : str, optional
        ``encoder.fingerprint()`` computed beforehand, to hash the weights once
        for many stories.

    Returns
    -------
    times : ndarray of shape (n_times,)
    features : dict of int to ndarray of shape (n_times, hidden_size)
    """
    layers = check_layers(layers, encoder.n_layers)
    settings = settings.for_encoder(encoder)  # the cache holds the resolved mode's features
    fingerprint = fingerprint or encoder.fingerprint()
    audio = dataset.load_audio(story)
    audio_hash = _audio_hash(audio)
    folder = _cache_folder(cache_dir, fingerprint, settings, story, audio_hash)
    key = json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "settings": settings.to_dict(),
                      "story": story, "audio_sha256": audio_hash}, sort_keys=True)
    paths = {layer: folder / f"layer-{layer:02d}.npz" for layer in layers}
    cached = {layer: _read_cached(path, key) for layer, path in paths.items()}
    missing = [layer for layer, entry in cached.items() if entry is None]
    if missing:
        times, computed = extract_layer_features(encoder, audio, missing, settings, batch_size, progress)
        for layer in missing:
            _write_cached(paths[layer], key, times, computed[layer])
            cached[layer] = (times, computed[layer])
    times = cached[layers[0]][0]
    return times, {layer: values for layer, (_, values) in cached.items()}


# ----- TR features and the design matrix ---------------------------------------------------------


def tr_features(times: np.ndarray, values: np.ndarray | Mapping[int, np.ndarray],
                tr_times: np.ndarray) -> np.ndarray | dict[int, np.ndarray]:
    """Lanczos-resample frame features to TR midpoints (window 3, cutoff 1/TR).

    Parameters
    ----------
    times : ndarray of shape (n_times,)
        Frame times, seconds after sound onset.
    values : ndarray of shape (n_times, d), or dict of layer to such arrays
    tr_times : ndarray of shape (n_trs,)
        TR midpoints, e.g. :meth:`Dataset.tr_times`.

    Returns
    -------
    ndarray of shape (n_trs, d), or dict of layer to such arrays
        float32; same kind as ``values``.
    """
    weights = lanczos_matrix(times, tr_times, window=LANCZOS_WINDOW)
    if isinstance(values, Mapping):
        return {layer: _resample(weights, array, len(times)) for layer, array in values.items()}
    return _resample(weights, values, len(times))


def _resample(weights: np.ndarray, values: np.ndarray, n_times: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] != n_times:
        raise ValueError(f"features must have shape (n_times={n_times}, d); got {values.shape}")
    return (weights @ values.astype(np.float64)).astype(np.float32)


def zscore_per_story(values: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """z-score every column of one story's TR features; constant columns become 0.

    Parameters
    ----------
    values : ndarray of shape (n_trs, d)
    rows : slice
        Rows whose mean and standard deviation are used (default: all); every
        row is standardised with them.

    Returns
    -------
    ndarray of shape (n_trs, d), float32
    """
    values = np.asarray(values, dtype=np.float64)
    std = values[rows].std(axis=0)
    centred = values - values[rows].mean(axis=0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0).astype(np.float32)


def make_delays(values: np.ndarray, delays: Sequence[int] = DELAYS) -> np.ndarray:
    """Delayed copies of a TR series side by side (FIR model), zero-filled.

    Parameters
    ----------
    values : ndarray of shape (n_trs, d)
    delays : sequence of int
        In TRs; block ``j`` holds ``values`` shifted later by ``delays[j]``
        (negative: earlier).

    Returns
    -------
    ndarray of shape (n_trs, len(delays) * d)
        Row ``t`` of block ``j`` is ``values[t - delays[j]]``, or 0 outside the series.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (n_trs, d); got {values.shape}")
    delays = list(delays)
    if not delays or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in delays):
        raise ValueError(f"delays must be a non-empty sequence of integers (TRs); got {delays!r}")
    n_trs = values.shape[0]
    blocks = []
    for delay in delays:
        block = np.zeros_like(values)
        if delay >= 0:
            block[delay:] = values[:max(n_trs - delay, 0)]
        else:
            block[:max(n_trs + delay, 0)] = values[-delay:]
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def stimulus_rows(story: str, n_trs: int, is_test: bool) -> slice:
    """Rows of a story's untrimmed TR series that pair with its response rows.

    Parameters
    ----------
    story : str
        Named in errors.
    n_trs : int
        TRs of the untrimmed story (:attr:`bt_utils.data.dataset.Dataset.n_trs`).
    is_test : bool
        The test story keeps ``[50:-5]`` (against its responses
        :data:`response_rows_test`, ``[40:]``); the others ``[10:-5]``.

    Returns
    -------
    slice
    """
    start = TEST_STIMULUS_START if is_test else TRIM_START
    if n_trs - TRIM_END <= start:
        raise ValueError(f"story {story!r} has {n_trs} TRs, too few for the [{start}:-{TRIM_END}] trim of "
                         f"{'the test' if is_test else 'a training'} story")
    return slice(start, n_trs - TRIM_END)


def _story_design(values: np.ndarray, story: str, n_trs: int, is_test: bool, delays: Sequence[int],
                  standardise: bool) -> np.ndarray:
    """z-score (if ``standardise``), delay, then trim one story's TR features, (n_trs, d) -> (kept rows, len(delays) d)."""
    rows = stimulus_rows(story, n_trs, is_test)
    if values.shape[0] != n_trs:
        kept = max(values.shape[0] - rows.start - TRIM_END, 0)
        raise DataError(f"story {story!r}: the features have {values.shape[0]} TRs ({kept} rows after the "
                        f"[{rows.start}:-{TRIM_END}] trim) but its responses pair with {rows.stop - rows.start} "
                        f"rows (the story has {n_trs} TRs); recompute the features at this dataset's TR times")
    return make_delays(zscore_per_story(values, rows) if standardise else values, delays)[rows]


def layer_design(features_by_story: Mapping[str, Mapping[int, np.ndarray]], dataset: Dataset, split: StorySplit,
                 layer: int, delays: Sequence[int] = DELAYS, include_validation: bool = True,
                 subject: str | None = None, standardise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delayed, z-scored, trimmed features of one layer, ready for ridge regression.

    Per story: :func:`zscore_per_story` with the statistics of the rows that
    :func:`stimulus_rows` keeps, :func:`make_delays`, then that trim (see the
    module docstring for why in this order).

    Parameters
    ----------
    features_by_story : mapping of str to mapping of int to ndarray of shape (n_trs, d)
        Untrimmed TR features per story and layer, as :func:`dataset_tr_features` returns.
    dataset : Dataset
        Gives each story's TR count.
    split : StorySplit
    layer : int
    delays : sequence of int
    include_validation : bool
        Append the validation stories to the training stories (default: the
        alignment fit has no early stopping, so they are training data).
    subject : str, optional
        If given, every story of the design must have responses for this subject.
    standardise : bool
        z-score each story (default). ``False`` takes the features as they are,
        for features already standardised per story such as the residuals of
        :func:`bt_utils.encoding.low_level_impact.residualise`: they keep the units of the
        z-scored features they came from, as in the authors' residual
        evaluation. z-scoring them again would give a dimension that the
        low-level features explain almost entirely, and whose residual is
        mostly noise, as much weight as one they leave intact.

    Returns
    -------
    X_train : ndarray of shape (n, len(delays) * d)
        Training stories (then validation stories) one after another, each ``[10:-5]``.
    X_test : ndarray of shape (m, len(delays) * d)
        The test story ``[50:-5]``; pair it with the responses' :data:`response_rows_test`.
    story_labels_train : ndarray of shape (n,)
        The story of each training row.
    """
    train = tuple(split.train) + (tuple(split.validation) if include_validation else ())
    stories = (*train, split.test)
    missing = [story for story in stories if story not in features_by_story]
    if missing:
        raise KeyError(f"no features for stories {missing} of the split; features were given for "
                       f"{sorted(features_by_story)}: compute them with dataset_tr_features")
    no_layer = [story for story in stories if layer not in features_by_story[story]]
    if no_layer:
        available = sorted(features_by_story[no_layer[0]])
        raise KeyError(f"layer {layer} is missing from the features of stories {no_layer} (they have layers "
                       f"{available}); compute it with dataset_tr_features")
    if subject is not None:
        without = sorted(set(stories) - set(dataset.stories_for(subject)))
        if without:
            raise DataError(f"{subject} has no responses for stories {without} of the design; "
                            f"stories with responses: {dataset.stories_for(subject)}")
    blocks = [_story_design(np.asarray(features_by_story[story][layer]), story, dataset.n_trs[story],
                            False, delays, standardise) for story in train]
    x_test = _story_design(np.asarray(features_by_story[split.test][layer]), split.test,
                           dataset.n_trs[split.test], True, delays, standardise)
    labels = np.concatenate([np.full(len(block), story) for block, story in zip(blocks, train)])
    return np.concatenate(blocks), x_test, labels


def dataset_tr_features(encoder: SpeechEncoder, dataset: Dataset, stories: Iterable[str], layers: Iterable[int],
                        settings: WindowSettings = WindowSettings(), cache_dir: str | os.PathLike | None = None,
                        batch_size: int = 8, progress: bool = True) -> dict[str, dict[int, np.ndarray]]:
    """TR features of several stories: :func:`story_features` (cached), then :func:`tr_features`.

    Parameters
    ----------
    encoder : SpeechEncoder
    dataset : Dataset
    stories : iterable of str
    layers : iterable of int
    settings, cache_dir, batch_size, progress
        See :func:`story_features`.

    Returns
    -------
    dict of str to dict of int to ndarray of shape (n_trs, hidden_size)
        Untrimmed, at :meth:`Dataset.tr_times` of each story; float32.
    """
    stories = list(stories)
    fingerprint = encoder.fingerprint()
    if settings.mode == "auto":
        settings = settings.for_encoder(encoder)
        log.info("feature_mode 'auto' for %s: %s", encoder.name, settings.tag)
    features = {}
    for story in tqdm(stories, desc=f"{encoder.name} features", disable=not progress):
        times, frames = story_features(encoder, dataset, story, layers, settings, cache_dir, batch_size, progress,
                                       fingerprint)
        features[story] = tr_features(times, frames, dataset.tr_times(story))
    return features
