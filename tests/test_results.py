import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from bt_utils.results import atomic_path, run_record, save_figure, write_json, write_table


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
    record = run_record({"subject": "A"}, {"total": 1.5}, note="x")
    assert json.loads(write_json(record, tmp_path / "run.json").read_text())["parameters"] == {"subject": "A"}
    assert record["bt_utils_version"] and record["note"] == "x"
    figure, ax = plt.subplots()
    ax.plot([0, 1])
    assert save_figure(figure, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    plt.close(figure)
