import numpy as np
import pytest

from bt_utils.data.timing import DS003020_TR_S, check_tr, tr_midpoints, trim_trs, trimmed_length


def test_tr_midpoints_hand_computed():
    # trigger i at i * 2.0 s, sound onset at 10 s, midpoint = trigger - 10 + 2.0 / 2 (the reference's tr=2.0)
    assert DS003020_TR_S == 2.0
    np.testing.assert_allclose(tr_midpoints(3, DS003020_TR_S), [-9.0, -7.0, -5.0])
    # another TR: trigger i at i * 2.0045 s
    np.testing.assert_allclose(tr_midpoints(3, 2.0045), [-8.99775, -6.99325, -4.98875])


def test_tr_midpoints_spacing_and_custom_tr():
    times = tr_midpoints(100, tr=1.5, sound_onset=0.0)
    np.testing.assert_allclose(np.diff(times), 1.5)
    assert times[0] == pytest.approx(0.75)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_tr_midpoints_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match=str(bad)):
        tr_midpoints(bad, DS003020_TR_S)


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf"), "two"])
def test_bad_trs_are_refused(bad):
    with pytest.raises(ValueError, match="the TR must be a"):
        tr_midpoints(5, bad)
    assert check_tr("2.5") == 2.5


def test_trim_matches_reference_slice():
    sequence = np.arange(40 * 3).reshape(40, 3)
    np.testing.assert_array_equal(trim_trs(sequence), sequence[10:-5])
    assert trimmed_length(40) == 25
    np.testing.assert_array_equal(trim_trs(sequence.T, axis=1), sequence.T[:, 10:-5])


def test_trim_rejects_short_sequences():
    with pytest.raises(ValueError, match="15 TRs is too short"):
        trim_trs(np.zeros((15, 2)))
