"""Semantic preference: do a model's layers group spoken words by meaning or by sound?

Words are synthesised with several eSpeak NG voices (:data:`DEFAULT_VOICES`) and averaged over them, or read from
recordings (:func:`pairs_from_file`). Pooled embeddings are cached per encoder fingerprint, word and voice. The
pair lists of ``bt_utils/data/word_pairs/`` (:func:`load_pairs`) were written for this package; their README gives
the criteria. docs/method.md ("Semantic preference") gives the protocol's settings.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..cache import cache_root
from .tasks import Example, load_audio
from ..models.encoder import SAMPLE_RATE, SpeechEncoder
from ..models.registry import load_encoder
from ..results import atomic_path
from ..registry import SPEECH_SYNTHESIZERS
from ..models.tuning import masked_mean
from ..validation import DataError, check_option

PAIR_KINDS = ("semantic", "phonetic")
"""The shipped pair lists: synonyms, and minimal pairs unrelated in meaning."""

DEFAULT_VOICES = ("en-us", "en-gb", "en-us+m3")
"""eSpeak NG voices words are spoken with by default (two accents and a second US speaker).
All give identical audio in every process, so their embeddings can be cached."""

PAIR_COLUMNS = ("word_a", "word_b")
AUDIO_COLUMNS = ("audio_a", "audio_b")
SIMILARITY_KINDS = (*PAIR_KINDS, "unrelated")

_CACHE_FOLDER = "semantic_preference"


# ======================================================================================
# Word pairs
# ======================================================================================


def load_pairs(kind: str) -> pd.DataFrame:
    """A word-pair list shipped with the package."""
    check_option("kind", kind, PAIR_KINDS)
    resource = resources.files("bt_utils").joinpath("data", "word_pairs", f"{kind}_pairs.csv")
    with resources.as_file(resource) as path:
        return pairs_from_file(path)


def pairs_from_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read a list of word pairs from a CSV file.

    Raises
    ------
    FileNotFoundError
        The CSV or one of the audio files it names does not exist.
    bt_utils.validation.DataError
        No pairs, missing columns, empty or multi-word entries, a word paired with itself, or the same pair twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-pair file not found: {path}")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if table.empty:
        raise DataError(f"{path} holds no word pairs")
    columns = [*PAIR_COLUMNS, *AUDIO_COLUMNS] if set(AUDIO_COLUMNS) & set(table.columns) else list(PAIR_COLUMNS)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it needs word_a, word_b and optionally both "
                        f"audio_a and audio_b (found: {list(table.columns)})")
    table = table[columns].apply(lambda column: column.str.strip())
    for column in PAIR_COLUMNS:
        table[column] = table[column].str.lower()
    _check_words(table, path)
    if "audio_a" in table:
        table[list(AUDIO_COLUMNS)] = table[list(AUDIO_COLUMNS)].map(lambda p: str((path.parent / p).resolve()))
        _check_audio_files(table, path)
    return table.reset_index(drop=True)


def _check_words(table: pd.DataFrame, path: Path) -> None:
    """Every entry one word, no word paired with itself, no pair listed twice (in either order)."""
    words = table[list(PAIR_COLUMNS)]
    bad = words.map(lambda w: not w or any(c.isspace() for c in w)).to_numpy().any(axis=1)
    if bad.any():
        rows = [_line(i) for i in np.flatnonzero(bad)[:5]]
        raise DataError(f"{path}: every word_a and word_b must be a single word; see line(s) {rows}")
    same = np.flatnonzero((table.word_a == table.word_b).to_numpy())
    if len(same):
        raise DataError(f"{path}: line {_line(same[0])} pairs {table.word_a[same[0]]!r} with itself")
    keys = [frozenset(p) for p in zip(table.word_a, table.word_b)]
    repeated = pd.Series(keys).duplicated().to_numpy()
    if repeated.any():
        i = int(np.flatnonzero(repeated)[0])
        raise DataError(f"{path}: line {_line(i)} repeats the pair {table.word_a[i]}/{table.word_b[i]}")


def _check_audio_files(table: pd.DataFrame, path: Path) -> None:
    missing = [(_line(i), column, file) for column in AUDIO_COLUMNS for i, file in enumerate(table[column])
               if not Path(file).is_file()]
    if missing:
        listed = "; ".join(f"line {line} {column}: {file}" for line, column, file in missing[:5])
        raise FileNotFoundError(f"{path}: {len(missing)} audio file(s) not found ({listed})")


def _line(row: int) -> int:
    """Line of the CSV file (header = line 1) that holds table row ``row``."""
    return int(row) + 2


def unrelated_pairs(related: Iterable[pd.DataFrame], n_pairs: int, seed: int = 0) -> pd.DataFrame:
    """Random pairs of the words of some pair lists that are not pairs of those lists."""
    related = list(related)
    words = sorted({w for table in related for w in (*table.word_a, *table.word_b)})
    taken = {frozenset(p) for table in related for p in zip(table.word_a, table.word_b)}
    candidates = [(a, b) for i, a in enumerate(words) for b in words[i + 1:] if frozenset((a, b)) not in taken]
    if not 1 <= n_pairs <= len(candidates):
        raise ValueError(f"n_pairs={n_pairs} must be between 1 and {len(candidates)}, the number of unrelated "
                         f"pairs of these {len(words)} words")
    chosen = np.random.default_rng(seed).choice(len(candidates), size=n_pairs, replace=False)
    return pd.DataFrame([candidates[i] for i in chosen], columns=list(PAIR_COLUMNS))


# ======================================================================================
# Audio
# ======================================================================================


def voice_label(voice: str, words_per_minute: int, pitch: int) -> str:
    """The name of a synthesis setting in :func:`spoken_words` results, e.g. ``"en-us/160wpm/pitch50"``."""
    return f"{voice}/{words_per_minute}wpm/pitch{pitch}"


def spoken_words(words: Iterable[str], voices: Iterable[str] = DEFAULT_VOICES, words_per_minute: int = 160,
                 pitch: int = 50) -> dict[str, dict[str, np.ndarray]]:
    """Synthesise each word on its own with several voices: ``{word: {voice_label: audio}}``, audio float32 of shape
    (n_samples,) at 16 kHz.
    """
    labels = {voice: voice_label(voice, words_per_minute, pitch) for voice in voices}
    if not labels:
        raise ValueError("voices is empty: give at least one eSpeak voice, e.g. 'en-us'")
    synthesize = SPEECH_SYNTHESIZERS["espeak"]
    return {word: {label: synthesize(word, voice, words_per_minute, pitch, SAMPLE_RATE).audio
                   for voice, label in labels.items()}
            for word in dict.fromkeys(words)}


def recorded_words(pairs: Iterable[pd.DataFrame]) -> dict[str, dict[str, np.ndarray]]:
    """The recordings named in the ``audio_a`` and ``audio_b`` columns of pair tables: ``{word: {file path: audio}}``,
    audio float32 mono of shape (n_samples,) at 16 kHz.
    """
    audio: dict[str, dict[str, np.ndarray]] = {}
    for table in pairs:
        for word_column, audio_column in zip(PAIR_COLUMNS, AUDIO_COLUMNS):
            for word, file in zip(table[word_column], table[audio_column]):
                if file not in audio.setdefault(word, {}):
                    audio[word][file] = load_audio(Example(id=file, split="test", label=word, audio=file))
    return audio


# ======================================================================================
# Embeddings
# ======================================================================================


def embedding_cache_path(fingerprint: str, word: str, label: str, audio: np.ndarray,
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of one word's pooled hidden states under one voice (or recording)."""
    digest = hashlib.sha256(f"{word}\n{label}\n".encode())
    digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    stem = re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_") or "word"
    return cache_root(cache_dir) / _CACHE_FOLDER / fingerprint / f"{stem}-{digest.hexdigest()[:16]}.npy"


@torch.inference_mode()
def pooled_states(encoder: SpeechEncoder, audio: np.ndarray) -> np.ndarray:
    """Every layer's hidden states of 16-kHz ``audio`` (n_samples,) averaged over its valid frames: float32
    (n_layers + 1, D).
    """
    samples = torch.as_tensor(np.asarray(audio, dtype=np.float32))[None]
    output = encoder(samples, torch.tensor([samples.shape[1]]))
    pooled = [masked_mean(hidden.float(), output.frame_mask) for hidden in output.hidden_states]
    return torch.cat(pooled).cpu().numpy()


def word_embeddings(encoder: SpeechEncoder, audio_by_word: Mapping[str, Mapping[str, np.ndarray]],
                    cache: bool = True, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> dict[str, np.ndarray]:
    """Each word's pooled hidden states, averaged over its voices (or recordings).

    ``audio_by_word`` is ``{word: {label: audio of shape (n_samples,)}}`` (:func:`spoken_words`,
    :func:`recorded_words`); returns ``{word: float64 ndarray of shape (n_layers + 1, D)}``.
    """
    empty = [word for word, voices in audio_by_word.items() if not voices]
    if empty:
        raise ValueError(f"no audio for the word(s) {empty[:5]}")
    keys = [(word, label) for word, voices in audio_by_word.items() for label in voices]
    paths = {}
    if cache:
        fingerprint = encoder.fingerprint()
        paths = {(w, label): embedding_cache_path(fingerprint, w, label, audio_by_word[w][label], cache_dir)
                 for w, label in keys}
    pooled = {key: np.load(path) for key, path in paths.items() if path.is_file()}
    encoder.eval()
    for word, label in tqdm([k for k in keys if k not in pooled], desc="word embeddings", disable=not progress):
        pooled[word, label] = pooled_states(encoder, audio_by_word[word][label])
        if cache:
            with atomic_path(paths[word, label]) as staged:
                np.save(staged, pooled[word, label])
    return {word: np.mean([pooled[word, label] for label in voices], axis=0, dtype=np.float64)
            for word, voices in audio_by_word.items()}


# ======================================================================================
# Similarities and preference
# ======================================================================================


def pair_similarity(embeddings: Mapping[str, np.ndarray], pairs: pd.DataFrame) -> pd.DataFrame:
    """Cosine similarity of the two words of each pair, per layer.

    ``embeddings`` is ``{word: ndarray of shape (n_layers + 1, D)}``; returns columns ``pair`` (``"word_a/word_b"``),
    ``layer`` and ``similarity``, P * (n_layers + 1) rows.
    """
    if pairs.empty:
        raise ValueError("pairs is empty")
    missing = sorted({w for w in (*pairs.word_a, *pairs.word_b) if w not in embeddings})
    if missing:
        raise KeyError(f"no embedding for {len(missing)} word(s) of the pairs, e.g. {missing[:5]}")
    a = np.stack([embeddings[w] for w in pairs.word_a]).astype(np.float64)  # (P, n_layers + 1, D)
    b = np.stack([embeddings[w] for w in pairs.word_b]).astype(np.float64)
    similarity = (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    n_pairs, n_states = similarity.shape
    names = [f"{x}/{y}" for x, y in zip(pairs.word_a, pairs.word_b)]
    return pd.DataFrame({"pair": np.repeat(names, n_states), "layer": np.tile(np.arange(n_states), n_pairs),
                         "similarity": similarity.ravel()})


def preference_table(similarities: Mapping[str, pd.DataFrame], n_bootstrap: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Mean similarity of each kind of pair per layer, and the semantic preference with a bootstrap interval."""
    missing = [kind for kind in SIMILARITY_KINDS if kind not in similarities]
    if missing:
        raise ValueError(f"similarities lacks {missing}; it needs a table for each of {list(SIMILARITY_KINDS)}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    means = pd.DataFrame({kind: similarities[kind].groupby("layer").similarity.mean() for kind in SIMILARITY_KINDS})
    means["preference"] = means.semantic - means.phonetic
    rng = np.random.default_rng(seed)
    resampled = {}
    for kind in PAIR_KINDS:
        table = similarities[kind]
        per_pair = table.assign(row=table.groupby("layer").cumcount()).pivot(index="row", columns="layer",
                                                                             values="similarity")
        draws = rng.integers(0, len(per_pair), size=(n_bootstrap, len(per_pair)))
        resampled[kind] = per_pair.to_numpy()[draws].mean(axis=1)  # (n_bootstrap, n_layers + 1)
    tails = 100 * (1 - confidence) / 2
    low, high = np.percentile(resampled["semantic"] - resampled["phonetic"], [tails, 100 - tails], axis=0)
    means["preference_low"], means["preference_high"] = low, high
    return means.rename_axis("layer").reset_index()


def _pair_lists(pairs: Mapping[str, pd.DataFrame | str | os.PathLike] | None, n_unrelated: int | None,
                seed: int) -> dict[str, pd.DataFrame]:
    """The semantic and phonetic pair tables and the unrelated pairs drawn from their words."""
    if pairs is None:
        pairs = {kind: load_pairs(kind) for kind in PAIR_KINDS}
    if sorted(pairs) != sorted(PAIR_KINDS):
        raise ValueError(f"pairs must have the keys {list(PAIR_KINDS)} (a table or CSV path each); "
                         f"got {sorted(pairs)}")
    lists = {kind: pairs_from_file(table) if isinstance(table, (str, os.PathLike)) else table
             for kind, table in pairs.items()}
    for kind, table in lists.items():
        if not set(PAIR_COLUMNS) <= set(table.columns):
            raise ValueError(f"the {kind} pairs need columns word_a and word_b; got {list(table.columns)}")
    if len({"audio_a" in table for table in lists.values()}) > 1:
        raise ValueError("either both pair lists have recorded audio (audio_a, audio_b) or neither: mixing "
                         "recorded and synthesised words would confound the kind of pair with the recording")
    if n_unrelated is None:
        n_unrelated = max(len(table) for table in lists.values())
    return lists | {"unrelated": unrelated_pairs(lists.values(), n_unrelated, seed)}


def _word_audio(lists: Mapping[str, pd.DataFrame], voices: Iterable[str], words_per_minute: int,
                pitch: int) -> dict[str, dict[str, np.ndarray]]:
    """Recordings of the words if the pair lists name them, else the words synthesised with each voice."""
    related = [lists[kind] for kind in PAIR_KINDS]
    if "audio_a" in related[0]:
        return recorded_words(related)
    words = [w for table in related for w in (*table.word_a, *table.word_b)]
    return spoken_words(words, voices, words_per_minute, pitch)


def _as_encoder(model: SpeechEncoder | str | os.PathLike, device: str, native_length: bool) -> SpeechEncoder:
    if not isinstance(model, (str, os.PathLike)):
        return model
    encoder = load_encoder(model, device=device)
    if encoder.family == "whisper":
        encoder.native_length = native_length
    return encoder


def _preference(encoder: SpeechEncoder, lists: Mapping[str, pd.DataFrame],
                audio: Mapping[str, Mapping[str, np.ndarray]], cache: bool, cache_dir: str | os.PathLike | None,
                progress: bool) -> pd.DataFrame:
    embeddings = word_embeddings(encoder, audio, cache, cache_dir, progress)
    return preference_table({kind: pair_similarity(embeddings, table) for kind, table in lists.items()})


def semantic_preference(model: SpeechEncoder | str | os.PathLike,
                        pairs: Mapping[str, pd.DataFrame | str | os.PathLike] | None = None,
                        voices: Iterable[str] = DEFAULT_VOICES, words_per_minute: int = 160, pitch: int = 50,
                        n_unrelated: int | None = None, seed: int = 0, native_length: bool = False,
                        device: str = "auto", cache: bool = True, cache_dir: str | os.PathLike | None = None,
                        progress: bool = True) -> pd.DataFrame:
    """Per layer: mean similarity of synonyms, of minimal pairs and of unrelated pairs, and the preference.

    Parameters
    ----------
    model : SpeechEncoder, str or path-like
        An encoder, or anything :func:`bt_utils.models.registry.load_encoder` loads (registry name, Hub id, folder,
        brain-tuned checkpoint).
    pairs : mapping, optional
        ``{"semantic": pairs, "phonetic": pairs}``, each a table with columns ``word_a, word_b`` or a CSV path for
        :func:`pairs_from_file`. Default: the shipped lists (:func:`load_pairs`).
    voices : iterable of str
        eSpeak voices each word is spoken with; embeddings are averaged over them.
    n_unrelated : int, optional
        Unrelated pairs to draw from the words of both lists (default: as many as the longer list has pairs).
    seed : int
        Seed of the unrelated pairs.
    native_length : bool
        When ``model`` is loaded here and is a Whisper encoder: encode each word at its own length instead of
        padded to 30 s (faster; Whisper was trained on 30-s inputs).
    device : str
        Where a model loaded here runs (see :func:`bt_utils.models.registry.select_device`).
    cache, cache_dir
        Per-word embedding cache (see :func:`word_embeddings`).

    Returns
    -------
    pandas.DataFrame
        ``layer, semantic, phonetic, unrelated, preference, preference_low, preference_high``: one row per hidden
        state (``n_layers + 1``; layer 0 is the input of the first transformer layer). ``preference = semantic
        - phonetic``, with its 95 % bootstrap interval over pairs
        (:func:`preference_table`).
    """
    lists = _pair_lists(pairs, n_unrelated, seed)
    audio = _word_audio(lists, voices, words_per_minute, pitch)
    return _preference(_as_encoder(model, device, native_length), lists, audio, cache, cache_dir, progress)


def compare_variants(variants: Mapping[str, SpeechEncoder | str | os.PathLike],
                     pairs: Mapping[str, pd.DataFrame | str | os.PathLike] | None = None,
                     voices: Iterable[str] = DEFAULT_VOICES, words_per_minute: int = 160, pitch: int = 50,
                     n_unrelated: int | None = None, seed: int = 0, native_length: bool = False,
                     device: str = "auto", cache: bool = True, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> pd.DataFrame:
    """:func:`semantic_preference` of several model variants on the same pairs and audio.

    Parameters
    ----------
    variants : mapping
        ``{variant name: model}``, e.g. ``{"pretrained": "whisper-tiny.en", "brain-tuned":
        "runs/DEMO01/01_brain_tuning"}``; each model as in :func:`semantic_preference`.
    pairs, voices, words_per_minute, pitch, n_unrelated, seed, native_length, device, cache, cache_dir, progress
        As in :func:`semantic_preference`.

    Returns
    -------
    pandas.DataFrame
        ``variant`` and :func:`semantic_preference`'s columns; one row per variant and layer.
    """
    if not variants:
        raise ValueError("variants is empty: give at least one {name: model}")
    lists = _pair_lists(pairs, n_unrelated, seed)
    audio = _word_audio(lists, voices, words_per_minute, pitch)
    tables = [_preference(_as_encoder(model, device, native_length), lists, audio, cache, cache_dir, progress)
              .assign(variant=variant) for variant, model in variants.items()]
    table = pd.concat(tables, ignore_index=True)
    return table[["variant", *table.columns.drop("variant")]]


# ======================================================================================
# Figure
# ======================================================================================


def plot_preference(table: pd.DataFrame):
    """Semantic preference and pair similarities per layer, one colour per variant.

    ``table`` comes from :func:`compare_variants` or :func:`semantic_preference` (one model, no ``variant`` column).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if "variant" not in table:
        table = table.assign(variant="model")
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    styles = dict(zip(SIMILARITY_KINDS, ("-", "--", ":")))
    colours = plt.get_cmap("tab10").colors
    for (variant, rows), colour in zip(table.groupby("variant", sort=False), colours):
        left.plot(rows.layer, rows.preference, marker="o", color=colour, label=variant)
        left.fill_between(rows.layer, rows.preference_low, rows.preference_high, color=colour, alpha=0.2)
        for kind, style in styles.items():
            right.plot(rows.layer, rows[kind], linestyle=style, color=colour)
    left.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    left.set_ylabel("semantic preference\n(semantic - phonetic similarity)")
    left.legend(fontsize=8)
    right.set_ylabel("mean cosine similarity")
    right.legend([Line2D([], [], color="grey", linestyle=style) for style in styles.values()], list(styles),
                 fontsize=8)
    for ax in (left, right):
        ax.set_xlabel("layer (0 = input of layer 1)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return figure
