"""Semantic preference: shipped pair lists, user lists with recordings, a planted encoder, whisper-tiny.en."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from bt_utils.models.encoder import EncoderOutput
from bt_utils.downstream.semantic_preference import (
    PAIR_KINDS,
    compare_variants,
    load_pairs,
    pair_similarity,
    preference_table,
    pairs_from_file,
    plot_preference,
    recorded_words,
    semantic_preference,
    spoken_words,
    unrelated_pairs,
)
from bt_utils.demo.speech import synthesize
from bt_utils.validation import DataError

SEMANTIC = pd.DataFrame({"word_a": ["big", "begin"], "word_b": ["large", "start"]})
PHONETIC = pd.DataFrame({"word_a": ["cat", "ship"], "word_b": ["cap", "sheep"]})
VOICES = ("en-us", "en-gb")
SOUND_WEIGHT = np.array([1.0, 0.75, 0.5, 0.25, 0.0])  # per hidden state (layer 0..4)
MEANING_WEIGHT = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
SPEAKER_WEIGHT = {"en-us": 0.5, "en-gb": -0.5}  # opposite speaker offsets cancel in the mean over voices


def _digest(audio) -> str:
    return hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def _planted_vectors() -> dict[str, tuple[int, int]]:
    """Basis indices ``(sound, meaning)`` per word: synonyms share meaning, minimal pairs share sound."""
    indices = iter(range(1, 100))  # index 0 is the speaker direction
    vectors = {}
    for a, b in zip(SEMANTIC.word_a, SEMANTIC.word_b):
        meaning = next(indices)
        vectors |= {a: (next(indices), meaning), b: (next(indices), meaning)}
    for a, b in zip(PHONETIC.word_a, PHONETIC.word_b):
        sound = next(indices)
        vectors |= {a: (sound, next(indices)), b: (sound, next(indices))}
    return vectors


class PlantedEncoder(torch.nn.Module):
    """A stand-in with the SpeechEncoder interface whose hidden state ``k`` of a word (and voice) is
    ``SOUND_WEIGHT[k] * sound + MEANING_WEIGHT[k] * meaning + speaker``, on every valid frame.

    It recognises the synthesised audio of the planted words; its last frames are masked-out junk.
    """

    n_layers, hidden_size, n_valid, n_junk = 4, 16, 5, 3

    def __init__(self, name: str = "planted", sound_weight=SOUND_WEIGHT, meaning_weight=MEANING_WEIGHT):
        super().__init__()
        self.name, self.calls, self.states = name, 0, {}
        audio = spoken_words(_planted_vectors(), VOICES)
        basis = np.eye(self.hidden_size)
        for word, (sound, meaning) in _planted_vectors().items():
            for voice in VOICES:
                (clip,) = [a for label, a in audio[word].items() if label.startswith(voice + "/")]
                states = np.outer(sound_weight, basis[sound]) + np.outer(meaning_weight, basis[meaning])
                self.states[_digest(clip)] = states + SPEAKER_WEIGHT[voice] * basis[0]

    def fingerprint(self) -> str:
        return self.name

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        self.calls += 1
        states = torch.tensor(self.states[_digest(audio[0, : int(lengths[0])].numpy())], dtype=torch.float32)
        junk = torch.full((1, self.n_junk, self.hidden_size), 1e3)
        hidden = tuple(torch.cat([s.expand(1, self.n_valid, -1), junk], dim=1) for s in states)
        mask = torch.arange(self.n_valid + self.n_junk)[None] < self.n_valid
        return EncoderOutput(hidden_states=hidden, frame_mask=mask)


def _by_hand(sound_weight=SOUND_WEIGHT, meaning_weight=MEANING_WEIGHT) -> pd.DataFrame:
    """The expected table: orthogonal unit vectors make every cosine a ratio of squared weights."""
    energy = sound_weight**2 + meaning_weight**2
    semantic, phonetic = meaning_weight**2 / energy, sound_weight**2 / energy
    preference = semantic - phonetic  # every pair of a kind alike: the bootstrap interval has no width
    return pd.DataFrame({"layer": np.arange(len(energy)), "semantic": semantic, "phonetic": phonetic,
                         "unrelated": 0.0, "preference": preference, "preference_low": preference,
                         "preference_high": preference})


# ----- the planted encoder ---------------------------------------------------------------------


def test_preference_equals_the_value_planted_by_hand(tmp_path):
    encoder = PlantedEncoder()
    table = semantic_preference(encoder, {"semantic": SEMANTIC, "phonetic": PHONETIC}, voices=VOICES,
                                cache_dir=tmp_path, progress=False)
    expected = _by_hand()
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=0, atol=1e-12)
    assert (table.preference[:2] < 0).all() and (table.preference[-2:] > 0).all()
    assert expected.preference.tolist() == pytest.approx([-1.0, -0.8, 0.0, 0.8, 1.0])
    assert encoder.calls == 8 * len(VOICES)


def test_embeddings_are_cached_per_fingerprint(tmp_path):
    pairs = {"semantic": SEMANTIC, "phonetic": PHONETIC}
    first = semantic_preference(PlantedEncoder(), pairs, voices=VOICES, cache_dir=tmp_path, progress=False)
    again = PlantedEncoder()
    second = semantic_preference(again, pairs, voices=VOICES, cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(first, second)
    assert again.calls == 0
    other = PlantedEncoder(name="other weights")
    semantic_preference(other, pairs, voices=VOICES, cache_dir=tmp_path, progress=False)
    assert other.calls == 8 * len(VOICES)


def test_compare_variants_and_plot(tmp_path):
    flipped = PlantedEncoder("flipped", sound_weight=MEANING_WEIGHT, meaning_weight=SOUND_WEIGHT)
    table = compare_variants({"pretrained": PlantedEncoder(), "brain-tuned": flipped},
                             {"semantic": SEMANTIC, "phonetic": PHONETIC}, voices=VOICES, cache_dir=tmp_path,
                             progress=False)
    assert list(table.columns) == ["variant", "layer", "semantic", "phonetic", "unrelated", "preference",
                                   "preference_low", "preference_high"]
    tuned = table[table.variant == "brain-tuned"].reset_index(drop=True)
    assert tuned.preference.to_numpy() == pytest.approx(-_by_hand().preference.to_numpy(), abs=1e-12)
    figure = plot_preference(table)
    assert len(figure.axes) == 2
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["pretrained", "brain-tuned"]


def test_preference_interval_matches_the_normal_approximation():
    """Per-pair similarities drawn at random: the percentile interval of the resampled preference has the
    half-width 1.96 * sqrt(var_semantic / P_semantic + var_phonetic / P_phonetic) of the central limit theorem."""
    rng = np.random.default_rng(1)

    def table(n_pairs, mean, spread):
        values = mean + spread * rng.standard_normal((n_pairs, 2))
        return pd.DataFrame({"pair": np.repeat([f"p{i}" for i in range(n_pairs)], 2), "layer": np.tile([0, 1], n_pairs),
                             "similarity": values.ravel()})

    similarities = {"semantic": table(300, 0.6, 0.1), "phonetic": table(200, 0.5, 0.2), "unrelated": table(50, 0, 0.1)}
    result = preference_table(similarities, n_bootstrap=4000)
    half_width = 1.96 * np.sqrt(sum(similarities[kind].groupby("layer").similarity.var() / n
                                    for kind, n in (("semantic", 300), ("phonetic", 200))))
    np.testing.assert_allclose((result.preference_high - result.preference_low) / 2, half_width, rtol=0.1)
    centre = (result.preference_high + result.preference_low) / 2
    assert np.abs(centre - result.preference).max() < 0.2 * half_width.min()
    again = preference_table(similarities, n_bootstrap=4000)
    pd.testing.assert_frame_equal(result, again)
    with pytest.raises(ValueError, match="confidence must lie in"):
        preference_table(similarities, confidence=95)


def test_pair_similarity_is_the_cosine_per_layer():
    embeddings = {"a": np.array([[1.0, 0.0], [1.0, 1.0]]), "b": np.array([[0.0, 2.0], [3.0, 3.0]])}
    table = pair_similarity(embeddings, pd.DataFrame({"word_a": ["a"], "word_b": ["b"]}))
    assert table.pair.tolist() == ["a/b", "a/b"]
    assert table.similarity.tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(KeyError, match="no embedding"):
        pair_similarity(embeddings, pd.DataFrame({"word_a": ["a"], "word_b": ["c"]}))


# ----- shipped lists -----------------------------------------------------------------------------


def _edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_shipped_lists_are_large_distinct_and_disjoint():
    lists = {kind: load_pairs(kind) for kind in PAIR_KINDS}
    pairs = {kind: [frozenset(p) for p in zip(t.word_a, t.word_b)] for kind, t in lists.items()}
    for kind, table in lists.items():
        assert list(table.columns) == ["word_a", "word_b"]
        assert len(table) >= 40, kind
        assert len(set(pairs[kind])) == len(table), f"duplicate {kind} pair"
    assert not set(pairs["semantic"]) & set(pairs["phonetic"])
    words = [w for t in lists.values() for w in (*t.word_a, *t.word_b)]
    assert len(words) == len(set(words)), "every word is in only one pair"


def test_shipped_lists_meet_the_phone_criteria():
    def phones(word):
        return [p.label for p in synthesize(word).phones]

    phonetic, semantic = load_pairs("phonetic"), load_pairs("semantic")
    for a, b in zip(phonetic.word_a, phonetic.word_b):
        assert _edit_distance(phones(a), phones(b)) == 1, (a, b)
    for a, b in zip(semantic.word_a, semantic.word_b):
        pa, pb = phones(a), phones(b)
        assert pa[0] != pb[0] and _edit_distance(pa, pb) >= max(len(pa), len(pb)) / 2, (a, b)


def test_unrelated_pairs_avoid_the_related_ones():
    related = [load_pairs(kind) for kind in PAIR_KINDS]
    table = unrelated_pairs(related, 200, seed=3)
    drawn = {frozenset(p) for p in zip(table.word_a, table.word_b)}
    taken = {frozenset(p) for t in related for p in zip(t.word_a, t.word_b)}
    assert len(drawn) == 200 and not drawn & taken and (table.word_a != table.word_b).all()
    pd.testing.assert_frame_equal(table, unrelated_pairs(related, 200, seed=3))
    with pytest.raises(ValueError, match="n_pairs"):
        unrelated_pairs([SEMANTIC], 5)


# ----- user lists --------------------------------------------------------------------------------


def _recorded_list(folder, prefix="Word", rate=8000, n_pairs=2):
    """A user CSV naming 0.5-s stereo recordings (noise) of each word, by paths relative to the CSV."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_pairs):
        row = {"word_a": f"{prefix}{i}a", "word_b": f"{prefix}{i}b"}
        for side in "ab":
            name = f"clip{i}{side}.wav"
            soundfile.write(folder / name, 0.1 * rng.standard_normal((rate // 2, 2)), rate)
            row[f"audio_{side}"] = name
        rows.append(row)
    path = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_user_list_with_recordings(tmp_path):
    path = _recorded_list(tmp_path)
    pairs = pairs_from_file(path)
    assert pairs.word_a.tolist() == ["word0a", "word1a"]
    audio = recorded_words([pairs])
    (clip,) = audio["word0a"].values()
    assert clip.dtype == np.float32 and clip.shape == (8000,)  # 0.5 s, mono, 16 kHz
    other = _recorded_list(tmp_path / "other", prefix="other", rate=16000)
    table = semantic_preference("tiny-wav2vec2", {"semantic": path, "phonetic": other}, device="cpu",
                                n_unrelated=3, cache_dir=tmp_path / "cache", progress=False)
    assert table.layer.tolist() == [0, 1, 2] and np.isfinite(table.drop(columns="layer").to_numpy()).all()


def test_missing_recording_is_reported(tmp_path):
    path = _recorded_list(tmp_path)
    (tmp_path / "clip1b.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3 audio_b: .*clip1b\.wav"):
        pairs_from_file(path)


@pytest.mark.parametrize("text, message", [
    ("word_a,other\nbig,large\n", "lacks column"),
    ("word_a,word_b,audio_a\nbig,large,x.wav\n", "lacks column"),
    ("word_a,word_b\nbig,ice cream\n", "single word"),
    ("word_a,word_b\nbig,Big\n", "with itself"),
    ("word_a,word_b\nbig,large\nlarge,big\n", "line 3 repeats"),
])
def test_bad_user_lists_are_reported(tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        pairs_from_file(path)


def test_recorded_and_synthesised_lists_do_not_mix(tmp_path):
    with pytest.raises(ValueError, match="both pair lists have recorded audio"):
        semantic_preference(PlantedEncoder(), {"semantic": _recorded_list(tmp_path), "phonetic": PHONETIC},
                            cache=False, progress=False)


# ----- a real model -----------------------------------------------------------------------------


def test_whisper_tiny_on_a_few_pairs():
    pairs = {kind: load_pairs(kind).head(2) for kind in PAIR_KINDS}
    table = semantic_preference("whisper-tiny.en", pairs, voices=("en-us",), native_length=True, device="cpu",
                                progress=False)  # native length: ~30x less compute than 30-s inputs
    assert table.layer.tolist() == list(range(5))  # input of layer 1 and the 4 layers
    values = table[["semantic", "phonetic", "unrelated"]].to_numpy()
    assert np.isfinite(values).all() and (np.abs(values) <= 1 + 1e-6).all()
    assert table.preference.to_numpy() == pytest.approx((table.semantic - table.phonetic).to_numpy())
