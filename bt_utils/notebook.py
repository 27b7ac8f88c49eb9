"""What every notebook does first and last: set up the session, then record the run beside its outputs.

:func:`notebook_setup` (right after the parameters cell) opens the dataset and returns a :class:`NotebookRun`,
which saves figures and tables and, at the end, writes ``run.json``."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .results import read_table, run_record, save_figure, write_json, write_table

CHECKOUT = Path(__file__).resolve().parents[1]
"""The folder above the package: the repository checkout when installed from one."""

DISTRIBUTION = "bt-utils"
"""The distribution name of the suite (pyproject.toml)."""

RUN_RECORD = "run.json"

_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
_PARAMETER_TYPES = (type(None), bool, int, float, str, list, tuple, dict)


def in_colab() -> bool:
    """Whether this is a Google Colab session."""
    return "google.colab" in sys.modules


def install_in_colab(source: str | os.PathLike | None = None) -> bool:
    """In Colab, pip-install the suite's dependencies once per session; elsewhere do nothing."""
    if not in_colab():
        return False
    try:
        importlib.metadata.distribution(DISTRIBUTION)
        return False
    except importlib.metadata.PackageNotFoundError:
        pass
    source = Path(source or os.environ.get("BT_SUITE_SOURCE") or CHECKOUT)
    if not (source / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no checkout of the suite at {source} (no pyproject.toml): clone or upload the "
                                "repository there, or set BT_SUITE_SOURCE to its folder")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(source)], check=True)
    importlib.invalidate_caches()
    print(f"installed the suite from {source}. If pip replaced packages this session had already imported, "
          "restart the session (Runtime > Restart session) and run the notebook again.")
    return True


def notebook_path(path: str | os.PathLike) -> Path:
    """``path`` as the notebooks see it: relative to the current folder, or in Colab to the checkout's notebooks."""
    path = Path(path).expanduser()
    if not path.is_absolute() and in_colab():
        return CHECKOUT / "notebooks" / path
    return path


def notebook_parameters(namespace: Mapping[str, object]) -> dict:
    """The parameters in a notebook's namespace: its simple values (None, bool, number, str, list, tuple, dict)
    whose names do not start with ``_``, without IPython's own (``In``, ``Out``)."""
    return {name: value for name, value in namespace.items()
            if not name.startswith("_") and name not in _IPYTHON_NAMES and isinstance(value, _PARAMETER_TYPES)}


def optional_table(folder: str | os.PathLike | None, name: str):
    """The table ``folder / name`` (Parquet or CSV) of an earlier run, or None (with a message) where it is absent."""
    path = notebook_path(folder) / name if folder else None
    if path is None or not path.is_file():
        print(f"no {name} in {str(folder)!r}: what needs it is left out")
        return None
    return read_table(path)


@dataclass
class NotebookRun:
    """One notebook run: its output folder, parameters, dataset, and the wall time of each step.

    Attributes
    ----------
    parameters : dict
    timings : dict of str to float
        Seconds per step, filled by :meth:`step`.
    """

    output_dir: Path
    parameters: dict
    dataset: object = None
    timings: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _last: float = field(default=None, repr=False)

    def step(self, name: str) -> float:
        """Record the seconds since the previous step (or the start) as step ``name``; return them."""
        now = time.perf_counter()
        self.timings[name] = now - (self._last if self._last is not None else self.started)
        self._last = now
        return self.timings[name]

    def save_figure(self, figure, name: str) -> Path:
        """Save a matplotlib figure as ``output_dir / name`` (the suffix selects the format)."""
        return save_figure(figure, self.output_dir / name)

    def write_table(self, table, name: str) -> Path:
        """Write a table as ``output_dir / name`` (``.parquet`` or ``.csv``)."""
        return write_table(table, self.output_dir / name)

    def finish(self, **extra) -> Path:
        """Write ``run.json`` (parameters, step timings and the total, versions, ``extra``); list the outputs."""
        timings = self.timings | {"total": time.perf_counter() - self.started}
        path = write_json(run_record(self.parameters, timings, **extra), self.output_dir / RUN_RECORD)
        print(f"wrote in {self.output_dir}:", *sorted(p.name for p in self.output_dir.iterdir()), sep="\n  ")
        return path


def notebook_setup(output_dir: str | os.PathLike, namespace: Mapping[str, object] | None = None,
                   data_root: str | os.PathLike | None = None, build_demo_if_missing: bool = False,
                   offline: bool = True) -> NotebookRun:
    """Set up a notebook run: Colab installation, logging, output folder, dataset.

    Parameters
    ----------
    output_dir : path-like
        Folder of the run's outputs (created).
    namespace : mapping, optional
        The notebook's ``globals()`` right after its parameters cell: the run record keeps its
        parameters (:func:`notebook_parameters`).
    data_root : path-like, optional
        A dataset in the ds003020 layout to open (None: none).
    build_demo_if_missing : bool
        Build the demo dataset at ``data_root`` if it is absent (see :func:`bt_utils.data.open_dataset`).
    offline : bool
        Load models from local files only (``HF_HUB_OFFLINE=1`` unless already set).

    Returns
    -------
    NotebookRun
        ``run.dataset`` is the opened dataset, or None without ``data_root``.
    """
    install_in_colab()
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    output_dir = notebook_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    parameters = notebook_parameters(namespace or {})
    dataset = None
    if data_root is not None:
        from .data.dataset import open_dataset

        dataset = open_dataset(notebook_path(data_root), build_demo_if_missing=build_demo_if_missing)
        print(dataset, "subjects:", dataset.subjects)
    return NotebookRun(output_dir, parameters, dataset)
