"""Offline demo tasks made with speech synthesis, one for each kind of task of the paper.

Each example has its own speaker (an English accent with a voice variant), speaking rate, pitch, a random lead-in
silence and white noise at a random signal-to-noise ratio (:data:`DEMO_SPEECH`). Speakers are disjoint between
train, validation and test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..data.transcripts import ARPABET_PHONES
from ..downstream.tasks import SAMPLE_RATE, DownstreamTask, Example
from ..validation import check_option
from . import DEMO_TASKS
from .speech import synthesize

DEMO_VOICES = ("en-us", "en-gb", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
               "en-gb-x-gbcwmd")
"""eSpeak NG accents the demo speakers draw from."""

DEMO_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f4", "adam", "Alex", "benjamin", "david", "ed",
    "edward", "john", "linda", "max", "Mike", "robert", "steph", "travis", "zac", "norbert", "quincy", "Lee",
    "aunty", "grandpa", "rob", "michel", "klatt", "Gene", "Reed", "belinda", "Denis", "Hugo", "Storm", "anika",
    "antonio", "pablo", "Mario", "Michael", "Nguyen", "pedro", "marcelo", "mike2", "iven2", "iven3", "announcer",
)  # fmt: skip
"""eSpeak NG voice variants used as demo speakers: those whose audio is the same in every process (breathy
variants such as f2, f3, f5, Alicia, sandro and victor draw noise that differs between processes, which would
defeat the feature cache). They are not easy to transcribe: Whisper tiny.en makes errors on most of them even
in clean en-us speech (40 of the 50 on "Put the red book on the table."), more so with the demo's accents,
rates, pitches and 6-30 dB white noise (:data:`DEMO_SPEECH`)."""

DEMO_SPEECH = {"words_per_minute": (120, 240), "pitch": (20, 80), "snr_db": (6.0, 30.0), "lead_s": (0.0, 0.3)}
"""Ranges (uniform) of the demo's speaking rate, pitch, white-noise SNR and leading silence."""

_NOUNS = ("book", "cup", "key", "phone", "ball", "letter", "coat", "lamp", "box", "bag", "map", "plate")
_PLACES = ("table", "shelf", "floor", "chair", "desk", "bed", "window", "kitchen")
_ADJECTIVES = ("red", "old", "small", "new", "blue", "heavy", "green", "broken")
_VERBS = ("open", "find", "clean", "move", "carry", "check", "paint", "close")
_PAST = {"open": "opened", "find": "found", "clean": "cleaned", "move": "moved", "carry": "carried",
         "check": "checked", "paint": "painted", "close": "closed"}

_SENTENCE_TEMPLATES = {
    "statement": ("The {adj} {noun} is on the {place}.", "I {past} the {noun} yesterday.",
                  "We left the {noun} near the {place}.", "She likes the {adj} {noun}.",
                  "You {past} the {adj} {noun}."),
    "question": ("Is the {adj} {noun} on the {place}?", "Did you {verb} the {noun}?",
                 "Where is the {adj} {noun}?", "Can you see the {noun} on the {place}?",
                 "You {past} the {adj} {noun}?"),
    "command": ("Put the {adj} {noun} on the {place}.", "{Verb} the {adj} {noun}.",
                "Please {verb} the {noun} now.", "Bring me the {noun} from the {place}.",
                "Go and {verb} the {adj} {noun}."),
}

_TIMES = ("six", "seven thirty", "eight in the morning", "noon", "nine fifteen", "ten at night", "five a m")
_DAYS = ("today", "tomorrow", "on Monday", "this weekend", "on Friday")
_CITIES = ("London", "Paris", "Boston", "Berlin", "Tokyo", "Chicago", "Madrid")
_GENRES = ("jazz", "rock", "classical", "pop", "country", "reggae")
_ARTISTS = ("the Beatles", "Adele", "Mozart", "Queen", "Taylor Swift", "Bob Marley")
_ROOMS = ("kitchen", "bedroom", "living room", "hallway", "office", "bathroom")
_CONTACTS = ("John", "Sarah", "my boss", "Emma", "David", "my mother")
_TOPICS = ("the meeting", "dinner", "the report", "the trip", "the party")

_INTENT_TEMPLATES = {
    "set_alarm": ("Set an alarm for {time}.", "Wake me up at {time} {day}.", "Please set my alarm to {time}.",
                  "I need an alarm at {time}."),
    "play_music": ("Play some {genre} music.", "Play {artist} please.", "I want to listen to {genre}.",
                   "Put on a song by {artist}."),
    "weather_query": ("What is the weather in {city} {day}?", "Will it rain {day}?", "How hot is it in {city}?",
                      "Do I need an umbrella {day}?"),
    "lights_on": ("Turn on the lights in the {room}.", "Switch the {room} lights on.",
                  "Make the {room} brighter.", "Lights on in the {room} please."),
    "lights_off": ("Turn off the lights in the {room}.", "Switch the {room} lights off.",
                   "Make the {room} dark.", "Lights off in the {room} please."),
    "send_email": ("Send an email to {contact}.", "Write an email to {contact} about {topic}.",
                   "Email {contact} that I am late.", "Tell {contact} about {topic} by email."),
}

DEMO_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The command vocabulary of ``demo_word`` (the ten core words of Speech Commands)."""

_PHONE_WORDS = (
    "she", "ship", "shop", "fish", "wash", "show", "shoe", "push", "sure", "nation", "sugar", "shell", "brush",
    "short", "shine", "fresh", "machine", "cash", "dish", "shirt", "wish", "crash", "ocean", "station",
    "sea", "sip", "sock", "chip", "chop", "cheese", "zoo", "seat", "sun", "church", "chair", "rose", "jump",
    "sand", "lamp", "milk", "tree", "bird", "cat", "dog", "road", "river", "garden", "window", "yellow", "kite",
    "stone", "cloud", "juice", "horse", "glass", "bus", "jazz", "beach", "watch", "house", "mouse", "lemon",
)  # fmt: skip


def _fill(template: str, rng: np.random.Generator) -> str:
    verb = str(rng.choice(_VERBS))
    slots = {"noun": _NOUNS, "place": _PLACES, "adj": _ADJECTIVES, "time": _TIMES, "day": _DAYS, "city": _CITIES,
             "genre": _GENRES, "artist": _ARTISTS, "room": _ROOMS, "contact": _CONTACTS, "topic": _TOPICS}
    values = {name: str(rng.choice(options)) for name, options in slots.items()}
    values |= {"verb": verb, "Verb": verb.capitalize(), "past": _PAST[verb]}
    return template.format(**values)


def demo_speakers(seed: int = 0) -> dict[str, list[str]]:
    """Speakers of the demo tasks, disjoint between splits."""
    rng = np.random.default_rng([seed, 7])
    variants = [DEMO_VARIANTS[i] for i in rng.permutation(len(DEMO_VARIANTS))]
    speakers = [f"{DEMO_VOICES[rng.integers(len(DEMO_VOICES))]}+{variant}" for variant in variants]
    n_train, n_validation = len(speakers) // 2, len(speakers) // 4
    return {"train": speakers[:n_train], "validation": speakers[n_train:n_train + n_validation],
            "test": speakers[n_train + n_validation:]}


def _speak(text: str, speaker: str, rng: np.random.Generator):
    """Synthesise ``text`` with random rate and pitch, a lead-in silence and white noise."""
    low, high = DEMO_SPEECH["words_per_minute"]
    rate = int(rng.integers(low, high + 1))
    pitch = int(rng.integers(DEMO_SPEECH["pitch"][0], DEMO_SPEECH["pitch"][1] + 1))
    utterance = synthesize(text, voice=speaker, words_per_minute=rate, pitch=pitch, sample_rate=SAMPLE_RATE)
    lead = np.zeros(int(rng.uniform(*DEMO_SPEECH["lead_s"]) * SAMPLE_RATE), dtype=np.float32)
    speech = np.concatenate([lead, utterance.audio, np.zeros(SAMPLE_RATE // 10, dtype=np.float32)])
    power = float(np.mean(utterance.audio.astype(np.float64) ** 2))
    noise_std = np.sqrt(power / 10 ** (rng.uniform(*DEMO_SPEECH["snr_db"]) / 10))
    audio = speech + rng.normal(0.0, noise_std, len(speech))
    return np.clip(audio, -1.0, 1.0).astype(np.float32), utterance


def _split_sizes(per_class: int) -> dict[str, int]:
    if per_class < 4:
        raise ValueError(f"per_class={per_class!r} is too small: use at least 4 (split 1/2 train, 1/4 validation, "
                         "1/4 test)")
    n_validation = n_test = per_class // 4
    return {"train": per_class - n_validation - n_test, "validation": n_validation, "test": n_test}


_Render = Callable[[int, str, np.random.Generator], tuple[str, np.ndarray]]
"""How a demo task makes example ``index`` of a split: ``render(index, speaker, rng)`` -> (label, audio of shape
(n_samples,))."""


def _make_examples(name: str, sizes: dict[str, int], seed: int, render: _Render) -> tuple[Example, ...]:
    """Examples of a demo task: ``sizes[split]`` in each split, each by a random speaker of the split."""
    rng = np.random.default_rng([seed, int.from_bytes(name.encode()[:8], "little")])
    speakers = demo_speakers(seed)
    examples = []
    for split, size in sizes.items():
        pool = speakers[split]
        for index in range(size):
            speaker = pool[int(rng.integers(len(pool)))]
            label, audio = render(index, speaker, rng)
            examples.append(Example(f"{name}-{split}-{index:04d}", split, label, audio, speaker=speaker))
    return tuple(examples)


def _balanced_examples(name: str, classes: tuple[str, ...], per_class: int, seed: int,
                       speak: Callable[[str, str, np.random.Generator], np.ndarray]) -> tuple[Example, ...]:
    """Examples of a demo classification task: ``per_class`` of each class, the classes in turn;
    ``speak(label, speaker, rng)`` -> audio (n_samples,)."""
    def render(index: int, speaker: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        label = classes[index % len(classes)]
        return label, speak(label, speaker, rng)

    sizes = {split: size * len(classes) for split, size in _split_sizes(per_class).items()}
    return _make_examples(name, sizes, seed, render)


def _word_speech(label: str, speaker: str, rng: np.random.Generator) -> np.ndarray:
    return _speak(label, speaker, rng)[0]


def _template_speech(templates: dict[str, tuple[str, ...]]):
    def speak(label: str, speaker: str, rng: np.random.Generator) -> np.ndarray:
        return _speak(_fill(str(rng.choice(templates[label])), rng), speaker, rng)[0]
    return speak


def _phone_set_render(index: int, speaker: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """Three random words; the label is the set of ARPAbet phones of the synthesis's phone tier (what was spoken)."""
    words = [str(w) for w in rng.choice(_PHONE_WORDS, size=3, replace=False)]
    audio, utterance = _speak(" ".join(words).capitalize() + ".", speaker, rng)
    spoken = {phone.label for phone in utterance.phones}
    return " ".join(p for p in ARPABET_PHONES if p in spoken), audio


"""Names of the offline demo tasks (see :func:`demo_task`)."""

_DEMO_DEFAULT_SIZE = {"demo_word": 32, "demo_sentence_type": 40, "demo_intent": 32, "demo_phoneme": 120,
                      "demo_asr": 128}


def demo_task(name: str, per_class: int | None = None, seed: int = 0) -> DownstreamTask:
    """An offline downstream task synthesised with eSpeak NG (see the module documentation)."""
    check_option("name", name, DEMO_TASKS)
    per_class = per_class or _DEMO_DEFAULT_SIZE[name]
    origin = f"bt_utils demo: seed={seed}, per_class={per_class}, speech={DEMO_SPEECH}"
    if name == "demo_word":
        examples = _balanced_examples(name, DEMO_WORDS, per_class, seed, _word_speech)
        return DownstreamTask(name, "classification", examples, DEMO_WORDS, "spoken command word -> word",
                              "Speech Commands word identity", origin)
    if name == "demo_sentence_type":
        classes = tuple(_SENTENCE_TEMPLATES)
        examples = _balanced_examples(name, classes, per_class, seed, _template_speech(_SENTENCE_TEMPLATES))
        return DownstreamTask(name, "classification", examples, classes,
                              "sentence -> statement / question / command (some questions differ by intonation only)",
                              "TIMIT sentence type", origin)
    if name == "demo_intent":
        classes = tuple(_INTENT_TEMPLATES)
        examples = _balanced_examples(name, classes, per_class, seed, _template_speech(_INTENT_TEMPLATES))
        return DownstreamTask(name, "classification", examples, classes, "request to an assistant -> intent",
                              "SLURP intent / action", origin)
    if name == "demo_phoneme":
        examples = _make_examples(name, _split_sizes(per_class), seed, _phone_set_render)
        return DownstreamTask(name, "multilabel", examples, ARPABET_PHONES,
                              "three words -> which of the 39 ARPAbet phones occur (from the synthesis phone tier)",
                              "TIMIT phoneme prediction", origin)
    n_held_out = per_class // 8  # a CTC head needs more training speech than a probe
    if n_held_out < 1:
        raise ValueError(f"per_class={per_class!r} is too small for demo_asr: use at least 8 utterances (split 3/4 "
                         "train, 1/8 validation, 1/8 test)")
    sizes = {"train": per_class - 2 * n_held_out, "validation": n_held_out, "test": n_held_out}
    examples = _make_examples(name, sizes, seed, _asr_render)
    return DownstreamTask(name, "asr", examples, description="sentence -> transcript (1 - WER)", paper_task="ASR",
                          origin=origin)


def _asr_render(index: int, speaker: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A random sentence of the sentence-type and intent templates; the label is its text."""
    templates = [t for group in (_SENTENCE_TEMPLATES, _INTENT_TEMPLATES) for ts in group.values() for t in ts]
    text = _fill(templates[int(rng.integers(len(templates)))], rng)
    return text, _speak(text, speaker, rng)[0]
