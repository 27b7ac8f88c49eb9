"""Papermill sweeps: run the notebooks over a grid of parameters on a Dask cluster.

A sweep specification (``papermill_runs/*.yaml``) names a grid of parameter
values and the stages (notebooks) that run over it; a stage has one run per
combination of the values of the axes it varies over. :func:`load_spec` reads
and checks a specification, :func:`plan_runs` expands it into runs (parameters
with their placeholders filled in, run folders, dependencies), :func:`run_sweep`
executes the runs that have not completed on Dask, each once the runs it
depends on have completed, and :func:`sweep_status` reads the state of every
run back from its folder.

Every run has its own folder ``<out>/<stage>/<axis values>-<hash>``, named by a
hash of its parameters, with a ``status.json``; ``<out>/runs_index.csv`` lists
them all. Reruns skip what completed with the same parameters and redo what
failed or is out of date, as ``make`` does, so an interrupted sweep resumes.
docs/sweeps.md describes the specification format, the placeholders, the
dependencies, the run folders, reruns and how to run on a cluster.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import hashlib
import importlib
import itertools
import json
import logging
import os
import platform
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import nbformat
import pandas as pd
import papermill
import yaml

from .notebooks import default_notebook_dir, execute_notebook, notebook_path
from ..results import file_label, write_json, write_table

if TYPE_CHECKING:  # distributed is imported only when a sweep runs
    from distributed import Client

log = logging.getLogger(__name__)

STATES = ("missing", "queued", "running", "interrupted", "completed", "failed", "skipped")
"""Run states: no status yet, waiting, executing, left queued or running by a sweep that ended (killed or
interrupted), done, failed, not run because a dependency failed."""
UNFINISHED = ("queued", "running")
"""States a run is in only while a sweep holds the sweep folder's lock."""

SPEC_KEYS = {"name", "defaults", "grid", "stages"}
STAGE_KEYS = {"notebook", "name", "over", "only", "parameters", "resources", "after"}
PATH_PLACEHOLDERS = ("sweep_dir", "spec_dir")
RESERVED_NAMES = {"output_dir", "run", "runs", *PATH_PLACEHOLDERS}
INDEX_NAME = "runs_index.csv"
INDEX_COLUMNS = (
    "run_id", "stage", "state", "started", "finished", "duration_s",
    "error_type", "message", "error_cell", "error_source", "path",
)
"""Columns of the runs index; the grid's axes come between ``stage`` and ``state``."""
STATUS_NAME = "status.json"
LOCK_NAME = "sweep.lock"
"""The lock file a running sweep holds in its sweep folder (JSON: host, pid, start time)."""

_TOKEN = re.compile(r"\{\{|\}\}|\{(?P<name>[A-Za-z_]\w*)(?::(?P<argument>[^{}]*))?\}")
"""A placeholder ``{name}`` or ``{name:argument}``, or an escaped brace ``{{`` / ``}}``."""
_SOURCE_EXCERPT_LINES = 12


class SweepSpecError(ValueError):
    """A sweep specification that cannot be run; the message names the bad value."""


class SweepLockedError(FileExistsError):
    """Another sweep holds the sweep folder's lock file; the message names it, its holder and what to do."""


@dataclass(frozen=True)
class Stage:
    """One notebook of a sweep and the grid axes it varies over.

    Attributes
    ----------
    name : str
        Stage name: its runs' folder under the sweep folder.
    notebook : str
        Notebook name in the notebook folder.
    over : tuple of str
        Grid axes with one run per combination of values.
    parameters : dict
        The spec's defaults the notebook declares, updated with the stage's
        parameters; placeholders not yet expanded.
    notebook_defaults : dict
        The notebook's own defaults (its ``parameters`` cell, ``output_dir``
        left out): Python literals as values, other expressions as source text.
    resources : dict
        Dask resources each run needs.
    after : tuple of str
        Earlier stages whose matching runs must complete first.
    passed_axes : tuple of str
        The axes of ``over`` that the notebook declares, passed as parameters.
    only : dict of str to tuple
        Restriction of axes of ``over`` to some of their grid values (e.g. run
        an expensive stage for one model only); empty: the whole grid.
    """

    name: str
    notebook: str
    over: tuple[str, ...]
    parameters: dict
    notebook_defaults: dict
    resources: dict
    after: tuple[str, ...]
    passed_axes: tuple[str, ...]
    only: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see docs/sweeps.md).

    Attributes
    ----------
    name : str
    path : Path
        The specification file.
    grid : dict
        Axis name to list of values.
    stages : tuple of Stage
        In execution order.
    notebook_dir : Path
        Folder of the notebooks.
    """

    name: str
    path: Path
    grid: dict
    stages: tuple[Stage, ...]
    notebook_dir: Path


@dataclass(frozen=True)
class Run:
    """One notebook execution of a sweep.

    Attributes
    ----------
    run_id : str
        ``<stage>/<folder>``, unique in the sweep.
    stage, notebook : str
    axes : dict
        The run's value of each axis its stage varies over.
    parameters : dict
        The parameters the sweep passes to the notebook (placeholders
        expanded, ``output_dir`` left out).
    defaults : dict
        The notebook's own defaults of its other parameters (see
        :attr:`Stage.notebook_defaults`), recorded with ``parameters``.
    fingerprint : str
        8 hex digits of the hash of the notebook and its parameters (its
        defaults included).
    path : Path
        Run folder (the notebook's ``output_dir``).
    depends_on : tuple of str
        Run ids that must complete first.
    resources : dict
        Dask resources the run needs.
    notebook_dir : Path
    """

    run_id: str
    stage: str
    notebook: str
    axes: dict
    parameters: dict
    defaults: dict
    fingerprint: str
    path: Path
    depends_on: tuple[str, ...]
    resources: dict
    notebook_dir: Path


# --- specification --------------------------------------------------------------------------


def load_spec(path: str | os.PathLike, notebook_dir: str | os.PathLike | None = None) -> SweepSpec:
    """Read and validate a sweep specification.

    Parameters
    ----------
    path : path-like
        The YAML file.
    notebook_dir : path-like, optional
        Folder of the notebooks (default: the suite's ``notebooks/``).

    Returns
    -------
    spec : SweepSpec

    Raises
    ------
    SweepSpecError
        For an unknown key, notebook, parameter, axis or stage, a bad grid or
        a bad reference; the message says which and how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep specification {path} not found")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SweepSpecError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(raw, Mapping):
        raise SweepSpecError(f"{where}: a sweep specification is a mapping with keys {sorted(SPEC_KEYS)}")
    _check_keys(raw, SPEC_KEYS, where)
    name = str(raw.get("name") or path.stem)
    _check_folder_name(name, f"{where}: sweep name")
    folder = Path(notebook_dir) if notebook_dir is not None else default_notebook_dir()
    grid = _parse_grid(raw.get("grid") or {}, where)
    defaults = _mapping(raw.get("defaults") or {}, f"{where}: defaults")
    if "output_dir" in defaults:
        raise SweepSpecError(f"{where}: defaults sets output_dir; the sweep sets it to each run's folder, remove it")
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise SweepSpecError(f"{where}: 'stages' must be a non-empty list of stages, got {raw_stages!r}")
    stages: list[Stage] = []
    declared_anywhere: set[str] = set()
    for index, raw_stage in enumerate(raw_stages):
        stage, declared = _parse_stage(raw_stage, f"{where}: stage {index + 1}", grid, defaults, stages, folder)
        stages.append(stage)
        declared_anywhere |= declared
    _check_used(grid, defaults, stages, declared_anywhere, where)
    return SweepSpec(name, path.resolve(), grid, tuple(stages), folder.resolve())


def _check_keys(raw: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(map(str, set(raw) - allowed))
    if unknown:
        raise SweepSpecError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise SweepSpecError(f"{where} must be a mapping with string keys, got {value!r}")
    return dict(value)


def _check_folder_name(name: str, where: str) -> None:
    if file_label(name) != name or name.startswith("."):
        raise SweepSpecError(f"{where} {name!r} must be a plain folder name (letters, digits, '.', '_', '-')")


def _check_axis_name(axis: str, where: str) -> None:
    if not axis.isidentifier() or axis in RESERVED_NAMES | set(INDEX_COLUMNS):
        raise SweepSpecError(
            f"{where}: grid axis {axis!r} must be a notebook parameter name other than "
            f"{sorted(RESERVED_NAMES | set(INDEX_COLUMNS))}; rename it"
        )


def _parse_grid(raw: object, where: str) -> dict[str, list]:
    grid = _mapping(raw, f"{where}: grid")
    for axis, values in grid.items():
        _check_axis_name(axis, where)
        if not isinstance(values, list) or not values:
            raise SweepSpecError(f"{where}: grid axis {axis!r} must be a non-empty list of values, got {values!r}")
        for value in values:
            if not isinstance(value, str | int | float | bool):
                raise SweepSpecError(
                    f"{where}: grid axis {axis!r} has value {value!r}; axis values must be strings or numbers"
                )
        _check_no_repeats(values, f"{where}: grid axis {axis!r}")
    return grid


def _check_no_repeats(values: list, what: str) -> None:
    """Raise a SweepSpecError naming the values that ``values`` lists more than once."""
    repeated = sorted({repr(value) for value in values if values.count(value) > 1})
    if repeated:
        raise SweepSpecError(f"{what} repeats {', '.join(repeated)}; list each value once")


def _parse_stage(
    raw: object, where: str, grid: dict, defaults: dict, earlier: list[Stage], notebook_dir: Path
) -> tuple[Stage, set[str]]:
    if not isinstance(raw, Mapping) or "notebook" not in raw:
        raise SweepSpecError(f"{where}: a stage is a mapping with at least 'notebook' and 'over', got {raw!r}")
    notebook = str(raw["notebook"]).removesuffix(".ipynb")
    name = str(raw.get("name", notebook))
    where = f"{where} ({name})"
    _check_keys(raw, STAGE_KEYS, where)
    if name in {stage.name for stage in earlier}:
        raise SweepSpecError(f"{where}: another stage is already named {name!r}; give one of them a distinct 'name'")
    _check_folder_name(name, f"{where}: stage name")
    try:
        notebook_defaults = _notebook_defaults(notebook_path(notebook, notebook_dir), where)
    except FileNotFoundError as error:
        raise SweepSpecError(f"{where}: {error}") from None
    declared = set(notebook_defaults)
    over = _parse_over(raw.get("over"), where, grid)
    parameters = _parse_parameters(raw.get("parameters") or {}, where, notebook, declared, over)
    merged = {key: value for key, value in defaults.items() if key in declared} | parameters
    referenced, used_axes = _check_placeholders(merged, where, over, grid, earlier)
    unused = [axis for axis in over if axis not in declared and axis not in used_axes]
    if unused:
        raise SweepSpecError(
            f"{where}: the stage varies over {unused} but the notebook does not declare such parameter(s) and no "
            f"parameter uses {', '.join(f'{{{axis}}}' for axis in unused)}; declare them in the notebook's "
            "parameters cell, use them in a parameter, or remove them from 'over'"
        )
    after = _parse_after(raw.get("after", [stage.name for stage in earlier]), where, earlier)
    resources = _parse_resources(raw.get("resources") or {}, where)
    passed_axes = tuple(axis for axis in over if axis in declared)
    only = _parse_only(raw.get("only") or {}, where, grid, over)
    own_defaults = {key: value for key, value in notebook_defaults.items() if key != "output_dir"}  # the run folder
    stage = Stage(name, notebook, over, merged, own_defaults, resources, tuple(dict.fromkeys([*after, *referenced])),
                  passed_axes, only)
    return stage, declared


def _parse_only(raw: object, where: str, grid: dict, over: tuple[str, ...]) -> dict:
    only = _mapping(raw, f"{where}: only")
    for axis, values in only.items():
        if axis not in over:
            raise SweepSpecError(f"{where}: 'only' restricts axis {axis!r}, which is not in over={list(over)}")
        if not isinstance(values, list) or not values or any(v not in grid[axis] for v in values):
            raise SweepSpecError(f"{where}: 'only' of {axis!r} must be a non-empty list of its grid values "
                                 f"{grid[axis]}, got {values!r}")
        _check_no_repeats(values, f"{where}: 'only' of {axis!r}")
    return {axis: tuple(values) for axis, values in only.items()}


def _parameters_cell(notebook: nbformat.NotebookNode, where: str) -> int:
    """Index of the notebook's one cell tagged ``parameters``."""
    tagged = [index for index, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise SweepSpecError(f"{where}: the notebook needs exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def _notebook_defaults(path: Path, where: str) -> dict:
    """The names assigned in a notebook's parameters cell and their values (papermill's reading of it).

    A value that is a Python literal JSON can write (``[4]``, ``"S1"``,
    ``None``) is returned as that value, any other expression as its source text.
    """
    _parameters_cell(nbformat.read(path, as_version=4), f"{where}: {path}")
    defaults = {name: _default_value(found["default"]) for name, found in papermill.inspect_notebook(str(path)).items()}
    if "output_dir" not in defaults:
        raise SweepSpecError(
            f"{where}: notebook {path} does not declare output_dir in its parameters cell; "
            "sweeps set it to the run folder, where the notebook must write its outputs"
        )
    return defaults


def _default_value(source: str) -> object:
    """A default's value when its source text is a literal JSON can write, else the source text."""
    try:
        value = ast.literal_eval(source)
        json.dumps(value, sort_keys=True)  # e.g. a set or non-string keys: keep the source text
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return source
    return value


def _parse_parameters(raw: object, where: str, notebook: str, declared: set[str], over: tuple[str, ...]) -> dict:
    parameters = _mapping(raw, f"{where}: parameters")
    undeclared = sorted(set(parameters) - declared)
    if undeclared:
        raise SweepSpecError(
            f"{where}: notebook {notebook!r} does not declare parameter(s) {undeclared} in its parameters cell; "
            f"it declares {sorted(declared)}"
        )
    set_by_sweep = sorted(set(parameters) & {*over, "output_dir"})
    if set_by_sweep:
        raise SweepSpecError(
            f"{where}: parameter(s) {set_by_sweep} are set by the sweep (the stage's axes and output_dir); "
            "remove them from 'parameters'"
        )
    return parameters


def _parse_over(over: object, where: str, grid: dict) -> tuple[str, ...]:
    if not isinstance(over, list):
        raise SweepSpecError(
            f"{where}: 'over' must list the grid axes the stage varies over ([] for a single run), got {over!r}"
        )
    for axis in over:
        if not isinstance(axis, str) or axis not in grid:
            raise SweepSpecError(f"{where}: axis {axis!r} in 'over' is not in the grid; grid axes: {sorted(grid)}")
    if len(set(over)) != len(over):
        raise SweepSpecError(f"{where}: 'over' lists an axis twice: {over}")
    return tuple(over)


def _parse_after(after: object, where: str, earlier: list[Stage]) -> list[str]:
    names = [stage.name for stage in earlier]
    if not isinstance(after, list) or not all(isinstance(name, str) and name in names for name in after):
        raise SweepSpecError(f"{where}: 'after' must list earlier stages (of {names}), got {after!r}")
    return after


def _parse_resources(raw: object, where: str) -> dict:
    resources = _mapping(raw, f"{where}: resources")
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
            raise SweepSpecError(f"{where}: resource {name!r} needs a positive amount, got {amount!r}")
    return resources


def _strings(value: object) -> Iterator[str]:
    """Every string in a parameter value, at any depth of lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _check_placeholders(
    parameters: dict, where: str, over: tuple[str, ...], grid: dict, earlier: list[Stage]
) -> tuple[list[str], set[str]]:
    """Validate the placeholders of a stage's parameters; return the stages and the axes they name."""
    by_name = {stage.name: stage for stage in earlier}
    referenced, axes = [], set()
    for key, value in parameters.items():
        for text in _strings(value):
            for match in _TOKEN.finditer(text):
                name, argument = match["name"], match["argument"]
                context = f"{where}: parameter {key!r}"
                if name is None or (argument is None and name in PATH_PLACEHOLDERS):
                    continue
                if argument is None and name in over:
                    axes.add(name)
                elif argument is not None and name in ("run", "runs"):
                    referenced.append(_check_reference(name, argument, match.start() == 0, context, over, by_name))
                elif name in grid:
                    raise SweepSpecError(
                        f"{context}: {match.group(0)} names an axis the stage does not vary over; "
                        f"add {name!r} to its 'over', write the value, or escape the braces ({{{{{name}}}}})"
                    )
                else:
                    raise SweepSpecError(
                        f"{context}: unknown placeholder {match.group(0)}; use {{sweep_dir}}, {{spec_dir}}, "
                        f"{{run:STAGE}}, {{runs:STAGE}} or an axis the stage varies over ({list(over)}), "
                        "or escape literal braces as {{ and }}"
                    )
    return referenced, axes


def _check_reference(
    kind: str, target: str, leading: bool, where: str, over: tuple[str, ...], earlier: dict[str, Stage]
) -> str:
    if target not in earlier:
        raise SweepSpecError(
            f"{where}: {{{kind}:{target}}} names no earlier stage (a stage can only use the runs of stages "
            f"listed before it); earlier stages: {list(earlier)}"
        )
    extra = [axis for axis in earlier[target].over if axis not in over]
    if kind == "run" and extra:
        raise SweepSpecError(
            f"{where}: {{run:{target}}} is ambiguous: {target} also varies over {extra}; "
            f"use \"{{runs:{target}}}\" for a mapping keyed by {'/'.join(extra)}"
        )
    if kind == "runs" and not leading:
        raise SweepSpecError(
            f"{where}: {{runs:{target}}} must begin its string: the string becomes a mapping of run folders, "
            "each followed by the rest of the string"
        )
    if kind == "runs" and not extra:
        raise SweepSpecError(
            f"{where}: {{runs:{target}}} would have no keys: {target} varies over no axis that this stage does not; "
            f"use {{run:{target}}} for its run folder"
        )
    return target


def _check_used(grid: dict, defaults: dict, stages: list[Stage], declared: set[str], where: str) -> None:
    unused_axes = sorted(set(grid) - {axis for stage in stages for axis in stage.over})
    if unused_axes:
        raise SweepSpecError(
            f"{where}: grid axis(es) {unused_axes} used by no stage; add them to an 'over' or remove them"
        )
    unused_defaults = sorted(set(defaults) - declared)
    if unused_defaults:
        raise SweepSpecError(
            f"{where}: defaults {unused_defaults} are declared by no notebook of the sweep; "
            "check their spelling against the notebooks' parameters cells"
        )


# --- planning -------------------------------------------------------------------------------


def plan_runs(spec: SweepSpec, out_dir: str | os.PathLike) -> list[Run]:
    """Every run of a sweep, in an order where dependencies come first.

    Parameters
    ----------
    spec : SweepSpec
    out_dir : path-like
        The sweep folder.

    Returns
    -------
    runs : list of Run
    """
    out = Path(out_dir).resolve()
    roots = {"sweep_dir": out.as_posix(), "spec_dir": spec.path.parent.as_posix()}
    by_stage: dict[str, list[Run]] = {}
    for stage in spec.stages:
        combinations = itertools.product(*(stage.only.get(axis, spec.grid[axis]) for axis in stage.over))
        by_stage[stage.name] = [
            _plan_run(spec, stage, dict(zip(stage.over, values, strict=True)), by_stage, out, roots)
            for values in combinations
        ]
    return [run for runs in by_stage.values() for run in runs]


def _matching(runs: list[Run], axes: dict) -> list[Run]:
    """The runs that agree with ``axes`` on every axis both vary over."""
    return [run for run in runs if all(axes[axis] == value for axis, value in run.axes.items() if axis in axes)]


def _plan_run(spec: SweepSpec, stage: Stage, axes: dict, by_stage: dict, out: Path, roots: dict) -> Run:
    def relative(name: str, argument: str | None) -> object:
        """Axis values and run folders written under ``{sweep_dir}``; other placeholders kept."""
        if argument is None:
            return axes.get(name)
        matches = _matching(by_stage[argument], axes)
        if not matches:
            raise SweepSpecError(f"stage {stage.name!r}, run {axes}: no run of stage {argument!r} matches it "
                                 "(check the stages' 'only' restrictions)")
        if name == "run":
            return f"{{sweep_dir}}/{matches[0].run_id}"
        return {
            "/".join(str(value) for axis, value in run.axes.items() if axis not in axes): f"{{sweep_dir}}/{run.run_id}"
            for run in matches
        }

    parameters = _expand(stage.parameters, relative, unescape=False) | {axis: axes[axis] for axis in stage.passed_axes}
    defaults = {name: value for name, value in stage.notebook_defaults.items() if name not in parameters}
    identity = json.dumps({"notebook": stage.notebook, "parameters": defaults | parameters}, sort_keys=True,
                          default=str)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:8]
    readable = "-".join(file_label(value) for value in axes.values()) or "all"
    run_id = f"{stage.name}/{readable[:80]}-{fingerprint}"
    depends_on = [run.run_id for name in stage.after for run in _matching(by_stage[name], axes)]
    return Run(
        run_id=run_id, stage=stage.name, notebook=stage.notebook, axes=axes,
        parameters=_expand(parameters, lambda name, argument: None if argument else roots.get(name), unescape=True),
        defaults=defaults, fingerprint=fingerprint, path=out / run_id, depends_on=tuple(depends_on),
        resources=stage.resources, notebook_dir=spec.notebook_dir,
    )


def _expand(value: object, replace: Callable[[str, str | None], object], unescape: bool) -> object:
    """Replace the placeholders in the strings of ``value``.

    ``replace(name, argument)`` returns a placeholder's value, or None to keep
    it. A string that is one placeholder becomes its value itself (e.g. a
    number); a string that begins with a placeholder whose value is a mapping
    becomes that mapping, the rest of the string appended to each of its
    values; other placeholders become text. Escaped braces are kept, or
    turned into single braces with ``unescape``.
    """
    if isinstance(value, Mapping):
        return {key: _expand(item, replace, unescape) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, replace, unescape) for item in value]
    if not isinstance(value, str):
        return value
    head = _TOKEN.match(value)
    if head and head["name"]:
        replacement = replace(head["name"], head["argument"])
        if replacement is not None and head.end() == len(value):
            return replacement
        if isinstance(replacement, Mapping):
            rest = _substitute(value[head.end():], replace, unescape)
            return {key: f"{item}{rest}" for key, item in replacement.items()}
    return _substitute(value, replace, unescape)


def _substitute(text: str, replace: Callable[[str, str | None], object], unescape: bool) -> str:
    def one(match: re.Match) -> str:
        if match["name"] is None:
            return match.group(0)[0] if unescape else match.group(0)
        replacement = replace(match["name"], match["argument"])
        return match.group(0) if replacement is None else str(replacement)

    return _TOKEN.sub(one, text)


# --- status files ---------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _write_status(run: Run, state: str, **fields) -> dict:
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
        When the file is not a JSON mapping (e.g. truncated); the message names
        it and says that deleting it is safe.
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


def _execute(run: Run, inputs: dict[str, str], *upstream: dict) -> dict:
    """Execute one run on a worker (never raises): its final status.

    ``inputs`` are the ``finished`` times of the runs it depends on that had
    completed before this sweep; ``upstream`` are the final statuses of those
    this sweep executed. The run is skipped when one of them did not complete;
    else its status records the ``finished`` time of every run it depends on
    as ``inputs``, to tell later whether one of them ran again since.
    """
    unfinished = [status["run_id"] for status in upstream if status["state"] != "completed"]
    if unfinished:
        return _write_status(run, "skipped", reason=f"dependency failed: {', '.join(unfinished)}")
    inputs = inputs | {status["run_id"]: status["finished"] for status in upstream}
    started, clock = _now(), time.perf_counter()
    _write_status(run, "running", started=started, inputs=inputs)

    def timing() -> dict:
        return {"started": started, "finished": _now(), "duration_s": round(time.perf_counter() - clock, 3),
                "inputs": inputs}

    try:
        execute_notebook(run.notebook, run.path, run.parameters, notebook_dir=run.notebook_dir)
    except Exception as error:  # noqa: BLE001 - a failed run is reported, the sweep goes on
        return _write_status(run, "failed", **timing(), error=_describe_error(error, run))
    return _write_status(run, "completed", **timing())


def _describe_error(error: Exception, run: Run) -> dict:
    """Type, message and, for a failing cell, its index in the source notebook and an excerpt."""
    if not isinstance(error, papermill.PapermillExecutionError):
        return {"type": type(error).__name__, "message": str(error), "cell": None, "source": None}
    source = notebook_path(run.notebook, run.notebook_dir)
    parameters_cell = _parameters_cell(nbformat.read(source, as_version=4), str(source))
    # papermill counts its injected-parameters cell, placed right after the parameters cell
    cell = error.cell_index - 1 if error.cell_index > parameters_cell else error.cell_index
    lines = error.source.splitlines()
    excerpt = "\n".join(lines[:_SOURCE_EXCERPT_LINES] + (["..."] if len(lines) > _SOURCE_EXCERPT_LINES else []))
    return {"type": error.ename, "message": error.evalue, "cell": cell, "source": excerpt}


def out_of_date(runs: Sequence[Run], statuses: Mapping[str, dict | None]) -> dict[str, str]:
    """The completed runs that must run again because a run they depend on changed (as ``make`` does).

    A completed run is out of date when a run it depends on will run in this
    sweep (it has not completed, or is itself out of date), or has finished
    again since this run read its results: its ``finished`` time differs from
    the one this run's status recorded in ``inputs`` (e.g. its folder was
    deleted and it ran again in a sweep interrupted before its dependants did).
    Once a sweep has completed every run, none is out of date.

    Parameters
    ----------
    runs : sequence of Run
        Runs in dependency order (:func:`plan_runs`).
    statuses : mapping
        ``run_id -> status`` (:func:`read_status`; None for a run without one).

    Returns
    -------
    reasons : dict of str to str
        ``run_id -> why it runs again`` for each out-of-date run.
    """
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


def _table(spec: SweepSpec, runs: list[Run], statuses: Mapping[str, dict | None], live: bool) -> pd.DataFrame:
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


# --- running --------------------------------------------------------------------------------


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
        One row per planned run with the columns of :data:`INDEX_COLUMNS` and
        one per grid axis; ``state`` is one of :data:`STATES` (``missing``: the
        run has no status for these parameters yet; ``interrupted``: its status
        says queued or running but no sweep holds the folder's lock, see
        :func:`sweep_running`). The ``message`` of a completed run that the
        next sweep runs again says why (:func:`out_of_date`). When no sweep
        runs, ``<out_dir>/runs_index.csv``, if any, is rewritten to agree.
    """
    spec = _as_spec(spec, notebook_dir)
    out = sweep_dir(spec, out_dir)
    runs = plan_runs(spec, out)
    live = sweep_running(out)
    table = _table(spec, runs, {run.run_id: read_status(run) for run in runs}, live)
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
) -> pd.DataFrame:
    """Run every run of a sweep that has not completed yet, in parallel on Dask.

    Parameters
    ----------
    spec : SweepSpec or path-like
        The specification (see docs/sweeps.md).
    out_dir : path-like, optional
        The sweep folder (default: ``runs/<spec name>`` in the current folder).
    cluster : None, "local", str, distributed.Client or cluster, optional
        Where runs execute: ``"local"`` starts a ``LocalCluster`` of ``n_workers``
        single-threaded processes; a string is a scheduler address; a client is
        used as is; a cluster object (e.g. dask-jobqueue's ``SLURMCluster``) is
        connected to. ``None`` uses the Dask configuration (docs/sweeps.md),
        else a local cluster.
    n_workers : int
        Workers of a local or configured cluster.
    notebook_dir : path-like, optional
        Folder of the notebooks (default: the suite's ``notebooks/``).
    local_resources : mapping, optional
        Resources each local worker declares (e.g. ``{"GPU": 1}``); without
        them the local cluster ignores the stages' ``resources``.

    Returns
    -------
    table : DataFrame
        The final :func:`sweep_status` table, also written to
        ``<out_dir>/runs_index.csv``; :func:`describe_failures` reports its
        failed runs with their cells. Runs are logged as they finish.

    Raises
    ------
    SweepLockedError
        When another sweep is running in ``out_dir`` (it holds
        ``<out_dir>/sweep.lock``, which this sweep holds until it returns or raises).
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
            write_table(_table(spec, runs, statuses, live), out / INDEX_NAME)

        write_index()
        try:
            if pending:
                with _connect(cluster, n_workers, local_resources) as (client, honour_resources):
                    _run_pending(client, pending, statuses, honour_resources, write_index)
        except BaseException:
            write_index(live=False)  # e.g. Ctrl-C: the runs it leaves are interrupted, not queued
            raise
    table = _table(spec, runs, statuses, live=False)
    log.info("sweep %s: %s", spec.name, count_states(table))
    return table


def _run_pending(
    client: Client, pending: list[Run], statuses: dict, honour_resources: bool, on_change: Callable[[], None]
) -> None:
    """Submit the pending runs with their dependencies, record each final status as it arrives."""
    from distributed import as_completed

    _check_resources(client, pending, honour_resources)
    priorities = critical_path_priorities(pending)
    futures = {}
    for run in pending:
        statuses[run.run_id] = _write_status(run, "queued", queued=_now())
        upstream = [futures[run_id] for run_id in run.depends_on if run_id in futures]
        inputs = {run_id: statuses[run_id]["finished"] for run_id in run.depends_on if run_id not in futures}
        futures[run.run_id] = client.submit(
            _execute, run, inputs, *upstream, key=f"{run.stage}-{uuid.uuid4().hex}", pure=False,
            resources=(run.resources or None) if honour_resources else None, priority=priorities[run.run_id],
        )
    on_change()
    run_of = {future.key: run for run, future in zip(pending, futures.values(), strict=True)}
    lost = {}
    for done, future in enumerate(as_completed(futures.values()), start=1):
        run = run_of[future.key]
        try:
            statuses[run.run_id] = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. a worker died: recorded below in dependency order
            lost[run.run_id] = error
            continue
        _log_outcome(statuses[run.run_id], f"[{done}/{len(pending)}]")
        on_change()
    if lost:
        _record_lost(pending, lost, statuses)
        on_change()


@contextlib.contextmanager
def sweep_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock file of a sweep folder so that no other sweep runs there meanwhile.

    The lock, ``<out_dir>/sweep.lock``, is created atomically (``O_EXCL``) and
    holds the host, process id and start time of its holder; it is removed
    when the block exits, also on an error. A lock left by a process of this
    host that no longer exists (a killed sweep) is taken over with a warning.

    Parameters
    ----------
    out_dir : path-like
        The sweep folder, created if needed.

    Yields
    ------
    lock : Path
        The lock file.

    Raises
    ------
    SweepLockedError
        When another sweep holds the lock; the message names the lock file and
        its holder and says how to remove a stale lock.
    """
    path = Path(out_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": platform.node(), "pid": os.getpid(), "started": _now(), "token": uuid.uuid4().hex}
    _take_lock(path, mine)
    try:
        yield path
    finally:
        if _read_lock(path) == mine:
            path.unlink()
        else:
            log.warning("the sweep lock %s was replaced or removed while this sweep held it; left as it is", path)


def sweep_running(out_dir: str | os.PathLike) -> bool:
    """Whether a sweep holds the lock of a sweep folder (:func:`sweep_lock`).

    False when there is no lock, or its holder was a process of this host that
    has ended (a killed sweep); True otherwise, also for a holder on another
    host, whose process cannot be checked.
    """
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


def critical_path_priorities(runs: Sequence[Run]) -> dict[str, int]:
    """Dask priority of each run: the number of runs on the longest chain that starts with it.

    Among runs that are ready, the scheduler starts the highest priority first,
    so the runs that many later stages wait on (e.g. the brain-tuning of the
    model whose alignment, impact and maps follow) start before leaves such as
    a lone summary: a critical-path heuristic that shortens the sweep's wall time.

    Parameters
    ----------
    runs : sequence of Run
        Runs in dependency order (every run after the runs it depends on);
        dependencies outside ``runs`` are ignored.

    Returns
    -------
    priorities : dict of str to int
        ``run_id -> chain length`` (1 for a run nothing in ``runs`` depends on).
    """
    dependents: dict[str, list[str]] = {run.run_id: [] for run in runs}
    for run in runs:
        for run_id in run.depends_on:
            if run_id in dependents:
                dependents[run_id].append(run.run_id)
    priorities: dict[str, int] = {}
    for run in reversed(runs):
        priorities[run.run_id] = 1 + max((priorities[child] for child in dependents[run.run_id]), default=0)
    return priorities


def _record_lost(pending: list[Run], lost: Mapping[str, Exception], statuses: dict) -> None:
    """Statuses of runs whose Dask task errored (e.g. its worker died), in dependency order."""
    for run in (run for run in pending if run.run_id in lost):
        unfinished = [run_id for run_id in run.depends_on if (statuses[run_id] or {}).get("state") != "completed"]
        if unfinished:
            statuses[run.run_id] = _write_status(run, "skipped", reason=f"dependency failed: {', '.join(unfinished)}")
        else:
            error = lost[run.run_id]
            statuses[run.run_id] = _write_status(
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


# --- reports --------------------------------------------------------------------------------


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
