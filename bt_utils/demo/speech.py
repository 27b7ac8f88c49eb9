"""Offline English speech synthesis with eSpeak NG, with word and phone timings.

:func:`synthesize` returns the audio with one interval per written word and one per ARPAbet phone, the same kind
of alignment as ds003020's TextGrids. docs/demo_dataset.md ("How the speech is made") gives the rules."""

from __future__ import annotations

import bisect
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.transcripts import ARPABET_PHONES, Interval
from .espeak import (ENGINE, ESPEAK_SAMPLE_RATE, EVENT_WORD, RawEvent, available_variants, available_voices,
                     resolve_voice)
from .phonetics import ARPABET_VOWELS, ESPEAK_TO_ARPABET, FOLDED, STRESS_MARKS, espeak_to_arpabet, is_pause

__all__ = [
    "ARPABET_PHONES",
    "ESPEAK_SAMPLE_RATE",
    "ESPEAK_TO_ARPABET",
    "MAX_WORDS_PER_MINUTE",
    "MIN_WORDS_PER_MINUTE",
    "Interval",
    "Utterance",
    "available_variants",
    "available_voices",
    "espeak_to_arpabet",
    "synthesize",
]

MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
"""Speaking-rate range accepted by :func:`synthesize` (eSpeak's documented range)."""


@dataclass(frozen=True, eq=False)
class Utterance:
    """Synthesised speech with word and phone alignments.

    Attributes
    ----------
    audio : ndarray of shape (n_samples,)
        Mono waveform, float32, in [-1, 1].
    """

    audio: np.ndarray
    sample_rate: int
    words: list[Interval] = field(default_factory=list)
    phones: list[Interval] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Length of the audio, in seconds."""
        return len(self.audio) / self.sample_rate


# ======================================================================================
# Text preparation
# ======================================================================================

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": ".",
        "\t": " ",
        "\n": " ",
        "\r": " ",
        "\f": " ",
        "\v": " ",
    }
)
_UNSUPPORTED = re.compile(r"[^A-Za-z0-9 .,;:!?'\"()\-]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:(?:'|(?<=[0-9])[.,](?=[0-9]))[A-Za-z0-9]+)*")


@dataclass(frozen=True)
class _Token:
    start: int  # character offsets in the text, end exclusive
    end: int
    text: str

    @property
    def label(self) -> str:
        return self.text.lower().replace(",", "")


def _prepare_text(text: str) -> tuple[str, list[_Token]]:
    """The text given to eSpeak (hyphens made spaces, so its positions index the input) and the words."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    normalised = text.translate(_TRANSLATE)
    bad = _UNSUPPORTED.search(normalised)
    if bad is not None:
        raise ValueError(
            f"unsupported character {text[bad.start()]!r} at position {bad.start()} of the text; "
            "synthesize accepts ASCII letters, digits, whitespace and the punctuation . , ; : ! ? ' \" ( ) -"
        )
    tokens = [_Token(m.start(), m.end(), m.group()) for m in _WORD.finditer(normalised)]
    if not tokens:
        raise ValueError(f"text {text!r} is empty: it contains no words to speak")
    return normalised.replace("-", " "), tokens


@dataclass
class _Phone:
    label: str
    start: float  # samples at eSpeak's rate
    end: float
    token: int


def _token_index(starts: Sequence[int], tokens: Sequence[_Token], position: int) -> int:
    """The word containing text ``position``, else the next word (else the last)."""
    index = bisect.bisect_right(starts, position) - 1
    if index >= 0 and position < tokens[index].end:
        return index
    return min(index + 1, len(tokens) - 1)


def _raw_phones(tokens: Sequence[_Token], events: Sequence[RawEvent], n_samples: int) -> list[_Phone]:
    """ARPAbet phones with eSpeak-rate sample intervals and the word whose event precedes them."""
    starts = [t.start for t in tokens]
    # (mnemonic, start, end, token); end is set by the next boundary
    found: list[list] = []
    open_index: int | None = None
    current = 0
    word_start: float | None = None

    def close(at: float) -> None:
        nonlocal open_index
        if open_index is not None:
            found[open_index][2] = max(float(at), found[open_index][1])
            open_index = None

    for kind, position, sample, mnemonic in events:
        if kind == EVENT_WORD:
            current = max(current, _token_index(starts, tokens, position))
            close(sample)
            word_start = float(sample)
            continue
        bare = (mnemonic or "").lstrip(STRESS_MARKS)
        if bare in FOLDED:
            continue
        close(sample)
        if is_pause(bare):
            word_start = None
            continue
        start = float(sample) if word_start is None else min(word_start, float(sample))
        word_start = None
        found.append([bare, start, start, current])
        open_index = len(found) - 1
    close(n_samples)

    phones: list[_Phone] = []
    for bare, start, end, token in found:
        labels = espeak_to_arpabet(bare, tokens[token].text)
        step = (end - start) / len(labels)  # two-phone mnemonics are split equally
        for i, label in enumerate(labels):
            stop = end if i == len(labels) - 1 else start + (i + 1) * step
            phones.append(_Phone(label, start + i * step, stop, token))
    return phones


def _phone_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    if (a in ARPABET_VOWELS) == (b in ARPABET_VOWELS):
        return 1.0
    return 1.5


def _align_to_words(observed: Sequence[str], references: Sequence[Sequence[str]]) -> list[int]:
    """For each observed phone, the index of its word: minimum edit distance to the words said alone."""
    n_words = len(references)
    reference = [(label, word) for word, phones in enumerate(references) for label in phones]
    n, m = len(observed), len(reference)
    if n < n_words:
        raise ValueError("fewer phones than words")
    owner: list[int | None] = [None] * n
    if m:
        cost = np.zeros((n + 1, m + 1))
        cost[:, 0] = np.arange(n + 1)
        cost[0, :] = np.arange(m + 1)
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                cost[i, j] = min(
                    cost[i - 1, j - 1] + _phone_cost(observed[i - 1], reference[j - 1][0]),
                    cost[i - 1, j] + 1.0,
                    cost[i, j - 1] + 1.0,
                )
        i, j = n, m
        while i > 0 and j > 0:
            if cost[i, j] == cost[i - 1, j - 1] + _phone_cost(observed[i - 1], reference[j - 1][0]):
                owner[i - 1] = reference[j - 1][1]
                i, j = i - 1, j - 1
            elif cost[i, j] == cost[i - 1, j] + 1.0:
                i -= 1
            else:
                j -= 1
    known = [w for w in owner if w is not None]
    if known:
        previous = known[0]
        for i, word in enumerate(owner):  # unaligned phones join the word before them
            owner[i] = previous = word if word is not None else previous
    result = [int(w) if w is not None else 0 for w in owner]
    if known and len(set(result)) == n_words:
        return result
    # proportional fallback: at least one phone per word
    weights = np.array([max(len(r), 1) for r in references], dtype=float)
    sizes = np.ones(n_words, dtype=int)
    extra = (n - n_words) * weights / weights.sum()
    sizes += np.floor(extra).astype(int)
    for index in np.argsort(-(extra - np.floor(extra)), kind="stable")[: n - sizes.sum()]:
        sizes[index] += 1
    return [word for word, size in enumerate(sizes) for _ in range(size)]


def _assign_groups(
    phones: list[_Phone], tokens: Sequence[_Token], isolated: Callable[[str], list[str]]
) -> None:
    """Share the phones of words eSpeak joined (one event for several words) among those words."""
    by_anchor: dict[int, list[int]] = {}
    for index, phone in enumerate(phones):
        by_anchor.setdefault(phone.token, []).append(index)
    anchors = sorted(by_anchor)
    if not anchors:
        raise RuntimeError("eSpeak produced no phonemes for the text")
    members: dict[int, list[int]] = {a: [] for a in anchors}
    for token in range(len(tokens)):
        position = bisect.bisect_right(anchors, token) - 1
        members[anchors[max(position, 0)]].append(token)
    for anchor, words in members.items():
        if len(words) == 1:
            continue
        indices = by_anchor[anchor]
        observed = [phones[i].label for i in indices]
        try:
            owners = _align_to_words(observed, [isolated(tokens[w].text) for w in words])
        except ValueError:
            text = " ".join(tokens[w].text for w in words)
            raise ValueError(
                f"eSpeak read the words {text!r} as one word with {len(observed)} phones "
                f"({' '.join(observed)}); they cannot be split into {len(words)} words"
            ) from None
        for i, owner in zip(indices, owners):
            phones[i].token = words[owner]


def _spread_zero_length(phones: list[_Phone]) -> None:
    """Give zero-length phones a share of a neighbouring phone of the same word."""
    by_token: dict[int, list[_Phone]] = {}
    for phone in phones:
        by_token.setdefault(phone.token, []).append(phone)
    for word in by_token.values():
        i = 0
        while i < len(word):
            if word[i].end > word[i].start:
                i += 1
                continue
            j = i
            while j < len(word) and word[j].end <= word[j].start:
                j += 1
            if i > 0:
                share = word[i - 1 : j]
            elif j < len(word):
                share = word[i : j + 1]
            else:
                break
            start, end = share[0].start, max(p.end for p in share)
            step = (end - start) / len(share)
            for k, phone in enumerate(share):
                phone.start = start + k * step
                phone.end = end if k == len(share) - 1 else start + (k + 1) * step
            i = j + 1 if i == 0 else j


def _alignment(
    tokens: Sequence[_Token],
    events: Sequence[RawEvent],
    n_samples: int,
    rate: int,
    isolated: Callable[[str], list[str]],
) -> tuple[list[Interval], list[Interval]]:
    """Word and phone intervals (seconds) from eSpeak's events."""
    phones = _raw_phones(tokens, events, n_samples)
    _assign_groups(phones, tokens, isolated)
    _spread_zero_length(phones)
    duration = n_samples / rate
    phone_intervals = []
    bounds: dict[int, list[float]] = {}
    for phone in phones:
        start = min(phone.start / rate, duration)
        end = min(phone.end / rate, duration)
        phone_intervals.append(Interval(start, end, phone.label))
        bound = bounds.setdefault(phone.token, [start, end])
        bound[0], bound[1] = min(bound[0], start), max(bound[1], end)
    words = [Interval(bounds[i][0], bounds[i][1], token.label) for i, token in enumerate(tokens)]
    return words, phone_intervals


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; it must be between {low} and {high}")
    return int(value)


def synthesize(
    text: str,
    voice: str = "en-us",
    words_per_minute: int = 160,
    pitch: int = 50,
    sample_rate: int = 16000,
) -> Utterance:
    """Speak English text with eSpeak NG and time-align its words and phones.

    Returns
    -------
    Utterance
        ``audio`` of shape (n_samples,); ``words`` and ``phones`` in seconds.

    Raises
    ------
    ValueError
        Empty text or text with unsupported characters, an unknown voice or variant, or a rate, pitch or sample
        rate out of range.
    TypeError
        Arguments of the wrong type.
    """
    words_per_minute = _check_int("words_per_minute", words_per_minute, MIN_WORDS_PER_MINUTE, MAX_WORDS_PER_MINUTE)
    pitch = _check_int("pitch", pitch, 0, 100)
    sample_rate = _check_int("sample_rate", sample_rate, 4000, 192000)
    espeak_text, tokens = _prepare_text(text)
    espeak_voice = resolve_voice(voice)

    with ENGINE.lock, ENGINE.session() as session:
        session.set_voice(espeak_voice, words_per_minute, pitch)
        samples, events = session.synthesize(espeak_text)
        if len(samples) == 0:
            raise RuntimeError(f"eSpeak produced no audio for {text!r}")
        words, phones = _alignment(
            tokens,
            events,
            len(samples),
            session.sample_rate,
            lambda word: ENGINE.isolated_phones(session, espeak_voice, word),
        )
        native_rate = session.sample_rate

    audio = samples.astype(np.float32) / np.float32(32768.0)
    if sample_rate != native_rate:
        import soxr

        audio = soxr.resample(audio, native_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        duration = len(audio) / sample_rate
        words = [_clip(w, duration) for w in words]
        phones = [_clip(p, duration) for p in phones]
    np.clip(audio, -1.0, 1.0, out=audio)
    return Utterance(audio=np.ascontiguousarray(audio), sample_rate=sample_rate, words=words, phones=phones)


def _clip(interval: Interval, duration: float) -> Interval:
    if interval.end <= duration:
        return interval
    return Interval(min(interval.start, duration), duration, interval.label)
