"""The state of a sweep on disk: run status files, the runs index and the sweep folder's lock.

Each run records its state in ``<run folder>/status.json``; ``<sweep folder>/runs_index.csv`` lists every
run, and ``<sweep folder>/sweep.lock`` keeps a second sweep out of a folder while one runs. The meaning of
the states and the rerun rules are in docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..results import write_json

if TYPE_CHECKING:
    from .plan import Run
    from .spec import SweepSpec

log = logging.getLogger(__name__)

STATES = ("missing", "queued", "running", "interrupted", "completed", "failed", "skipped")
"""Run states (see docs/sweeps.md)."""
UNFINISHED = ("queued", "running")
"""States a run is in only while a sweep holds the sweep folder's lock."""
INDEX_NAME = "runs_index.csv"
INDEX_COLUMNS = (
    "run_id", "stage", "state", "started", "finished", "duration_s",
    "error_type", "message", "error_cell", "error_source", "path",
)
"""Columns of the runs index; the grid's axes come between ``stage`` and ``state``."""
STATUS_NAME = "status.json"
LOCK_NAME = "sweep.lock"
"""The lock file a running sweep holds in its sweep folder (JSON: host, pid, start time)."""


class SweepLockedError(FileExistsError):
    """Another sweep holds the sweep folder's lock file; the message names it, its holder and what to do."""


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def write_status(run: Run, state: str, **fields) -> dict:
    """Write ``status.json`` of a run (atomically) and return it."""
    status = {
        "run_id": run.run_id, "stage": run.stage, "notebook": run.notebook, "state": state,
        "axes": run.axes, "parameters": run.defaults | run.parameters, "fingerprint": run.fingerprint,
        "host": platform.node(), **fields,
    }
    write_json(status, run.path / STATUS_NAME)
    return status


def read_status_file(folder: str | os.PathLike) -> dict | None:
    """The ``status.json`` in a run folder, or None when there is none (the run has not started).

    Raises
    ------
    ValueError
        When the file is not a JSON mapping; the message names it and says that deleting it is safe.
    """
    path = Path(folder) / STATUS_NAME
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        status = error
    if not isinstance(status, dict):
        reason = f"not valid JSON: {status}" if isinstance(status, ValueError) else "not a JSON mapping"
        raise ValueError(f"{path} is damaged ({reason}). It only records the state of the run in {path.parent}: "
                         "deleting it is safe, and the next sweep runs that run again (its other files are kept)")
    return status


def read_status(run: Run) -> dict | None:
    """A run's ``status.json``, or None when it has none for the run's parameters."""
    status = read_status_file(run.path)
    return status if status is not None and status.get("fingerprint") == run.fingerprint else None


def out_of_date(runs: Sequence[Run], statuses: Mapping[str, dict | None]) -> dict[str, str]:
    """The completed runs that must run again because a run they depend on changed (as ``make`` does)."""
    reasons: dict[str, str] = {}
    for run in runs:
        status = statuses[run.run_id]
        if (status or {}).get("state") != "completed":
            continue
        rerun = [run_id for run_id in run.depends_on
                 if run_id in reasons or (statuses[run_id] or {}).get("state") != "completed"]
        inputs = status.get("inputs") or {}
        redone = [run_id for run_id in run.depends_on
                  if run_id not in rerun and inputs.get(run_id) != statuses[run_id].get("finished")]
        if rerun:
            reasons[run.run_id] = f"out of date: {_some(rerun)} will run again"
        elif redone:
            reasons[run.run_id] = f"out of date: {_some(redone)} ran again since"
    return reasons


def _some(run_ids: list[str], shown: int = 3) -> str:
    more = f" and {len(run_ids) - shown} more" if len(run_ids) > shown else ""
    return ", ".join(run_ids[:shown]) + more


def index_table(spec: SweepSpec, runs: list[Run], statuses: Mapping[str, dict | None], live: bool) -> pd.DataFrame:
    """The runs index; unless a sweep is ``live``, runs left queued or running are ``interrupted``."""
    notes = out_of_date(runs, statuses)
    rows = []
    for run in runs:
        status = statuses[run.run_id] or {}
        error = status.get("error") or {}
        state = status.get("state", "missing")
        if state in UNFINISHED and not live:
            state, notes[run.run_id] = "interrupted", (
                f"interrupted: left {state} by a sweep that ended before it finished; the next sweep runs it")
        rows.append({
            "run_id": run.run_id, "stage": run.stage, **{axis: run.axes.get(axis) for axis in spec.grid},
            "state": state, "started": status.get("started"),
            "finished": status.get("finished"), "duration_s": status.get("duration_s"),
            "error_type": error.get("type"),
            "message": error.get("message", status.get("reason", notes.get(run.run_id))),
            "error_cell": error.get("cell"), "error_source": error.get("source"), "path": str(run.path),
        })
    columns = [*INDEX_COLUMNS[:2], *spec.grid, *INDEX_COLUMNS[2:]]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"error_cell": "Int64"})


@contextlib.contextmanager
def sweep_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out_dir>/sweep.lock`` so that no other sweep runs in the folder meanwhile.

    Raises
    ------
    SweepLockedError
        When another sweep holds the lock; the message names its holder and how to remove a stale lock.
    """
    path = Path(out_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": platform.node(), "pid": os.getpid(), "started": utc_now(), "token": uuid.uuid4().hex}
    _take_lock(path, mine)
    try:
        yield path
    finally:
        if _read_lock(path) == mine:
            path.unlink()
        else:
            log.warning("the sweep lock %s was replaced or removed while this sweep held it; left as it is", path)


def sweep_running(out_dir: str | os.PathLike) -> bool:
    """Whether a sweep holds the lock of a sweep folder (:func:`sweep_lock`)."""
    holder = _read_lock(Path(out_dir) / LOCK_NAME)
    return holder is not None and not _died_here(holder)


def _take_lock(path: Path, mine: dict) -> None:
    taken_over = False
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # released in between: try again
                continue
            if not taken_over and _died_here(holder):
                log.warning("taking over the stale sweep lock %s: its holder, pid %s on this host (%s), has ended",
                            path, holder["pid"], holder["host"])
                path.unlink(missing_ok=True)
                taken_over = True  # once: a lock that reappears belongs to a sweep that started meanwhile
                continue
            raise SweepLockedError(
                f"another sweep is running in {path.parent}: its lock file {path} is held by pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('started', '?')}). "
                f"Wait for that sweep to end; if it no longer runs (it was killed on another host, or its machine "
                f"restarted), delete {path} and run again"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(mine, handle)
        return


def _read_lock(path: Path) -> dict | None:
    """The holder written in a lock file; None when there is no lock, {} when it cannot be read."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _died_here(holder: dict) -> bool:
    """Whether a lock's holder was a process of this host that no longer exists."""
    pid = holder.get("pid")
    if (holder.get("host") != platform.node() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0
            or os.name == "nt"):  # on Windows, os.kill ends the process whatever the signal
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def count_states(table: pd.DataFrame) -> str:
    """One line: ``"9 runs: 6 completed, 1 failed, 2 skipped"``."""
    counts = table.state.value_counts()
    return f"{len(table)} runs: " + ", ".join(f"{counts[state]} {state}" for state in STATES if state in counts)


def describe_failures(table: pd.DataFrame) -> str:
    """One paragraph per failed run (error, cell and its source) and one line per skipped run."""
    paragraphs = []
    for row in table[table.state == "failed"].itertuples():
        cell = "" if pd.isna(row.error_cell) else f" in cell {row.error_cell}"
        text = f"FAILED {row.run_id}{cell}: {row.error_type}: {row.message}"
        if isinstance(row.error_source, str):
            text += "\n" + "\n".join(f"    | {line}" for line in row.error_source.splitlines())
        paragraphs.append(text + f"\n    run folder: {row.path}")
    paragraphs += [f"SKIPPED {row.run_id}: {row.message}" for row in table[table.state == "skipped"].itertuples()]
    return "\n".join(paragraphs)
