import numpy as np
import pytest

from bt_utils.data.stimulus import WindowSpec, tr_input_window, trimmed_tr_indices
from bt_utils.models.text_embeddings import embed_texts, window_texts
from bt_utils.data.timing import DS003020_TR_S, tr_midpoints
from bt_utils.data.transcripts import Interval, Transcript

TOY = WindowSpec(sample_rate=10)  # 2-s chunks of 20 samples, 100-sample windows


def test_window_concatenates_the_chunks_of_the_last_five_trs():
    audio = np.arange(1, 201, dtype=np.float32)
    times = tr_midpoints(10, tr=2.0, sound_onset=0.0)  # midpoints 1, 3, 5, ...; chunks end at midpoint + 1 s
    np.testing.assert_array_equal(tr_input_window(audio, times, 4, TOY), audio[:100])
    np.testing.assert_array_equal(tr_input_window(audio, times, 7, TOY), audio[60:160])
    early = tr_input_window(audio, times, 1, TOY)
    np.testing.assert_array_equal(early[:60], 0)
    np.testing.assert_array_equal(early[60:], audio[:40])
    for outside in (-1, 10):
        with pytest.raises(IndexError, match=f"TR index {outside} is outside the story's 10 TRs"):
            tr_input_window(audio, times, outside, TOY)


def test_window_zero_pads_past_the_story_end():
    audio = np.ones(50, dtype=np.float32)
    window = tr_input_window(audio, tr_midpoints(5, tr=2.0, sound_onset=0.0), 4, TOY)
    assert window[:50].sum() == 50 and window[50:].sum() == 0


@pytest.mark.parametrize("tr, gap", [(DS003020_TR_S, 0), (2.0045, 72)])
def test_paper_protocol_window_on_a_tr_grid(tr, gap):
    spec = WindowSpec()
    assert spec.window_samples == 160_000
    times = tr_midpoints(40, tr)
    audio = np.random.default_rng(0).standard_normal(16000 * 60).astype(np.float32)
    first = tr_input_window(audio, times, 0, spec)
    assert not first.any()  # the first TR's chunks all lie before sound onset
    window = tr_input_window(audio, times, 10, spec)
    end = int(round((times[10] + 1.0) * 16000))
    np.testing.assert_array_equal(window[-32000:], audio[end - 32000:end])
    # chunks last 2 s: on ds003020's 2.0-s grid they tile the audio; TRs 2.0045 s apart leave 72 samples out
    previous_end = int(round((times[9] + 1.0) * 16000))
    assert end - previous_end == 32000 + gap
    np.testing.assert_array_equal(window[-64000:-32000], audio[previous_end - 32000:previous_end])


def test_trimmed_indices():
    np.testing.assert_array_equal(trimmed_tr_indices(20), np.arange(10, 15))


def test_window_texts_and_embeddings():
    transcript = Transcript([Interval(0.5, 1.0, "dogs"), Interval(1.2, 1.8, "bark"), Interval(13.0, 13.5, "cake")], [], 14.0)
    times = tr_midpoints(8, tr=2.0, sound_onset=0.0)  # window of TR i: [2i + 2 - 10, 2i + 2]
    texts = window_texts(transcript, times, np.array([0, 4, 6, 7]))
    assert texts == ["dogs bark", "dogs bark", "cake", "cake"]
    assert window_texts(transcript, times, np.array([5])) == [""]
    embeddings = embed_texts(["dogs bark", "puppies are barking", "the stock market fell", ""])
    assert embeddings.shape == (4, 384)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2] + 0.3
    assert np.linalg.norm(embeddings[0]) == pytest.approx(1.0, abs=1e-5) and not embeddings[3].any()
