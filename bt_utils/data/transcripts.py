"""Word and phone alignments stored as Praat TextGrids (read and written with praatio).

ds003020 ships one TextGrid per story with an interval tier of phones (ARPAbet) and one of words. Tier names vary
in case and number across files ("phone", "phones", "Phone"...), so tiers are found by a case-insensitive match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from praatio import textgrid as _praat_textgrid

from ..results import atomic_path
from ..validation import DataError

ARPABET_PHONES: tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
    "UH", "UW", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
"""The 39 ARPAbet phones of the CMU dictionary, without stress digits."""

PHONE_TIER_NAMES = ("phone", "phones")
WORD_TIER_NAMES = ("word", "words")


class Interval(NamedTuple):
    """A labelled time interval, in seconds from the start of the audio."""

    start: float
    end: float
    label: str

    @property
    def duration(self) -> float:
        """Length of the interval, in seconds."""
        return self.end - self.start


@dataclass(frozen=True)
class Transcript:
    """Time-aligned words and phones of one story.

    Attributes
    ----------
    words : list of Interval
        Word intervals in time order; empty (silent) intervals are left out.
    phones : list of Interval
        Phone intervals in time order, labels as stored (ARPAbet).
    duration : float
        End time of the TextGrid, in seconds.
    """

    words: list[Interval]
    phones: list[Interval]
    duration: float


def _find_tier(grid, names: tuple[str, ...], path: Path):
    by_lower = {name.strip().lower(): name for name in grid.tierNames}
    for name in names:
        if name in by_lower:
            return grid.getTier(by_lower[name])
    raise DataError(
        f"{path} has no tier named {' or '.join(repr(n) for n in names)} "
        f"(tiers found: {list(grid.tierNames)}); ds003020 TextGrids have a 'phone' and a 'word' tier"
    )


def read_textgrid(path: str | os.PathLike) -> Transcript:
    """Read the word and phone tiers of a TextGrid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TextGrid not found: {path}")
    try:
        grid = _praat_textgrid.openTextgrid(str(path), includeEmptyIntervals=False, reportingMode="silence")
    except Exception as error:  # praatio raises several unrelated types on malformed files
        raise DataError(f"could not parse TextGrid {path}: {error}") from error

    def intervals(tier):
        return [Interval(float(s), float(e), str(label).strip()) for s, e, label in tier.entries if str(label).strip()]

    return Transcript(
        words=intervals(_find_tier(grid, WORD_TIER_NAMES, path)),
        phones=intervals(_find_tier(grid, PHONE_TIER_NAMES, path)),
        duration=float(grid.maxTimestamp),
    )


def textgrid_duration(path: str | os.PathLike) -> float:
    """End time (``xmax``) of a TextGrid, read from its header alone (no tier is parsed)."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(1024)
    encoding = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    lines = [line.strip() for line in head.decode(encoding, errors="ignore").splitlines() if line.strip()]
    # long format: File type, Object class, "xmin = 0", "xmax = 12.5"; short format: the same with bare numbers
    if len(lines) > 3 and lines[1].replace(" ", "") == 'Objectclass="TextGrid"':
        try:
            return float(lines[3].rpartition("=")[2])
        except ValueError:
            pass
    raise DataError(f"{path} does not start like a Praat TextGrid (File type, Object class, xmin, xmax); "
                    "replace it with the story's TextGrid")


def write_textgrid(transcript: Transcript, path: str | os.PathLike) -> Path:
    """Write a transcript as a long-format TextGrid with tiers ``phone`` and ``word`` (atomic)."""
    grid = _praat_textgrid.Textgrid()
    for name, entries in (("phone", transcript.phones), ("word", transcript.words)):
        tier = _praat_textgrid.IntervalTier(
            name, [(s, e, label) for s, e, label in entries], 0.0, transcript.duration
        )
        grid.addTier(tier)
    with atomic_path(path) as staged:
        grid.save(str(staged), format="long_textgrid", includeBlankSpaces=True, reportingMode="error")
    return Path(path)
