"""bt_utils: the tested package behind the brain-tuning notebooks.

Modules by concern:

- :mod:`bt_utils.timing`: TR grid, TR midpoints and the ``[10:-5]`` trim.
- :mod:`bt_utils.dataset`: the ds003020 layout (stories, audio, TextGrids, responses, splits).
- :mod:`bt_utils.transcripts`: TextGrid reading and writing.
- :mod:`bt_utils.noise_ceiling`: Schoppe ``cc_max``, explainable variance, voxel selection.
- :mod:`bt_utils.demo_data`: the embedded, simulated demo dataset.
- :mod:`bt_utils.results`: atomic writes and run records.
"""

__version__ = "0.1.0"
