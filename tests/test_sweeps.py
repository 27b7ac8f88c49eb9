"""Papermill sweeps on Dask: specification checks, run planning, failures, dependencies and resume.

The sweeps run the tiny notebooks of ``tests/sweep_fixtures`` (``example.yaml``):
``prepare`` (per subject) -> ``train`` (per subject and model, fails while a marker
file exists) -> ``compare`` (per subject, all models) -> ``summary`` (one run).
"""

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import nbformat
import pandas as pd
import pytest
import yaml

from bt_utils import cli
from bt_utils.results import write_table
from bt_utils.sweeps.plan import critical_path_priorities, plan_runs
from bt_utils.sweeps.runner import run_sweep, sweep_status
from bt_utils.sweeps.spec import SweepSpecError, load_spec
from bt_utils.sweeps.state import (
    INDEX_NAME,
    LOCK_NAME,
    SweepLockedError,
    count_states,
    describe_failures,
    index_table,
    sweep_lock,
    write_status,
)

FIXTURES = Path(__file__).parent / "sweep_fixtures"


def write_spec(folder: Path, change=None) -> Path:
    """The example specification, edited by ``change(spec)``, written to ``folder/spec.yaml``."""
    spec = yaml.safe_load((FIXTURES / "example.yaml").read_text())
    if change is not None:
        change(spec)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def edit(path: str, value):
    """An edit of the example spec: set the item at a dotted path (list indices as numbers)."""
    *parents, last = path.split(".")

    def change(spec):
        node = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value

    return change


def instrument(spec: dict, folder: Path) -> None:
    """Count executions in ``folder/counter.txt``; fail a train run while ``folder/fail-<subject>-<model>`` exists."""
    spec["defaults"]["counter_file"] = str(folder / "counter.txt")
    spec["stages"][1]["parameters"]["fail_marker"] = str(folder / "fail-{subject}-{model}")


def executions(folder: Path) -> list[str]:
    counter = folder / "counter.txt"
    return counter.read_text().split() if counter.is_file() else []


def changed_stages(before: list[str], after: list[str]) -> set[str]:
    """Stages with a run id that differs between two plans of the same grid."""
    return {old.split("/")[0] for old, new in zip(before, after, strict=True) if old != new}


def started_times(table: pd.DataFrame) -> dict[str, str]:
    """``run_id -> started`` read from the runs' status files (a run that ran again has a new one)."""
    return {run_id: json.loads(Path(path, "status.json").read_text())["started"] for run_id, path in table.path.items()}


def set_default(notebook: Path, line: str) -> None:
    """Add (or replace) a line ``name = value`` in the parameters cell of a notebook file."""
    content = nbformat.read(notebook, as_version=4)
    cell = next(cell for cell in content.cells if "parameters" in cell.metadata.get("tags", []))
    name = line.split("=")[0].strip()
    kept = [old for old in cell.source.splitlines() if old.split("=")[0].strip() != name]
    cell.source = "\n".join([*kept, line])
    nbformat.write(content, notebook)


def failing_cell(notebook: str, text: str) -> int:
    cells = nbformat.read(FIXTURES / f"{notebook}.ipynb", as_version=4).cells
    return next(index for index, cell in enumerate(cells) if text in cell.source)


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes that declare the example's ``slots`` resource."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"slots": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


# --- planning -------------------------------------------------------------------------------


def test_example_plans_one_run_per_combination_with_references(tmp_path):
    spec = load_spec(FIXTURES / "example.yaml", FIXTURES)
    runs = {run.run_id: run for run in plan_runs(spec, tmp_path / "sweep")}
    by_stage = pd.Series([run.stage for run in runs.values()]).value_counts().to_dict()
    assert by_stage == {"prepare": 2, "train": 4, "compare": 2, "summary": 1}
    train = next(run for run in runs.values() if run.axes == {"subject": "S2", "model": "bad"})
    assert re.fullmatch(r"train/S2-bad-[0-9a-f]{8}", train.run_id)
    assert train.path == (tmp_path / "sweep" / train.run_id).resolve()
    prepare_s2 = next(run for run in runs.values() if run.stage == "prepare" and run.axes["subject"] == "S2")
    assert train.parameters == {
        "counter_file": "", "prepared": str(prepare_s2.path), "fail_marker": "", "subject": "S2", "model": "bad",
    }
    assert train.depends_on == (prepare_s2.run_id,)
    assert train.resources == {"slots": 1}
    compare = next(run for run in runs.values() if run.stage == "compare" and run.axes == {"subject": "S2"})
    trained = {run.axes["model"]: str(run.path) for run in runs.values()
               if run.stage == "train" and run.axes["subject"] == "S2"}
    assert compare.parameters["trained"] == trained and set(trained) == {"good", "bad"}
    summary = runs[next(run_id for run_id in runs if run_id.startswith("summary/all-"))]
    assert set(summary.depends_on) == set(runs) - {summary.run_id}
    assert summary.parameters["sweep_dir"] == str((tmp_path / "sweep").resolve())
    assert set(summary.parameters["compared"]) == {"S1", "S2"}


def test_run_names_survive_moving_the_sweep_and_follow_the_parameters(tmp_path):
    spec = load_spec(FIXTURES / "example.yaml", FIXTURES)
    original = [run.run_id for run in plan_runs(spec, tmp_path / "a")]
    assert [run.run_id for run in plan_runs(spec, tmp_path / "b")] == original

    def rescale(spec):
        spec["stages"][0]["parameters"]["scale"] = 3.0

    rescaled = [run.run_id for run in plan_runs(load_spec(write_spec(tmp_path, rescale), FIXTURES), tmp_path / "a")]
    assert changed_stages(original, rescaled) == {"prepare", "train", "compare", "summary"}  # carried downstream

    def retarget(spec):
        spec["stages"][1]["parameters"]["fail_marker"] = "elsewhere"

    retargeted = [run.run_id for run in plan_runs(load_spec(write_spec(tmp_path, retarget), FIXTURES), tmp_path / "a")]
    assert changed_stages(original, retargeted) == {"train", "compare", "summary"}


def test_the_notebooks_own_defaults_enter_the_run_hash(tmp_path):
    notebooks = shutil.copytree(FIXTURES, tmp_path / "notebooks")
    spec = write_spec(tmp_path)

    def plan():
        return plan_runs(load_spec(spec, notebooks), tmp_path / "sweep")

    original = plan()
    set_default(notebooks / "train.ipynb", "layers = [4]")
    with_layers = plan()
    assert changed_stages([run.run_id for run in original], [run.run_id for run in with_layers]) == {
        "train", "compare", "summary"}
    train = next(run for run in with_layers if run.stage == "train")
    assert train.defaults == {"layers": [4]} and "layers" not in train.parameters  # the notebook keeps its own
    set_default(notebooks / "train.ipynb", "layers = [5]")
    changed = [run.run_id for run in plan()]
    assert changed_stages([run.run_id for run in with_layers], changed) == {"train", "compare", "summary"}
    set_default(notebooks / "train.ipynb", "layers = list(range(4))")  # not a literal: its source text counts
    assert next(run for run in plan() if run.stage == "train").defaults == {"layers": "list(range(4))"}

    # a default that the sweep overrides does not count
    set_default(notebooks / "train.ipynb", "layers = [5]")
    set_default(notebooks / "prepare.ipynb", "scale = 9.0")  # the spec sets scale: 2.0
    assert [run.run_id for run in plan()] == changed


def test_placeholders_expand_to_folders_and_axis_values(tmp_path):
    def placeholders(spec):
        spec["stages"][1]["parameters"]["fail_marker"] = "{spec_dir}/markers/{model}-{subject}-{{model}}.txt"
        spec["stages"][2]["parameters"]["trained"] = "{runs:train}/score.csv"
        spec["stages"][3]["parameters"]["compared"] = {"prepared": "{run:prepare}", "subjects": ["{subject}"]}
        spec["stages"][3]["over"] = ["subject"]  # summary declares no subject: the axis reaches it as {subject}

    runs = plan_runs(load_spec(write_spec(tmp_path, placeholders), FIXTURES), tmp_path / "sweep")
    train = next(run for run in runs if run.stage == "train")
    assert train.parameters["fail_marker"] == f"{tmp_path.resolve()}/markers/good-S1-{{model}}.txt"
    compare = next(run for run in runs if run.stage == "compare")
    trained = [run for run in runs if run.stage == "train" and run.axes["subject"] == "S1"]
    assert compare.parameters["trained"] == {run.axes["model"]: f"{run.path}/score.csv" for run in trained}
    summary = [run for run in runs if run.stage == "summary"]
    assert [run.parameters["compared"]["subjects"] for run in summary] == [["S1"], ["S2"]]
    assert "subject" not in summary[0].parameters
    prepare_s2 = next(run for run in runs if run.stage == "prepare" and run.axes["subject"] == "S2")
    assert summary[1].parameters["compared"]["prepared"] == str(prepare_s2.path)


def test_status_before_any_run_is_missing(tmp_path):
    table = sweep_status(FIXTURES / "example.yaml", tmp_path / "sweep", notebook_dir=FIXTURES)
    assert len(table) == 9 and set(table.state) == {"missing"}
    assert list(table.columns[:4]) == ["run_id", "stage", "subject", "model"]
    assert count_states(table) == "9 runs: 9 missing" and describe_failures(table) == ""


# --- specification errors -------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (edit("stages.0.notebook", "99_nothing"),
     r"stage 1 \(99_nothing\): notebook '99_nothing' not found .*"
     r"available: \['compare', 'prepare', 'summary', 'train'\]"),
    (edit("stages.1.parameters.epochs", 3),
     r"stage 2 \(train\): notebook 'train' does not declare parameter\(s\) \['epochs'\]"),
    (edit("defaults.epochs", 3), r"defaults \['epochs'\] are declared by no notebook"),
    (edit("stages.1.parameters.subject", "S3"), r"parameter\(s\) \['subject'\] are set by the sweep"),
    (edit("stages.0.parameters.output_dir", "x"), r"parameter\(s\) \['output_dir'\] are set by the sweep"),
    (edit("stages.0.over", ["session"]),
     r"axis 'session' in 'over' is not in the grid; grid axes: \['model', 'subject'\]"),
    (edit("stages.0.over", "subject"), r"'over' must list the grid axes"),
    (edit("stages.3.over", ["model"]),
     r"varies over \['model'\] but the notebook does not declare such parameter\(s\) and no parameter uses \{model\}"),
    (edit("grid.model", []), r"grid axis 'model' must be a non-empty list of values, got \[\]"),
    (edit("grid.model", "good"), r"grid axis 'model' must be a non-empty list of values, got 'good'"),
    (edit("grid.model", ["good", "bad", "good"]), r"grid axis 'model' repeats 'good'; list each value once"),
    (edit("grid.model", [{"name": "good"}]), r"axis values must be strings or numbers"),
    (edit("grid.seed", [1, 2]), r"grid axis\(es\) \['seed'\] used by no stage"),
    (edit("grid.state", [1]), r"grid axis 'state' must be a notebook parameter name other than"),
    (edit("stages.0.parameters.scale", "{run:train}"), r"\{run:train\} names no earlier stage .*earlier stages: \[\]"),
    (edit("stages.2.parameters.trained", "{runs:tune}"), r"\{runs:tune\} names no earlier stage"),
    (edit("stages.2.parameters.trained", "{run:train}"),
     r"\{run:train\} is ambiguous: train also varies over \['model'\]"),
    (edit("stages.2.parameters.trained", "models: {runs:train}"), r"\{runs:train\} must begin its string"),
    (edit("stages.1.parameters.prepared", "{runs:prepare}"), r"\{runs:prepare\} would have no keys"),
    (edit("stages.1.parameters.fail_marker", "{sweepdir}/x"), r"unknown placeholder \{sweepdir\}"),
    (edit("stages.3.parameters.sweep_dir", "/data/{subject}"),
     r"\{subject\} names an axis the stage does not vary over"),
    (edit("stages.0.ovr", ["subject"]), r"stage 1 \(prepare\): unknown key\(s\) \['ovr'\]"),
    (edit("stages.1.name", "prepare"), r"another stage is already named 'prepare'"),
    (edit("stages.1.after", ["compare"]), r"'after' must list earlier stages \(of \['prepare'\]\)"),
    (edit("stages.1.resources", {"GPU": 0}), r"resource 'GPU' needs a positive amount, got 0"),
    (edit("schedule", "nightly"), r"unknown key\(s\) \['schedule'\]"),
], ids=['unknown notebook',
    'unknown parameter',
    'unused default',
    'axis as parameter',
    'output_dir as parameter',
    'over axis not in grid',
    'over not a list',
    'over axis not declared',
    'empty axis',
    'axis not a list',
    'repeated value',
    'nested value',
    'unused axis',
    'reserved axis name',
    'reference to a later stage',
    'reference to no stage',
    'ambiguous run reference',
    'runs inside a value',
    'runs without keys',
    'unknown placeholder',
    'axis placeholder not varied',
    'unknown stage key',
    'duplicate stage name',
    'after a later stage',
    'bad resource',
    'unknown top-level key'])
def test_bad_specifications_are_rejected_with_the_bad_value(tmp_path, change, message):
    with pytest.raises(SweepSpecError, match=message):
        load_spec(write_spec(tmp_path, change), FIXTURES)


def test_notebooks_must_declare_output_dir(tmp_path):
    notebook = nbformat.read(FIXTURES / "prepare.ipynb", as_version=4)
    notebook.cells[1].source = 'subject = "S1"'
    nbformat.write(notebook, tmp_path / "prepare.ipynb")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"grid": {"subject": ["S1"]},
                                    "stages": [{"notebook": "prepare", "over": ["subject"]}]}))
    with pytest.raises(SweepSpecError, match="does not declare output_dir"):
        load_spec(spec, tmp_path)


# --- running --------------------------------------------------------------------------------


def test_failed_run_is_reported_dependents_skipped_and_rerun_resumes(client, tmp_path):
    spec = write_spec(tmp_path, lambda spec: instrument(spec, tmp_path))
    out = tmp_path / "sweep"
    (tmp_path / "fail-S2-bad").touch()

    table = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES).set_index("run_id")
    assert count_states(table) == "9 runs: 6 completed, 1 failed, 2 skipped"
    failed = table[table.state == "failed"].iloc[0]
    assert failed.name.startswith("train/S2-bad-") and failed.error_type == "RuntimeError"
    assert failed.message == "planted failure for S2 bad"
    assert failed.error_cell == failing_cell("train", "planted failure")
    assert "raise RuntimeError" in failed.error_source
    skipped = table[table.state == "skipped"]
    assert sorted(skipped.stage) == ["compare", "summary"] and set(skipped.subject.dropna()) == {"S2"}
    assert all(message.startswith(f"dependency failed: {failed.name}") for message in skipped.message)
    report = describe_failures(table.reset_index())
    assert f"FAILED {failed.name} in cell {failed.error_cell}: RuntimeError: planted failure" in report
    assert "|     raise RuntimeError" in report

    done = Path(table.path[(table.stage == "compare") & (table.state == "completed")].iloc[0])
    assert {p.name for p in done.iterdir()} == {"compare.ipynb", "compare.html", "comparison.csv", "status.json"}
    assert sorted(pd.read_csv(done / "comparison.csv").model) == ["bad", "good"]
    status = json.loads((done / "status.json").read_text())
    assert status["state"] == "completed" and status["duration_s"] > 0 and status["finished"] > status["started"]
    failed_folder = Path(failed.path)
    assert {"train.failed.ipynb", "train.failed.html", "status.json"} <= {p.name for p in failed_folder.iterdir()}
    assert json.loads((failed_folder / "status.json").read_text())["error"]["cell"] == failed.error_cell
    index = pd.read_csv(out / INDEX_NAME).set_index("run_id")
    assert index.state.to_dict() == table.state.to_dict()
    executed = table.path[table.stage.isin(["prepare", "train"])]
    assert sorted(executions(tmp_path)) == sorted(Path(path).name for path in executed)

    # a rerun leaves the completed runs alone and retries the failed one
    started = {run_id: json.loads(Path(path, "status.json").read_text()).get("started")
               for run_id, path in table.path.items()}
    before = executions(tmp_path)
    again = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES).set_index("run_id")
    assert again.state.to_dict() == table.state.to_dict()
    assert executions(tmp_path) == before + [failed_folder.name]
    for run_id in table.index[table.state == "completed"]:
        assert json.loads(Path(table.path[run_id], "status.json").read_text())["started"] == started[run_id]

    # once the failure is gone, only the failed and skipped runs execute
    (tmp_path / "fail-S2-bad").unlink()
    final = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES).set_index("run_id")
    assert count_states(final) == "9 runs: 9 completed"
    assert executions(tmp_path) == before + [failed_folder.name] * 2
    assert not (failed_folder / "train.failed.html").exists() and (failed_folder / "train.html").is_file()
    summary = pd.read_csv(Path(final.path[final.stage == "summary"].iloc[0]) / "summary.csv")
    assert len(summary) == 4 and set(summary.subject) == {"S1", "S2"}
    assert set(sweep_status(spec, out, notebook_dir=FIXTURES).state) == {"completed"}


def test_a_run_lost_by_dask_fails_and_its_dependents_are_skipped(tmp_path, monkeypatch):
    """A task that errors outside the notebook (e.g. its worker died) is recorded in dependency order."""
    from distributed import Client, LocalCluster

    from bt_utils.sweeps import runner as sweeps

    write = sweeps.write_status

    def broken_disk(run, state, **fields):
        if state == "running":
            raise OSError("disk full")
        return write(run, state, **fields)

    monkeypatch.setattr(sweeps, "write_status", broken_disk)
    spec = write_spec(tmp_path, lambda spec: spec.update(grid={"subject": ["S1"], "model": ["good"]},
                                                         stages=spec["stages"][:2]))
    with LocalCluster(n_workers=1, processes=False, resources={"slots": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as local:
        table = run_sweep(spec, tmp_path / "sweep", cluster=local, notebook_dir=FIXTURES)
    assert table.state.tolist() == ["failed", "skipped"]
    assert table.error_type[0] == "OSError" and table.message[0] == "disk full" and pd.isna(table.error_cell[0])
    assert table.message[1] == f"dependency failed: {table.run_id[0]}"


def test_cli_runs_a_sweep_on_a_scheduler_address_and_reports_status(client, tmp_path, capsys):
    def two_stages(spec):
        spec.update(grid={"subject": ["S1"], "model": ["good", "bad"]}, stages=spec["stages"][:2])
        instrument(spec, tmp_path)

    spec = write_spec(tmp_path, two_stages)
    (tmp_path / "fail-S1-bad").touch()
    arguments = [str(spec), "--out", str(tmp_path / "sweep"), "--notebooks", str(FIXTURES)]
    assert cli.main(["sweep", "run", *arguments, "--scheduler", client.scheduler.address]) == 1
    printed = capsys.readouterr().out
    assert "3 runs: 2 completed, 1 failed" in printed
    assert re.search(r"FAILED train/S1-bad-[0-9a-f]{8} in cell \d+: RuntimeError: planted failure for S1 bad", printed)
    assert cli.main(["sweep", "status", *arguments]) == 1  # a run failed
    assert "3 runs: 2 completed, 1 failed" in capsys.readouterr().out
    prepare = next((tmp_path / "sweep" / "prepare").iterdir())
    shutil.rmtree(prepare)
    assert cli.main(["sweep", "status", *arguments]) == 1
    printed = capsys.readouterr().out
    assert "3 runs: 1 missing, 1 completed, 1 failed" in printed
    assert re.search(rf"train/S1-good-[0-9a-f]{{8}}: out of date: prepare/{prepare.name} will run again", printed)


def test_cli_status_of_a_sweep_that_has_not_run(tmp_path, capsys):
    arguments = [str(FIXTURES / "example.yaml"), "--out", str(tmp_path / "sweep"), "--notebooks", str(FIXTURES)]
    assert cli.main(["sweep", "status", *arguments]) == 0
    printed = capsys.readouterr().out
    assert "9 runs: 9 missing" in printed
    assert re.search(r"prepare/S1-[0-9a-f]{8} +missing +- +-", printed)


def test_cli_reports_a_bad_specification(tmp_path, capsys):
    spec = write_spec(tmp_path, edit("grid.model", []))
    assert cli.main(["sweep", "status", str(spec), "--notebooks", str(FIXTURES)]) == 2
    assert "grid axis 'model' must be a non-empty list" in capsys.readouterr().err


def test_a_configured_cluster_class_that_cannot_be_imported_is_named(tmp_path):
    spec = write_spec(tmp_path, lambda spec: spec.update(grid={"subject": ["S1"]}, stages=spec["stages"][:1]))
    with dask.config.set({"bt-sweep.cluster": "no_such_module.SLURMCluster"}), \
            pytest.raises(ValueError, match="bt-sweep.cluster = 'no_such_module.SLURMCluster' cannot be imported"):
        run_sweep(spec, tmp_path / "sweep", notebook_dir=FIXTURES)


def test_only_restricts_a_stage_to_some_grid_values(tmp_path):
    def restrict(spec):
        spec["stages"][1]["only"] = {"model": ["good"]}

    runs = plan_runs(load_spec(write_spec(tmp_path, restrict), FIXTURES), tmp_path / "sweep")
    train = [run for run in runs if run.stage == "train"]
    assert [run.axes for run in train] == [{"subject": "S1", "model": "good"}, {"subject": "S2", "model": "good"}]
    compare = [run for run in runs if run.stage == "compare"]
    assert all(len(run.depends_on) == 2 for run in compare)  # its prepare run and the one train run left

    def bad_value(spec):
        spec["stages"][1]["only"] = {"model": ["ugly"]}

    with pytest.raises(SweepSpecError, match="'only' of 'model' must be a non-empty list of its grid values"):
        load_spec(write_spec(tmp_path, bad_value), FIXTURES)

    def bad_axis(spec):
        spec["stages"][0]["only"] = {"model": ["good"]}

    with pytest.raises(SweepSpecError, match="not in over"):
        load_spec(write_spec(tmp_path, bad_axis), FIXTURES)

    def repeated_value(spec):
        spec["stages"][1]["only"] = {"model": ["good", "good"]}

    with pytest.raises(SweepSpecError, match="'only' of 'model' repeats 'good'; list each value once"):
        load_spec(write_spec(tmp_path, repeated_value), FIXTURES)


def test_demo_sweep_priorities_follow_its_longest_chains(tmp_path):
    """Runs that more stages wait on get a higher Dask priority (critical-path heuristic)."""
    spec = load_spec(Path(__file__).parents[1] / "papermill_runs" / "demo.yaml")
    runs = plan_runs(spec, tmp_path / "sweep")
    priority = critical_path_priorities(runs)
    by_stage = {}
    for run in runs:
        by_stage.setdefault((run.stage, run.axes.get("model"), run.axes.get("subject")), set()).add(priority[run.run_id])
    whisper = "whisper-tiny.en"
    # DEMO01 (the only one with maps): controls -> brain-tuning -> 02 -> 03 -> 05 -> summary; the others have no 05
    assert by_stage["01_block_shuffle", whisper, "DEMO01"] == {6}
    assert by_stage["01_block_shuffle", whisper, "DEMO02"] == by_stage["01_block_shuffle", whisper, "DEMO03"] == {5}
    assert by_stage["01_text_embedding", whisper, None] == {6}  # every participant's brain-tuning waits for it
    assert by_stage["01_brain_tuning", whisper, "DEMO01"] == {5} and by_stage["01_brain_tuning", whisper, "DEMO02"] == {4}
    assert by_stage["00_data", None, "DEMO01"] == {5} and by_stage["00_data", None, "DEMO03"] == {4}
    assert by_stage["02_alignment", whisper, "DEMO02"] == {3}  # 03 reads the features that 02 caches: after it
    # 04, 05 and the multi-participant alignment wait only for the runs they name, and only the summary for them
    for stage in ("04_downstream", "05_voxel_maps", "02_multi_alignment"):
        assert {p for (name, _, _), values in by_stage.items() if name == stage for p in values} == {2}, stage
    assert by_stage["summary", None, None] == {1}
    # dependencies outside the list are ignored: without the 00_data runs, the controls still head the chains
    assert max(critical_path_priorities(runs[3:]).values()) == 6


def test_runs_are_submitted_when_ready_and_a_worker_is_free(client, tmp_path, monkeypatch):
    """The runner, not Dask, decides what runs next: never more runs in flight than worker threads (so none waits
    behind a long run on a busy worker while another idles), each submitted after its dependencies finished, the
    ready run with the highest critical-path priority first."""
    import time

    submitted = []
    submit = client.submit

    def recording_submit(function, run, *args, **kwargs):
        submitted.append((time.time(), run.run_id))
        return submit(function, run, *args, **kwargs)

    monkeypatch.setattr(client, "submit", recording_submit)
    spec = write_spec(tmp_path)
    table = run_sweep(spec, tmp_path / "sweep", cluster=client, notebook_dir=FIXTURES).set_index("run_id")
    assert count_states(table) == "9 runs: 9 completed"
    statuses = {run_id: json.loads(Path(path, "status.json").read_text()) for run_id, path in table.path.items()}
    finished = {run_id: pd.Timestamp(status["finished"]).timestamp() for run_id, status in statuses.items()}
    runs = {run.run_id: run for run in plan_runs(load_spec(spec, FIXTURES), tmp_path / "sweep")}
    priorities = critical_path_priorities(list(runs.values()))
    for index, (when, run_id) in enumerate(submitted):
        in_flight = [other for _, other in submitted[:index] if finished[other] > when]
        assert len(in_flight) < 2, (run_id, in_flight)
        assert all(finished[upstream] <= when for upstream in runs[run_id].depends_on)
    first_two = [run_id for _, run_id in submitted[:2]]
    ready_at_start = [run_id for run_id, run in runs.items() if not run.depends_on]
    assert sorted(first_two) == sorted(sorted(ready_at_start, key=lambda r: -priorities[r])[:2])


# --- reruns of upstream runs ------------------------------------------------------------------


def test_the_dependants_of_a_run_that_runs_again_run_again_and_a_finished_sweep_reruns_nothing(client, tmp_path):
    spec = write_spec(tmp_path, lambda spec: instrument(spec, tmp_path))
    out = tmp_path / "sweep"
    first = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES).set_index("run_id")
    assert count_states(first) == "9 runs: 9 completed"
    before, executed = started_times(first), executions(tmp_path)
    summary = first.index[first.stage == "summary"][0]

    def subject_runs(subject):
        return set(first.index[first.subject == subject]) | {summary}

    # all completed: a second sweep runs nothing
    again = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES)
    assert count_states(again) == "9 runs: 9 completed"
    assert started_times(first) == before and executions(tmp_path) == executed

    # deleting a run folder runs it again, and every run that depends on it
    prepare_s1 = first.index[(first.stage == "prepare") & (first.subject == "S1")][0]
    shutil.rmtree(first.path[prepare_s1])
    status = sweep_status(spec, out, notebook_dir=FIXTURES).set_index("run_id")
    assert status.state[prepare_s1] == "missing"
    for run_id in subject_runs("S1") - {prepare_s1}:
        assert status.state[run_id] == "completed"
        assert status.message[run_id].startswith("out of date: ") and "will run again" in status.message[run_id]
    assert status.message[list(subject_runs("S2") - {summary})].isna().all()
    rerun = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES)
    assert count_states(rerun) == "9 runs: 9 completed" and rerun.message.isna().all()
    after = started_times(first)
    assert {run_id for run_id in before if after[run_id] != before[run_id]} == subject_runs("S1")
    assert sorted(executions(tmp_path)[len(executed):]) == sorted(
        Path(first.path[run_id]).name for run_id in subject_runs("S1") if first.stage[run_id] in ("prepare", "train"))

    # a sweep interrupted once a run ran again, before its dependants did: the next sweep runs them
    def prepare_only(spec):
        instrument(spec, tmp_path)
        spec.update(grid={"subject": ["S1", "S2"]}, stages=spec["stages"][:1])

    prepare_s2 = first.index[(first.stage == "prepare") & (first.subject == "S2")][0]
    shutil.rmtree(first.path[prepare_s2])
    (tmp_path / "prepare").mkdir()
    partial = run_sweep(write_spec(tmp_path / "prepare", prepare_only), out, cluster=client, notebook_dir=FIXTURES)
    assert partial.run_id.tolist() == [prepare_s1, prepare_s2]
    before = started_times(first)
    assert before[prepare_s1] == after[prepare_s1]  # ran only the missing run
    status = sweep_status(spec, out, notebook_dir=FIXTURES).set_index("run_id")
    assert set(status.index[status.message.notna()]) == subject_runs("S2") - {prepare_s2}
    for run_id in first.index[(first.stage == "train") & (first.subject == "S2")]:
        assert status.message[run_id] == f"out of date: {prepare_s2} ran again since"
    final = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES)
    assert count_states(final) == "9 runs: 9 completed"
    after = started_times(first)
    assert {run_id for run_id in before if after[run_id] != before[run_id]} == subject_runs("S2") - {prepare_s2}
    assert set(sweep_status(spec, out, notebook_dir=FIXTURES).message.dropna()) == set()


def test_a_run_with_unchanged_parameters_runs_again_after_the_runs_it_waits_for_changed(client, tmp_path):
    """Like the demo's summary: its parameters name no run, so its hash stays when the earlier runs change."""
    def with_final(scale):
        def change(spec):
            instrument(spec, tmp_path)
            spec["stages"][0]["parameters"]["scale"] = scale
            spec.update(grid={"subject": ["S1", "S2"]},
                        stages=[spec["stages"][0], {"notebook": "prepare", "name": "final", "over": []}])
        return change

    out = tmp_path / "sweep"
    first = run_sweep(write_spec(tmp_path, with_final(2.0)), out, cluster=client, notebook_dir=FIXTURES)
    final = first.run_id[first.stage == "final"].iloc[0]
    second = run_sweep(write_spec(tmp_path, with_final(3.0)), out, cluster=client, notebook_dir=FIXTURES)
    assert second.run_id[second.stage == "final"].iloc[0] == final
    assert count_states(second) == "3 runs: 3 completed"
    ran = [name for name in executions(tmp_path) if name.startswith("all-")]
    assert ran == [Path(final).name] * 2
    # its record: the notebook's own defaults with the sweep's value, the runs it read and when they finished
    record = json.loads(Path(second.path[second.stage == "final"].iloc[0], "status.json").read_text())
    assert record["parameters"] == {"subject": "S1", "scale": 1.0, "counter_file": str(tmp_path / "counter.txt")}
    assert record["inputs"] == dict(zip(second.run_id[second.stage == "prepare"],
                                        second.finished[second.stage == "prepare"], strict=True))


# --- one sweep at a time in a folder ----------------------------------------------------------


def single_run(spec):
    spec.update(grid={"subject": ["S1"]}, stages=spec["stages"][:1])


def ended_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("holder", ["running here", "ended elsewhere"])
def test_a_second_sweep_in_a_folder_stops_and_names_the_lock(tmp_path, capsys, holder):
    spec = write_spec(tmp_path, single_run)
    out = tmp_path / "sweep"
    out.mkdir()
    lock = out / LOCK_NAME
    host, pid = (platform.node(), os.getppid()) if holder == "running here" else ("elsewhere", ended_process())
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": "2030-01-02T03:04:05.000+00:00"}))
    expected = (rf"another sweep is running in {re.escape(str(out))}: its lock file {re.escape(str(lock))} is held "
                rf"by pid {pid} on host {host} \(since 2030-01-02.*delete {re.escape(str(lock))} and run again")
    with pytest.raises(SweepLockedError, match=expected):
        run_sweep(spec, out, cluster="local", notebook_dir=FIXTURES)
    assert cli.main(["sweep", "run", str(spec), "--out", str(out), "--notebooks", str(FIXTURES)]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert [path.name for path in out.iterdir()] == [LOCK_NAME]  # no status touched, nothing run
    assert json.loads(lock.read_text())["pid"] == pid


def test_a_lock_left_by_an_ended_sweep_of_this_host_is_taken_over_and_released(client, tmp_path, caplog):
    spec = write_spec(tmp_path, single_run)
    out = tmp_path / "sweep"
    out.mkdir()
    pid = ended_process()
    (out / LOCK_NAME).write_text(json.dumps({"host": platform.node(), "pid": pid, "started": "2030-01-01"}))
    table = run_sweep(spec, out, cluster=client, notebook_dir=FIXTURES)
    assert count_states(table) == "1 runs: 1 completed"
    assert f"taking over the stale sweep lock {out / LOCK_NAME}: its holder, pid {pid}" in caplog.text
    assert not (out / LOCK_NAME).exists()


def test_the_sweep_lock_is_released_on_errors(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match="interrupted"), sweep_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(SweepLockedError, match=f"held by pid {os.getpid()}"), sweep_lock(out):
            pass
        raise RuntimeError("interrupted")
    assert not lock.exists()
    spec = write_spec(tmp_path, single_run)
    with dask.config.set({"bt-sweep.cluster": "no_such_module.SLURMCluster"}), pytest.raises(ValueError):
        run_sweep(spec, out, notebook_dir=FIXTURES)
    assert (out / INDEX_NAME).is_file() and not (out / LOCK_NAME).exists()


# --- honest run state ------------------------------------------------------------------------


def _left_by_a_killed_sweep(tmp_path):
    """The example sweep as a killed sweep leaves it: runs queued and running, the index written at submission."""
    spec = load_spec(FIXTURES / "example.yaml", FIXTURES)
    out = tmp_path / "sweep"
    runs = plan_runs(spec, out)
    statuses = {run.run_id: write_status(run, "queued", queued="2030-01-01") for run in runs}
    write_table(index_table(spec, runs, statuses, live=True), out / INDEX_NAME)
    statuses[runs[0].run_id] = write_status(runs[0], "running", started="2030-01-01")
    return spec, out, runs


def test_runs_of_a_sweep_that_is_gone_are_interrupted_in_the_status_and_the_index(tmp_path, capsys):
    spec, out, runs = _left_by_a_killed_sweep(tmp_path)
    assert set(pd.read_csv(out / INDEX_NAME).state) == {"queued"}
    table = sweep_status(spec, out)
    assert set(table.state) == {"interrupted"}
    assert table.message[0] == ("interrupted: left running by a sweep that ended before it finished; the next sweep "
                                "runs it")
    assert pd.read_csv(out / INDEX_NAME).state.tolist() == table.state.tolist()  # the index agrees
    arguments = [str(FIXTURES / "example.yaml"), "--out", str(out), "--notebooks", str(FIXTURES)]
    assert cli.main(["sweep", "status", *arguments]) == 1
    assert "9 runs: 9 interrupted" in capsys.readouterr().out


@pytest.mark.parametrize("holder", ["this process", "a process that ended"])
def test_runs_are_running_only_while_their_sweep_holds_the_lock(tmp_path, holder):
    spec, out, runs = _left_by_a_killed_sweep(tmp_path)
    if holder == "this process":
        with sweep_lock(out):
            table = sweep_status(spec, out)
        assert table.state.value_counts().to_dict() == {"queued": 8, "running": 1}
        assert set(pd.read_csv(out / INDEX_NAME).state) == {"queued"}  # the live sweep owns the index
    else:
        (out / LOCK_NAME).write_text(json.dumps({"host": platform.node(), "pid": ended_process(), "started": "x"}))
        assert set(sweep_status(spec, out).state) == {"interrupted"}


def test_an_interrupted_sweep_leaves_an_index_that_says_so(tmp_path, monkeypatch):
    from bt_utils.sweeps import runner as sweeps

    def interrupt(client, pending, statuses, honour_resources, on_change, show_code):
        for run in pending:
            statuses[run.run_id] = write_status(run, "queued")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "_run_pending", interrupt)
    monkeypatch.setattr(sweeps, "_connect", lambda *args: contextlib.nullcontext((None, False)))
    spec = write_spec(tmp_path, single_run)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "sweep", notebook_dir=FIXTURES)
    assert pd.read_csv(tmp_path / "sweep" / INDEX_NAME).state.tolist() == ["interrupted"]
    assert not (tmp_path / "sweep" / LOCK_NAME).exists()


@pytest.mark.parametrize("content", ['{"run_id": "prepare/S1-', "[1, 2]"])
def test_a_damaged_status_file_is_named_and_said_safe_to_delete(tmp_path, content):
    spec = load_spec(FIXTURES / "example.yaml", FIXTURES)
    out = tmp_path / "sweep"
    run = plan_runs(spec, out)[0]
    run.path.mkdir(parents=True)
    (run.path / "status.json").write_text(content)
    (run.path / "data.csv").write_text("kept")
    with pytest.raises(ValueError, match=rf"{re.escape(str(run.path / 'status.json'))} is damaged \(not .*\)\. It "
                                         "only records the state of the run .*: deleting it is safe, and the next "
                                         "sweep runs that run again"):
        sweep_status(spec, out)
    assert (run.path / "data.csv").read_text() == "kept" and (run.path / "status.json").read_text() == content


def _kernel_that_dies_first(tmp_path, monkeypatch) -> str:
    """A kernel spec whose kernel exits at once the first time it starts (as one whose port was taken), then runs."""
    wrapper = tmp_path / "kernel.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"marker = {str(tmp_path / 'died-once')!r}\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    sys.exit(1)\n"
        "sys.argv = ['ipykernel_launcher', '-f', sys.argv[1]]\n"
        "runpy.run_module('ipykernel_launcher', run_name='__main__')\n"
    )
    spec = tmp_path / "jupyter" / "kernels" / "dies-first"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, str(wrapper), "{connection_file}"],
                                                  "display_name": "dies first", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]))
    return "dies-first"


def test_a_kernel_that_dies_before_any_cell_is_started_again(tmp_path, monkeypatch, caplog):
    from bt_utils.sweeps.notebooks import execute_notebook

    kernel = _kernel_that_dies_first(tmp_path, monkeypatch)
    executed = execute_notebook("prepare", tmp_path / "run", {"subject": "S1"}, notebook_dir=FIXTURES,
                                kernel_name=kernel)
    assert executed.is_file() and (tmp_path / "died-once").exists()
    assert "the kernel of prepare.ipynb died before running any cell" in caplog.text
    assert "starting it again (try 2 of 3)" in caplog.text and "try 3 of 3" not in caplog.text


def test_kernel_starts_are_retried_a_bounded_number_of_times(tmp_path, monkeypatch):
    import papermill

    from bt_utils.sweeps import notebooks

    calls = []

    def never_starts(source, output, **kwargs):
        calls.append(output)
        content = nbformat.read(source, as_version=4)
        for cell in content.cells:  # as papermill leaves it: every cell pending
            cell.metadata["papermill"] = {"start_time": None, "status": "pending"}
        nbformat.write(content, output)
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(papermill, "execute_notebook", never_starts)
    monkeypatch.setattr(notebooks.time, "sleep", lambda seconds: None)
    with pytest.raises(RuntimeError, match="Kernel died before replying"):
        notebooks.execute_notebook("prepare", tmp_path / "run", notebook_dir=FIXTURES, html=False)
    assert len(calls) == notebooks.KERNEL_START_ATTEMPTS == 3
    assert (tmp_path / "run" / "prepare.failed.ipynb").is_file()
