"""Gather the result tables of a sweep for the summary report."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

RESULT_TABLES = {
    "alignment_rois": "alignment_rois.parquet",
    "alignment_tests": "alignment_tests.csv",
    "low_level_impact": "low_level_impact.parquet",
    "downstream": "downstream.parquet",
    "semantic_preference": "semantic_preference.csv",
    "noise_ceiling": "noise_ceiling.parquet",
    "training_log": "training_log.parquet",
}
"""Table name -> file name written by the notebooks."""


def collect_table(sweep_dir: str | os.PathLike, file_name: str) -> pd.DataFrame:
    """Concatenate every copy of a result table found under a sweep folder.

    Parameters
    ----------
    sweep_dir : path-like
        The sweep's output folder (one sub-folder per run).
    file_name : str
        E.g. ``"alignment_rois.parquet"`` or ``"semantic_preference.csv"``.

    Returns
    -------
    table : DataFrame
        All rows, with a ``run`` column: the run folder relative to ``sweep_dir``.
        Empty (no columns) when no run wrote the table.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist; run the sweep first (bt sweep run SPEC)")
    tables = []
    for path in sorted(sweep_dir.rglob(file_name)):
        if any(part.startswith(".") for part in path.relative_to(sweep_dir).parts):
            continue  # staging folders of atomic writes
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        tables.append(table.assign(run=path.parent.relative_to(sweep_dir).as_posix()))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def collect_results(sweep_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Every table of :data:`RESULT_TABLES` gathered from a sweep (empty frames for missing ones)."""
    return {name: collect_table(sweep_dir, file_name) for name, file_name in RESULT_TABLES.items()}
