"""The demo's S1 -> fsaverage5 surface fit (bt_utils.demo.surface) and its registration."""

import numpy as np
import pytest

from bt_utils.data.layout import PycortexSpace, VoxelLayout
from bt_utils.demo import surface
from bt_utils.demo.template import sample_layout, template_roi_table
from bt_utils.registry import SURFACE_MAPPINGS
from bt_utils.viz import fsaverage


@pytest.fixture(scope="module")
def layout():
    return sample_layout(300, np.random.default_rng(3))


def test_fit_affine_recovers_a_planted_affine_map():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2000, 3)) * [30.0, 40.0, 25.0]
    planted = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, -0.1], [0.05, 0.0, 1.1], [4.0, -7.0, 2.0]])  # (4, 3)
    # source points that the planted map carries exactly onto the target
    source = np.linalg.solve(planted[:3].T, (target - planted[3]).T).T
    affine = surface._fit_affine(source, target)
    np.testing.assert_allclose(np.c_[source, np.ones(len(source))] @ affine, target, atol=1e-6)


def test_mapping_is_cached_atomically(map_cache, monkeypatch):
    files = [path.name for path in (map_cache / "maps").iterdir()]
    assert len(files) == 1 and files[0].startswith("S1_fullhead_thin_to_fsaverage5_") and files[0].endswith(".npz")
    surface._alignment.cache_clear()
    monkeypatch.setattr(surface, "_compute_alignment", lambda mask: pytest.fail("the cached fit should be read"))
    table = surface.template_to_fsaverage("thin", cache_dir=map_cache)
    assert list(table.columns) == ["volume_index", "hemisphere", "x", "y", "z", "vertex"]
    assert table["vertex"].between(0, fsaverage.N_FSAVERAGE_VERTICES - 1).all()
    left = table["hemisphere"] == "L"
    assert (table.loc[left, "vertex"] < 10242).all() and (table.loc[~left, "vertex"] >= 10242).all()


def test_auditory_cortex_lands_on_the_superior_temporal_region(map_cache):
    from nilearn import datasets

    meshes = datasets.load_fsaverage("fsaverage5")
    pial = np.vstack([meshes["pial"].parts[h].coordinates for h in ("left", "right")])
    table = surface.template_to_fsaverage("thin", cache_dir=map_cache)
    rois = template_roi_table()
    np.testing.assert_array_equal(table["hemisphere"], rois["hemisphere"])
    x, y, z = pial[table["vertex"]].T  # MNI305 mm
    temporal = (np.abs(x) > 35) & (y > -50) & (y < 10) & (z < 20)
    auditory = (rois["roi"] == "AC").to_numpy()
    assert temporal[auditory].mean() > 0.9
    assert temporal[~auditory].mean() < 0.3
    visual = (rois["roi"] == "V1").to_numpy()
    assert np.median(y[visual]) < -75  # occipital pole


def test_value_lands_on_its_vertex(layout, map_cache):
    table = surface.template_to_fsaverage("thin", cache_dir=map_cache).set_index("volume_index")
    voxel = 42
    vertex = table.loc[layout.volume_index[voxel], "vertex"]
    values = np.full(layout.n_voxels, np.nan)
    values[voxel] = 3.0
    nearest = fsaverage.fsaverage_mapping(layout, radius_mm=0, cache_dir=map_cache)
    projected = fsaverage.to_fsaverage(values, nearest)
    assert projected.shape == (fsaverage.N_FSAVERAGE_VERTICES,)
    assert projected[vertex] == 3.0 and np.isfinite(projected).sum() == 1
    wide = fsaverage.fsaverage_mapping(layout, cache_dir=map_cache)
    assert wide.shape == (fsaverage.N_FSAVERAGE_VERTICES, layout.n_voxels)
    shown = fsaverage.to_fsaverage(values, wide)
    assert shown[vertex] == 3.0
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(shown)), np.sort(wide[:, voxel].nonzero()[0]))
    assert wide.getnnz() > 3 * layout.n_voxels  # most voxels reach several vertices
    values[:] = 1.0
    values[voxel] = 3.0
    assert 1.0 <= fsaverage.to_fsaverage(values, wide)[vertex] <= 3.0  # a mean of the voxels it shows


def test_registered_mapping_is_the_demo_fit(layout, map_cache):
    registered = SURFACE_MAPPINGS["S1"](layout, 4.0, map_cache)
    direct = surface.s1_fsaverage_mapping(layout, 4.0, map_cache)
    assert (registered != direct).nnz == 0


def test_mapping_errors(layout, map_cache):
    with pytest.raises(ValueError, match="radius_mm=-1"):
        fsaverage.fsaverage_mapping(layout, radius_mm=-1, cache_dir=map_cache)
    outside = VoxelLayout("S1", "fullhead", layout.volume_shape, np.array([0]), np.array(["other"]), np.array(["L"]),
                          "thin")
    with pytest.raises(ValueError, match="not in S1's 'thin' mask"):
        fsaverage.fsaverage_mapping(outside, cache_dir=map_cache)
    other_xfm = VoxelLayout("S1", "identity", layout.volume_shape, layout.volume_index, layout.roi, layout.hemisphere,
                            "thin")
    with pytest.raises(ValueError, match="on S1/identity"):
        fsaverage.fsaverage_mapping(other_xfm, cache_dir=map_cache)
    with pytest.raises(ValueError, match="PycortexSpace on S1/fullhead"):
        fsaverage.fsaverage_mapping(PycortexSpace("S1", "fullhead"), cache_dir=map_cache)
    no_mask = VoxelLayout("S1", "fullhead", layout.volume_shape, layout.volume_index, layout.roi, layout.hemisphere)
    with pytest.raises(ValueError, match="layout.mask=None"):
        fsaverage.fsaverage_mapping(no_mask, cache_dir=map_cache)
