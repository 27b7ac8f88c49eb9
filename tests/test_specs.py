"""The shipped sweep specifications load and name things the package knows."""

from pathlib import Path

import pytest

from bt_utils.downstream.tasks import TASKS
from bt_utils.sweeps.spec import load_spec

SPECS = sorted((Path(__file__).parents[1] / "papermill_runs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_downstream_stages_name_known_tasks_with_their_data(path):
    stages = [stage for stage in load_spec(path).stages if stage.notebook == "04_downstream"]
    for stage in stages:
        if "tasks" not in stage.parameters:  # the notebook's default demo tasks
            continue
        tasks, roots = stage.parameters["tasks"], stage.parameters.get("data_roots") or {}
        unknown = [task for task in tasks if task not in TASKS]
        assert not unknown, f"{path.name}: tasks unknown to load_task: {unknown}"
        assert set(roots) <= set(tasks), f"{path.name}: data_roots for tasks not run: {set(roots) - set(tasks)}"
        without_data = [task for task in tasks if TASKS[task].needs_source and task not in roots]
        assert not without_data, f"{path.name}: real tasks without a data root: {without_data}"


def test_the_specs_are_found():
    assert {"demo.yaml", "paper.yaml"} <= {path.name for path in SPECS}
