import pandas as pd
import pytest

from bt_utils.results import write_table
from bt_utils.stats import across_subjects
from bt_utils.summary import collect_results, collect_table


def test_collect_tables_of_a_sweep(tmp_path):
    for subject, value in (("A", 0.2), ("B", 0.4)):
        write_table(pd.DataFrame({"subject": [subject] * 2, "model": "m", "variant": ["pretrained", "tuned"],
                                  "layer": 1, "roi": "AC", "r_norm_mean": [value, value + 0.1], "n_voxels": 10}),
                    tmp_path / "02_alignment" / f"{subject}-abc" / "alignment_rois.parquet")
    (tmp_path / "02_alignment" / ".staging").mkdir()
    write_table(pd.DataFrame({"subject": ["Z"]}), tmp_path / "02_alignment" / ".staging" / "alignment_rois.parquet")
    table = collect_table(tmp_path, "alignment_rois.parquet")
    assert sorted(table.run.unique()) == ["02_alignment/A-abc", "02_alignment/B-abc"] and len(table) == 4
    summary = across_subjects(table, "r_norm_mean").set_index("variant")
    assert summary.loc["tuned", "mean"] == pytest.approx(0.4) and summary.loc["tuned", "n_subjects"] == 2
    results = collect_results(tmp_path)
    assert results["downstream"].empty and len(results["alignment_rois"]) == 4
    with pytest.raises(FileNotFoundError, match="run the sweep first"):
        collect_table(tmp_path / "nothing", "x.csv")
