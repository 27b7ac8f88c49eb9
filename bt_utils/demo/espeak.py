"""The eSpeak NG library through ``ctypes``: synthesis with word and phoneme events, and its English voices.

The shared library and voice data come from the PyPI wheel ``espeakng-loader`` (no system package, no subprocess).
eSpeak keeps synthesis state between calls, so every synthesis loads a private copy of the library and re-seeds its
C ``rand``: the same arguments then give the same audio (docs/demo_dataset.md, "How the speech is made").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .phonetics import ESPEAK_TO_ARPABET, FOLDED, STRESS_MARKS, is_pause

ESPEAK_SAMPLE_RATE = 22050
"""Sample rate of eSpeak NG's own output, in Hz; timings are exact at this rate."""


_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
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

RawEvent = tuple[int, int, int, "str | None"]
"""An event of a synthesis: (kind, 0-based text position, sample, phoneme mnemonic or None)."""


@dataclass
class _Catalogue:
    bases: dict[str, str]  # language code (lower case) -> eSpeak voice identifier
    canonical: tuple[str, ...]  # one code per English voice
    variants: dict[str, str]  # lower-case variant name -> variant file name


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.events: list[RawEvent] = []
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

    def synthesize(self, text: str) -> tuple[np.ndarray, list[RawEvent]]:
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
                if kind == EVENT_WORD:
                    sink.events.append((EVENT_WORD, event.text_position - 1, event.sample, None))
                elif kind == EVENT_PHONEME:
                    name = event.id.string.decode("ascii", "replace")
                    sink.events.append((EVENT_PHONEME, event.text_position - 1, event.sample, name))
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
                bare = mnemonic.lstrip(STRESS_MARKS)
                if is_pause(bare) or bare in FOLDED:
                    continue
                phones += ESPEAK_TO_ARPABET.get(bare, (bare,))  # unknown: only used for alignment
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


ENGINE = _Engine()
"""The process's eSpeak engine; hold ``ENGINE.lock`` around ``ENGINE.session()``."""


def available_voices(include_variants: bool = False) -> tuple[str, ...]:
    """English eSpeak NG voices usable as ``voice`` in :func:`bt_utils.demo.speech.synthesize`."""
    catalogue = ENGINE.catalogue()
    if not include_variants:
        return catalogue.canonical
    return catalogue.canonical + tuple(f"{v}+{n}" for v in catalogue.canonical for n in catalogue.variants.values())


def available_variants() -> tuple[str, ...]:
    """Names of eSpeak NG's voice variants (speakers), e.g. ``"m3"``, ``"f2"``, ``"klatt"``."""
    return tuple(ENGINE.catalogue().variants.values())


def resolve_voice(voice: str) -> str:
    """The eSpeak voice name for ``voice`` (``"<code>[+<variant>]"``)."""
    if not isinstance(voice, str):
        raise TypeError(f"voice must be a str, got {type(voice).__name__}")
    catalogue = ENGINE.catalogue()
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
