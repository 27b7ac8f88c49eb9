"""The transcript's low-level feature spaces: phones, n-phones, articulation and rates per TR.

Each event (a phone or word, a diphone or triphone) is a unit impulse at its centre, Lanczos-resampled to
the TR midpoints with the unnormalised filter, so that a value is a count per TR. The feature functions take
transcripts cleaned by :func:`clean_transcript` (docs/method.md, "Low-level features").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import scipy.sparse

from ..data.transcripts import ARPABET_PHONES, Interval, Transcript
from .feature_space import FeatureSpace, resample_to_trs

log = logging.getLogger(__name__)

_NGRAM_SEPARATOR = "_"

NON_SPEECH_LABELS = frozenset({"", "SP", "SIL", "SPN", "NS", "BR", "LG", "LS", "CG", "IG", "SL"})
"""Upper-cased labels of silence and noise (pauses, spoken noise, ds003020's noise codes without braces);
labels that start with ``{`` (``{SL}``, ``{BR}``...) are non-speech too."""

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
"""Articulatory features of each of the 39 ARPAbet phones (General American English): consonants have a
place, a manner and a voicing; vowels a height and backness (of the onset for diphthongs), optionally
``rounded`` and ``diphthong``."""

_PHONE_COLUMN = {phone: index for index, phone in enumerate(ARPABET_PHONES)}
_STRESS = re.compile(r"[012]$")


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
    """Normalise phone labels and drop silence and noise from both tiers."""
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


def _impulses(times: Sequence[float], tr_times: np.ndarray, name: str) -> FeatureSpace:
    values = resample_to_trs(np.ones((len(times), 1)), np.asarray(times, dtype=np.float64), tr_times)
    return FeatureSpace(values, (name,))


def _centres(intervals: Sequence[Interval]) -> np.ndarray:
    return np.array([(i.start + i.end) / 2 for i in intervals], dtype=np.float64)


def phonemes(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of each ARPAbet phone per TR at ``tr_times`` (n_trs,): ``values`` of shape (n_trs, 39), columns
    :data:`ARPABET_PHONES`.
    """
    phones = _checked_phones(transcript)
    one_hot = np.zeros((len(phones), len(ARPABET_PHONES)))
    one_hot[np.arange(len(phones)), [_PHONE_COLUMN[p.label] for p in phones]] = 1.0
    return FeatureSpace(resample_to_trs(one_hot, _centres(phones), tr_times), ARPABET_PHONES)


def articulation(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of phones with each articulatory feature per TR at ``tr_times`` (n_trs,): ``values`` of shape (n_trs, 26),
    columns :data:`ARTICULATORY_FEATURES`.
    """
    phones = _checked_phones(transcript)
    table = np.array(
        [[feature in ARTICULATION[phone] for feature in ARTICULATORY_FEATURES] for phone in ARPABET_PHONES],
        dtype=np.float64,
    )
    per_phone = table[[_PHONE_COLUMN[p.label] for p in phones]].reshape(len(phones), len(ARTICULATORY_FEATURES))
    return FeatureSpace(resample_to_trs(per_phone, _centres(phones), tr_times), ARTICULATORY_FEATURES)


def word_rate(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of words per TR (impulses at word centres): ``values`` of shape (n_trs, 1)."""
    return _impulses(_centres(transcript.words), tr_times, "word_rate")


def phoneme_rate(transcript: Transcript, tr_times: np.ndarray) -> FeatureSpace:
    """Count of phones per TR (impulses at phone centres): ``values`` of shape (n_trs, 1)."""
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
    """Sorted within-word n-phones (``"AH_N"`` for n=2) that occur in cleaned transcripts."""
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
    return FeatureSpace(resample_to_trs(impulses, times[known], tr_times), vocabulary)


def diphones(transcript: Transcript, tr_times: np.ndarray, vocabulary: Sequence[str]) -> FeatureSpace:
    """Count of each within-word phone pair per TR at ``tr_times`` (n_trs,): ``values`` of shape (n_trs,
    len(vocabulary)), ``names`` the vocabulary.
    """
    return _ngram_features(transcript, tr_times, vocabulary, 2, "diphones")


def triphones(transcript: Transcript, tr_times: np.ndarray, vocabulary: Sequence[str]) -> FeatureSpace:
    """Count of each within-word phone triple per TR at ``tr_times`` (n_trs,): ``values`` of shape (n_trs,
    len(vocabulary)), ``names`` the vocabulary.
    """
    return _ngram_features(transcript, tr_times, vocabulary, 3, "triphones")
