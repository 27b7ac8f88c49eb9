"""The ``power_spectrum`` low-level feature space: log power in mel bands per TR.

25 ms Hann frames every 10 ms (frame ``k`` centred ``k * 10 ms`` after sound onset) are Lanczos-averaged to
the TR midpoints (the normalised filter, so values stay in dB); time outside the audio is digital silence,
floored at :data:`POWER_FLOOR_DB`.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import SAMPLE_RATE
from .feature_space import FeatureSpace, check_tr_times, resample_to_trs
from .lanczos import LANCZOS_WINDOW

FRAME_S = 0.025
"""Length of the Hann frames of the power spectrum, in seconds."""

HOP_S = 0.010
"""Spacing of the power-spectrum frames, in seconds."""

N_MEL_BANDS = 40
"""Triangular mel bands of the power spectrum."""

MAX_FREQUENCY_HZ = 8000.0
"""Upper edge of the highest mel band (capped at the Nyquist frequency), in Hz."""

POWER_FLOOR_DB = -100.0
"""Lowest band power, in dB relative to a full-scale signal (digital silence lands here)."""

_FRAME_BLOCK = 4096


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_edges(n_bands: int = N_MEL_BANDS, max_frequency: float = MAX_FREQUENCY_HZ) -> np.ndarray:
    """Corner frequencies of triangular bands evenly spaced on the mel scale from 0 Hz.

    Returns
    -------
    edges : ndarray of shape (n_bands + 2,)
        In Hz: band ``i`` rises from ``edges[i]`` to its peak at ``edges[i + 1]`` and falls to 0 at
        ``edges[i + 2]``.
    """
    if int(n_bands) != n_bands or n_bands < 1:
        raise ValueError(f"n_bands must be a positive integer, got {n_bands!r}")
    return _mel_to_hz(np.linspace(0.0, _hz_to_mel(max_frequency), int(n_bands) + 2))


def _mel_filterbank(edges: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Triangles of peak 1, shape (n_bands, n_frequencies)."""
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (frequencies - lower) / (centre - lower)
    falling = (upper - frequencies) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def _frame_band_power_db(audio: np.ndarray, centres: np.ndarray, frame_length: int, filterbank: np.ndarray,
                         n_fft: int) -> np.ndarray:
    """Band power in dB of Hann frames centred on sample indices ``centres`` (zeros outside the audio)."""
    window = np.hanning(frame_length)
    scale = 2.0 / (n_fft * np.sum(window ** 2))  # a sine of amplitude A at a band's peak gives about A**2 / 2
    starts = centres - frame_length // 2
    pad_left = max(0, -int(starts[0]))
    pad_right = max(0, int(starts[-1]) + frame_length - len(audio))
    padded = np.pad(np.asarray(audio, dtype=np.float64), (pad_left, pad_right))
    all_frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)
    power_db = np.empty((len(centres), len(filterbank)))
    for first in range(0, len(centres), _FRAME_BLOCK):
        frames = all_frames[starts[first:first + _FRAME_BLOCK] + pad_left] * window
        spectrum = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2 * scale
        band_power = spectrum @ filterbank.T
        power_db[first:first + len(frames)] = 10.0 * np.log10(np.maximum(band_power, 10.0 ** (POWER_FLOOR_DB / 10)))
    return power_db


def power_spectrum(audio: np.ndarray, tr_times: np.ndarray, sample_rate: int = SAMPLE_RATE,
                   n_bands: int = N_MEL_BANDS) -> FeatureSpace:
    """Log power in mel bands, 25 ms Hann frames every 10 ms, Lanczos-averaged to TRs.

    Parameters
    ----------
    audio : ndarray of shape (n_samples,)
        Mono audio in [-1, 1]; sample 0 is sound onset.
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset, in seconds.

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, n_bands): band power in dB relative to a full-scale signal (a sine of amplitude
        A at a band's centre gives about ``10 log10(A**2 / 2)``), floored at :data:`POWER_FLOOR_DB`; ``names`` the
        centre frequencies, e.g. ``"1000Hz"``.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, of shape (n_samples,), got shape {audio.shape}")
    tr_times = check_tr_times(tr_times)
    frame_length, hop = round(FRAME_S * sample_rate), round(HOP_S * sample_rate)
    n_fft = 1 << (frame_length - 1).bit_length()
    edges = mel_band_edges(n_bands, min(MAX_FREQUENCY_HZ, sample_rate / 2))
    filterbank = _mel_filterbank(edges, np.fft.rfftfreq(n_fft, 1.0 / sample_rate))
    reach = LANCZOS_WINDOW * np.mean(np.diff(tr_times))
    frame_index = np.arange(np.floor((tr_times[0] - reach) / HOP_S), np.ceil((tr_times[-1] + reach) / HOP_S) + 1)
    frame_index = frame_index.astype(np.int64)
    power_db = _frame_band_power_db(audio, frame_index * hop, frame_length, filterbank, n_fft)
    values = resample_to_trs(power_db, frame_index * hop / sample_rate, tr_times, normalize=True)
    return FeatureSpace(values, tuple(f"{centre:.0f}Hz" for centre in edges[1:-1]))
