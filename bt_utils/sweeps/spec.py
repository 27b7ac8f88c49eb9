"""Sweep specifications: read a ``papermill_runs/*.yaml`` file and check it against the notebooks.

:func:`load_spec` refuses, before anything runs, a specification with an unknown key, notebook, parameter,
axis or stage, a bad grid or a bad placeholder, naming the bad value. The format is in docs/sweeps.md.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import papermill
import yaml

from .notebooks import default_notebook_dir, notebook_path
from .state import INDEX_COLUMNS
from ..results import file_label

SPEC_KEYS = {"name", "defaults", "grid", "stages"}
STAGE_KEYS = {"notebook", "name", "over", "only", "parameters", "resources", "after"}
PATH_PLACEHOLDERS = ("sweep_dir", "spec_dir")
RESERVED_NAMES = {"output_dir", "run", "runs", *PATH_PLACEHOLDERS}
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(?P<name>[A-Za-z_]\w*)(?::(?P<argument>[^{}]*))?\}")
"""A placeholder ``{name}`` or ``{name:argument}``, or an escaped brace ``{{`` / ``}}``."""


class SweepSpecError(ValueError):
    """A sweep specification that cannot be run; the message names the bad value."""


@dataclass(frozen=True)
class Stage:
    """One notebook of a sweep and the grid axes it varies over."""

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


def load_spec(path: str | os.PathLike, notebook_dir: str | os.PathLike | None = None) -> SweepSpec:
    """Read and validate a sweep specification.

    Parameters
    ----------
    path : path-like
        The YAML file.
    notebook_dir : path-like, optional
        Folder of the notebooks (default: the suite's ``notebooks/``).

    Raises
    ------
    SweepSpecError
        For an unknown key, notebook, parameter, axis or stage, a bad grid or a bad reference; the message says
        which and how to fix it.
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


def parameters_cell_index(notebook: nbformat.NotebookNode, where: str) -> int:
    """Index of the notebook's one cell tagged ``parameters``."""
    tagged = [index for index, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise SweepSpecError(f"{where}: the notebook needs exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def _notebook_defaults(path: Path, where: str) -> dict:
    """The parameters cell's names and values as papermill reads them; non-literals as source text."""
    parameters_cell_index(nbformat.read(path, as_version=4), f"{where}: {path}")
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
            for match in PLACEHOLDER.finditer(text):
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
