"""The alignment explorer: pure selection logic and widget callbacks without a browser."""

import html

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bt_utils.data.layout import PycortexSpace
from bt_utils.demo.template import sample_layout
from bt_utils.viz import explore

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def layouts():
    return {
        "DEMO01": sample_layout(200, np.random.default_rng(1)),
        "DEMO02": sample_layout(150, np.random.default_rng(2)),
    }


@pytest.fixture(scope="module")
def tables(layouts):
    """Tables as the alignment notebook writes them; model "small" has only layers 0 and 1."""
    rng = np.random.default_rng(0)
    voxel_rows, roi_rows = [], []
    for subject, layout in layouts.items():
        for model, n_layers in (("big", 3), ("small", 2)):
            for variant in ("pretrained", "tuned"):
                for layer in range(n_layers):
                    r = rng.random(layout.n_voxels) * (layer + 1) / 4
                    voxel_rows.append(pd.DataFrame({
                        "subject": subject, "model": model, "variant": variant, "layer": layer,
                        "voxel": np.arange(layout.n_voxels), "r": r, "r_norm": r / 0.8,
                    }))
                    by_roi = pd.Series(r / 0.8).groupby(layout.roi)
                    roi_rows.append(pd.DataFrame({
                        "subject": subject, "model": model, "variant": variant, "layer": layer,
                        "roi": by_roi.mean().index, "r_norm_mean": by_roi.mean().to_numpy(),
                        "n_voxels": by_roi.size().to_numpy(),
                    }))
    return pd.concat(voxel_rows, ignore_index=True), pd.concat(roi_rows, ignore_index=True)


def test_choices_cascade(tables):
    voxels, _ = tables
    options = explore.choices(voxels)
    assert options == {
        "subject": ["DEMO01", "DEMO02"], "model": ["big", "small"], "variant": ["pretrained", "tuned"],
        "layer": [0, 1, 2], "metric": ["r", "r_norm"],
    }
    assert explore.choices(voxels, subject="DEMO02", model="small")["layer"] == [0, 1]
    with pytest.raises(ValueError, match="subject='DEMO09'"):
        explore.choices(voxels, subject="DEMO09")
    with pytest.raises(ValueError, match="choice='layer'"):
        explore.choices(voxels, layer=0)


def test_select_values(tables, layouts):
    voxels, _ = tables
    selection = explore.Selection("DEMO01", "big", "tuned", 2, "r_norm")
    values = explore.select_values(voxels, selection, layouts["DEMO01"].n_voxels)
    rows = voxels.query("subject == 'DEMO01' and model == 'big' and variant == 'tuned' and layer == 2")
    assert values.shape == (200,)
    np.testing.assert_array_equal(values[rows.voxel.to_numpy()], rows.r_norm.to_numpy())
    partial = voxels.drop(rows.index[:5])
    assert np.isnan(explore.select_values(partial, selection, 200)[rows.voxel.to_numpy()[:5]]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subject": "DEMO09"}, "subject='DEMO09'"),
        ({"metric": "snr"}, "metric='snr'"),
        ({"model": "small", "layer": 2}, "layer=2"),
    ],
)
def test_select_values_rejects_unknown_choices(tables, change, message):
    voxels, _ = tables
    choice = {"subject": "DEMO01", "model": "big", "variant": "tuned", "layer": 2, "metric": "r", **change}
    selection = explore.Selection(**choice)
    with pytest.raises(ValueError, match=message):
        explore.select_values(voxels, selection, 200)


def test_select_values_rejects_bad_voxels(tables):
    voxels, _ = tables
    selection = explore.Selection("DEMO01", "big", "tuned", 0, "r")
    with pytest.raises(ValueError, match="outside the layout's 100 voxels"):
        explore.select_values(voxels, selection, 100)
    doubled = pd.concat([voxels, voxels.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        explore.select_values(doubled, explore.Selection("DEMO01", "big", "pretrained", 0, "r"), 200)


def test_roi_bars(tables, layouts):
    _, rois = tables
    bars = explore.roi_bars(rois, explore.Selection("DEMO01", "big", "tuned", 1, "r_norm"))
    assert bars.name == "r_norm_mean"
    assert bars.index[-1] == "other" and set(bars.index) == set(layouts["DEMO01"].roi)
    with pytest.raises(KeyError, match="'r_mean'"):
        explore.roi_bars(rois, explore.Selection("DEMO01", "big", "tuned", 1, "r"))
    with pytest.raises(ValueError, match="lacks columns"):
        explore.roi_bars(rois.drop(columns="roi"), explore.Selection("DEMO01", "big", "tuned", 1, "r_norm"))


def test_color_limits_are_shared_by_a_subjects_maps(tables):
    voxels, _ = tables
    vmin, vmax = explore.color_limits(voxels, "DEMO01", "r")
    assert vmin == 0 and 0.5 < vmax <= voxels.loc[voxels.subject == "DEMO01", "r"].max()


def test_explorer_updates_on_change(tables, layouts):
    voxels, rois = tables
    plt.close("all")  # figures left open by other tests
    widget = explore.explorer(voxels, rois, layouts)
    assert widget.selection == explore.Selection("DEMO01", "big", "pretrained", 0, "r_norm")
    assert bytes(widget.map_image.value).startswith(PNG) and bytes(widget.bars_image.value).startswith(PNG)
    assert widget.status.value == ""
    first_map, first_bars = bytes(widget.map_image.value), widget.bars.copy()

    widget.dropdowns["layer"].value = 2
    assert bytes(widget.map_image.value) != first_map
    assert not widget.bars.equals(first_bars)
    np.testing.assert_array_equal(
        widget.values, explore.select_values(voxels, widget.selection, layouts["DEMO01"].n_voxels)
    )

    widget.dropdowns["model"].value = "small"  # has no layer 2: the layer falls back to 0
    assert widget.dropdowns["layer"].options == (0, 1) and widget.selection.layer == 0

    widget.dropdowns["subject"].value = "DEMO02"
    assert widget.values.shape == (150,)

    assert plt.get_fignums() == []  # rendered figures are closed
    widget.dropdowns["metric"].value = "r"  # the ROI table has no r_mean column
    assert bytes(widget.map_image.value).startswith(PNG)
    assert widget.bars is None and bytes(widget.bars_image.value) == b""
    assert "the ROI table has no 'r_mean' column" in html.unescape(widget.status.value)


def test_explorer_select_and_surface_backend(tables, layouts, map_cache, monkeypatch):
    from bt_utils.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(map_cache))  # the S1 -> fsaverage5 fit is computed once per session
    voxels, rois = tables
    widget = explore.explorer(voxels, rois, layouts, backend="nilearn")
    before = bytes(widget.map_image.value)
    widget.select(subject="DEMO02", model="small", layer=1)
    assert widget.selection == explore.Selection("DEMO02", "small", "pretrained", 1, "r_norm")
    assert bytes(widget.map_image.value).startswith(PNG) and bytes(widget.map_image.value) != before
    with pytest.raises(ValueError, match="layer=5"):
        widget.select(layer=5)
    with pytest.raises(ValueError, match=r"unknown dropdowns \['colour'\]"):
        widget.select(colour="red")


def test_explorer_shows_data_problems_in_status(tables, layouts, tmp_path):
    voxels, rois = tables
    real = {**layouts, "DEMO02": PycortexSpace("UTS02", "UTS02_auto", filestore=tmp_path / "absent")}
    widget = explore.explorer(voxels, rois, real)
    widget.dropdowns["subject"].value = "DEMO02"
    assert widget.values is None and bytes(widget.map_image.value) == b""
    assert "is not a folder" in widget.status.value
    assert widget.bars is not None  # the ROI chart does not need the map


def test_explorer_rejects_bad_inputs(tables, layouts):
    voxels, rois = tables
    with pytest.raises(ValueError, match=r"no entry for subjects \['DEMO02'\]"):
        explore.explorer(voxels, rois, {"DEMO01": layouts["DEMO01"]})
    with pytest.raises(ValueError, match="voxel_table lacks columns \\['layer'\\]"):
        explore.explorer(voxels.drop(columns="layer"), rois, layouts)
    with pytest.raises(ValueError, match="backend='vtk'"):
        explore.explorer(voxels, rois, layouts, backend="vtk")
    with pytest.raises(ValueError, match="no numeric metric"):
        explore.explorer(voxels[["subject", "model", "variant", "layer", "voxel"]], rois, layouts)
