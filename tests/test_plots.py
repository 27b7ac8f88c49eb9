import matplotlib.pyplot as plt
import numpy as np
import pytest

from bt_utils.data.timing import tr_midpoints
from bt_utils.data.transcripts import Interval, Transcript
from bt_utils.viz.plots import plot_alignment


@pytest.mark.parametrize("tr", [2.0, 1.5])
def test_alignment_plot_draws_the_boundaries_of_the_given_grid(tr):
    audio = np.zeros(16000 * 12, dtype=np.float32)
    transcript = Transcript([Interval(1.0, 1.5, "hello")], [], 12.0)
    times = tr_midpoints(20, tr, sound_onset=0.0)  # boundaries at 0, tr, 2 tr, ...
    figure = plot_alignment(audio, 16000, transcript, times, 0.0, 10.0)
    wave_ax = figure.axes[0]
    edges = sorted({line.get_xdata()[0] for line in wave_ax.lines if line.get_color() == "tab:red"
                    and line.get_linestyle() == "-"})
    np.testing.assert_allclose(edges, np.arange(0.0, 10.0 + 1e-9, tr))
    plt.close(figure)
    with pytest.raises(ValueError, match="at least two TR midpoints"):
        plot_alignment(audio, 16000, transcript, times[:1], 0.0, 10.0)
