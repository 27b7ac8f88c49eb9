"""Audio inputs per TR for brain-tuning (docs/method.md, "Inputs and targets").

The input of TR ``i`` is five 2-s chunks, those of TRs ``i-4 .. i``, each ending one second after its TR midpoint,
concatenated in time order: 10 s of 16 kHz audio (160,000 samples) that ends at the midpoint of TR ``i`` plus 1 s,
zero-padded before the sound starts. The haemodynamic delay is thus part of the input. Windows are cut lazily from
the story's audio, so a story costs its audio's memory, not ``n_trs`` copies of 10 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .timing import trim_trs

CHUNKS_PER_INPUT = 5
CHUNK_SECONDS = 2.0
CHUNK_END_AFTER_MIDPOINT_S = 1.0


@dataclass(frozen=True)
class WindowSpec:
    """How a TR's input window is cut from the audio (defaults: the paper's protocol)."""

    n_chunks: int = CHUNKS_PER_INPUT
    chunk_seconds: float = CHUNK_SECONDS
    end_after_midpoint_s: float = CHUNK_END_AFTER_MIDPOINT_S
    sample_rate: int = 16000

    @property
    def chunk_samples(self) -> int:
        return int(round(self.chunk_seconds * self.sample_rate))

    @property
    def window_samples(self) -> int:
        return self.n_chunks * self.chunk_samples


def tr_input_window(audio: np.ndarray, tr_times: np.ndarray, index: int, spec: WindowSpec = WindowSpec()) -> np.ndarray:
    """The input audio of one TR.

    Parameters
    ----------
    audio : ndarray of shape (n_samples,)
        The story's audio at ``spec.sample_rate``; time 0 is sound onset.
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset (untrimmed).

    Returns
    -------
    window : ndarray of shape (spec.window_samples,)
        float32; chunks of TRs ``index - n_chunks + 1 .. index`` in time order, zeros where a chunk lies before the
        sound, the story start or after its end.

    Raises
    ------
    IndexError
        ``index`` is not one of the story's TRs.
    """
    if not 0 <= index < len(tr_times):
        raise IndexError(f"TR index {index} is outside the story's {len(tr_times)} TRs (0 to {len(tr_times) - 1})")
    chunk = spec.chunk_samples
    window = np.zeros(spec.window_samples, dtype=np.float32)
    for slot, tr in enumerate(range(index - spec.n_chunks + 1, index + 1)):
        if tr < 0:
            continue
        end = int(round((tr_times[tr] + spec.end_after_midpoint_s) * spec.sample_rate))
        start = end - chunk
        lo, hi = max(start, 0), min(end, len(audio))
        if hi > lo:
            window[slot * chunk + (lo - start): slot * chunk + (hi - start)] = audio[lo:hi]
    return window


def trimmed_tr_indices(n_trs: int) -> np.ndarray:
    """Untrimmed indices of the TRs that have a response row (``[10:-5]``), shape (n_trs - 15,)."""
    return trim_trs(np.arange(n_trs))
