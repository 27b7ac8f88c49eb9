"""Papermill sweeps: run the notebooks over a grid of parameters on a Dask cluster.

:func:`run_sweep` runs what has not completed, each run after those it depends on, so an interrupted sweep resumes;
:func:`sweep_status` reads the runs' states back. docs/sweeps.md describes specifications, reruns and clusters."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import nbformat
import pandas as pd
import papermill

from .notebooks import execute_notebook, notebook_path
from .plan import Run, critical_path_priorities, plan_runs
from .spec import SweepSpec, load_spec, parameters_cell_index
from .state import (INDEX_NAME, count_states, index_table, out_of_date, read_status, sweep_lock, sweep_running,
                    utc_now, write_status)
from ..results import write_table

if TYPE_CHECKING:  # distributed is imported only when a sweep runs
    from distributed import Client

log = logging.getLogger(__name__)

_SOURCE_EXCERPT_LINES = 12


def _as_spec(spec: SweepSpec | str | os.PathLike, notebook_dir: str | os.PathLike | None) -> SweepSpec:
    return spec if isinstance(spec, SweepSpec) else load_spec(spec, notebook_dir)


def sweep_dir(spec: SweepSpec, out_dir: str | os.PathLike | None = None) -> Path:
    """The sweep folder: ``out_dir``, or ``runs/<spec name>`` in the current folder."""
    return Path(out_dir if out_dir is not None else Path("runs") / spec.name).resolve()


def sweep_status(
    spec: SweepSpec | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    notebook_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The state of every run of a sweep, read from the run folders.

    Parameters
    ----------
    spec : SweepSpec or path-like
        The specification (a path is read with :func:`load_spec`).
    out_dir : path-like, optional
        The sweep folder (default: ``runs/<spec name>``).
    notebook_dir : path-like, optional
        Folder of the notebooks (default: the suite's ``notebooks/``).

    Returns
    -------
    table : DataFrame
        One row per planned run: the columns of :data:`~bt_utils.sweeps.state.INDEX_COLUMNS` and one per grid axis;
        ``state`` is one of :data:`~bt_utils.sweeps.state.STATES`.
    """
    spec = _as_spec(spec, notebook_dir)
    out = sweep_dir(spec, out_dir)
    runs = plan_runs(spec, out)
    live = sweep_running(out)
    table = index_table(spec, runs, {run.run_id: read_status(run) for run in runs}, live)
    if not live and (out / INDEX_NAME).is_file():
        write_table(table, out / INDEX_NAME)
    return table


def run_sweep(
    spec: SweepSpec | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    cluster: object = None,
    n_workers: int = 2,
    notebook_dir: str | os.PathLike | None = None,
    local_resources: Mapping[str, float] | None = None,
    show_code: bool = False,
) -> pd.DataFrame:
    """Run every run of a sweep that has not completed yet, in parallel on Dask.

    Parameters
    ----------
    spec : SweepSpec or path-like
        The specification (see docs/sweeps.md).
    out_dir : path-like, optional
        The sweep folder (default: ``runs/<spec name>`` in the current folder).
    cluster : None, "local", str, distributed.Client or cluster, optional
        ``"local"``: a ``LocalCluster`` of ``n_workers`` single-threaded processes; a string: a scheduler
        address; a client or cluster object (e.g. ``SLURMCluster``) is used. ``None``: the Dask
        configuration, else a local cluster (docs/sweeps.md, "Clusters").
    n_workers : int
        Workers of a local or configured cluster.
    notebook_dir : path-like, optional
        Folder of the notebooks (default: the suite's ``notebooks/``).
    local_resources : mapping, optional
        Resources each local worker declares (e.g. ``{"GPU": 1}``); without them the local cluster
        ignores the stages' ``resources``.
    show_code : bool
        Keep the code cells in the runs' HTML reports (default: text, figures and tables only).

    Returns
    -------
    table : DataFrame
        The final :func:`sweep_status` table, also written to ``<out_dir>/runs_index.csv``.

    Raises
    ------
    SweepLockedError
        When another sweep holds ``<out_dir>/sweep.lock``.
    """
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    spec = _as_spec(spec, notebook_dir)
    out = sweep_dir(spec, out_dir)
    runs = plan_runs(spec, out)
    with sweep_lock(out):
        statuses = {run.run_id: read_status(run) for run in runs}
        stale = out_of_date(runs, statuses)
        pending = [run for run in runs
                   if run.run_id in stale or (statuses[run.run_id] or {}).get("state") != "completed"]
        log.info("sweep %s: %d runs, %d to run (%d out of date), in %s",
                 spec.name, len(runs), len(pending), len(stale), out)

        def write_index(live: bool = True) -> None:
            write_table(index_table(spec, runs, statuses, live), out / INDEX_NAME)

        write_index()
        try:
            if pending:
                with _connect(cluster, n_workers, local_resources) as (client, honour_resources):
                    _run_pending(client, pending, statuses, honour_resources, write_index, show_code)
        except BaseException:
            write_index(live=False)  # e.g. Ctrl-C: the runs it leaves are interrupted, not queued
            raise
    table = index_table(spec, runs, statuses, live=False)
    log.info("sweep %s: %s", spec.name, count_states(table))
    return table


def _run_pending(
    client: Client, pending: list[Run], statuses: dict, honour_resources: bool, on_change: Callable[[], None],
    show_code: bool = False,
) -> None:
    """Run the pending runs, recording each final status as it arrives.

    The runner schedules: a run is submitted once every run it depends on has finished and a worker thread is free,
    the ready run with the highest critical-path priority first (then in plan order). Dask would otherwise place a
    run on a worker as soon as it is ready, where it can wait behind a long run while another worker idles.
    """
    from distributed import as_completed

    _check_resources(client, pending, honour_resources)
    priorities = critical_path_priorities(pending)
    order = {run.run_id: index for index, run in enumerate(pending)}
    in_sweep = set(order)
    waiting = {run.run_id: run for run in pending}
    finished: dict[str, dict] = {}
    lost: dict[str, Exception] = {}
    running, run_of = as_completed(), {}

    def submit_ready() -> None:
        for run_id, run in list(waiting.items()):  # the dependants of a lost run are lost with it
            lost_upstream = [upstream for upstream in run.depends_on if upstream in lost]
            if lost_upstream:
                lost[run_id] = lost[lost_upstream[0]]
                del waiting[run_id]
        ready = sorted((run for run in waiting.values()
                        if all(upstream in finished for upstream in run.depends_on if upstream in in_sweep)),
                       key=lambda run: (-priorities[run.run_id], order[run.run_id]))
        free = max(1, sum(client.nthreads().values())) - running.count()
        for run in ready[:max(0, free)]:
            del waiting[run.run_id]
            inside = [upstream for upstream in run.depends_on if upstream in in_sweep]
            inputs = {upstream: statuses[upstream]["finished"] for upstream in run.depends_on if upstream not in in_sweep}
            future = client.submit(
                _execute, run, inputs, *(finished[upstream] for upstream in inside),
                key=f"{run.stage}-{uuid.uuid4().hex}", pure=False,
                resources=(run.resources or None) if honour_resources else None, priority=priorities[run.run_id],
                show_code=show_code,
            )
            run_of[future.key] = run
            running.add(future)

    for run in pending:
        statuses[run.run_id] = write_status(run, "queued", queued=utc_now())
    on_change()
    submit_ready()
    for done, future in enumerate(running, start=1):
        run = run_of[future.key]
        try:
            finished[run.run_id] = statuses[run.run_id] = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. a worker died: recorded below in dependency order
            lost[run.run_id] = error
        else:
            _log_outcome(statuses[run.run_id], f"[{done}/{len(pending)}]")
            on_change()
        submit_ready()
    lost |= {run_id: RuntimeError("its dependencies never finished") for run_id in waiting}
    if lost:
        _record_lost(pending, lost, statuses)
        on_change()


def _execute(run: Run, inputs: dict[str, str], *upstream: dict, show_code: bool = False) -> dict:
    """Execute one run on a worker (never raises): its final status."""
    unfinished = [status["run_id"] for status in upstream if status["state"] != "completed"]
    if unfinished:
        return write_status(run, "skipped", reason=f"dependency failed: {', '.join(unfinished)}")
    inputs = inputs | {status["run_id"]: status["finished"] for status in upstream}
    started, clock = utc_now(), time.perf_counter()
    write_status(run, "running", started=started, inputs=inputs)

    def timing() -> dict:
        return {"started": started, "finished": utc_now(), "duration_s": round(time.perf_counter() - clock, 3),
                "inputs": inputs}

    try:
        execute_notebook(run.notebook, run.path, run.parameters, notebook_dir=run.notebook_dir, show_code=show_code)
    except Exception as error:  # noqa: BLE001 - a failed run is reported, the sweep goes on
        return write_status(run, "failed", **timing(), error=_describe_error(error, run))
    return write_status(run, "completed", **timing())


def _describe_error(error: Exception, run: Run) -> dict:
    """Type, message and, for a failing cell, its index in the source notebook and an excerpt."""
    if not isinstance(error, papermill.PapermillExecutionError):
        return {"type": type(error).__name__, "message": str(error), "cell": None, "source": None}
    source = notebook_path(run.notebook, run.notebook_dir)
    parameters_cell = parameters_cell_index(nbformat.read(source, as_version=4), str(source))
    # papermill counts its injected-parameters cell, placed right after the parameters cell
    cell = error.cell_index - 1 if error.cell_index > parameters_cell else error.cell_index
    lines = error.source.splitlines()
    excerpt = "\n".join(lines[:_SOURCE_EXCERPT_LINES] + (["..."] if len(lines) > _SOURCE_EXCERPT_LINES else []))
    return {"type": error.ename, "message": error.evalue, "cell": cell, "source": excerpt}


def _record_lost(pending: list[Run], lost: Mapping[str, Exception], statuses: dict) -> None:
    """Statuses of runs whose Dask task errored (e.g. its worker died), in dependency order."""
    for run in (run for run in pending if run.run_id in lost):
        unfinished = [run_id for run_id in run.depends_on if (statuses[run_id] or {}).get("state") != "completed"]
        if unfinished:
            statuses[run.run_id] = write_status(run, "skipped", reason=f"dependency failed: {', '.join(unfinished)}")
        else:
            error = lost[run.run_id]
            statuses[run.run_id] = write_status(
                run, "failed", error={"type": type(error).__name__, "message": str(error), "cell": None, "source": None}
            )
        _log_outcome(statuses[run.run_id], "[lost by Dask]")


def _log_outcome(status: dict, progress: str) -> None:
    if status["state"] == "failed":
        error = status["error"]
        cell = "" if error["cell"] is None else f" in cell {error['cell']}"
        log.warning("%s %s failed%s: %s: %s", progress, status["run_id"], cell, error["type"], error["message"])
    else:
        details = status.get("reason") or f"{status['duration_s']:.1f} s"
        log.info("%s %s %s (%s)", progress, status["run_id"], status["state"], details)


def _check_resources(client: Client, runs: list[Run], honour_resources: bool) -> None:
    wanted = sorted({name for run in runs for name in run.resources})
    if not wanted:
        return
    if not honour_resources:
        log.info("the local cluster ignores the resources %s; pass local_resources to honour them", wanted)
        return
    declared = {name for worker in client.scheduler_info()["workers"].values() for name in worker.get("resources", {})}
    for name in sorted(set(wanted) - declared):
        log.warning(
            "no worker declares resource %r yet: runs that need it wait for one (start workers with --resources %s=1)",
            name, name,
        )


@contextlib.contextmanager
def _connect(cluster: object, n_workers: int, local_resources: Mapping[str, float] | None) -> Iterator[tuple]:
    """A Dask client for ``cluster`` and whether it honours resources; closes what it started."""
    from distributed import Client

    if isinstance(cluster, Client):
        yield cluster, True
        return
    with contextlib.ExitStack() as stack:
        if cluster is None:
            cluster = dask.config.get("scheduler-address", None) or _configured_cluster(n_workers, stack)
        honour_resources = cluster not in (None, "local") or local_resources is not None
        if cluster in (None, "local"):
            cluster = stack.enter_context(_local_cluster(n_workers, local_resources))
        try:
            client = stack.enter_context(Client(cluster))
        except OSError as error:
            raise ValueError(
                f"cannot reach the Dask scheduler {cluster!r} ({error}); start it or check the address"
            ) from error
        log.info("running on %s (dashboard %s)", client, client.dashboard_link)
        yield client, honour_resources


def _configured_cluster(n_workers: int, stack: contextlib.ExitStack) -> object:
    """The cluster named by the Dask config ``bt-sweep.cluster`` (scaled to ``n_workers``), or None."""
    name = dask.config.get("bt-sweep.cluster", None)
    if name is None:
        return None
    module, _, attribute = str(name).rpartition(".")
    try:
        factory = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"Dask config bt-sweep.cluster = {name!r} cannot be imported ({error}); "
            "give a dotted path such as dask_jobqueue.SLURMCluster and install its package"
        ) from error
    cluster = stack.enter_context(factory(**dask.config.get("bt-sweep.cluster-kwargs", None) or {}))
    cluster.scale(n_workers)
    return cluster


def _local_cluster(n_workers: int, local_resources: Mapping[str, float] | None):
    from distributed import LocalCluster

    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        resources=dict(local_resources) if local_resources else None,
        env={variable: threads for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    )
