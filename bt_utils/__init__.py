"""bt_utils: the tested package behind the brain-tuning notebooks.

Subpackages follow the data flow, and imports only point down this list:

- :mod:`bt_utils.data`: the ds003020 layout, TR grid, transcripts, stimulus windows, noise ceiling, ROIs;
- :mod:`bt_utils.models`: the model registry, the speech-encoder wrapper and brain-tuning;
- :mod:`bt_utils.features`: layer features per TR, Lanczos resampling, low-level feature spaces;
- :mod:`bt_utils.encoding`: voxelwise ridge, brain alignment, low-level impact, statistics;
- :mod:`bt_utils.downstream`: downstream tasks, linear probes, ASR, semantic preference;
- :mod:`bt_utils.viz`: figures, voxel maps and the interactive explorer;
- :mod:`bt_utils.sweeps`: papermill sweeps over models and participants, and their summary.

:mod:`bt_utils.demo` (the simulated demo dataset, offline Whisper, speech synthesis, demo tasks) is an
extension that registers itself through :mod:`bt_utils.registry`; nothing else imports it.
"""

__version__ = "0.1.0"
