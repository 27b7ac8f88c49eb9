"""Low-level speech features per TR: spectrum, phones, n-phones, articulation, rates, stacking."""

import numpy as np
import pytest

from bt_utils.data.dataset import SAMPLE_RATE, Dataset
from bt_utils.features.lanczos import lanczos_resample
from bt_utils.features.low_level import (
    ARTICULATION, ARTICULATORY_FEATURES, DEFAULT_LOW_LEVEL_FEATURES, LOW_LEVEL_FEATURES, articulation,
    build_vocabularies, clean_transcript, diphones, low_level_features, mel_band_edges, normalize_phone,
    phone_ngram_vocabulary, phoneme_rate, phonemes, power_spectrum, stack_low_level_features, triphones, word_rate,
)
from bt_utils.features.spectral import POWER_FLOOR_DB
from bt_utils.data.transcripts import ARPABET_PHONES
from bt_utils.data.timing import tr_midpoints, trimmed_length
from bt_utils.data.transcripts import Interval, Transcript, write_textgrid
from conftest import write_small_dataset

TR = 2.0
TRS = tr_midpoints(12, TR, sound_onset=0.0)


def _word(label, phones, centre, width=0.01):
    """A word of consecutive phones of equal ``width`` whose span is centred on ``centre``."""
    start = centre - width * len(phones) / 2
    intervals = [Interval(start + i * width, start + (i + 1) * width, p) for i, p in enumerate(phones)]
    return Interval(intervals[0].start, intervals[-1].end, label), intervals


def _transcript(*words):
    return Transcript([w for w, _ in words], [p for _, phones in words for p in phones], duration=30.0)


# Every n-phone of these words is centred within 0.03 s of a TR midpoint, where the Lanczos
# weight is 1 to within 0.1 % and leaks less than 0.015 to the next TR: counts come out nearly exact.
KNOWN = _transcript(
    _word("see", ["S", "IY"], TRS[2]),
    _word("sat", ["S", "AE", "T"], TRS[5]),
    _word("am", ["AE", "M"], TRS[8] - 0.02),
    _word("ma", ["M", "AA"], TRS[8] + 0.02),
)


def _counts(columns, entries):
    """Expected (n_trs, len(columns)) counts from {(tr, column): count}."""
    expected = np.zeros((len(TRS), len(columns)))
    for (tr, column), count in entries.items():
        expected[tr, columns.index(column)] = count
    return expected


# ----- power spectrum -------------------------------------------------------------------------


@pytest.mark.parametrize("frequency", [180.0, 1000.0, 3100.0, 6500.0])
def test_a_tone_peaks_in_the_band_around_its_frequency(frequency):
    t = np.arange(int(30 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = 0.5 * np.sin(2 * np.pi * frequency * t)
    space = power_spectrum(audio, TRS)
    edges = mel_band_edges()
    peak = int(np.argmax(space.values[6]))
    assert space.values.shape == (len(TRS), 40) and len(space.names) == 40
    assert edges[peak] < frequency < edges[peak + 2]
    assert peak == int(np.argmin(np.abs(edges[1:-1] - frequency)))  # the band centred nearest the tone
    assert space.names[peak] == f"{edges[peak + 1]:.0f}Hz"


def test_power_is_calibrated_in_db_and_silence_sits_at_the_floor():
    centre = mel_band_edges()[21]  # centre of band 20
    t = np.arange(int(30 * SAMPLE_RATE)) / SAMPLE_RATE
    values = power_spectrum(0.5 * np.sin(2 * np.pi * centre * t), TRS).values
    assert values[6, 20] == pytest.approx(10 * np.log10(0.5 ** 2 / 2), abs=1.0)  # the sine's mean square
    silent = power_spectrum(np.zeros(SAMPLE_RATE, dtype=np.float32), TRS).values
    np.testing.assert_allclose(silent, POWER_FLOOR_DB)


# ----- phones and n-phones --------------------------------------------------------------------


def test_known_phone_sequence_gives_phoneme_counts_per_tr():
    space = phonemes(KNOWN, TRS)
    expected = _counts(list(ARPABET_PHONES), {
        (2, "S"): 1, (2, "IY"): 1, (5, "S"): 1, (5, "AE"): 1, (5, "T"): 1, (8, "AE"): 1, (8, "M"): 2, (8, "AA"): 1,
    })
    assert space.names == ARPABET_PHONES
    np.testing.assert_allclose(space.values, expected, atol=0.03)
    np.testing.assert_allclose(phoneme_rate(KNOWN, TRS).values[:, 0], expected.sum(axis=1), atol=0.05)


def test_diphones_and_triphones_stay_within_words():
    vocabulary = phone_ngram_vocabulary([KNOWN], 2)
    assert vocabulary == ("AE_M", "AE_T", "M_AA", "S_AE", "S_IY")  # no M_M across "am ma", no IY_S across words
    assert phone_ngram_vocabulary([KNOWN], 3) == ("S_AE_T",)
    space = diphones(KNOWN, TRS, vocabulary)
    expected = _counts(list(vocabulary), {
        (2, "S_IY"): 1, (5, "S_AE"): 1, (5, "AE_T"): 1, (8, "AE_M"): 1, (8, "M_AA"): 1,
    })
    assert space.names == vocabulary
    np.testing.assert_allclose(space.values, expected, atol=0.03)
    np.testing.assert_allclose(triphones(KNOWN, TRS, ("S_AE_T",)).values[:, 0], np.eye(len(TRS))[5], atol=1e-9)


def test_vocabulary_fixes_the_columns():
    space = diphones(KNOWN, TRS, ("S_IY", "ZH_ZH"))  # missing pairs are left out, unseen ones stay 0
    assert space.names == ("S_IY", "ZH_ZH")
    np.testing.assert_allclose(space.values[:, 0], np.eye(len(TRS))[2], atol=0.03)
    assert not space.values[:, 1].any()
    with pytest.raises(ValueError, match="'S_AE_T' in the diphones vocabulary is not 2 ARPAbet phones"):
        diphones(KNOWN, TRS, ("S_AE_T",))
    with pytest.raises(ValueError, match="diphones vocabulary is empty"):
        diphones(KNOWN, TRS, ())


def test_phones_outside_words_count_as_phonemes_only():
    transcript = Transcript([], [Interval(TRS[3] - 0.05, TRS[3], "S"), Interval(TRS[3], TRS[3] + 0.05, "T")], 30.0)
    assert phonemes(transcript, TRS).values[3, ARPABET_PHONES.index("S")] == pytest.approx(1, abs=0.01)
    assert phone_ngram_vocabulary([transcript], 2) == ()


# ----- articulation ---------------------------------------------------------------------------


def test_articulation_table_is_complete_and_consistent():
    assert set(ARTICULATION) == set(ARPABET_PHONES)
    for phone, features in ARTICULATION.items():
        assert features <= set(ARTICULATORY_FEATURES), phone
        assert len(features & {"voiced", "voiceless"}) == 1, phone
        if "vowel" in features:
            assert len(features & {"high", "mid", "low"}) == 1, phone
            assert len(features & {"front", "central", "back"}) == 1, phone
        else:
            assert len(features & {"stop", "fricative", "affricate", "nasal", "liquid", "glide"}) == 1, phone
            assert features & set(ARTICULATORY_FEATURES[:8]), phone  # a place


@pytest.mark.parametrize("phone, features", [
    ("M", {"bilabial", "nasal", "voiced"}),
    ("S", {"alveolar", "fricative", "voiceless"}),
    ("OY", {"vowel", "mid", "back", "rounded", "diphthong", "voiced"}),
])
def test_articulation_of_single_phones(phone, features):
    transcript = Transcript([], [Interval(TRS[4] - 0.05, TRS[4] + 0.05, phone)], 30.0)
    space = articulation(transcript, TRS)
    assert space.names == ARTICULATORY_FEATURES
    assert {name for name, value in zip(space.names, space.values[4]) if value > 0.5} == features
    np.testing.assert_allclose(np.delete(space.values, 4, axis=0), 0, atol=0.01)


# ----- rates ----------------------------------------------------------------------------------


def test_impulses_at_a_tr_midpoint_count_exactly():
    words = [Interval(TRS[6] - 0.1, TRS[6] + 0.1, "word")] * 3
    rate = word_rate(Transcript(words, [], 30.0), TRS).values[:, 0]
    np.testing.assert_allclose(rate, 3 * np.eye(len(TRS))[6], atol=1e-12)


@pytest.mark.parametrize("per_tr", [2, 3, 5])
def test_a_steady_rate_gives_that_many_per_tr(per_tr):
    trs = tr_midpoints(60, TR, sound_onset=0.0)
    centres = np.arange(0.0, trs[-1] + 10, TR / per_tr) + 0.123
    phones = [Interval(c - 0.01, c + 0.01, "AH") for c in centres]
    rate = phoneme_rate(Transcript([], phones, trs[-1]), trs).values[:, 0]
    np.testing.assert_allclose(rate[5:-5], per_tr, rtol=0.01)


def test_blockwise_resampling_matches_the_lanczos_filter():
    rng = np.random.default_rng(0)
    trs = tr_midpoints(150, TR, sound_onset=0.0)  # more TRs than one block
    centres = np.sort(rng.uniform(-5, trs[-1] + 5, 900))
    phones = [Interval(c - 0.01, c + 0.01, "AH") for c in centres]
    expected = lanczos_resample(np.ones((len(centres), 1)), centres, trs)
    np.testing.assert_allclose(phoneme_rate(Transcript([], phones, 0.0), trs).values, expected, atol=1e-9)


# ----- phone labels ---------------------------------------------------------------------------


@pytest.mark.parametrize("label, phone", [
    ("AH0", "AH"), ("iy1", "IY"), (" Ng2 ", "NG"), ("ZH", "ZH"),
    ("sp", None), ("SIL", None), ("{SL}", None), ("{lg}", None), ("{BR", None), ("ns", None), ("br", None),
    ("lg", None), ("", None),
])
def test_phone_labels_are_normalised(label, phone):
    assert normalize_phone(label) == phone


def test_unknown_phone_labels_need_a_mapping():
    with pytest.raises(ValueError, match=r"'AX0' in story 'x'.*phone_map=\{'AX'"):
        normalize_phone("AX0", "story 'x'")
    assert normalize_phone("ax0", phone_map={"AX": "AH"}) == "AH"
    assert normalize_phone("OOV", phone_map={"oov": None}) is None
    with pytest.raises(ValueError, match="maps 'AX' to 'schwa'"):
        normalize_phone("AX", phone_map={"AX": "schwa"})


def test_clean_transcript_drops_silence_and_noise_from_both_tiers():
    raw = Transcript(
        words=[Interval(0.0, 0.3, "sp"), Interval(0.3, 0.8, "hello"), Interval(0.8, 1.0, "{LG}")],
        phones=[Interval(0.0, 0.3, "sil"), Interval(0.3, 0.5, "hh"), Interval(0.5, 0.8, "AH0"),
                Interval(0.8, 1.0, "{LG}")],
        duration=1.0,
    )
    cleaned = clean_transcript(raw)
    assert cleaned.words == [Interval(0.3, 0.8, "hello")]
    assert cleaned.phones == [Interval(0.3, 0.5, "HH"), Interval(0.5, 0.8, "AH")]
    with pytest.raises(ValueError, match="'sil' at 0.000 s .*clean_transcript"):
        phonemes(raw, TRS)


# ----- datasets -------------------------------------------------------------------------------


def test_every_space_of_demo_stories_has_the_story_length(demo):
    vocabularies = build_vocabularies(demo)
    assert len(vocabularies["diphones"]) > 50 and vocabularies == build_vocabularies(demo)
    for story in (demo.split().train[0], demo.split().test):
        features = low_level_features(demo, story, names=list(LOW_LEVEL_FEATURES), vocabularies=vocabularies)
        assert list(features) == list(LOW_LEVEL_FEATURES)
        for name, values in features.items():
            assert values.shape[0] == demo.n_trs[story] and np.isfinite(values).all(), name
        assert features["diphones"].shape[1] == len(vocabularies["diphones"])
        assert features["triphones"].shape[1] == len(vocabularies["triphones"])
        rates = features["phoneme_rate"][10:-5, 0]
        assert rates.mean() > 5 and np.allclose(features["phonemes"].sum(axis=1), features["phoneme_rate"][:, 0])


def test_stack_trims_zscores_and_labels_columns(demo):
    stories = list(demo.split().train[:2]) + [demo.split().test]
    stack = stack_low_level_features(demo, stories, progress=False)
    widths = {"power_spectrum": 40, "phonemes": 39, "articulation": 26, "word_rate": 1, "phoneme_rate": 1}
    assert list(stack.columns) == list(DEFAULT_LOW_LEVEL_FEATURES)
    for name, width in widths.items():
        assert stack.columns[name].stop - stack.columns[name].start == width
    assert stack.column_names[stack.columns["phonemes"]][0] == "phonemes:AA"
    assert len(stack.column_names) == stack.columns["phoneme_rate"].stop
    for story in stories:
        values = stack.features[story]
        assert values.shape == (trimmed_length(demo.n_trs[story]), len(stack.column_names))
        assert values.dtype == np.float32
        np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-5)
        assert set(np.round(values.std(axis=0), 4)) <= {0.0, 1.0}
    assert stack.concatenate(stories[:2]).shape[0] == sum(trimmed_length(demo.n_trs[s]) for s in stories[:2])


def test_bad_requests_name_the_problem(demo):
    story = demo.stories[0]
    with pytest.raises(ValueError, match="no low-level feature spaces requested; choose some of .*'phonemes'"):
        low_level_features(demo, story, names=[])
    with pytest.raises(ValueError, match="'spectrogram' is not valid; choose one of: 'power_spectrum'"):
        low_level_features(demo, story, names=["spectrogram"])
    with pytest.raises(ValueError, match="more than once"):
        low_level_features(demo, story, names=["phonemes", "phonemes"])
    with pytest.raises(ValueError, match="no 'diphones' entry"):
        low_level_features(demo, story, names="diphones", vocabularies={"triphones": ("S_AE_T",)})
    with pytest.raises(ValueError, match="no stories given"):
        stack_low_level_features(demo, [], progress=False)
    with pytest.raises(ValueError, match="increasing 1-D array of at least two"):
        word_rate(KNOWN, TRS[:1])


def test_audio_shorter_than_its_textgrid_is_refused(tmp_path):
    dataset = Dataset(write_small_dataset(tmp_path / "data", {"short": 20}))
    seconds = len(dataset.load_audio("short")) / 16000
    transcript = Transcript([Interval(0.2, 0.6, "hello")], [Interval(0.2, 0.4, "HH"), Interval(0.4, 0.6, "AH1")],
                            seconds + 4.0)  # written after the dataset was opened (and checked)
    write_textgrid(transcript, dataset.textgrid_path("short"))
    assert low_level_features(dataset, "short", names="phonemes")["phonemes"].shape == (20, 39)
    with pytest.raises(ValueError, match=rf"story 'short' lasts {seconds:.2f} s but its TextGrid {seconds + 4:.2f} s"):
        low_level_features(dataset, "short", names="power_spectrum")
    tolerant = low_level_features(dataset, "short", names="power_spectrum", duration_tolerance=4.5)
    assert tolerant["power_spectrum"].shape == (20, 40)
