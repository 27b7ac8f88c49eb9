"""Feature windows: the two modes, and the causal windows that cover a story.

Frames are read on a grid of *chunk ends* every ``chunk_s`` (0.1 s) after sound onset: grid point ``k`` lies at
``(k + 1) * chunk_s``, the time up to which its frame has heard the story. Every encoder window is causal: it ends
at a grid point and starts ``context_s`` plus its stride earlier, or at sound onset near the story start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..models.encoder import SAMPLE_RATE
from ..models.precision import PRECISIONS
from ..validation import check_option

__all__ = ["CHUNK_S", "CONTEXT_S", "FAST_STRIDE_S", "MODES", "WindowPlan", "WindowSettings", "pads_to_30s",
           "plan_windows"]

MODES = ("reference", "fast")
"""Feature modes: the protocol, and one fast approximation per encoder family."""
CONTEXT_S = 16.0
"""Causal context of every kept frame, in seconds (protocol: 16 s)."""
CHUNK_S = 0.1
"""Spacing of the frame grid and the reference stride, in seconds."""
FAST_STRIDE_S = 2.0
"""Stride of the fast mode's windows for encoders that run at their input length: 20 frames kept per window."""


def _samples(seconds: float, name: str) -> int:
    """``seconds`` as a whole number of samples at 16 kHz, or a ValueError naming ``name``."""
    samples = seconds * SAMPLE_RATE
    if abs(samples - round(samples)) > 1e-6:
        raise ValueError(f"{name}={seconds!r} s is not a whole number of samples at {SAMPLE_RATE} Hz")
    return round(samples)


@dataclass(frozen=True)
class WindowSettings:
    """Which features are computed: the mode and the window geometry (recorded with results).

    Parameters
    ----------
    mode : {"reference", "fast"}
        ``"reference"``: the protocol, one window per grid point, its last frame kept. ``"fast"``: the cheaper
        approximation of the encoder's family (see the module docstring).
    context_s : float
        Causal context of each kept frame besides its chunk, in seconds (shorter at the story start); whole samples
        at 16 kHz.
    chunk_s : float
        Spacing of the output frame grid, in seconds; whole samples at 16 kHz.
    precision : {"off", "bf16", "fp16"}
        Encoder runs in float32 (``"off"``, the protocol) or under autocast to bfloat16 or float16 (CUDA only);
        :func:`bt_utils.models.precision.resolve_precision` turns ``"auto"`` into one of them for a device.
    """

    mode: str = "reference"
    context_s: float = CONTEXT_S
    chunk_s: float = CHUNK_S
    precision: str = "off"

    def __post_init__(self):
        check_option("mode", self.mode, MODES)
        check_option("precision", self.precision, PRECISIONS[1:])
        if self.context_s < 0 or self.chunk_s <= 0:
            raise ValueError(f"context_s={self.context_s!r} must be >= 0 and chunk_s={self.chunk_s!r} > 0")
        for name in ("context_s", "chunk_s"):
            object.__setattr__(self, name, float(getattr(self, name)))  # 16 and 16.0 give the same cache key
            _samples(getattr(self, name), name)

    @property
    def chunk_samples(self) -> int:
        """Spacing of the frame grid in samples."""
        return _samples(self.chunk_s, "chunk_s")

    @property
    def context_samples(self) -> int:
        """Causal context in samples."""
        return _samples(self.context_s, "context_s")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict, for run records."""
        return asdict(self)


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
    window_samples : int
        Length of a full window (context plus stride), in samples; windows near the story start are shorter.
    """

    starts: np.ndarray
    ends: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    grid_ends: np.ndarray
    window_samples: int

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


def plan_windows(n_samples: int, settings: WindowSettings, stride_s: float | None = None) -> WindowPlan:
    """Causal windows over a story of ``n_samples`` samples at 16 kHz.

    Parameters
    ----------
    stride_s : float, optional
        Step between windows, a whole multiple of ``chunk_s``. Default ``chunk_s``: one window per grid point, as
        the reference protocol.
    """
    chunk = settings.chunk_samples
    stride = chunk if stride_s is None else _samples(stride_s, "stride_s")
    if stride < chunk or stride % chunk:
        raise ValueError(f"stride_s={stride_s!r} must be a whole multiple of chunk_s={settings.chunk_s!r}")
    n_times = int(n_samples) // chunk
    if n_times < 1:
        raise ValueError(f"audio of {n_samples} samples is shorter than one chunk ({chunk} samples, "
                         f"chunk_s={settings.chunk_s})")
    per_window = stride // chunk
    window_samples = settings.context_samples + stride
    grid_ends = (np.arange(n_times) + 1) * chunk
    first = np.arange(0, n_times, per_window)
    stop = np.minimum(first + per_window, n_times)
    ends = grid_ends[stop - 1]
    starts = np.maximum(ends - window_samples, 0)
    return WindowPlan(starts, ends, first, stop, grid_ends, window_samples)


def pads_to_30s(encoder) -> bool:
    """Whether ``encoder`` (a :class:`~bt_utils.models.encoder.SpeechEncoder`) pads every window to 30 s: Whisper
    without ``native_length``. wav2vec2 and HuBERT always run at their input length."""
    return encoder.family == "whisper" and not encoder.native_length
