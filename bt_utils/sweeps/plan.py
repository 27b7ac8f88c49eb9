"""Planning a sweep: expand a specification into runs with their parameters, folders and dependencies."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .spec import PLACEHOLDER, Stage, SweepSpec, SweepSpecError
from ..results import file_label

@dataclass(frozen=True)
class Run:
    """One notebook execution of a sweep."""

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


def plan_runs(spec: SweepSpec, out_dir: str | os.PathLike) -> list[Run]:
    """Every run of a sweep, in an order where dependencies come first."""
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
    """Replace the placeholders in the strings of ``value`` by ``replace(name, argument)`` (None: keep it)."""
    if isinstance(value, Mapping):
        return {key: _expand(item, replace, unescape) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, replace, unescape) for item in value]
    if not isinstance(value, str):
        return value
    head = PLACEHOLDER.match(value)
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

    return PLACEHOLDER.sub(one, text)


def critical_path_priorities(runs: Sequence[Run]) -> dict[str, int]:
    """Dask priority of each run: the number of runs on the longest chain that starts with it."""
    dependents: dict[str, list[str]] = {run.run_id: [] for run in runs}
    for run in runs:
        for run_id in run.depends_on:
            if run_id in dependents:
                dependents[run_id].append(run.run_id)
    priorities: dict[str, int] = {}
    for run in reversed(runs):
        priorities[run.run_id] = 1 + max((priorities[child] for child in dependents[run.run_id]), default=0)
    return priorities
