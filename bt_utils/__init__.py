"""bt_utils: the tested package behind the brain-tuning notebooks.

Subpackages follow the data flow, and imports only point down this list:

- :mod:`bt_utils.data`: the ds003020 layout, TR grid, transcripts, stimulus windows, noise ceiling, ROIs;
- :mod:`bt_utils.models`: the model registry, the speech-encoder wrapper and brain-tuning;
- :mod:`bt_utils.features`: layer features per TR, Lanczos resampling, low-level feature spaces;
- :mod:`bt_utils.encoding`: voxelwise ridge, brain alignment, low-level impact, statistics;
- :mod:`bt_utils.downstream`: downstream tasks, linear probes, ASR, semantic preference;
- :mod:`bt_utils.viz`: figures, voxel maps and the interactive explorer;
- :mod:`bt_utils.sweeps`: papermill sweeps over models and participants, and their summary;
- :mod:`bt_utils.notebook`: what every notebook does first and last (set-up, run record).

:mod:`bt_utils.demo` (demo dataset, offline Whisper, speech synthesis, demo tasks) is an extension that registers
itself through :mod:`bt_utils.registry`; nothing else imports it. Public names are imported on first use, so
``import bt_utils`` loads neither torch nor pycortex.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names are imported from submodules on first use."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        return getattr(module, name, module)

    def __dir__() -> list:
        return sorted(exports)

    return __getattr__, __dir__


SUBPACKAGES = ("data", "models", "features", "encoding", "downstream", "viz", "sweeps")

__all__ = ["NotebookRun", "__version__", *SUBPACKAGES, "notebook_setup", "open_dataset", "optional_table"]
__getattr__, __dir__ = lazy_exports(__name__, {"NotebookRun": "notebook", "notebook_setup": "notebook",
                                               "optional_table": "notebook",
                                               "open_dataset": "data.dataset", **{name: name for name in SUBPACKAGES}})
