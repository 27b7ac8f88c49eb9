"""Loaders of the paper's downstream corpora: TIMIT, Speech Commands, CREMA-D, SLURP and LibriSpeech.

Each reads a local folder, or a Hugging Face ``datasets`` copy (``"hf:<dataset id>"``); the data are
licensed or large and never downloaded here. docs/method.md ("Downstream probes") lists the tasks, their
sources and their splits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from ..validation import DataError, check_option
from .task_data import SAMPLE_RATE, SPLITS, DownstreamTask, Example, audio_length

HF_PREFIX = "hf:"


def _missing(what: str, path: Path, where: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found at {path}. Expected {layout}. Get it from {where} and pass its folder, "
        f"or pass '{HF_PREFIX}<dataset id>' to read a Hugging Face datasets copy."
    )


def _local_root(source: str | os.PathLike, what: str, where: str, layout: str) -> Path:
    root = Path(source).expanduser()
    if not root.is_dir():
        raise _missing(what, root, where, layout)
    return root


def _is_hf(source) -> bool:
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def _load_hf(source: str, split: str, config: str | None = None):
    """One split of a Hugging Face dataset (``source`` = ``"hf:<id>"``): an iterable of row dicts."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"reading {source!r} needs the optional package 'datasets' (pip install datasets), and network "
            "access or a filled datasets cache; or download the data and pass its local folder"
        ) from error
    return datasets.load_dataset(source.removeprefix(HF_PREFIX), config, split=split)


def _hf_audio(value) -> np.ndarray:
    """A 16-kHz mono waveform from a ``datasets`` audio value (a dict with ``array``, or a decoder)."""
    if isinstance(value, dict):
        audio, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    else:  # datasets >= 4 decodes audio with torchcodec
        samples = value.get_all_samples()
        audio, rate = samples.data.numpy().astype(np.float32), int(samples.sample_rate)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def _require_columns(row: dict, columns: Iterable[str], source: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(f"{source} rows have no column(s) {missing}; found {sorted(row)}. "
                        "Use a copy that has them, or a local copy of the original files.")


def _hf_path(row: dict) -> str:
    """The original file name of a ``datasets`` audio row, if kept."""
    audio = row.get("audio")
    path = audio.get("path") if isinstance(audio, dict) else None
    return str(row.get("file") or row.get("path") or path or "")


# ======================================================================================
# TIMIT
# ======================================================================================

TIMIT_URL = "LDC catalogue LDC93S1 (https://catalog.ldc.upenn.edu/LDC93S1)"
TIMIT_LAYOUT = "TRAIN/ and TEST/ (any case) with DR*/<speaker>/<sentence>.WAV, .PHN and .TXT files"

TIMIT_CORE_TEST_SPEAKERS = (
    "MDAB0", "MWBT0", "FELC0", "MTAS1", "MWEW0", "FPAS0", "MJMP0", "MLNT0", "FPKT0", "MLLL0", "MTLS0", "FJLM0",
    "MBPM0", "MKLT0", "FNLP0", "MCMJ0", "MJDH0", "FMGD0", "MGRT0", "MNJM0", "FDHC0", "MJLN0", "MPAM0", "FMLD0",
)  # fmt: skip
"""The 24 speakers of TIMIT's core test set (2 men and 1 woman per dialect region)."""

_TIMIT_MERGES = {
    "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "hv": "hh", "ix": "ih", "el": "l", "em": "m",
    "en": "n", "nx": "n", "eng": "ng", "zh": "sh", "ux": "uw",
    "pcl": "sil", "tcl": "sil", "kcl": "sil", "bcl": "sil", "dcl": "sil", "gcl": "sil",
    "h#": "sil", "pau": "sil", "epi": "sil",
}  # fmt: skip
_TIMIT_KEPT = (
    "iy", "ih", "eh", "ey", "ae", "aa", "aw", "ay", "ah", "oy", "ow", "uh", "uw", "er", "l", "r", "w", "y",
    "m", "n", "ng", "ch", "jh", "dh", "b", "d", "dx", "g", "p", "t", "k", "z", "v", "f", "th", "s", "sh", "hh",
)  # fmt: skip
TIMIT_FOLDING: dict[str, str | None] = {**{p: p for p in _TIMIT_KEPT}, **_TIMIT_MERGES, "q": None}
"""The 61 TIMIT phone labels -> the 39 classes of Lee & Hon (1989); ``q`` (glottal stop) -> None (dropped)."""

TIMIT_PHONES_39: tuple[str, ...] = tuple(sorted(set(_TIMIT_KEPT) | {"sil"}))
"""The 39 folded phone classes."""


@dataclass(frozen=True)
class _TimitUtterance:
    split: str
    speaker: str
    sentence: str  # e.g. "SX123"
    audio: str | np.ndarray
    phones: tuple[tuple[float, float, str], ...]  # (start s, end s, 61-label)
    text: str

    @property
    def id(self) -> str:
        return f"{self.speaker}_{self.sentence}"

    @property
    def sentence_type(self) -> str:
        return self.sentence[:2].upper()


def _timit_split(folder: str, speaker: str) -> str:
    if folder.lower() == "train":
        return "train"
    return "test" if speaker.upper() in TIMIT_CORE_TEST_SPEAKERS else "validation"


def _timit_audio_file(phn: Path) -> Path | None:
    for name in (phn.stem + ".WAV", phn.stem + ".wav", phn.stem + ".WAV.wav", phn.stem + ".wav.wav"):
        if (phn.parent / name).is_file():
            return phn.parent / name
    return None


def _read_phn(path: Path) -> tuple[tuple[float, float, str], ...]:
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2].lower() not in TIMIT_FOLDING:
            raise DataError(f"{path}, line {line_number}: expected 'start end phone' with a TIMIT phone, got {line!r}")
        rows.append((int(parts[0]) / SAMPLE_RATE, int(parts[1]) / SAMPLE_RATE, parts[2].lower()))
    return tuple(rows)


def _read_timit_text(path: Path) -> str:
    if not path.is_file():
        return ""
    parts = path.read_text().split(maxsplit=2)  # "start end the sentence"
    return parts[2].strip() if len(parts) == 3 else ""


def _timit_local(source) -> list[_TimitUtterance]:
    root = _local_root(source, "TIMIT", TIMIT_URL, TIMIT_LAYOUT)
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in ("train", "test")}
    if not folders and (root / "data").is_dir():  # the Kaggle copy nests TRAIN/TEST under data/
        return _timit_local(root / "data")
    if set(folders) != {"train", "test"}:
        raise _missing("TIMIT's TRAIN and TEST folders", root, TIMIT_URL, TIMIT_LAYOUT)
    utterances = []
    for folder_name, folder in sorted(folders.items()):
        for phn in sorted(folder.glob("*/*/*.[Pp][Hh][Nn]")):
            audio = _timit_audio_file(phn)
            if audio is None:
                raise DataError(f"{phn} has no audio file beside it (expected {phn.stem}.WAV)")
            speaker = phn.parent.name.upper()
            utterances.append(_TimitUtterance(
                _timit_split(folder_name, speaker), speaker, phn.stem.upper(), str(audio), _read_phn(phn),
                _read_timit_text(phn.with_suffix(phn.suffix.replace("PHN", "TXT").replace("phn", "txt")))))
    if not utterances:
        raise _missing("TIMIT .PHN files", root, TIMIT_URL, TIMIT_LAYOUT)
    return utterances


def _timit_hf(source: str) -> list[_TimitUtterance]:
    utterances = []
    for hf_split in ("train", "test"):
        for row in _load_hf(source, hf_split):
            _require_columns(row, ("audio", "file", "phonetic_detail", "text"), source)
            detail = row["phonetic_detail"]
            phones = tuple((start / SAMPLE_RATE, stop / SAMPLE_RATE, label.lower())
                           for start, stop, label in zip(detail["start"], detail["stop"], detail["utterance"]))
            file = Path(row["file"])  # .../TEST/DR1/FELC0/SX216.WAV
            speaker = file.parent.name.upper()
            utterances.append(_TimitUtterance(_timit_split(hf_split, speaker), speaker, file.stem.upper().split(".")[0],
                                              _hf_audio(row["audio"]), phones, str(row["text"])))
    return utterances


def _timit_utterances(source) -> list[_TimitUtterance]:
    return _timit_hf(source) if _is_hf(source) else _timit_local(source)


TIMIT_PROTOCOLS = ("presence", "segments")
"""Protocols of the TIMIT phoneme task (see :func:`timit_phonemes`)."""

TIMIT_PRESENCE_CLASSES: tuple[str, ...] = tuple(p for p in TIMIT_PHONES_39 if p != "sil")
"""The 38 classes of the presence protocol: the folded phones without ``sil`` (closures, pauses, silence)."""


def timit_phonemes(source: str | os.PathLike, protocol: str = "presence", include_sa: bool = False) -> DownstreamTask:
    """TIMIT phoneme prediction with 39 folded phones (:data:`TIMIT_FOLDING`), under one of two protocols."""
    check_option("protocol", protocol, TIMIT_PROTOCOLS)
    utterances = [u for u in _timit_utterances(source) if include_sa or u.sentence_type != "SA"]
    if protocol == "presence":
        examples = []
        for utterance in utterances:
            present = {TIMIT_FOLDING[label] for _, _, label in utterance.phones}
            label = " ".join(p for p in TIMIT_PRESENCE_CLASSES if p in present)
            examples.append(Example(utterance.id, utterance.split, label, utterance.audio, speaker=utterance.speaker))
        return DownstreamTask("timit_phoneme", "multilabel", tuple(examples), TIMIT_PRESENCE_CLASSES,
                              "utterance -> which of 38 folded TIMIT phones occur (sil excluded)",
                              "TIMIT phoneme prediction", str(source))
    examples = []
    for utterance in utterances:
        for index, (start, end, label) in enumerate(utterance.phones):
            folded = TIMIT_FOLDING[label]
            if folded is not None and end > start:
                examples.append(Example(f"{utterance.id}_{index:03d}", utterance.split, folded, utterance.audio,
                                        source=utterance.id, span=(start, end), speaker=utterance.speaker))
    return DownstreamTask("timit_phoneme_segments", "classification", tuple(examples), TIMIT_PHONES_39,
                          "phone segment -> one of 39 folded TIMIT phones", "TIMIT phoneme prediction", str(source))


def timit_sentence_type(source: str | os.PathLike) -> DownstreamTask:
    """TIMIT sentence type: dialect (SA), phonetically compact (SX) or diverse (SI), from the file name."""
    examples = tuple(Example(u.id, u.split, u.sentence_type, u.audio, speaker=u.speaker)
                     for u in _timit_utterances(source))
    return DownstreamTask("timit_sentence_type", "classification", examples, ("SA", "SI", "SX"),
                          "utterance -> sentence type SA / SI / SX", "TIMIT sentence type", str(source))


def timit_asr(source: str | os.PathLike) -> DownstreamTask:
    """TIMIT transcription: the SI and SX sentences, in the split of the other TIMIT tasks."""
    examples = tuple(Example(u.id, u.split, u.text, u.audio, speaker=u.speaker) for u in _timit_utterances(source)
                     if u.sentence_type != "SA")
    return DownstreamTask("timit_asr", "asr", examples, description="utterance -> transcript (1 - WER)",
                          paper_task="ASR", origin=str(source))


# ======================================================================================
# Speech Commands
# ======================================================================================

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz (Warden 2018, CC BY 4.0)"
SPEECH_COMMANDS_LAYOUT = "one folder of .wav files per word, validation_list.txt and testing_list.txt"
SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six",
    "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
"""The 35 words of Speech Commands v0.02."""


def _speech_commands_local(source) -> list[Example]:
    root = _local_root(source, "Speech Commands v0.02", SPEECH_COMMANDS_URL, SPEECH_COMMANDS_LAYOUT)
    lists = {}
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        if not (root / name).is_file():
            raise _missing(f"Speech Commands {name}", root / name, SPEECH_COMMANDS_URL, SPEECH_COMMANDS_LAYOUT)
        lists.update({line.strip(): split for line in (root / name).read_text().splitlines() if line.strip()})
    examples = []
    for word in SPEECH_COMMANDS_WORDS:
        for path in sorted((root / word).glob("*.wav")):
            relative = f"{word}/{path.name}"
            examples.append(Example(relative, lists.get(relative, "train"), word, str(path),
                                    speaker=path.name.split("_nohash_")[0]))
    if not examples:
        raise _missing("Speech Commands word folders", root, SPEECH_COMMANDS_URL, SPEECH_COMMANDS_LAYOUT)
    return examples


def _speech_commands_hf(source: str, label_column: str) -> list[Example]:
    examples = []
    for split in SPLITS:
        rows = _load_hf(source, split, "v0.02")
        names = rows.features[label_column].names
        for index, row in enumerate(rows):
            word = names[row[label_column]]
            if word in SPEECH_COMMANDS_WORDS:  # drops _silence_ and _unknown_
                examples.append(Example(f"{split}/{index}", split, word, _hf_audio(row["audio"]),
                                        speaker=str(row.get("speaker_id", ""))))
    return examples


def speech_commands(source: str | os.PathLike, label_column: str = "label") -> DownstreamTask:
    """Speech Commands v0.02 word identity (35 words)."""
    examples = _speech_commands_hf(source, label_column) if _is_hf(source) else _speech_commands_local(source)
    return DownstreamTask("speech_commands", "classification", tuple(examples), SPEECH_COMMANDS_WORDS,
                          "one-second clip -> one of 35 words", "Speech Commands word identity", str(source))


# ======================================================================================
# CREMA-D
# ======================================================================================

CREMA_D_URL = "https://github.com/CheyneyComputerScience/CREMA-D (Open Database License; audio in AudioWAV/, Git LFS)"
CREMA_D_LAYOUT = "AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, e.g. AudioWAV/1001_DFA_ANG_XX.wav"
CREMA_D_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
"""CREMA-D's emotion codes and the class names used here."""

_CREMA_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


def _crema_split(actor: str, actors: list[str]) -> str:
    rank = actors.index(actor)
    return "validation" if rank % 10 == 8 else "test" if rank % 10 == 9 else "train"


def crema_d(source: str | os.PathLike, hf_split: str = "train") -> DownstreamTask:
    """CREMA-D emotion recognition: 6 classes from the file names, split by actor (80/10/10)."""
    if _is_hf(source):
        items = [(Path(_hf_path(row)).stem, _hf_audio(row["audio"])) for row in _load_hf(source, hf_split)]
    else:
        root = _local_root(source, "CREMA-D", CREMA_D_URL, CREMA_D_LAYOUT)
        folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
        items = [(p.stem, str(p)) for p in sorted(folder.glob("*.wav"))]
        if not items:
            raise _missing("CREMA-D .wav files", folder, CREMA_D_URL, CREMA_D_LAYOUT)
    parsed = [(_CREMA_NAME.match(name), name, audio) for name, audio in items]
    bad = [name for match, name, _ in parsed if match is None]
    if bad:
        raise DataError(f"CREMA-D file names must look like 1001_DFA_ANG_XX; got {bad[:3]} from {source}")
    actors = sorted({match.group(1) for match, _, _ in parsed})
    examples = tuple(Example(name, _crema_split(match.group(1), actors), CREMA_D_EMOTIONS[match.group(3)], audio,
                             speaker=match.group(1)) for match, name, audio in parsed)
    return DownstreamTask("crema_d_emotion", "classification", examples, tuple(CREMA_D_EMOTIONS.values()),
                          "acted sentence -> one of 6 emotions", "CREMA-D emotion", str(source))


# ======================================================================================
# SLURP
# ======================================================================================

SLURP_URL = "https://github.com/pswietojanski/slurp (text: dataset/slurp/*.jsonl; audio: slurp_real.tar.gz, CC BY 4.0)"
SLURP_LAYOUT = "train.jsonl, devel.jsonl, test.jsonl (or dataset/slurp/*.jsonl) and the audio folder slurp_real/"
_SLURP_FILES = {"train": "train.jsonl", "validation": "devel.jsonl", "test": "test.jsonl"}
SLURP_TARGETS = ("intent", "action")


def _slurp_folder(root: Path, candidates: Iterable[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise _missing(f"SLURP {what}", root, SLURP_URL, SLURP_LAYOUT)


def _slurp_local(source, target: str) -> list[Example]:
    root = _local_root(source, "SLURP", SLURP_URL, SLURP_LAYOUT)
    text_dir = _slurp_folder(root, ("dataset/slurp/test.jsonl", "slurp/test.jsonl", "test.jsonl"), "test.jsonl").parent
    audio_dir = _slurp_folder(root, ("slurp_real", "audio/slurp_real", "scripts/audio/slurp_real"), "audio folder")
    examples = []
    for split, name in _SLURP_FILES.items():
        path = text_dir / name
        if not path.is_file():
            raise _missing(f"SLURP {name}", path, SLURP_URL, SLURP_LAYOUT)
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            for recording in record.get("recordings", []):
                file = audio_dir / recording["file"]
                examples.append(Example(recording["file"], split, str(record[target]), str(file),
                                        source=recording["file"]))
    missing = [e.audio for e in examples[:50] if not Path(e.audio).is_file()]
    if missing:
        raise _missing("SLURP audio", Path(missing[0]), SLURP_URL, SLURP_LAYOUT)
    return examples


def slurp(source: str | os.PathLike, target: str = "intent",
          hf_splits: tuple[str, str, str] = ("train", "validation", "test")) -> DownstreamTask:
    """SLURP spoken language understanding: intent (e.g. ``alarm_set``) or action (e.g. ``set``)."""
    check_option("target", target, SLURP_TARGETS)
    if _is_hf(source):
        examples = []
        for split, hf_split in zip(SPLITS, hf_splits):
            for index, row in enumerate(_load_hf(source, hf_split)):
                _require_columns(row, ("audio", target), source)
                examples.append(Example(f"{split}/{index}", split, str(row[target]), _hf_audio(row["audio"])))
    else:
        examples = _slurp_local(source, target)
    classes = tuple(sorted({e.label for e in examples}))
    return DownstreamTask(f"slurp_{target}", "classification", tuple(examples), classes,
                          f"spoken command -> {target}", f"SLURP {target}", str(source))


# ======================================================================================
# LibriSpeech
# ======================================================================================

LIBRISPEECH_URL = "https://www.openslr.org/12 (train-clean-100, dev-clean and test-clean .tar.gz, CC BY 4.0)"
LIBRISPEECH_LAYOUT = "<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and .flac files"
_LIBRISPEECH_HF_SPLITS = {"train-clean-100": "train.100", "train-clean-360": "train.360", "dev-clean": "validation",
                          "test-clean": "test"}


def librispeech(source: str | os.PathLike, train: str = "train-clean-100", validation: str = "dev-clean",
                test: str = "test-clean", max_seconds: float = 30.0) -> DownstreamTask:
    """LibriSpeech transcription: one subset per split (speakers differ between subsets)."""
    subsets = {"train": train, "validation": validation, "test": test}
    examples = (_librispeech_hf if _is_hf(source) else _librispeech_local)(source, subsets, max_seconds)
    return DownstreamTask("librispeech_asr", "asr", tuple(examples), description="utterance -> transcript (1 - WER)",
                          paper_task="ASR", origin=str(source))


def _librispeech_hf(source: str, subsets: dict[str, str], max_seconds: float) -> list[Example]:
    examples = []
    for split, subset in subsets.items():
        if subset not in _LIBRISPEECH_HF_SPLITS:
            raise ValueError(f"{split}={subset!r}: the Hugging Face copy of LibriSpeech (config 'clean') has the "
                             f"subsets {', '.join(_LIBRISPEECH_HF_SPLITS)}")
        for row in _load_hf(source, _LIBRISPEECH_HF_SPLITS[subset], "clean"):
            audio = _hf_audio(row["audio"])
            if len(audio) <= max_seconds * SAMPLE_RATE:
                examples.append(Example(str(row["id"]), split, str(row["text"]), audio, speaker=str(row["speaker_id"])))
    return examples


def _librispeech_local(source, subsets: dict[str, str], max_seconds: float) -> list[Example]:
    root = _local_root(source, "LibriSpeech", LIBRISPEECH_URL, LIBRISPEECH_LAYOUT)
    examples = []
    for split, subset in subsets.items():
        folder, found = root / subset, 0
        for transcript in sorted(folder.glob("*/*/*.trans.txt")):
            for line in transcript.read_text().splitlines():
                utterance, _, text = line.partition(" ")
                example = Example(utterance, split, text, str(transcript.parent / f"{utterance}.flac"),
                                  speaker=utterance.split("-")[0])
                found += 1
                if audio_length(example) <= max_seconds * SAMPLE_RATE:
                    examples.append(example)
        if not found:
            raise _missing(f"LibriSpeech {subset} (the {split} split)", folder, LIBRISPEECH_URL, LIBRISPEECH_LAYOUT)
    return examples


# ======================================================================================
# Registry
# ======================================================================================
