"""bt_utils.demo.speech: eSpeak NG synthesis with word and phone timings (offline, fast)."""

import threading

import numpy as np
import pytest

from bt_utils.demo import phonetics, speech
from bt_utils.demo.speech import (
    ARPABET_PHONES,
    ESPEAK_SAMPLE_RATE,
    ESPEAK_TO_ARPABET,
    Interval,
    Utterance,
    available_variants,
    available_voices,
    espeak_to_arpabet,
    synthesize,
)

TWO_SENTENCES = "She sells sea shells by the shore. The cat sat on the mat."


def phones_of(utterance: Utterance, word: Interval) -> list[str]:
    return [p.label for p in utterance.phones if word.start <= p.start and p.end <= word.end]


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


@pytest.fixture(scope="module")
def two_sentences() -> Utterance:
    return synthesize(TWO_SENTENCES)


# ----- the utterance ----------------------------------------------------------------------


def test_audio_is_mono_float32_in_range(two_sentences):
    u = two_sentences
    assert u.sample_rate == 16000
    assert u.audio.dtype == np.float32 and u.audio.ndim == 1
    assert np.all(np.abs(u.audio) <= 1.0)
    assert u.duration == pytest.approx(len(u.audio) / 16000)
    assert 2.0 < u.duration < 8.0
    assert rms(u.audio) > 0.01


def test_one_word_interval_per_written_word(two_sentences):
    expected = "she sells sea shells by the shore the cat sat on the mat".split()
    assert [w.label for w in two_sentences.words] == expected


def test_word_intervals_are_ordered_non_overlapping_and_inside_the_audio(two_sentences):
    words = two_sentences.words
    assert all(0.0 <= w.start < w.end <= two_sentences.duration for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))


def test_phones_are_arpabet_ordered_and_inside_their_words(two_sentences):
    u = two_sentences
    assert u.phones and all(p.label in ARPABET_PHONES for p in u.phones)
    assert all(p.start < p.end for p in u.phones)
    assert all(a.end <= b.start for a, b in zip(u.phones, u.phones[1:]))
    assert sum(len(phones_of(u, w)) for w in u.words) == len(u.phones)
    for word in u.words:  # a word spans exactly its phones, without the pause after it
        inside = [p for p in u.phones if word.start <= p.start and p.end <= word.end]
        assert inside[0].start == word.start and inside[-1].end == word.end
        assert all(a.end == pytest.approx(b.start) for a, b in zip(inside, inside[1:]))


def test_speech_inside_words_is_much_louder_than_the_pause_between_sentences(two_sentences):
    u = two_sentences
    shore, the = u.words[6], u.words[7]
    assert (shore.label, the.label) == ("shore", "the")
    assert the.start - shore.end > 0.15  # the sentence pause is not part of "shore"
    sr = u.sample_rate
    pause = u.audio[int(shore.end * sr) + 1 : int(the.start * sr)]
    speech_rms = np.mean([rms(u.audio[int(w.start * sr) : int(w.end * sr)]) for w in u.words])
    assert rms(pause) < 0.05 * speech_rms


def test_known_pronunciations():
    u = synthesize("She saw a black cat.")
    assert [phones_of(u, w) for w in u.words] == [
        ["SH", "IY"], ["S", "AO"], ["AH"], ["B", "L", "AE", "K"], ["K", "AE", "T"],
    ]  # fmt: skip


def test_multi_phone_mnemonics_and_zero_length_liquids():
    u = synthesize("The car fell.")  # 'A@' -> AA R; eSpeak gives the final l no time of its own
    assert [phones_of(u, w) for w in u.words] == [["DH", "AH"], ["K", "AA", "R"], ["F", "EH", "L"]]
    assert all(p.end - p.start > 0.01 for p in u.phones)


def test_joined_words_are_split():
    # eSpeak reads "in the" and "of a" as single words (one word event each)
    u = synthesize("Look in the box of a friend.")
    assert [w.label for w in u.words] == ["look", "in", "the", "box", "of", "a", "friend"]
    by_word = {w.label: phones_of(u, w) for w in u.words}
    assert by_word["in"] == ["IH", "N"] and by_word["the"] == ["DH", "AH"]
    assert by_word["of"] == ["AH", "V"] and by_word["a"] == ["AH"]


def test_numbers_apostrophes_hyphens_and_punctuation():
    u = synthesize("Don't stop: it's well-known that 42 (or 1,000) cats' toys cost 3.5!")
    labels = [w.label for w in u.words]
    assert labels == ["don't", "stop", "it's", "well", "known", "that", "42", "or", "1000", "cats", "toys", "cost", "3.5"]
    by_word = dict(zip(labels, (phones_of(u, w) for w in u.words)))
    assert by_word["42"] == ["F", "AO", "R", "T", "IY", "T", "UW"]  # two eSpeak words, one written word
    assert by_word["don't"] == ["D", "OW", "N", "T"]
    assert all(by_word[label] for label in labels)


def test_curly_quotes_and_dashes_are_normalised():
    u = synthesize("\u201cIt\u2019s late\u201d \u2014 she said\u2026")
    assert [w.label for w in u.words] == ["it's", "late", "she", "said"]


# ----- rate, pitch, sample rate, determinism ----------------------------------------------


def test_faster_rate_gives_shorter_speech():
    slow = synthesize(TWO_SENTENCES, words_per_minute=120)
    fast = synthesize(TWO_SENTENCES, words_per_minute=300)
    assert fast.duration < 0.7 * slow.duration
    assert fast.words[-1].end < slow.words[-1].end


def test_pitch_changes_the_audio_but_not_the_words():
    low = synthesize("Hello there.", pitch=20)
    high = synthesize("Hello there.", pitch=80)
    assert [w.label for w in low.words] == [w.label for w in high.words]
    n = min(len(low.audio), len(high.audio))
    assert not np.allclose(low.audio[:n], high.audio[:n])


def test_same_inputs_give_identical_audio():
    first = synthesize(TWO_SENTENCES, voice="en-us+klatt")
    synthesize("Something else, at another rate and pitch.", voice="en-gb+f2", words_per_minute=300, pitch=90)
    again = synthesize(TWO_SENTENCES, voice="en-us+klatt")
    assert np.array_equal(first.audio, again.audio)
    assert first.words == again.words and first.phones == again.phones


def test_concurrent_calls_are_serialised_and_deterministic():
    reference = synthesize("The lamp is on the table.")
    results = []

    def work():
        results.append(synthesize("The lamp is on the table."))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(np.array_equal(r.audio, reference.audio) for r in results)


def test_resampling_keeps_duration_and_timings():
    native = synthesize(TWO_SENTENCES, sample_rate=ESPEAK_SAMPLE_RATE)
    for rate in (16000, 44100):
        u = synthesize(TWO_SENTENCES, sample_rate=rate)
        assert u.sample_rate == rate
        assert abs(len(u.audio) - len(native.audio) * rate / ESPEAK_SAMPLE_RATE) <= 1
        assert u.duration == pytest.approx(native.duration, abs=1.0 / rate)
        assert [(w.start, w.label) for w in u.words] == [(w.start, w.label) for w in native.words]
        assert np.allclose([w.end for w in u.words], [w.end for w in native.words], atol=1.0 / rate)
        # the same speech: loudness preserved
        assert rms(u.audio) == pytest.approx(rms(native.audio), rel=0.05)


# ----- voices -----------------------------------------------------------------------------


def test_available_voices_and_variants():
    voices = available_voices()
    assert {"en-us", "en-gb", "en-gb-scotland"} <= set(voices)
    variants = available_variants()
    assert {"m3", "f2", "klatt"} <= set(variants)
    assert "en-us+m3" in available_voices(include_variants=True)


def test_every_english_voice_gives_arpabet_phones():
    for voice in available_voices():
        u = synthesize("Three girls were thinking about the weather near the river.", voice=voice)
        assert len(u.words) == 10, voice
        assert all(p.label in ARPABET_PHONES for p in u.phones), voice


def test_variants_change_the_speaker():
    plain = synthesize("Good morning.", voice="en-us")
    variant = synthesize("Good morning.", voice="EN-US+F2")
    assert [w.label for w in variant.words] == ["good", "morning"]
    n = min(len(plain.audio), len(variant.audio))
    assert not np.allclose(plain.audio[:n], variant.audio[:n])


# ----- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   "}, "empty"),
        ({"text": "?!. ,"}, "empty"),
        ({"text": "caf\u00e9 au lait"}, "'\u00e9'"),
        ({"text": "cost $5"}, r"'\$'"),
        ({"voice": "xx-yy"}, "'xx-yy'.*en-us"),
        ({"voice": "en-us+nobody"}, "'nobody'.*m3"),
        ({"words_per_minute": 20}, "words_per_minute=20"),
        ({"words_per_minute": 1000}, "words_per_minute=1000"),
        ({"pitch": -1}, "pitch=-1"),
        ({"pitch": 101}, "pitch=101"),
        ({"sample_rate": 0}, "sample_rate=0"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(kwargs, message):
    arguments = {"text": "Hello world."} | kwargs
    with pytest.raises(ValueError, match=message):
        synthesize(**arguments)


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="160.5"):
        synthesize("Hello.", words_per_minute=160.5)
    with pytest.raises(TypeError):
        synthesize(b"Hello.")


def test_unknown_mnemonic_raises_naming_it_and_the_word(monkeypatch):
    monkeypatch.delitem(phonetics._ESPEAK_TO_ARPABET, "S")
    with pytest.raises(ValueError, match=r"'S'.*'she'"):
        synthesize("Hello, she said.")
    with pytest.raises(ValueError, match=r"'zz'.*'word'"):
        espeak_to_arpabet("zz", "word")


# ----- tables and helpers -----------------------------------------------------------------


def test_mapping_table_targets_the_39_phones():
    assert len(ARPABET_PHONES) == 39 == len(set(ARPABET_PHONES))
    used = {phone for phones in ESPEAK_TO_ARPABET.values() for phone in phones}
    assert used <= set(ARPABET_PHONES)
    assert used == set(ARPABET_PHONES)  # every ARPAbet phone is reachable
    assert espeak_to_arpabet("'aI") == ("AY",) and espeak_to_arpabet(",o@") == ("AO", "R")
    assert espeak_to_arpabet("tS") == ("CH",) and espeak_to_arpabet("dZ") == ("JH",)


def test_splitting_joined_words_by_alignment():
    align = speech._align_to_words
    assert align(["IH", "N", "DH", "AH"], [["IH", "N"], ["DH", "AH"]]) == [0, 0, 1, 1]
    assert align(["IH", "N", "DH", "IY"], [["IH", "N"], ["DH", "AH"]]) == [0, 0, 1, 1]
    # every word keeps at least one phone, even when the references do not match
    assert sorted(set(align(["AH", "AH", "AH"], [["K"], [], ["T"]]))) == [0, 1, 2]
    with pytest.raises(ValueError):
        align(["AH"], [["AH"], ["AH"]])


def test_interval_duration():
    assert Interval(0.5, 1.0, "x").duration == pytest.approx(0.5)
