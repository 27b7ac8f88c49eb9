"""Voxel maps: pycortex flatmaps, voxel -> fsaverage5 mappings and nilearn surfaces.

The first pycortex flatmap of a fresh environment builds pycortex's caches
(about 20 s, once); afterwards every map renders in about a second.
"""

from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pandas as pd
import numpy as np
import pytest
from scipy import sparse

from bt_utils.data.layout import PycortexSpace, VoxelLayout, as_layout
from bt_utils.demo.template import sample_layout, template_roi_table
from bt_utils.registry import SURFACE_MAPPINGS
from bt_utils.results import save_figure
from bt_utils.viz import fsaverage, maps, volumes


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def layout():
    return sample_layout(300, np.random.default_rng(3))


@pytest.fixture(scope="module")
def values(layout):
    return np.random.default_rng(4).random(layout.n_voxels)


@pytest.fixture(scope="module")
def ac_layout():
    """Every thin-mask voxel of the auditory cortex (AC) and V1."""
    table = template_roi_table()
    rows = table["roi"].isin(["AC", "V1"]).to_numpy()
    return VoxelLayout(
        "S1", "fullhead", table.attrs["volume_shape"], table["volume_index"].to_numpy()[rows],
        table["roi"].to_numpy()[rows], table["hemisphere"].to_numpy()[rows], "thin",
    )


def png_pixels(figure, tmp_path, name="map.png"):
    path = save_figure(figure, tmp_path / name)
    return matplotlib.image.imread(path)


def assert_not_blank(pixels):
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05
    assert len(np.unique(rgb, axis=0)) > 20


# ----------------------------------------------------------------------------
# defaults and validation
# ----------------------------------------------------------------------------
def test_map_defaults():
    expected = {"cmap": "inferno", "vmin": 0.0, "vmax": 1.0, "label": "noise ceiling (cc_max)"}
    assert maps.map_defaults("noise_ceiling") == expected
    assert maps.map_defaults("alignment")["vmax"] is None
    values = np.r_[np.linspace(0, 0.5, 1001), np.nan]
    assert maps.map_defaults("alignment", values)["vmax"] == pytest.approx(0.495)
    difference = maps.map_defaults("difference", np.r_[-2.0, np.zeros(200), 1.0])
    assert difference["cmap"] == "RdBu_r" and difference["vmin"] == -difference["vmax"] > -2
    assert maps.map_defaults("alignment", np.r_[np.linspace(0, 0.5, 900), np.full(100, 3.0)])["vmax"] == 1.0
    # a percentage drop is unbounded where the alignment is near 0: a fixed range keeps typical drops visible
    drops = np.r_[np.random.default_rng(0).normal(20, 10, 950), np.full(50, 5000.0)]
    for kind in ("low_level_impact", "impact_difference"):
        assert (maps.map_defaults(kind, drops)["vmin"], maps.map_defaults(kind, drops)["vmax"]) == (-100.0, 100.0)
    with pytest.raises(ValueError, match="kind='snr'"):
        maps.map_defaults("snr")


def test_bad_inputs_raise_clear_errors(layout, values):
    with pytest.raises(ValueError, match=r"shape \(299,\), expected \(300,\)"):
        maps.flatmap(values[:-1], layout)
    with pytest.raises(ValueError, match="infinite"):
        maps.flatmap(np.r_[np.inf, values[1:]], layout)
    with pytest.raises(ValueError, match="with_rois='yes'"):
        maps.flatmap(values, layout, with_rois="yes")
    with pytest.raises(ValueError, match="cmap='nope'"):
        maps.flatmap(values, layout, cmap="nope")
    with pytest.raises(ValueError, match="vmin < vmax"):
        maps.flatmap(values, layout, vmin=1, vmax=0)
    with pytest.raises(ValueError, match="backend='plotly'"):
        maps.save_maps({"a": values}, layout, "unused", backends=("plotly",))
    with pytest.raises(ValueError, match="file names"):
        maps.save_maps({"../a": values}, layout, "unused")


# ----------------------------------------------------------------------------
# pycortex flatmaps
# ----------------------------------------------------------------------------
def test_value_lands_on_its_voxel(layout):
    values = np.zeros(layout.n_voxels)
    values[17] = 5.0
    volume = volumes.volume_data(values, layout)
    assert volume.shape == layout.volume_shape
    assert volume[np.unravel_index(layout.volume_index[17], layout.volume_shape)] == 5.0
    assert np.nansum(volume) == 5.0 and np.isfinite(volume).sum() == layout.n_voxels


def test_flatmap_renders_headless_png(layout, values, tmp_path):
    figure = maps.flatmap(values, layout, "demo map", kind="noise_ceiling")
    assert "demo map" in [text.get_text() for text in figure.texts]
    assert_not_blank(png_pixels(figure, tmp_path))


def test_flatmap_draws_values_inside_their_roi_outline(ac_layout):
    values = np.where(ac_layout.roi == "AC", 1.0, np.nan)
    figure = maps.flatmap(values, ac_layout, with_rois="outlines", with_curvature=False)
    ax = figure.axes[0]
    image = maps._data_image(ax)
    data = np.ma.filled(image.get_array().astype(float), np.nan)
    left, right, bottom, top = image.get_extent()
    rows, cols = np.nonzero(np.isfinite(data))
    assert rows.size > 1000
    x = left + (cols + 0.5) * (right - left) / data.shape[1]
    y = top - (rows + 0.5) * (top - bottom) / data.shape[0]
    outlines = [patch for patch in ax.patches if patch.get_label() == "AC"]
    assert len(outlines) == 2  # one per hemisphere
    inside = np.zeros(x.size, dtype=bool)
    for patch in outlines:
        inside |= patch.get_path().contains_points(np.column_stack([x, y]))
    # pycortex samples voxels through the cortical thickness, so a few pixels of
    # AC voxels spill over the outline (87 %; shifting the outline lowers it)
    assert inside.mean() > 0.8


def test_roi_outlines_without_inkscape(monkeypatch, layout, values):
    monkeypatch.setattr(maps.shutil, "which", lambda name: None)
    assert maps._roi_renderer("auto") == maps._roi_renderer(True) == "matplotlib"
    figure = maps.flatmap(values, layout)
    labels = {patch.get_label() for patch in figure.axes[0].patches}
    assert {"AC", "V1", "Broca"} <= labels
    assert len(maps.flatmap(values, layout, with_rois=False).axes[0].patches) == 0


def test_failing_inkscape_overlay_falls_back_to_outlines(monkeypatch, layout, values):
    cortex = volumes.import_cortex()
    monkeypatch.setattr(maps.shutil, "which", lambda name: "/usr/bin/inkscape")
    assert maps._roi_renderer("auto") == "inkscape"

    def broken(*args, **kwargs):
        raise RuntimeError("inkscape crashed")

    monkeypatch.setattr(cortex.quickflat.composite, "add_rois", broken)
    figure = maps.flatmap(values, layout)
    assert any(patch.get_label() == "AC" for patch in figure.axes[0].patches)


def test_missing_overlay_is_noted_in_the_title(monkeypatch, layout, values, caplog):
    def missing(ax, subject):
        raise FileNotFoundError("overlays.svg does not exist")

    monkeypatch.setattr(maps, "_draw_roi_outlines", missing)
    figure = maps.flatmap(values, layout, "noise ceiling", with_rois="outlines")
    assert [text.get_text() for text in figure.texts] == ["noise ceiling (no ROI outlines)"]
    assert "no ROI outlines" in caplog.text


# ----------------------------------------------------------------------------
# real-data subjects in their own pycortex filestore
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_filestore(tmp_path_factory, layout, values):
    """A filestore with subject "UTS99" (S1's files under another name, as ds003020's pycortex-db).

    S1's flatmap caches are linked under the new transform name, so no 15 s
    cache build is needed; pycortex writes the thick mask into the transform folder.
    """
    maps.flatmap(values, layout)  # makes sure S1's flatmap and curvature caches exist
    s1 = Path(volumes.import_cortex().db.filestore) / "S1"
    root = tmp_path_factory.mktemp("pycortex-db")
    subject = root / "UTS99"
    (subject / "transforms" / "UTS99_auto").mkdir(parents=True)
    (subject / "cache").mkdir()
    for name in ("surfaces", "anatomicals", "surface-info", "overlays.svg"):
        (subject / name).symlink_to(s1 / name)
    for path in (s1 / "transforms" / "fullhead").iterdir():
        (subject / "transforms" / "UTS99_auto" / path.name).symlink_to(path)
    for path in (s1 / "cache").iterdir():
        (subject / "cache" / path.name.replace("fullhead", "UTS99_auto")).symlink_to(path)
    return root


def test_real_subject_flatmap_from_its_filestore(fake_filestore, tmp_path):
    cortex = volumes.import_cortex()
    before = cortex.db.filestore
    space = as_layout(("UTS99", "UTS99_auto", "thick", fake_filestore))
    n = volumes.n_voxels(space)
    assert n == 80615  # S1's thick mask
    values = np.zeros(n)
    values[1000] = 7.0
    volume = volumes.volume_data(values, space)
    with volumes.pycortex_filestore(fake_filestore) as db:
        mask = db.get_mask("UTS99", "UTS99_auto", "thick")
        assert db.filestore == str(fake_filestore)
    assert volume[tuple(np.argwhere(mask)[1000])] == 7.0
    assert_not_blank(png_pixels(maps.flatmap(np.linspace(0, 1, n), space, "UTS99"), tmp_path))
    assert cortex.db.filestore == before and "UTS99" not in cortex.db.subjects
    with pytest.raises(NotImplementedError, match="mapping=M"):
        maps.surface_map(np.zeros(n), space)


def test_real_subject_errors(fake_filestore, tmp_path):
    db = volumes.import_cortex().db
    before = db.filestore
    with pytest.raises(RuntimeError, match="inside"), volumes.pycortex_filestore(fake_filestore):
        raise RuntimeError("inside")
    assert db.filestore == before
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        maps.flatmap(np.zeros(3), PycortexSpace("UTS01", "UTS01_auto", filestore=tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="UTS01"):
        maps.flatmap(np.zeros(3), PycortexSpace("UTS01", "UTS01_auto", filestore=fake_filestore))
    with pytest.raises(FileNotFoundError, match=r"available: \['UTS99_auto'\]"):
        volumes.n_voxels(PycortexSpace("UTS99", "UTS99_other", filestore=fake_filestore))
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(80615,\)"):
        maps.flatmap(np.zeros(3), PycortexSpace("UTS99", "UTS99_auto", filestore=fake_filestore))


def test_voxel_list_on_a_real_subject(fake_filestore):
    """A VoxelLayout of the mask's voxels, in the subject's filestore, is the same map as its PycortexSpace."""
    space = PycortexSpace("UTS99", "UTS99_auto", "thick", fake_filestore)
    with volumes.pycortex_filestore(fake_filestore) as db:
        mask = np.asarray(db.get_mask("UTS99", "UTS99_auto", "thick"))
    index = np.flatnonzero(mask)
    listed = VoxelLayout("UTS99", "UTS99_auto", mask.shape, index, np.full(index.size, "other"),
                         np.full(index.size, "L"), filestore=fake_filestore)
    values = np.random.default_rng(0).random(index.size)
    np.testing.assert_array_equal(volumes.volume_data(values, listed), volumes.volume_data(values, space))
    elsewhere = VoxelLayout("UTS99", "UTS99_auto", mask.shape, index[:3], ["other"] * 3, ["L"] * 3)
    with pytest.raises(FileNotFoundError, match="'UTS99' not found"):  # not in pycortex's configured filestore
        maps.flatmap(np.zeros(3), elsewhere)


# ----------------------------------------------------------------------------
# voxel -> fsaverage5 mappings and nilearn surfaces
# ----------------------------------------------------------------------------
def test_mapping_from_positions_matches_brute_force_distances():
    surfaces = fsaverage.fsaverage_meshes()["midthickness"]
    rng = np.random.default_rng(0)
    hemisphere = np.array(["L", "R", "R", "L", "R"])
    vertex = rng.integers(0, 10242, hemisphere.size)
    offset = np.where(hemisphere == "R", 10242, 0)
    position = np.array([surfaces[int(h == "R")][v] for h, v in zip(hemisphere, vertex)]) + 0.3
    nearest = fsaverage.mapping_from_positions(position, hemisphere, radius_mm=0)
    assert nearest.shape == (fsaverage.N_FSAVERAGE_VERTICES, 5) and nearest.nnz == 5
    for voxel in range(5):
        surface = surfaces[int(hemisphere[voxel] == "R")]
        shown = np.sort(nearest[:, voxel].nonzero()[0])
        closest = np.argmin(np.linalg.norm(surface - position[voxel], axis=1)) + offset[voxel]
        np.testing.assert_array_equal(shown, [closest])
    wide = fsaverage.mapping_from_positions(position, hemisphere, radius_mm=6.0)
    assert set(wide.data) == {1.0}
    for voxel in range(5):
        surface = surfaces[int(hemisphere[voxel] == "R")]
        distance = np.linalg.norm(surface - position[voxel], axis=1)
        expected = np.union1d(np.flatnonzero(distance <= 6.0), [np.argmin(distance)]) + offset[voxel]
        np.testing.assert_array_equal(np.sort(wide[:, voxel].nonzero()[0]), expected)
    with pytest.raises(ValueError, match="radius_mm=-1"):
        fsaverage.mapping_from_positions(position, hemisphere, radius_mm=-1)
    with pytest.raises(ValueError, match=r"\['left'\]"):
        fsaverage.mapping_from_positions(position[:1], np.array(["left"]))


def test_to_fsaverage_is_a_weighted_mean_of_the_finite_voxels():
    mapping = sparse.lil_matrix((fsaverage.N_FSAVERAGE_VERTICES, 3))
    mapping[0, 0], mapping[0, 1] = 1.0, 3.0
    mapping[5, 1], mapping[5, 2] = 1.0, 1.0
    mapping[7, 2] = 1.0
    shown = fsaverage.to_fsaverage([2.0, 6.0, np.nan], mapping)
    assert shown.shape == (fsaverage.N_FSAVERAGE_VERTICES,)
    assert shown[0] == pytest.approx((2.0 + 3 * 6.0) / 4) and shown[5] == 6.0
    assert np.isnan(shown[7]) and np.isfinite(shown).sum() == 2
    with pytest.raises(ValueError, match="rows, expected 20484"):
        fsaverage.to_fsaverage(np.zeros(3), np.ones((10, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        fsaverage.to_fsaverage(np.zeros(3), -mapping)
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        fsaverage.to_fsaverage(np.zeros(2), mapping)


def test_surface_mappings_come_from_the_registry(layout, values, monkeypatch):
    assert "S1" in SURFACE_MAPPINGS  # registered by the demo extension
    other = VoxelLayout("UTS99", "UTS99_auto", layout.volume_shape, layout.volume_index, layout.roi,
                        layout.hemisphere)
    with pytest.raises(NotImplementedError, match=r"subject UTS99 \(registered: .*S1.*mapping=M"):
        fsaverage.fsaverage_mapping(other)
    with pytest.raises(NotImplementedError, match="or draw a flatmap"):
        maps.surface_map(values, other)

    calls = []
    shape = (fsaverage.N_FSAVERAGE_VERTICES, layout.n_voxels)
    planted = sparse.csr_matrix(([1.0, 1.0], ([123, 10242 + 123], [7, 8])), shape=shape)  # a vertex per hemisphere

    def mapping(given, radius_mm, cache_dir):
        calls.append((given, radius_mm, cache_dir))
        return planted

    monkeypatch.setitem(SURFACE_MAPPINGS._entries, "UTS99", mapping)
    assert fsaverage.fsaverage_mapping(other, 2.5, "somewhere") is planted
    assert calls == [(other, 2.5, "somewhere")]
    maps.surface_map(values, other)
    assert calls[-1] == (other, fsaverage.DEFAULT_RADIUS_MM, None)


def test_surface_map_renders_headless_png(layout, values, map_cache, tmp_path):
    mapping = fsaverage.fsaverage_mapping(layout, cache_dir=map_cache)
    figure = maps.surface_map(values - 0.5, layout, "difference", kind="difference", mapping=mapping)
    assert figure._suptitle.get_text() == "difference"
    assert len([ax for ax in figure.axes if ax.name == "3d"]) == 4
    assert_not_blank(png_pixels(figure, tmp_path))


def test_save_maps(layout, values, map_cache, tmp_path):
    mapping = fsaverage.fsaverage_mapping(layout, cache_dir=map_cache)
    paths = maps.save_maps(
        {"noise_ceiling": values, "tuned_minus_pretrained": values - 0.5}, layout, tmp_path / "out",
        kind={"noise_ceiling": "noise_ceiling", "tuned_minus_pretrained": "difference"}, mapping=mapping,
    )
    assert [p.name for p in paths] == [
        "noise_ceiling_flatmap.png", "noise_ceiling_surface.png",
        "tuned_minus_pretrained_flatmap.png", "tuned_minus_pretrained_surface.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match=r"no entry for maps \['b'\]"):
        maps.save_maps({"a": values, "b": values}, layout, tmp_path, kind={"a": "alignment"})


def test_maps_from_results_places_values_and_differences():
    from bt_utils.viz.maps import maps_from_results

    ceiling = pd.DataFrame({"subject": ["A", "A", "B"], "voxel": [0, 2, 0], "cc_max": [0.5, 0.7, 0.9]})
    alignment = pd.DataFrame({"subject": "A", "variant": ["pretrained", "pretrained", "tuned", "tuned"],
                              "layer": 3, "voxel": [0, 1, 0, 1], "r_norm": [0.2, 0.4, 0.5, 0.1]})
    impact = alignment.rename(columns={"r_norm": "drop_pct"}).assign(feature_set="all")
    values, kinds = maps_from_results("A", 3, ceiling, alignment, impact)
    np.testing.assert_array_equal(values["noise_ceiling"], [0.5, np.nan, 0.7])
    np.testing.assert_allclose(values["alignment-difference_tuned_layer3"][:2], [0.3, -0.3])
    assert np.isnan(values["alignment_tuned_layer3"][2])
    assert kinds["alignment-difference_tuned_layer3"] == "difference" and kinds["impact_tuned_layer3"] == "low_level_impact"
    assert kinds["impact-difference_tuned_layer3"] == "impact_difference"
    with pytest.raises(ValueError, match=r"several models \(\['m1', 'm2'\]\)"):
        maps_from_results("A", 3, alignment=alignment.assign(model=["m1", "m2"] * 2))
    with pytest.raises(ValueError, match=r"repeat voxels \[0\]"):
        maps_from_results("A", 3, alignment=alignment.assign(voxel=[0, 0, 0, 1]))
    with pytest.raises(ValueError, match="no result rows for subject 'C'"):
        maps_from_results("C", 3)


def test_maps_from_results_draws_only_the_chosen_layers():
    from bt_utils.viz.maps import maps_from_results

    alignment = pd.DataFrame({"subject": "A", "variant": ["pretrained", "tuned"] * 2, "layer": [1, 1, 4, 4],
                              "voxel": 0, "r_norm": [0.1, 0.2, 0.3, 0.5]})
    values, _ = maps_from_results("A", 1, alignment=alignment, layers=[4])
    assert set(values) == {"alignment_pretrained_layer4", "alignment_tuned_layer4", "alignment-difference_tuned_layer4"}
    np.testing.assert_allclose(values["alignment-difference_tuned_layer4"], [0.2])
    with pytest.raises(ValueError, match=r"the alignment table of subject 'A' has no layers \[2\]; it has \[1, 4\]"):
        maps_from_results("A", 1, alignment=alignment, layers=[2, 4])
