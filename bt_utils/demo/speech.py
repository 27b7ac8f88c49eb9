"""Offline English speech synthesis with eSpeak NG, with word and phone timings.

eSpeak NG is driven through ``ctypes`` from the shared library and voice data
shipped by the PyPI wheel ``espeakng-loader`` (no system package, no
subprocess). :func:`synthesize` returns the audio together with one time
interval per written word and one per ARPAbet phone, so that synthesised
stories come with the same kind of alignment as the TextGrids of ds003020.

The timings are the exact sample positions of eSpeak's word and phoneme
events; its mnemonics map to ARPAbet through :data:`ESPEAK_TO_ARPABET`, and
words that eSpeak reads as one are split by aligning their phones to the
words' own pronunciations. Each call loads a private copy of the library and
re-seeds its C ``rand``, so that :func:`synthesize` is a pure function of its
arguments although eSpeak keeps synthesis state between calls.
docs/demo_dataset.md ("How the speech is made") gives the rules for phones,
pauses, words and numbers, and why each call is isolated.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import hashlib
import numbers
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..data.transcripts import ARPABET_PHONES, Interval

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


_ARPABET_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})

ESPEAK_SAMPLE_RATE = 22050
"""Sample rate of eSpeak NG's own output, in Hz; timings are exact at this rate."""

MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
"""Speaking-rate range accepted by :func:`synthesize` (eSpeak's documented range)."""

_ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # ----- stops and affricates -------------------------------------------------------------
    "p": ("P",),
    "b": ("B",),
    "t": ("T",),
    "t#": ("T",),  # flapped /t/ (en-us "better", "data")
    "t2": ("T",),  # unaspirated /t/ (en-us "type", "time", "into")
    "?": ("T",),  # glottal stop realising /t/ (en-us "button", "written")
    "t[": ("T",),  # dental stop replacing /θ/ in en-029 ("path"); /ð/ becomes plain "d" there
    "d": ("D",),
    "d#": ("D",),  # flapped /d/
    "k": ("K",),
    "g": ("G",),
    "tS": ("CH",),
    "dZ": ("JH",),
    # ----- fricatives -----------------------------------------------------------------------
    "f": ("F",),
    "v": ("V",),
    "T": ("TH",),
    "D": ("DH",),
    "s": ("S",),
    "z": ("Z",),
    "z#": ("Z",),  # /z/ variant
    "z/2": ("Z",),  # /z/ variant
    "S": ("SH",),
    "Z": ("ZH",),
    "h": ("HH",),
    "C": ("HH",),  # palatal fricative (a /h/ before /j/)
    "x": ("K",),  # velar fricative (Scottish "loch", "Bach"); CMUdict has K
    # ----- nasals -------------------------------------------------------------------------
    "m": ("M",),
    "n": ("N",),
    "N": ("NG",),
    "m-": ("AH", "M"),  # syllabic m
    "n-": ("AH", "N"),  # syllabic n (en-us "button" b'V?n-), CMUdict: AH N
    # ----- liquids and glides -------------------------------------------------------------
    "l": ("L",),
    "l#": ("L",),  # voiceless lateral (Welsh "ll" in names)
    "l/2": ("L",),  # /l/ variant (en-us-nyc)
    "l-": ("AH", "L"),  # syllabic l
    "@L": ("AH", "L"),  # syllabic l ("table", "bottle"), CMUdict: AH L
    "r": ("R",),
    "r-": ("R",),  # linking or syllabic r ("hour our", "configuration")
    "r/": ("R",),  # /r/ variant (en-us, en-gb-scotland)
    "j": ("Y",),
    "w": ("W",),
    "w#": ("W",),  # "wh" (en-gb-scotland "which", "when")
    # ----- monophthongs -------------------------------------------------------------------
    "@": ("AH",),  # schwa
    "@2": ("AH",),  # schwa variant ("the")
    "@5": ("AH",),  # schwa variant ("to")
    "@#": ("AH",),  # schwa variant
    "@-": ("AH",),  # short schwa ("optional", "camera")
    "a#": ("AH",),  # reduced a ("about", "again"); en-gb-x-rp, en-029 schwa
    "a#2": ("AH",),  # reduced a
    "a2": ("AH",),  # reduced a
    "V": ("AH",),  # STRUT ("cut", "love")
    "3": ("ER",),  # unstressed r-coloured schwa ("better", "hour")
    "3:": ("ER",),  # NURSE ("bird", "first")
    "VR": ("ER",),  # en-gb-scotland NURSE ("church", "work")
    "IR": ("ER",),  # en-gb-scotland NURSE ("first", "third")
    "a": ("AE",),  # TRAP ("cat")
    "aa": ("AE",),  # BATH ("ask", "path"), as TRAP in CMUdict
    "a/": ("AE",),  # en-gb-scotland TRAP/BATH
    "A#": ("AE",),  # BATH variant
    "A:": ("AA",),  # PALM ("father", "calm")
    "0": ("AA",),  # LOT ("hot", "not")
    "0#": ("AA",),  # LOT variant
    "02": ("AA",),  # LOT variant
    "A~": ("AA",),  # nasalised vowel of French loans ("croissant")
    "O": ("AO",),  # THOUGHT
    "O:": ("AO",),  # THOUGHT ("all", "thought")
    "O2": ("AO",),  # CLOTH ("long", "coffee", en-us)
    "O~": ("AO",),  # nasalised vowel of French loans
    "E": ("EH",),  # DRESS
    "E#": ("EH",),  # DRESS variant
    "E2": ("EH",),  # DRESS variant
    "e#": ("EH",),  # DRESS variant (en-gb-x-rp)
    "I": ("IH",),  # KIT
    "I#": ("IH",),  # reduced i ("wanted", "boxes", en-us)
    "I2": ("IH",),  # reduced i ("result", "image")
    "I2#": ("IH",),  # reduced i
    "i": ("IY",),  # HAPPY ("city", "only")
    "i:": ("IY",),  # FLEECE
    "U": ("UH",),  # FOOT ("book")
    "u": ("UW",),  # short u ("unary")
    "u:": ("UW",),  # GOOSE
    # ----- diphthongs ---------------------------------------------------------------------
    "aI": ("AY",),
    "aI2": ("AY",),  # en-gb-scotland PRICE
    "aU": ("AW",),
    "eI": ("EY",),
    "e:": ("EY",),  # long e of loans ("cafe")
    "oU": ("OW",),
    "oU#": ("OW",),  # GOAT variant
    "o:": ("OW",),  # long o of loans
    "OI": ("OY",),
    # ----- centring and r-coloured diphthongs (CMUdict values, also for non-rhotic voices) --
    "A@": ("AA", "R"),  # START ("car", "are")
    "o@": ("AO", "R"),  # FORCE ("four", "more")
    "O@": ("AO", "R"),  # NORTH ("for", "horse")
    "e@": ("EH", "R"),  # SQUARE ("air", "there")
    "i@3": ("IH", "R"),  # NEAR ("here", "clear")
    "U@": ("UH", "R"),  # CURE ("poor", "sure")
    "i@": ("IY", "AH"),  # "idea", "area", "zero"
    "aI@": ("AY", "AH"),  # "diet", "science"; "fire" in non-rhotic voices
    "aI3": ("AY", "ER"),  # "fire", "tired" (en-us)
    "aU@": ("AW", "ER"),  # "hour", "power" where used
}
ESPEAK_TO_ARPABET: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(_ESPEAK_TO_ARPABET)
"""eSpeak NG English phoneme mnemonic (without stress mark) -> ARPAbet phones.

It covers the mnemonics of eSpeak's English phoneme tables (``en``, ``en-us``,
``en-us-nyc``, ``en-rp``, ``en-sc``, ``en-n``, ``en-wm``, ``en-wi``) and the
shared consonants they use. Pauses (``_``, ``_:``, ``_!``...) and the glide
``;`` are handled separately and are not in the table.
"""

_STRESS_MARKS = "',%="
_FOLDED = frozenset({";"})  # merged into the preceding phone


def _is_pause(mnemonic: str) -> bool:
    return mnemonic.startswith("_") or mnemonic in ("", "||", "|")


def espeak_to_arpabet(mnemonic: str, word: str | None = None) -> tuple[str, ...]:
    """ARPAbet phones of one eSpeak NG English phoneme mnemonic.

    Parameters
    ----------
    mnemonic : str
        eSpeak phoneme name, as in its phoneme events, e.g. ``"'aI"`` or
        ``"3:"``; leading stress marks (``' , % =``) are ignored.
    word : str, optional
        The word the phoneme belongs to, only used in the error message.

    Returns
    -------
    phones : tuple of str
        One or two labels from :data:`ARPABET_PHONES`.

    Raises
    ------
    ValueError
        If the mnemonic is not in :data:`ESPEAK_TO_ARPABET` (pauses and the
        glide ``;`` are not phones and raise too).
    """
    key = mnemonic.lstrip(_STRESS_MARKS)
    try:
        return _ESPEAK_TO_ARPABET[key]
    except KeyError:
        where = f" in word {word!r}" if word is not None else ""
        raise ValueError(
            f"eSpeak phoneme mnemonic {mnemonic!r}{where} has no ARPAbet mapping; "
            "add it to bt_utils.demo.speech.ESPEAK_TO_ARPABET"
        ) from None


# ======================================================================================
# Public data types
# ======================================================================================


@dataclass(frozen=True, eq=False)
class Utterance:
    """Synthesised speech with word and phone alignments.

    Attributes
    ----------
    audio : ndarray of shape (n_samples,)
        Mono waveform, float32, in [-1, 1].
    sample_rate : int
        Sample rate of ``audio`` in Hz.
    words : list of Interval
        One interval per written word, in order; times in seconds. The label is
        the word as written, in lower case, without surrounding punctuation.
    phones : list of Interval
        The ARPAbet phones of all words, in order, each inside its word's
        interval; times in seconds. Pauses are gaps, not intervals.
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
    """The text given to eSpeak and the written words, with character offsets.

    The text eSpeak gets has exactly the characters of the input (after
    normalisation) except that hyphens become spaces, so that eSpeak's text
    positions index the input.
    """
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


# ======================================================================================
# The C library
# ======================================================================================

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_PHONEME_SEPARATOR = 0x01  # espeak_TextToPhonemes: bits 8-23 of phonememode give a separator


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_void_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # output sample index
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceInfo(ctypes.Structure):
    """``espeak_VOICE`` of speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)*, then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

# (kind, 0-based text position, sample, mnemonic or None)
_RawEvent = tuple[int, int, int, "str | None"]


@dataclass
class _Catalogue:
    bases: dict[str, str]  # language code (lower case) -> eSpeak voice identifier
    canonical: tuple[str, ...]  # one code per English voice
    variants: dict[str, str]  # lower-case variant name -> variant file name


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.events: list[_RawEvent] = []
        self.error: BaseException | None = None


def _dlclose_function() -> Callable[[int], None] | None:
    import _ctypes

    return getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)


def _languages(address: int | None) -> list[tuple[int, str]]:
    out = []
    while address:
        priority = ctypes.c_ubyte.from_address(address).value
        if priority == 0:
            break
        code = ctypes.string_at(address + 1)
        out.append((priority, code.decode("ascii", "replace")))
        address += 2 + len(code)
    return out


class _Session:
    """An initialised, private instance of libespeak-ng (see :class:`_Engine`)."""

    def __init__(self, lib: ctypes.CDLL, engine: _Engine, sample_rate: int) -> None:
        self.lib = lib
        self.engine = engine
        self.sample_rate = sample_rate

    def set_voice(self, name: str, words_per_minute: int, pitch: int) -> None:
        if self.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise RuntimeError(f"eSpeak could not load voice {name!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)

    def synthesize(self, text: str) -> tuple[np.ndarray, list[_RawEvent]]:
        sink = _Sink()
        self.engine.sink = sink
        raw = text.encode("utf-8")
        try:
            status = self.lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self.engine.sink = None
        if sink.error is not None:
            raise sink.error
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        audio = np.concatenate(sink.chunks) if sink.chunks else np.zeros(0, dtype=np.int16)
        return audio, sink.events

    def text_to_phonemes(self, word: str) -> list[str]:
        """eSpeak mnemonics (with stress marks) of a word said on its own."""
        buffer = ctypes.create_string_buffer(word.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        out: list[str] = []
        for _ in range(64):  # one call per clause
            if not pointer.value:
                break
            result = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEME_SEPARATOR << 8)
            if result:
                text = result.decode("ascii", "replace")
                out += [m for m in re.split(r"[\s\x01]+", text) if m]
        return out

    def catalogue(self) -> _Catalogue:
        list_voices = self.lib.espeak_ListVoices
        bases: dict[str, tuple[int, str]] = {}
        canonical: list[str] = []
        array = list_voices(None)
        index = 0
        while array and array[index]:
            voice = array[index].contents
            index += 1
            languages = _languages(voice.languages)
            identifier = (voice.identifier or b"").decode("ascii", "replace")
            if not languages or not languages[0][1].startswith("en") or languages[0][1] == "en-shaw":
                continue
            canonical.append(languages[0][1])
            for priority, code in languages:
                if code not in bases or priority < bases[code][0]:
                    bases[code] = (priority, identifier)
        spec = _VoiceInfo()
        spec_languages = ctypes.create_string_buffer(b"variant")
        spec.languages = ctypes.cast(spec_languages, ctypes.c_void_p).value
        variants: dict[str, str] = {}
        array = list_voices(ctypes.byref(spec))
        index = 0
        while array and array[index]:
            identifier = (array[index].contents.identifier or b"").decode("ascii", "replace")
            index += 1
            name = identifier.split("/", 1)[-1]
            if identifier.startswith("!v/") and name and "+" not in name:
                variants.setdefault(name.lower(), name)
        return _Catalogue(
            bases={code: identifier for code, (_, identifier) in bases.items()},
            canonical=tuple(sorted(set(canonical))),
            variants=dict(sorted(variants.items())),
        )


class _Engine:
    """Loads a fresh private libespeak-ng for each synthesis, one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sink: _Sink | None = None
        self._callback = _SynthCallback(self._on_synth)  # kept alive for the library
        self._library_path: str | None = None
        self._data_path: bytes | None = None
        self._catalogue: _Catalogue | None = None
        self._libc: ctypes.CDLL | None = None
        self._isolated: dict[tuple[str, str], list[str]] = {}

    # ----- callback -----------------------------------------------------------------------

    def _on_synth(self, wav, n_samples, events) -> int:
        sink = self.sink
        if sink is None:
            return 1
        try:
            if n_samples > 0 and wav:
                sink.chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
            index = 0
            while True:
                event = events[index]
                kind = event.type
                if kind == _EVENT_LIST_TERMINATED:
                    break
                if kind == _EVENT_WORD:
                    sink.events.append((_EVENT_WORD, event.text_position - 1, event.sample, None))
                elif kind == _EVENT_PHONEME:
                    name = event.id.string.decode("ascii", "replace")
                    sink.events.append((_EVENT_PHONEME, event.text_position - 1, event.sample, name))
                index += 1
        except BaseException as error:  # an exception must not cross the C boundary
            sink.error = error
            return 1
        return 0

    # ----- loading ------------------------------------------------------------------------

    def _paths(self) -> tuple[str, bytes]:
        if self._library_path is None:
            try:
                import espeakng_loader
            except ImportError as error:  # pragma: no cover - a declared dependency
                raise RuntimeError("bt_utils.demo.speech needs the 'espeakng-loader' package") from error
            source = Path(os.path.realpath(espeakng_loader.get_library_path()))
            self._data_path = os.fsencode(espeakng_loader.get_data_path())
            self._library_path = str(_private_copy(source))
        assert self._data_path is not None
        return self._library_path, self._data_path

    def _seed_libc_rand(self) -> None:
        if self._libc is None:
            name = ctypes.util.find_library("c")
            try:
                self._libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
            except OSError:  # pragma: no cover - platforms without a C runtime handle
                return
        srand = getattr(self._libc, "srand", None)
        if srand is not None:
            srand(ctypes.c_uint(0))

    @contextmanager
    def session(self) -> Iterator[_Session]:
        """A freshly loaded and initialised library; the caller must hold :attr:`lock`."""
        library_path, data_path = self._paths()
        lib = ctypes.CDLL(library_path)
        _declare(lib)
        try:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data at {data_path!r}")
            lib.espeak_SetSynthCallback(self._callback)
            self._seed_libc_rand()
            yield _Session(lib, self, rate)
        finally:
            lib.espeak_Terminate()
            handle = lib._handle
            del lib
            close = _dlclose_function()
            if close is not None:
                close(handle)

    def catalogue(self) -> _Catalogue:
        with self.lock:
            if self._catalogue is None:
                with self.session() as session:
                    self._catalogue = session.catalogue()
            return self._catalogue

    def isolated_phones(self, session: _Session, voice: str, word: str) -> list[str]:
        """ARPAbet phones of ``word`` said alone (for splitting joined words); cached."""
        key = (voice, word)
        if key not in self._isolated:
            if len(self._isolated) > 20000:
                self._isolated.clear()
            phones: list[str] = []
            for mnemonic in session.text_to_phonemes(word):
                bare = mnemonic.lstrip(_STRESS_MARKS)
                if _is_pause(bare) or bare in _FOLDED:
                    continue
                phones += _ESPEAK_TO_ARPABET.get(bare, (bare,))  # unknown: only used for alignment
            self._isolated[key] = phones
        return self._isolated[key]


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_VoiceInfo)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceInfo))
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int


def _private_copy(source: Path) -> Path:
    """A per-user copy of the shared library, named after its content hash."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    owner = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(tempfile.gettempdir()) / f"bt_utils-espeak-{owner}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid"):
        status = folder.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o022:
            # not ours alone: never load code from a folder that others can write to
            folder = Path(tempfile.mkdtemp(prefix="bt_utils-espeak-"))
    target = folder / f"{digest}-{source.name}"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        partial = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    return target


_ENGINE = _Engine()


# ======================================================================================
# Voices
# ======================================================================================


def available_voices(include_variants: bool = False) -> tuple[str, ...]:
    """English eSpeak NG voices usable as ``voice`` in :func:`synthesize`.

    Parameters
    ----------
    include_variants : bool, default False
        Also list every ``"<voice>+<variant>"`` combination (several hundred).

    Returns
    -------
    voices : tuple of str
        Language codes such as ``"en-us"``, ``"en-gb"``, ``"en-gb-scotland"``,
        ``"en-029"``; ``"en"`` is also accepted as an alias of ``"en-gb"``.
        Any of them can be combined with a variant from
        :func:`available_variants` as ``"en-us+m3"`` or ``"en-gb+f2"`` to change
        the speaker (pitch, formants, breathiness).
    """
    catalogue = _ENGINE.catalogue()
    if not include_variants:
        return catalogue.canonical
    return catalogue.canonical + tuple(f"{v}+{n}" for v in catalogue.canonical for n in catalogue.variants.values())


def available_variants() -> tuple[str, ...]:
    """Names of eSpeak NG's voice variants (speakers), e.g. ``"m3"``, ``"f2"``, ``"klatt"``.

    Returns
    -------
    variants : tuple of str
        Append one to a voice with ``+``: ``synthesize(text, voice="en-us+f2")``.
    """
    return tuple(_ENGINE.catalogue().variants.values())


def _resolve_voice(voice: str) -> str:
    """The eSpeak voice name for ``voice`` (``"<code>[+<variant>]"``)."""
    if not isinstance(voice, str):
        raise TypeError(f"voice must be a str, got {type(voice).__name__}")
    catalogue = _ENGINE.catalogue()
    base, plus, variant = voice.strip().partition("+")
    identifier = catalogue.bases.get(base.strip().lower())
    if identifier is None:
        raise ValueError(
            f"unknown voice {voice!r}: available English voices are {', '.join(catalogue.canonical)} "
            f"('en' means en-gb), optionally followed by '+<variant>' with a variant among "
            f"{', '.join(catalogue.variants.values())}"
        )
    if not plus:
        return identifier
    name = catalogue.variants.get(variant.strip().lower())
    if name is None:
        raise ValueError(
            f"unknown voice variant {variant!r} in voice {voice!r}; available variants: "
            f"{', '.join(catalogue.variants.values())}"
        )
    return f"{identifier}+{name}"


# ======================================================================================
# Alignment
# ======================================================================================


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


def _raw_phones(tokens: Sequence[_Token], events: Sequence[_RawEvent], n_samples: int) -> list[_Phone]:
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
        if kind == _EVENT_WORD:
            current = max(current, _token_index(starts, tokens, position))
            close(sample)
            word_start = float(sample)
            continue
        bare = (mnemonic or "").lstrip(_STRESS_MARKS)
        if bare in _FOLDED:
            continue
        close(sample)
        if _is_pause(bare):
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
    if (a in _ARPABET_VOWELS) == (b in _ARPABET_VOWELS):
        return 1.0
    return 1.5


def _align_to_words(observed: Sequence[str], references: Sequence[Sequence[str]]) -> list[int]:
    """For each observed phone, the index of the word it belongs to.

    ``references`` holds each word's phones said alone; the observed phones
    (the words said together) are aligned to their concatenation with a
    minimum edit distance. Every word gets at least one phone when there are
    enough; otherwise the split falls back to proportions of the reference
    lengths.
    """
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
    """Give the phones of words eSpeak joined (one event for several words) to each word.

    A word without phones of its own joins the group of the closest word before
    it that has phones (or of the first such word).
    """
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
    events: Sequence[_RawEvent],
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


# ======================================================================================
# Synthesis
# ======================================================================================


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

    Parameters
    ----------
    text : str
        ASCII English: words, digits, whitespace and ``. , ; : ! ? ' " ( ) -``
        (see docs/demo_dataset.md, "Words", for how words are delimited).
    voice : str, default "en-us"
        An English voice from :func:`available_voices`, optionally with a
        variant from :func:`available_variants`: ``"en-us"``, ``"en"``,
        ``"en-gb-scotland+f2"``, ``"en-us+m3"``... (case-insensitive).
    words_per_minute : int, default 160
        Speaking rate, 80 to 450.
    pitch : int, default 50
        eSpeak's base pitch setting, 0 to 100 (50 is the voice's normal pitch).
    sample_rate : int, default 16000
        Sample rate of the returned audio in Hz (4,000 to 192,000). eSpeak
        speaks at 22,050 Hz; other rates are obtained with ``soxr`` (HQ).

    Returns
    -------
    Utterance
        ``audio`` of shape (n_samples,), float32 in [-1, 1], at
        ``sample_rate``; ``words`` with one interval per written word, in
        seconds; ``phones`` with ARPAbet labels, in seconds, each inside its
        word. The same arguments always give identical audio.

    Raises
    ------
    ValueError
        Empty text or text with unsupported characters, an unknown voice or
        variant, or a rate, pitch or sample rate out of range.
    TypeError
        Arguments of the wrong type.

    Examples
    --------
    >>> utterance = synthesize("She sells cats.")  # doctest: +SKIP
    >>> [w.label for w in utterance.words]  # doctest: +SKIP
    ['she', 'sells', 'cats']
    """
    words_per_minute = _check_int("words_per_minute", words_per_minute, MIN_WORDS_PER_MINUTE, MAX_WORDS_PER_MINUTE)
    pitch = _check_int("pitch", pitch, 0, 100)
    sample_rate = _check_int("sample_rate", sample_rate, 4000, 192000)
    espeak_text, tokens = _prepare_text(text)
    espeak_voice = _resolve_voice(voice)

    with _ENGINE.lock, _ENGINE.session() as session:
        session.set_voice(espeak_voice, words_per_minute, pitch)
        samples, events = session.synthesize(espeak_text)
        if len(samples) == 0:
            raise RuntimeError(f"eSpeak produced no audio for {text!r}")
        words, phones = _alignment(
            tokens,
            events,
            len(samples),
            session.sample_rate,
            lambda word: _ENGINE.isolated_phones(session, espeak_voice, word),
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
