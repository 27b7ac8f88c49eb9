"""Result files: atomic writes, exclusive locks, tidy tables, figures and run records.

Every writer goes through :func:`atomic_path`: content is written under a
temporary name in the destination folder and renamed into place only once it
is complete, so an interrupted run never leaves a half file that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from . import __version__

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staged = tmp / path.name
    try:
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"nothing was written to the staged path for {path}")
        if path.exists() and (path.is_dir() or staged.is_dir()):
            backup = tmp / f"{path.name}.previous"
            os.replace(path, backup)
            try:
                os.replace(staged, path)
            except BaseException:
                os.replace(backup, path)
                raise
        else:
            os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a failed block, or the backup


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[Path | None]:
    """Hold an exclusive lock on the file ``path`` (created, then removed) and yield ``path``.

    While another holder has it: wait, or with ``wait=False`` yield None at once, holding nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield path
        return
    while True:
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                handle.close()
                yield None
                return
            log.info("waiting for %s: another process holds it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # locked a file its holder removed meanwhile: lock the new one
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # releases the lock


@contextlib.contextmanager
def exclusive_locks(paths: Iterable[str | os.PathLike], wait: bool = True) -> Iterator[bool]:
    """Hold :func:`exclusive_lock` on every path, taken in order, and yield True; with ``wait=False`` yield False
    at once, holding none, if another holder has any of them."""
    with contextlib.ExitStack() as held:
        for path in paths:
            if held.enter_context(exclusive_lock(path, wait)) is None:
                held.close()
                yield False
                return
        yield True


def in_turn(keys: Iterable[K], locks: Callable[[K], Iterable[str | os.PathLike]], produce: Callable[[K], V],
            done: Callable[[], object] | None = None) -> dict[K, V]:
    """``{key: produce(key)}`` for every key, each called while holding the key's :func:`exclusive_locks`.

    Keys whose locks another process holds are put off until the others are done; only when every key left is
    held elsewhere does it wait, for the first of them. Parallel runs that need the same cached results (a sweep's
    workers) thus split the keys between them instead of waiting for each other, provided ``produce`` reads what
    is cached and computes only the rest. ``done``, if given, is called after each key (a progress bar's update).
    """
    keys = list(dict.fromkeys(keys))
    produced = {}

    def attempt(key: K, wait: bool) -> None:
        with exclusive_locks(locks(key), wait) as held:
            if held:
                produced[key] = produce(key)
                if done is not None:
                    done()

    pending = keys
    while pending:
        for key in pending:
            attempt(key, wait=False)
        if all(key not in produced for key in pending):  # every key held elsewhere: wait for the first
            attempt(pending[0], wait=True)
        pending = [key for key in pending if key not in produced]
    return {key: produced[key] for key in keys}


_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def file_label(value: object) -> str:
    """``value`` as part of a file or folder name: every run of characters other than letters, digits,
    ``.``, ``_`` and ``-`` becomes ``_`` (e.g. a Hub id ``"org/model"`` -> ``"org_model"``)."""
    return _UNSAFE_CHARACTERS.sub("_", str(value))


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy table atomically as Parquet (``.parquet``) or CSV (``.csv``).

    Parameters
    ----------
    table : DataFrame
        The table, one observation per row.
    path : path-like
        Destination; the suffix selects the format.
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


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`; a CSV of a table without columns reads as an empty table."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _json_ready(value: object) -> object:
    """``value`` with everything turned into what strict JSON can hold."""
    if isinstance(value, Mapping):
        return {(key.item() if isinstance(key, np.generic) else key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or value is pd.NA:
        return None
    if isinstance(value, str | int):  # bool is an int
        return value
    return str(value)


def write_json(data: Mapping, path: str | os.PathLike) -> Path:
    """Write a strict JSON document atomically (sorted keys, 2-space indent)."""
    path = Path(path)
    with atomic_path(path) as staged:
        staged.write_text(json.dumps(_json_ready(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically; the suffix selects the format."""
    path = Path(path)
    with atomic_path(path) as staged:
        figure.savefig(staged, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))
    return path


def _git(arguments: list[str], start: str | os.PathLike | None) -> str | None:
    """Standard output of ``git <arguments>`` run in ``start`` (default: this package), or None if git fails."""
    start = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *arguments], cwd=start, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_revision(start: str | os.PathLike | None = None) -> str | None:
    """Git commit of the checkout that holds ``start`` (default: this package), or None."""
    out = _git(["rev-parse", "HEAD"], start)
    return (out.strip() or None) if out is not None else None


def git_dirty(start: str | os.PathLike | None = None) -> bool | None:
    """Whether the checkout that holds ``start`` (default: this package) differs from its commit."""
    out = _git(["status", "--porcelain"], start)
    return None if out is None else bool(out.strip())


def run_record(parameters: Mapping, timings: Mapping[str, float] | None = None, **extra) -> dict:
    """The provenance record stored beside every result table."""
    return {
        "parameters": dict(parameters),
        "timings_s": dict(timings or {}),
        "bt_utils_version": __version__,
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "host": platform.node(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
