"""Result files: atomic writes, tidy tables, figures and run records.

Every writer goes through :func:`atomic_path`: content is written under a
temporary name in the destination folder and renamed into place only once it
is complete, so an interrupted run never leaves a half file that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from . import __version__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    The temporary file (or folder, if the block creates one) lives beside
    ``path`` and is removed if the block raises.

    Parameters
    ----------
    path : path-like
        Final destination. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staged = tmp / path.name
    try:
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"nothing was written to the staged path for {path}")
        if path.is_dir() and staged.is_dir():
            shutil.rmtree(path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy table atomically as Parquet (``.parquet``) or CSV (``.csv``).

    Parameters
    ----------
    table : DataFrame
        The table, one observation per row.
    path : path-like
        Destination; the suffix selects the format.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"unsupported table format {path.suffix!r} for {path}; use .parquet or .csv")
    with atomic_path(path) as staged:
        if path.suffix == ".parquet":
            table.to_parquet(staged, index=False)
        else:
            table.to_csv(staged, index=False)
    return path


def write_json(data: Mapping, path: str | os.PathLike) -> Path:
    """Write a JSON document atomically (sorted keys, 2-space indent)."""
    path = Path(path)
    with atomic_path(path) as staged:
        staged.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically; the suffix selects the format."""
    path = Path(path)
    with atomic_path(path) as staged:
        figure.savefig(staged, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))
    return path


def git_revision(start: str | os.PathLike | None = None) -> str | None:
    """Git commit of the checkout that holds ``start`` (default: this package), or None."""
    start = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_record(parameters: Mapping, timings: Mapping[str, float] | None = None, **extra) -> dict:
    """The provenance record stored beside every result table.

    Parameters
    ----------
    parameters : mapping
        The notebook or function parameters of the run.
    timings : mapping of str to float, optional
        Wall times of the run's steps, in seconds.
    **extra
        Further JSON-serialisable fields.

    Returns
    -------
    record : dict
        Parameters, timings, package version, git revision, Python and host, UTC time.
    """
    return {
        "parameters": dict(parameters),
        "timings_s": dict(timings or {}),
        "bt_utils_version": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "host": platform.node(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
