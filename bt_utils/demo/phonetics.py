"""eSpeak NG's English phoneme mnemonics and their ARPAbet phones (the phone tier of the demo's speech)."""

from __future__ import annotations

from types import MappingProxyType

ARPABET_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})


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
"""eSpeak NG English phoneme mnemonic (without stress mark) -> ARPAbet phones, for all of eSpeak's English
phoneme tables; pauses (``_``, ``_:``...) and the glide ``;`` are not phones and are not in it."""

STRESS_MARKS = "',%="
FOLDED = frozenset({";"})
"""Mnemonics merged into the preceding phone."""


def is_pause(mnemonic: str) -> bool:
    """Whether an eSpeak mnemonic (stress marks removed) is a pause or word boundary."""
    return mnemonic.startswith("_") or mnemonic in ("", "||", "|")


def espeak_to_arpabet(mnemonic: str, word: str | None = None) -> tuple[str, ...]:
    """ARPAbet phones of one eSpeak NG English phoneme mnemonic.

    Raises
    ------
    ValueError
        If the mnemonic is not in :data:`ESPEAK_TO_ARPABET` (pauses and the glide ``;`` included).
    """
    key = mnemonic.lstrip(STRESS_MARKS)
    try:
        return _ESPEAK_TO_ARPABET[key]
    except KeyError:
        where = f" in word {word!r}" if word is not None else ""
        raise ValueError(
            f"eSpeak phoneme mnemonic {mnemonic!r}{where} has no ARPAbet mapping; "
            "add it to bt_utils.demo.phonetics.ESPEAK_TO_ARPABET"
        ) from None
