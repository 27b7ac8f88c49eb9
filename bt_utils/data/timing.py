"""The TR grid of ds003020 and the trim that aligns stimuli with responses.

Stimulus features are sampled at the TR midpoints relative to sound onset; the published responses lack the first
``TRIM_START`` and last ``TRIM_END`` TRs, so stimulus sequences go through :func:`trim_trs` before they meet
responses. docs/method.md ("TR grid and trims") gives the arithmetic."""

from __future__ import annotations

import numpy as np

DS003020_TR_S = 2.0
"""TR of ds003020's grid in seconds, as the reference pipeline simulates it (``load_simulated_trfiles(tr=2.0)``)."""

SOUND_ONSET_S = 10.0
"""Time of sound onset after the first trigger in the simulated TR file, in seconds."""

RESPDICT_PAD = 5
"""TRs that ``respdict.json`` counts beyond a story's TR grid (the reference's ``pad=5``)."""

TRIM_START = 10
"""TRs removed at the start of every story in the preprocessed responses."""

TRIM_END = 5
"""TRs removed at the end of every story in the preprocessed responses."""


def tr_midpoints(n_trs: int, tr: float, sound_onset: float = SOUND_ONSET_S) -> np.ndarray:
    """TR midpoints relative to sound onset.

    Returns
    -------
    times : ndarray of shape (n_trs,)
        ``i * tr - sound_onset + tr / 2`` for ``i = 0 .. n_trs - 1``, in seconds.
    """
    if int(n_trs) != n_trs or n_trs < 1:
        raise ValueError(f"n_trs must be a positive integer, got {n_trs!r}")
    tr = check_tr(tr)
    return np.arange(int(n_trs)) * tr - sound_onset + tr / 2.0


def check_tr(tr: float) -> float:
    """``tr`` as a float; ValueError unless it is a finite positive number of seconds."""
    try:
        value = float(tr)
    except (TypeError, ValueError):
        raise ValueError(f"the TR must be a number of seconds, got {tr!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"the TR must be a finite positive number of seconds, got {tr!r}")
    return value


def trimmed_length(n_trs: int) -> int:
    """Number of response rows left after the ``[TRIM_START:-TRIM_END]`` trim of ``n_trs`` TRs."""
    return int(n_trs) - TRIM_START - TRIM_END


def trim_trs(sequence: np.ndarray, axis: int = 0) -> np.ndarray:
    """Slice a per-TR stimulus sequence ``[10:-5]`` to match the preprocessed responses.

    Parameters
    ----------
    sequence : ndarray of shape (n_trs, ...)
        Any array whose ``axis`` indexes the full, untrimmed TRs of one story.

    Returns
    -------
    trimmed : ndarray of shape (n_trs - 15, ...)
        A view of ``sequence`` without the first 10 and the last 5 TRs.
    """
    sequence = np.asarray(sequence)
    n_trs = sequence.shape[axis]
    if trimmed_length(n_trs) < 1:
        raise ValueError(
            f"a sequence of {n_trs} TRs is too short for the [{TRIM_START}:-{TRIM_END}] trim "
            f"(it needs more than {TRIM_START + TRIM_END} TRs)"
        )
    index = [slice(None)] * sequence.ndim
    index[axis] = slice(TRIM_START, n_trs - TRIM_END)
    return sequence[tuple(index)]
