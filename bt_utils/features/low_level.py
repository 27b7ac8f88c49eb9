"""Low-level speech features per TR, computed from the stimuli themselves.

The low-level feature impact analysis (docs/method.md, "Low-level features")
regresses these features out of a speech model's features. Each feature space
is a time series sampled at the TR midpoints of a story (untrimmed, as
:meth:`bt_utils.data.dataset.Dataset.tr_times` gives them), of shape
``(n_trs, n_dims)``, with one name per dimension:

==================  ======  =========================================================
space               dims    what
==================  ======  =========================================================
``power_spectrum``  40      log power (dB) in 40 triangular mel bands from 0 to 8 kHz
``phonemes``        39      count of each ARPAbet phone (:data:`ARPABET_PHONES`)
``diphones``        vocab   count of each pair of consecutive phones within a word
``triphones``       vocab   count of each triple of consecutive phones within a word
``articulation``    26      count of phones with each articulatory feature
``word_rate``       1       count of words
``phoneme_rate``    1       count of phones
==================  ======  =========================================================

From events to TRs
------------------
Everything is resampled to the TR midpoints with the Lanczos filter of
:mod:`bt_utils.features.lanczos` (window 3, cutoff ``1 / TR``), as the model features
are.

- Transcript features are unit impulses at *event centres*: a phone or word at
  the middle of its interval, a diphone or triphone at the middle of the span
  from the start of its first phone to the end of its last one. They use the
  unnormalised filter of the reference pipeline, so a value is a count per TR:
  N events exactly at a TR midpoint give exactly N there, and a steady rate of
  N events per TR gives about N.
- The power spectrum is computed in 25 ms Hann frames every 10 ms (frame
  ``k`` centred at ``k * 10 ms`` after sound onset) and resampled with the
  normalised filter (a weighted mean), so its values stay in dB. As the frames
  are evenly spaced this differs from the unnormalised filter only by the
  constant factor ``TR / 10 ms``, which the per-story z-scoring removes. Time
  outside the audio (before sound onset, after its end) is digital silence,
  whose power is floored at :data:`POWER_FLOOR_DB`.

Phone labels
------------
Real ds003020 TextGrids carry stress digits (``AH0``), mixed case and
silence or noise labels. :func:`clean_transcript` strips whitespace, upper-cases,
strips a final stress digit 0, 1 or 2, drops non-speech labels (see
:func:`is_non_speech`) from both tiers, and applies an optional ``phone_map``
(for example ``{"AX": "AH"}``, or ``{"OOV": None}`` to drop a label). Any other
phone label outside the 39 ARPAbet phones raises a :class:`ValueError` naming
it and its TextGrid. The feature functions take cleaned transcripts.

Diphone and triphone vocabularies
---------------------------------
Columns of ``diphones`` and ``triphones`` are a fixed, sorted vocabulary of
labels such as ``"AH_N"`` or ``"S_T_R"``, so that every story has the same
columns. :func:`build_vocabularies` collects the within-word n-phones that occur
in a list of stories (default: all stories of the dataset); n-phones of a story
missing from the vocabulary are left out (and counted in the log). Phones are
grouped into words by the word interval that contains their centre; phones
outside every word take part in no diphone or triphone.

Stacking
--------
:func:`stack_low_level_features` computes several spaces for a list of stories,
trims each story ``[10:-5]`` to match the responses, then z-scores every column
within each story (trimmed rows only; constant columns become 0), and records
which columns belong to which space.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import scipy.sparse
from tqdm.auto import tqdm

from ..data.dataset import SAMPLE_RATE, Dataset
from .design import zscore_per_story
from .lanczos import LANCZOS_WINDOW, lanczos_matrix
from ..data.transcripts import ARPABET_PHONES
from ..data.timing import trim_trs
from ..data.transcripts import Interval, Transcript
from ..validation import check_option

log = logging.getLogger(__name__)

__all__ = [
    "ARTICULATION",
    "ARTICULATORY_FEATURES",
    "DEFAULT_LOW_LEVEL_FEATURES",
    "LOW_LEVEL_FEATURES",
    "NON_SPEECH_LABELS",
    "FeatureSpace",
    "LowLevelStack",
    "StoryStimulus",
    "articulation",
    "build_vocabularies",
    "clean_transcript",
    "diphones",
    "is_non_speech",
    "low_level_features",
    "mel_band_edges",
    "normalize_phone",
    "phone_ngram_vocabulary",
    "phoneme_rate",
    "phonemes",
    "power_spectrum",
    "stack_low_level_features",
    "triphones",
    "word_rate",
]

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

DURATION_TOLERANCE_S = 1.0
"""How much shorter than its TextGrid a story's audio may be, in seconds."""

_TR_BLOCK = 64
_FRAME_BLOCK = 4096
_NGRAM_SEPARATOR = "_"

NON_SPEECH_LABELS = frozenset({"", "SP", "SIL", "SPN", "NS", "BR", "LG", "LS", "CG", "IG", "SL"})
"""Upper-cased labels of silence and noise: short pause, silence, spoken noise (``SPN``) and the
ds003020 noise codes without braces (noise, breath, laugh, lip smack, cough, ignore, silence).
Labels that start with ``{`` (``{SL}``, ``{LG}``, ``{BR}``, ``{NS}``...) are non-speech too."""

ARTICULATORY_FEATURES: tuple[str, ...] = (
    # place of articulation (consonants)
    "bilabial", "labiodental", "dental", "alveolar", "postalveolar", "palatal", "velar", "glottal",
    # manner of articulation (consonants)
    "stop", "fricative", "affricate", "nasal", "liquid", "glide",
    # voicing (every phone)
    "voiced", "voiceless",
    # vowels: height and backness of the nucleus (of its onset for diphthongs), lip rounding
    "vowel", "high", "mid", "low", "front", "central", "back", "rounded", "diphthong",
    # r-colouring (R and ER)
    "rhotic",
)  # fmt: skip
"""Columns of the ``articulation`` space, in order."""

ARTICULATION: Mapping[str, frozenset[str]] = MappingProxyType({phone: frozenset(features) for phone, features in {
    "P": ("bilabial", "stop", "voiceless"),
    "B": ("bilabial", "stop", "voiced"),
    "M": ("bilabial", "nasal", "voiced"),
    "W": ("bilabial", "velar", "glide", "voiced"),  # labial-velar approximant
    "F": ("labiodental", "fricative", "voiceless"),
    "V": ("labiodental", "fricative", "voiced"),
    "TH": ("dental", "fricative", "voiceless"),
    "DH": ("dental", "fricative", "voiced"),
    "T": ("alveolar", "stop", "voiceless"),
    "D": ("alveolar", "stop", "voiced"),
    "N": ("alveolar", "nasal", "voiced"),
    "S": ("alveolar", "fricative", "voiceless"),
    "Z": ("alveolar", "fricative", "voiced"),
    "L": ("alveolar", "liquid", "voiced"),
    "R": ("postalveolar", "liquid", "voiced", "rhotic"),  # American approximant r
    "SH": ("postalveolar", "fricative", "voiceless"),
    "ZH": ("postalveolar", "fricative", "voiced"),
    "CH": ("postalveolar", "affricate", "voiceless"),
    "JH": ("postalveolar", "affricate", "voiced"),
    "Y": ("palatal", "glide", "voiced"),
    "K": ("velar", "stop", "voiceless"),
    "G": ("velar", "stop", "voiced"),
    "NG": ("velar", "nasal", "voiced"),
    "HH": ("glottal", "fricative", "voiceless"),
    "IY": ("vowel", "high", "front", "voiced"),
    "IH": ("vowel", "high", "front", "voiced"),
    "EY": ("vowel", "mid", "front", "diphthong", "voiced"),
    "EH": ("vowel", "mid", "front", "voiced"),
    "AE": ("vowel", "low", "front", "voiced"),
    "AH": ("vowel", "mid", "central", "voiced"),
    "ER": ("vowel", "mid", "central", "rhotic", "voiced"),
    "AY": ("vowel", "low", "central", "diphthong", "voiced"),
    "AW": ("vowel", "low", "central", "diphthong", "voiced"),
    "AA": ("vowel", "low", "back", "voiced"),
    "AO": ("vowel", "mid", "back", "rounded", "voiced"),
    "OW": ("vowel", "mid", "back", "rounded", "diphthong", "voiced"),
    "OY": ("vowel", "mid", "back", "rounded", "diphthong", "voiced"),
    "UH": ("vowel", "high", "back", "rounded", "voiced"),
    "UW": ("vowel", "high", "back", "rounded", "voiced"),
}.items()})
"""Articulatory features of each of the 39 ARPAbet phones (General American English).

Consonants have a place (W, a labial-velar glide, has two), a manner and a voicing;
vowels have a height, a backness, optionally ``rounded`` and ``diphthong`` (diphthongs
are classified by their onset: AY and AW start low central, EY mid front, OW and OY mid
back), and are voiced. R and ER are ``rhotic``."""

_PHONE_COLUMN = {phone: index for index, phone in enumerate(ARPABET_PHONES)}
_STRESS = re.compile(r"[012]$")


class FeatureSpace(NamedTuple):
    """One low-level feature space of a story.

    Attributes
    ----------
    values : ndarray of shape (n_trs, n_dims)
        float64, at the TR midpoints, untrimmed.
    names : tuple of str, length n_dims
        Name of each column.
    """

    values: np.ndarray
    names: tuple[str, ...]


# ----- phone labels ---------------------------------------------------------------------------


def is_non_speech(label: str) -> bool:
    """Whether a phone or word label marks silence or noise (see :data:`NON_SPEECH_LABELS`)."""
    label = label.strip().upper()
    return label in NON_SPEECH_LABELS or label.startswith("{")


def _check_phone_map(phone_map: Mapping[str, str | None]) -> dict[str, str | None]:
    checked = {}
    for label, phone in phone_map.items():
        if phone is not None and phone not in _PHONE_COLUMN:
            raise ValueError(
                f"phone_map maps {label!r} to {phone!r}, which is not one of the 39 ARPAbet phones "
                f"{ARPABET_PHONES}; map it to one of them or to None to drop it"
            )
        checked[label.strip().upper()] = phone
    return checked


def normalize_phone(label: str, source: str = "a transcript",
                    phone_map: Mapping[str, str | None] | None = None) -> str | None:
    """One of the 39 ARPAbet phones for a TextGrid phone label, or None for silence and noise.

    Parameters
    ----------
    label : str
        As stored in the TextGrid, e.g. ``"AH0"``, ``"iy1"``, ``"sp"``, ``"{SL}"``.
    source : str
        Where the label comes from (story or TextGrid path), named in errors.
    phone_map : mapping of str to str or None, optional
        Extra labels (compared upper-cased, after the stress digit is removed)
        and the ARPAbet phone each stands for, or None to drop it.

    Returns
    -------
    phone : str or None
        An element of :data:`ARPABET_PHONES`, or None for a non-speech label.

    Raises
    ------
    ValueError
        For a label that is neither a phone nor a non-speech label nor in ``phone_map``.
    """
    if is_non_speech(label):
        return None
    phone = _STRESS.sub("", label.strip().upper())
    phone_map = _check_phone_map(phone_map or {})
    if phone in phone_map:
        return phone_map[phone]
    if phone not in _PHONE_COLUMN:
        raise ValueError(
            f"phone label {label!r} in {source} is not one of the 39 ARPAbet phones (stress digits "
            f"and case aside) nor a non-speech label ({sorted(NON_SPEECH_LABELS)} or '{{...}}'); "
            f"fix the TextGrid or pass phone_map={{{phone!r}: <ARPAbet phone or None to drop it>}}"
        )
    return phone


def clean_transcript(transcript: Transcript, source: str = "a transcript",
                     phone_map: Mapping[str, str | None] | None = None) -> Transcript:
    """Normalise phone labels and drop silence and noise from both tiers.

    Parameters
    ----------
    transcript : Transcript
        As read from a TextGrid.
    source : str
        Story or TextGrid path, named in errors.
    phone_map : mapping, optional
        See :func:`normalize_phone`.

    Returns
    -------
    cleaned : Transcript
        Phone labels in :data:`ARPABET_PHONES`; words and phones without
        non-speech intervals; same duration.
    """
    phone_map = _check_phone_map(phone_map or {})
    phones = []
    for interval in transcript.phones:
        phone = normalize_phone(interval.label, source, phone_map)
        if phone is not None:
            phones.append(Interval(interval.start, interval.end, phone))
    words = [word for word in transcript.words if not is_non_speech(word.label)]
    return Transcript(words=words, phones=phones, duration=transcript.duration)


def _checked_phones(transcript: Transcript) -> list[Interval]:
    for phone in transcript.phones:
        if phone.label not in _PHONE_COLUMN:
            raise ValueError(
                f"phone {phone.label!r} at {phone.start:.3f} s is not one of the 39 ARPAbet phones; "
                "clean the transcript with clean_transcript() first (it removes stress digits, "
                "upper-cases and drops silence and noise)"
            )
    return list(transcript.phones)


# ----- resampling to TRs ----------------------------------------------------------------------


def _check_tr_times(tr_times: np.ndarray) -> np.ndarray:
    tr_times = np.asarray(tr_times, dtype=np.float64)
    if tr_times.ndim != 1 or len(tr_times) < 2 or np.any(np.diff(tr_times) <= 0):
        raise ValueError(
            f"tr_times must be an increasing 1-D array of at least two TR midpoints, got shape {tr_times.shape}; "
            "use Dataset.tr_times(story)"
        )
    return tr_times


def _to_trs(values, times: np.ndarray, tr_times: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Lanczos-resample samples or events to the TR midpoints, a block of TRs at a time.

    Equals ``lanczos_resample(values, times, tr_times, normalize=normalize)`` (window 3,
    cutoff 1/TR), but only the samples within reach of a block enter its weight matrix,
    so memory stays small for long stories.

    Parameters
    ----------
    values : ndarray or scipy sparse array of shape (n_samples, n_dims)
    times : ndarray of shape (n_samples,)
    tr_times : ndarray of shape (n_trs,)
    normalize : bool

    Returns
    -------
    resampled : ndarray of shape (n_trs, n_dims)
    """
    tr_times = _check_tr_times(tr_times)
    order = np.argsort(times, kind="stable")
    times, values = np.asarray(times, dtype=np.float64)[order], values[order]
    cutoff = 1.0 / np.mean(np.diff(tr_times))
    reach = LANCZOS_WINDOW / cutoff
    resampled = np.zeros((len(tr_times), values.shape[1]))
    for first in range(0, len(tr_times), _TR_BLOCK):
        block = tr_times[first:first + _TR_BLOCK]
        low = np.searchsorted(times, block[0] - reach, side="left")
        high = np.searchsorted(times, block[-1] + reach, side="right")
        if high > low:
            weights = lanczos_matrix(times[low:high], block, cutoff, normalize=normalize)
            resampled[first:first + len(block)] = weights @ values[low:high]
    return resampled


def _impulses(times: Sequence[float], tr_times: np.ndarray, name: str) -> FeatureSpace:
    values = _to_trs(np.ones((len(times), 1)), np.asarray(times, dtype=np.float64), tr_times)
    return FeatureSpace(values, (name,))


def _centres(intervals: Sequence[Interval]) -> np.ndarray:
    return np.array([(i.start + i.end) / 2 for i in intervals], dtype=np.float64)


# ----- power spectrum -------------------------------------------------------------------------


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_edges(n_bands: int = N_MEL_BANDS, max_frequency: float = MAX_FREQUENCY_HZ) -> np.ndarray:
    """Corner frequencies of triangular bands evenly spaced on the mel scale from 0 Hz.

    Parameters
    ----------
    n_bands : int
    max_frequency : float
        Upper edge of the highest band, in Hz.

    Returns
    -------
    edges : ndarray of shape (n_bands + 2,)
        Band ``i`` rises from ``edges[i]`` to its peak (centre) at ``edges[i + 1]``
        and falls back to 0 at ``edges[i + 2]``, in Hz.
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
    """Band power in dB of Hann frames centred on sample indices ``centres`` (zeros outside the audio).

    Returns
    -------
    power_db : ndarray of shape (len(centres), n_bands)
    """
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
    sample_rate : int
        Of ``audio``, in Hz.
    n_bands : int
        Triangular mel bands from 0 Hz to ``min(8 kHz, sample_rate / 2)``.

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, n_bands): band power in dB relative to a
        full-scale signal (a sine of amplitude A at a band's centre gives about
        ``10 log10(A**2 / 2)``), floored at :data:`POWER_FLOOR_DB`; ``names``
        like ``"1000Hz"``, the centre frequency of each band.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, of shape (n_samples,), got shape {audio.shape}")
    tr_times = _check_tr_times(tr_times)
    frame_length, hop = round(FRAME_S * sample_rate), round(HOP_S * sample_rate)
    n_fft = 1 << (frame_length - 1).bit_length()
    edges = mel_band_edges(n_bands, min(MAX_FREQUENCY_HZ, sample_rate / 2))
    filterbank = _mel_filterbank(edges, np.fft.rfftfreq(n_fft, 1.0 / sample_rate))
    reach = LANCZOS_WINDOW * np.mean(np.diff(tr_times))
    frame_index = np.arange(np.floor((tr_times[0] - reach) / HOP_S), np.ceil((tr_times[-1] + reach) / HOP_S) + 1)
    frame_index = frame_index.astype(np.int64)
    power_db = _frame_band_power_db(audio, frame_index * hop, frame_length, filterbank, n_fft)
    values = _to_trs(power_db, frame_index * hop / sample_rate, tr_times, normalize=True)
    return FeatureSpace(values, tuple(f"{centre:.0f}Hz" for centre in edges[1:-1]))


# ----- transcript features --------------------------------------------------------------------


def phonemes(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of each ARPAbet phone per TR (impulses at phone centres).

    Parameters
    ----------
    transcript : Transcript
        Cleaned with :func:`clean_transcript`.
    tr_times : ndarray of shape (n_trs,)

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, 39), columns in the order of :data:`ARPABET_PHONES`.
    """
    phones = _checked_phones(transcript)
    one_hot = np.zeros((len(phones), len(ARPABET_PHONES)))
    one_hot[np.arange(len(phones)), [_PHONE_COLUMN[p.label] for p in phones]] = 1.0
    return FeatureSpace(_to_trs(one_hot, _centres(phones), tr_times), ARPABET_PHONES)


def articulation(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of phones with each articulatory feature per TR (impulses at phone centres).

    Parameters
    ----------
    transcript : Transcript
        Cleaned with :func:`clean_transcript`.
    tr_times : ndarray of shape (n_trs,)

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, 26), columns :data:`ARTICULATORY_FEATURES`;
        each phone contributes to the features :data:`ARTICULATION` gives it.
    """
    phones = _checked_phones(transcript)
    table = np.array(
        [[feature in ARTICULATION[phone] for feature in ARTICULATORY_FEATURES] for phone in ARPABET_PHONES],
        dtype=np.float64,
    )
    per_phone = table[[_PHONE_COLUMN[p.label] for p in phones]].reshape(len(phones), len(ARTICULATORY_FEATURES))
    return FeatureSpace(_to_trs(per_phone, _centres(phones), tr_times), ARTICULATORY_FEATURES)


def word_rate(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of words per TR (impulses at word centres).

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, 1), name ``"word_rate"``.
    """
    return _impulses(_centres(transcript.words), tr_times, "word_rate")


def phoneme_rate(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of phones per TR (impulses at phone centres).

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, 1), name ``"phoneme_rate"``.
    """
    return _impulses(_centres(_checked_phones(transcript)), tr_times, "phoneme_rate")


def _word_of_phone(phones: Sequence[Interval], words: Sequence[Interval]) -> np.ndarray:
    """Index of the word interval containing each phone's centre, -1 for none; shape (n_phones,)."""
    centres = _centres(phones)
    if not words:
        return np.full(len(phones), -1)
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    index = np.searchsorted(starts, centres, side="right") - 1
    inside = (index >= 0) & (centres <= ends[np.maximum(index, 0)])
    return np.where(inside, index, -1)


def _phone_ngrams(transcript: Transcript, n: int) -> tuple[list[str], np.ndarray]:
    """Labels (``"A_B"``) and centre times, shape (n_ngrams,), of the within-word n-phones."""
    phones = _checked_phones(transcript)
    word = _word_of_phone(phones, transcript.words)
    labels, times = [], []
    for first in range(len(phones) - n + 1):
        group = word[first:first + n]
        if group[0] >= 0 and np.all(group == group[0]):
            labels.append(_NGRAM_SEPARATOR.join(p.label for p in phones[first:first + n]))
            times.append((phones[first].start + phones[first + n - 1].end) / 2)
    return labels, np.array(times, dtype=np.float64)


def phone_ngram_vocabulary(transcripts: Iterable[Transcript], n: int) -> tuple[str, ...]:
    """Sorted within-word n-phones (``"AH_N"`` for n=2) that occur in cleaned transcripts.

    Parameters
    ----------
    transcripts : iterable of Transcript
        Cleaned with :func:`clean_transcript`.
    n : int
        2 for diphones, 3 for triphones.

    Returns
    -------
    vocabulary : tuple of str
    """
    return tuple(sorted({label for transcript in transcripts for label in _phone_ngrams(transcript, n)[0]}))


def _check_vocabulary(vocabulary: Sequence[str], n: int, space: str) -> tuple[str, ...]:
    vocabulary = tuple(vocabulary)
    if not vocabulary:
        raise ValueError(f"the {space} vocabulary is empty; build it with build_vocabularies(dataset)")
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError(f"the {space} vocabulary has duplicate entries; build it with build_vocabularies(dataset)")
    for label in vocabulary:
        parts = label.split(_NGRAM_SEPARATOR)
        if len(parts) != n or any(part not in _PHONE_COLUMN for part in parts):
            raise ValueError(
                f"{label!r} in the {space} vocabulary is not {n} ARPAbet phones joined by "
                f"{_NGRAM_SEPARATOR!r}; build the vocabulary with build_vocabularies(dataset)"
            )
    return vocabulary


def _ngram_features(transcript: Transcript, tr_times: np.ndarray, vocabulary: Sequence[str], n: int,
                    space: str) -> FeatureSpace:
    vocabulary = _check_vocabulary(vocabulary, n, space)
    column = {label: index for index, label in enumerate(vocabulary)}
    labels, times = _phone_ngrams(transcript, n)
    known = np.array([label in column for label in labels], dtype=bool)
    if not known.all():
        log.info("%d of %d %s are not in the vocabulary and are left out", (~known).sum(), len(labels), space)
    columns = [column[label] for label, keep in zip(labels, known) if keep]
    impulses = scipy.sparse.csr_array(
        (np.ones(len(columns)), (np.arange(len(columns)), columns)), shape=(len(columns), len(vocabulary))
    )
    return FeatureSpace(_to_trs(impulses, times[known], tr_times), vocabulary)


def diphones(transcript: Transcript, tr_times: np.ndarray, vocabulary: Sequence[str]) -> FeatureSpace:
    """Count of each within-word phone pair per TR (impulses at the centre of the pair).

    Parameters
    ----------
    transcript : Transcript
        Cleaned with :func:`clean_transcript`.
    tr_times : ndarray of shape (n_trs,)
    vocabulary : sequence of str
        The columns, e.g. ``build_vocabularies(dataset)["diphones"]``; pairs not
        in it are left out.

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, len(vocabulary)), ``names`` the vocabulary.
    """
    return _ngram_features(transcript, tr_times, vocabulary, 2, "diphones")


def triphones(transcript: Transcript, tr_times: np.ndarray, vocabulary: Sequence[str]) -> FeatureSpace:
    """Count of each within-word phone triple per TR (impulses at the centre of the triple).

    Built through a sparse impulse matrix, so a vocabulary of thousands of
    triphones costs memory only for the dense output.

    Parameters
    ----------
    transcript : Transcript
        Cleaned with :func:`clean_transcript`.
    tr_times : ndarray of shape (n_trs,)
    vocabulary : sequence of str
        The columns, e.g. ``build_vocabularies(dataset)["triphones"]``.

    Returns
    -------
    FeatureSpace
        ``values`` of shape (n_trs, len(vocabulary)), ``names`` the vocabulary.
    """
    return _ngram_features(transcript, tr_times, vocabulary, 3, "triphones")


# ----- datasets -------------------------------------------------------------------------------


def _clean_story_transcript(dataset: Dataset, story: str, phone_map: Mapping[str, str | None] | None) -> Transcript:
    source = f"story {story!r} ({dataset.textgrid_path(story)})"
    return clean_transcript(dataset.transcript(story), source, phone_map)


def build_vocabularies(dataset: Dataset, stories: Sequence[str] | None = None,
                       phone_map: Mapping[str, str | None] | None = None) -> dict[str, tuple[str, ...]]:
    """Fixed diphone and triphone vocabularies of a dataset.

    Parameters
    ----------
    dataset : Dataset
    stories : sequence of str, optional
        Stories whose TextGrids are read; default all stories of the dataset,
        so that every call on the same dataset gives the same columns.
    phone_map : mapping, optional
        See :func:`normalize_phone`.

    Returns
    -------
    vocabularies : dict
        ``{"diphones": tuple of str, "triphones": tuple of str}``, each sorted.
    """
    stories = dataset.stories if stories is None else list(stories)
    transcripts = [_clean_story_transcript(dataset, story, phone_map) for story in stories]
    return {"diphones": phone_ngram_vocabulary(transcripts, 2), "triphones": phone_ngram_vocabulary(transcripts, 3)}


class StoryStimulus:
    """What the feature spaces of one story are computed from, read when first needed.

    Parameters
    ----------
    dataset : Dataset
    story : str
    vocabularies : mapping of str to sequence of str
        Columns of ``diphones`` and ``triphones`` (keys as in :func:`build_vocabularies`).
    phone_map : mapping, optional
        See :func:`normalize_phone`.
    duration_tolerance : float
        How much shorter than the TextGrid the audio may be, in seconds.
    """

    def __init__(self, dataset: Dataset, story: str, vocabularies: Mapping[str, Sequence[str]],
                 phone_map: Mapping[str, str | None] | None = None, duration_tolerance: float = DURATION_TOLERANCE_S):
        self.dataset, self.story = dataset, story
        self.vocabularies, self.phone_map = vocabularies, phone_map
        self.duration_tolerance = duration_tolerance
        self.tr_times = dataset.tr_times(story)

    @cached_property
    def transcript(self) -> Transcript:
        """The story's cleaned transcript."""
        return _clean_story_transcript(self.dataset, self.story, self.phone_map)

    @cached_property
    def audio(self) -> np.ndarray:
        """The story's audio at 16 kHz, shape (n_samples,), checked against the TextGrid's duration."""
        audio = self.dataset.load_audio(self.story, SAMPLE_RATE)
        audio_seconds, textgrid_seconds = len(audio) / SAMPLE_RATE, self.transcript.duration
        if audio_seconds < textgrid_seconds - self.duration_tolerance:
            raise ValueError(
                f"the audio of story {self.story!r} lasts {audio_seconds:.2f} s but its TextGrid "
                f"{textgrid_seconds:.2f} s (tolerance {self.duration_tolerance} s): "
                f"{self.dataset.audio_path(self.story)} does not match {self.dataset.textgrid_path(self.story)}; "
                "replace the truncated or wrong file"
            )
        return audio

    def vocabulary(self, space: str) -> Sequence[str]:
        """Columns of ``space`` (``"diphones"`` or ``"triphones"``)."""
        if space not in self.vocabularies:
            raise ValueError(
                f"vocabularies has no {space!r} entry (keys: {sorted(self.vocabularies)}); "
                "pass build_vocabularies(dataset) or leave vocabularies=None"
            )
        return self.vocabularies[space]


LOW_LEVEL_FEATURES: Mapping[str, Callable[[StoryStimulus], FeatureSpace]] = MappingProxyType({
    "power_spectrum": lambda s: power_spectrum(s.audio, s.tr_times),
    "phonemes": lambda s: phonemes(s.transcript, s.tr_times),
    "diphones": lambda s: diphones(s.transcript, s.tr_times, s.vocabulary("diphones")),
    "triphones": lambda s: triphones(s.transcript, s.tr_times, s.vocabulary("triphones")),
    "articulation": lambda s: articulation(s.transcript, s.tr_times),
    "word_rate": lambda s: word_rate(s.transcript, s.tr_times),
    "phoneme_rate": lambda s: phoneme_rate(s.transcript, s.tr_times),
})
"""Every low-level feature space by name: a function of a :class:`StoryStimulus`."""

DEFAULT_LOW_LEVEL_FEATURES = ("power_spectrum", "phonemes", "diphones", "articulation", "word_rate", "phoneme_rate")
"""The protocol's spaces (docs/method.md, "Low-level features") plus the rates; triphones are left out by default
(thousands of columns)."""

_NGRAM_SPACES = frozenset({"diphones", "triphones"})


def _check_names(names: str | Sequence[str]) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"no low-level feature spaces requested; choose some of {list(LOW_LEVEL_FEATURES)}")
    for name in names:
        check_option("low-level feature space", name, LOW_LEVEL_FEATURES)
    if len(set(names)) != len(names):
        raise ValueError(f"low-level feature spaces {list(names)} name a space more than once")
    return names


def _story_spaces(dataset: Dataset, story: str, names: tuple[str, ...], vocabularies: Mapping[str, Sequence[str]],
                  phone_map, duration_tolerance: float) -> dict[str, FeatureSpace]:
    stimulus = StoryStimulus(dataset, story, vocabularies, phone_map, duration_tolerance)
    return {name: LOW_LEVEL_FEATURES[name](stimulus) for name in names}


def _vocabularies_for(dataset: Dataset, names: tuple[str, ...], vocabularies, phone_map) -> Mapping[str, Sequence[str]]:
    if vocabularies is None and _NGRAM_SPACES & set(names):
        return build_vocabularies(dataset, phone_map=phone_map)
    return vocabularies or {}


def low_level_features(dataset: Dataset, story: str, names: str | Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES,
                       vocabularies: Mapping[str, Sequence[str]] | None = None,
                       phone_map: Mapping[str, str | None] | None = None,
                       duration_tolerance: float = DURATION_TOLERANCE_S) -> dict[str, np.ndarray]:
    """Low-level feature spaces of one story at its TR midpoints, untrimmed.

    Parameters
    ----------
    dataset : Dataset
    story : str
    names : str or sequence of str
        Spaces from :data:`LOW_LEVEL_FEATURES`.
    vocabularies : mapping, optional
        Columns of ``diphones`` and ``triphones`` (see :func:`build_vocabularies`).
        Default: built from all stories of the dataset, which reads every
        TextGrid; pass them when computing many stories.
    phone_map : mapping, optional
        Extra phone labels, see :func:`normalize_phone`.
    duration_tolerance : float
        How much shorter than its TextGrid the audio may be, in seconds
        (checked when ``power_spectrum`` is requested).

    Returns
    -------
    features : dict of str to ndarray
        ``{name: values of shape (n_trs, n_dims)}`` in the order of ``names``,
        with ``n_trs = dataset.n_trs[story]``.

    Raises
    ------
    ValueError
        No or unknown names, phone labels outside the 39 ARPAbet phones, or
        audio shorter than its TextGrid by more than ``duration_tolerance``.
    """
    names = _check_names(names)
    vocabularies = _vocabularies_for(dataset, names, vocabularies, phone_map)
    spaces = _story_spaces(dataset, story, names, vocabularies, phone_map, duration_tolerance)
    return {name: space.values for name, space in spaces.items()}


@dataclass(frozen=True)
class LowLevelStack:
    """Several low-level feature spaces of several stories, ready for regression.

    Attributes
    ----------
    features : dict of str to ndarray
        ``{story: values of shape (n_trs - 15, n_columns)}``, float32, trimmed
        ``[10:-5]`` and z-scored per story and column.
    columns : dict of str to slice
        The columns of each feature space, in stacking order.
    column_names : tuple of str, length n_columns
        ``"<space>:<dimension>"``, e.g. ``"phonemes:AA"``.
    """

    features: dict[str, np.ndarray]
    columns: dict[str, slice]
    column_names: tuple[str, ...]

    def concatenate(self, stories: Sequence[str] | None = None) -> np.ndarray:
        """Rows of ``stories`` (default: all, in stacking order) one after another.

        Returns
        -------
        values : ndarray of shape (sum of n_trs - 15, n_columns)
        """
        stories = list(self.features) if stories is None else list(stories)
        missing = [story for story in stories if story not in self.features]
        if missing:
            raise KeyError(f"stories {missing} are not in this stack; it holds {list(self.features)}")
        return np.concatenate([self.features[story] for story in stories])


def stack_low_level_features(dataset: Dataset, stories: Sequence[str],
                             names: str | Sequence[str] = DEFAULT_LOW_LEVEL_FEATURES,
                             vocabularies: Mapping[str, Sequence[str]] | None = None,
                             phone_map: Mapping[str, str | None] | None = None,
                             duration_tolerance: float = DURATION_TOLERANCE_S,
                             progress: bool = True) -> LowLevelStack:
    """Feature spaces of several stories side by side, trimmed and z-scored per story.

    Parameters
    ----------
    dataset : Dataset
    stories : sequence of str
    names : str or sequence of str
        Spaces from :data:`LOW_LEVEL_FEATURES`, stacked in this order.
    vocabularies : mapping, optional
        Default: built from all stories of the dataset (not only ``stories``),
        so stacks of different story lists have the same columns.
    phone_map : mapping, optional
        See :func:`normalize_phone`.
    duration_tolerance : float
        See :func:`low_level_features`.
    progress : bool
        Show a progress bar over stories.

    Returns
    -------
    LowLevelStack
    """
    names = _check_names(names)
    stories = list(stories)
    if not stories:
        raise ValueError(f"no stories given; choose some of {dataset.stories}")
    vocabularies = _vocabularies_for(dataset, names, vocabularies, phone_map)
    features = {}
    for story in tqdm(stories, desc="low-level features", disable=not progress):
        spaces = _story_spaces(dataset, story, names, vocabularies, phone_map, duration_tolerance)
        stacked = np.concatenate([trim_trs(space.values) for space in spaces.values()], axis=1)
        features[story] = zscore_per_story(stacked)
    # every story has the same dimensions (fixed vocabularies), so the last one names the columns
    widths = np.cumsum([0] + [len(space.names) for space in spaces.values()])
    columns = {name: slice(int(start), int(stop)) for name, start, stop in zip(names, widths[:-1], widths[1:])}
    column_names = tuple(f"{name}:{dim}" for name, space in spaces.items() for dim in space.names)
    return LowLevelStack(features, columns, column_names)
