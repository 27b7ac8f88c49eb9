import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bt_utils.results import (
    atomic_path, exclusive_lock, exclusive_locks, file_label, git_dirty, git_revision, in_turn, read_table, run_record,
    save_figure, write_json, write_table,
)


def test_file_label_keeps_safe_characters_and_joins_the_others():
    assert file_label("facebook/wav2vec2-base") == "facebook_wav2vec2-base"
    assert file_label("whisper-tiny.en") == "whisper-tiny.en" and file_label(3) == "3"
    assert file_label("a b//c:d") == "a_b_c_d"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as staged:
            staged.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_keeps_old_file_until_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as staged:
            staged.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    with atomic_path(target) as staged:
        staged.write_text("new")
    assert target.read_text() == "new"


def test_tables_json_and_figures_round_trip(tmp_path):
    table = pd.DataFrame({"subject": ["A", "B"], "voxel": [0, 1], "cc_max": [0.5, 0.1]})
    pd.testing.assert_frame_equal(pd.read_parquet(write_table(table, tmp_path / "t.parquet")), table)
    pd.testing.assert_frame_equal(pd.read_csv(write_table(table, tmp_path / "t.csv")), table)
    with pytest.raises(ValueError, match=".xlsx"):
        write_table(table, tmp_path / "t.xlsx")
    for suffix in (".parquet", ".csv"):
        pd.testing.assert_frame_equal(read_table(write_table(table, tmp_path / f"r{suffix}")), table)
    empty = read_table(write_table(pd.DataFrame(), tmp_path / "empty.csv"))
    assert empty.empty and empty.columns.empty
    record = run_record({"subject": "A"}, {"total": 1.5}, note="x")
    assert json.loads(write_json(record, tmp_path / "run.json").read_text())["parameters"] == {"subject": "A"}
    assert record["bt_utils_version"] and record["note"] == "x"
    figure, ax = plt.subplots()
    ax.plot([0, 1])
    assert save_figure(figure, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    plt.close(figure)


def _folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path: Path) -> dict[str, str]:
    return {file.name: file.read_text() for file in path.iterdir()}


def test_replacing_a_folder_keeps_the_old_one_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    target = _folder(tmp_path / "checkpoint", weights="old", config="{}")
    replace = os.replace

    def full_disk(source, destination):
        if Path(source).name == "checkpoint" and Path(destination) == target:  # the new folder moving in
            raise OSError("disk full")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as staged:
            _folder(staged, weights="new")
    assert _contents(target) == {"weights": "old", "config": "{}"}
    assert list(tmp_path.iterdir()) == [target]  # no staging or backup folder left


def test_an_interrupted_clean_up_leaves_the_new_folder_complete(tmp_path, monkeypatch):
    target = _folder(tmp_path / "checkpoint", weights="old", config="{}")
    rmtree = shutil.rmtree
    interrupted = []

    def interrupt_first_deletion(path, *args, **kwargs):
        if not interrupted:  # deletes one file, then Ctrl-C
            interrupted.append(path)
            next(file for file in Path(path).rglob("*") if file.is_file()).unlink()
            raise KeyboardInterrupt
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupt_first_deletion)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as staged:
            _folder(staged, weights="new", config="{\"new\": 1}")
    assert _contents(target) == {"weights": "new", "config": "{\"new\": 1}"}
    assert all(path == target or path.name.startswith(".") for path in tmp_path.iterdir())  # only a hidden leftover


def test_records_are_strict_json_with_numpy_values_as_numbers(tmp_path):
    parameters = {"n_voxels": np.int64(3), "alpha": np.float32(0.5), "layers": np.arange(3), "tuned": np.bool_(True),
                  "score": float("nan"), "limit": np.inf, "by_layer": {np.int64(4): np.float64(-np.inf)},
                  "grid": np.array([[0.5, np.nan]]), "missing": pd.NA, "folder": tmp_path}

    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")

    text = write_json(run_record(parameters), tmp_path / "run.json").read_text()
    loaded = json.loads(text, parse_constant=refuse)["parameters"]
    assert loaded == {"n_voxels": 3, "alpha": 0.5, "layers": [0, 1, 2], "tuned": True, "score": None, "limit": None,
                      "by_layer": {"4": None}, "grid": [[0.5, None]], "missing": None, "folder": str(tmp_path)}
    assert type(loaded["n_voxels"]) is int and type(loaded["tuned"]) is bool


def test_git_state_says_whether_the_checkout_has_uncommitted_changes(tmp_path):
    assert git_revision(tmp_path) is None and git_dirty(tmp_path) is None  # not a git checkout
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]
    (tmp_path / "code.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "code.py"], ["commit", "-q", "-m", "first"]):
        subprocess.run([*git, *command], cwd=tmp_path, check=True, capture_output=True)
    assert git_dirty(tmp_path) is False and len(git_revision(tmp_path)) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
    record = run_record({})
    assert record["git_dirty"] in (True, False, None) and record["git_dirty"] == git_dirty()


def test_a_key_held_elsewhere_is_put_off_then_waited_for(tmp_path):
    import threading

    order = []
    results = {}
    with exclusive_lock(tmp_path / "b.lock"):  # another process is producing "b"
        runner = threading.Thread(target=lambda: results.update(in_turn(
            "abc", lambda key: [tmp_path / f"{key}.lock"], lambda key: order.append(key) or key.upper())))
        runner.start()
        runner.join(timeout=1.0)
        assert runner.is_alive() and order == ["a", "c"]  # the free keys first, then it waits for "b"
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert order == ["a", "c", "b"] and list(results.items()) == [("a", "A"), ("b", "B"), ("c", "C")]


def test_parallel_runs_split_the_keys_and_compute_each_once(tmp_path):
    """Two runs needing the same cached results each compute some of them and read the others'."""
    import threading
    import time

    computed = {"first": [], "second": []}
    results = {}
    start = threading.Barrier(2)

    def read_or_compute(run: str, key: str) -> str:
        path = tmp_path / f"{key}.txt"
        if not path.is_file():
            time.sleep(0.05)
            path.write_text(f"value of {key}")
            computed[run].append(key)
        return path.read_text()

    def run(name: str) -> None:
        start.wait()
        results[name] = in_turn([f"k{i}" for i in range(8)], lambda key: [tmp_path / f"{key}.lock"],
                                lambda key: read_or_compute(name, key))

    runners = [threading.Thread(target=run, args=(name,)) for name in computed]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(timeout=30)
    assert sorted(computed["first"] + computed["second"]) == [f"k{i}" for i in range(8)]  # each key once
    assert computed["first"] and computed["second"]  # split between the runs
    assert results["first"] == results["second"] == {f"k{i}": f"value of k{i}" for i in range(8)}


def test_exclusive_locks_without_waiting_hold_none_when_one_is_taken(tmp_path):
    with exclusive_lock(tmp_path / "second.lock"):
        with exclusive_locks([tmp_path / "first.lock", tmp_path / "second.lock"], wait=False) as held:
            assert held is False
            with exclusive_lock(tmp_path / "first.lock", wait=False) as first:
                assert first is not None  # the first lock was given back
    with exclusive_locks([tmp_path / "first.lock", tmp_path / "second.lock"], wait=False) as held:
        assert held is True
        with exclusive_lock(tmp_path / "second.lock", wait=False) as second:
            assert second is None
