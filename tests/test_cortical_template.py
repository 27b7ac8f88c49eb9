"""Tests of bt_utils.demo.template (offline; pycortex's bundled subject S1)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bt_utils.data.layout import VoxelLayout
from bt_utils.demo import template as ct
from bt_utils.viz.volumes import import_cortex

SHAPE = (31, 100, 100)
N_THIN = 37_226
# ROIs of S1's overlays.svg that have outlines (V3A, V3B, LO, V4, V7 and IFSFP have none)
S1_ROIS = {
    "AC", "Broca", "EBA", "FEF", "FFA", "FO", "IPS", "M1F", "M1H", "M1M", "OFA", "OPA", "PMvh",
    "PPA", "RSC", "S1F", "S1H", "S1M", "S2F", "SEF", "SMFA", "SMHA", "V1", "V2", "V3", "sPMv",
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cortical_template_cache")
    ct._MEMORY_CACHE.clear()
    ct.template_roi_table(path)  # built once per session (~3 s)
    return path


@pytest.fixture(scope="session")
def table(cache_dir):
    return ct.template_roi_table(cache_dir)


@pytest.fixture(scope="session")
def cortex():
    return import_cortex()


def surface_mm(cortex, volume_index):
    """Independent voxel -> S1 surface space (x, y, z) in mm, via pycortex's transform."""
    xfm = cortex.db.get_xfm("S1", "fullhead")
    z, y, x = np.unravel_index(volume_index, SHAPE)
    return xfm.inv(np.column_stack([x, y, z]).astype(float))


def test_table_layout(table):
    assert list(table.columns) == ["volume_index", "roi", "hemisphere"]
    assert len(table) == N_THIN
    assert table.attrs["volume_shape"] == SHAPE
    assert table.attrs["mask"] == "thin"
    index = table["volume_index"].to_numpy()
    assert index.dtype == np.int64
    assert np.all(np.diff(index) > 0)
    assert set(table["roi"]) == S1_ROIS | {"other"}
    assert set(table["hemisphere"]) == {"L", "R"}


def test_roi_counts(cache_dir):
    counts = ct.roi_voxel_counts(cache_dir)
    assert sum(counts.values()) == N_THIN
    assert counts["AC"] == 1321 and counts["Broca"] == 185 and counts["sPMv"] == 151
    assert counts["V1"] == 593 and counts["other"] == 28_935
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_mask_matches_pycortex(table, cortex):
    mask = cortex.utils.get_cortical_mask("S1", "fullhead", "thin")
    assert mask.shape == SHAPE
    np.testing.assert_array_equal(np.flatnonzero(mask), table["volume_index"].to_numpy())


def test_roi_vertices_match_pycortex(cortex):
    ours, n_left = ct._roi_vertex_masks()
    (left, _), _ = cortex.db.get_surf("S1", "fiducial", merge=False)
    assert n_left == len(left)
    theirs = cortex.utils.get_roi_verts("S1", ["Broca", "sPMv"])
    for name, verts in theirs.items():
        np.testing.assert_array_equal(np.flatnonzero(ours[name]), np.sort(verts))


def test_cache_is_reused_and_fast(cache_dir, table, monkeypatch):
    files = sorted(p.name for p in cache_dir.iterdir())
    assert files == ["S1_fullhead_thin_pycortex-1.4.0_v1.npz".replace("1.4.0", ct._pycortex_version())]

    def fail(mask):
        raise AssertionError("the cached table should have been used")

    monkeypatch.setattr(ct, "_compute_table", fail)
    monkeypatch.setattr(ct, "_MEMORY_CACHE", {})
    start = time.perf_counter()
    again = ct.template_roi_table(cache_dir)
    assert time.perf_counter() - start < 1.0
    assert again.equals(table)
    again.loc[0, "roi"] = "changed"  # callers get a copy
    assert ct.template_roi_table(cache_dir).loc[0, "roi"] == table.loc[0, "roi"]


def test_corrupt_cache_is_rebuilt(cache_dir, tmp_path, monkeypatch):
    good = ct._load_cache(ct._cache_file(cache_dir, "thin"))
    target = ct._cache_file(tmp_path, "thin")
    target.write_bytes(b"not an npz file")
    calls = []

    def compute(mask):
        calls.append(mask)
        return dict(good, volume_shape=np.asarray(good["volume_shape"]))

    monkeypatch.setattr(ct, "_compute_table", compute)
    monkeypatch.setattr(ct, "_MEMORY_CACHE", {})
    assert len(ct.template_roi_table(tmp_path)) == N_THIN
    assert calls == ["thin"]
    assert ct._load_cache(target) is not None
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_sample_is_deterministic(cache_dir):
    a = ct.sample_layout(2000, np.random.default_rng(7), cache_dir=cache_dir)
    b = ct.sample_layout(2000, np.random.default_rng(7), cache_dir=cache_dir)
    c = ct.sample_layout(2000, np.random.default_rng(8), cache_dir=cache_dir)
    for field in ("volume_index", "roi", "hemisphere"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.volume_index, c.volume_index)


def test_sample_properties(cache_dir, table):
    n = 3000
    layout = ct.sample_layout(n, np.random.default_rng(0), cache_dir=cache_dir)
    assert layout.n_voxels == n and layout.volume_shape == SHAPE and layout.mask == "thin"
    assert (layout.subject, layout.xfm, layout.filestore) == ("S1", "fullhead", None)
    assert layout.volume_index.dtype == np.int64
    assert np.all(np.diff(layout.volume_index) > 0)  # sorted and unique
    lookup = table.set_index("volume_index")
    assert np.isin(layout.volume_index, lookup.index).all()
    np.testing.assert_array_equal(layout.roi, lookup.loc[layout.volume_index, "roi"].to_numpy())
    np.testing.assert_array_equal(layout.hemisphere, lookup.loc[layout.volume_index, "hemisphere"].to_numpy())
    assert set(layout.roi) <= S1_ROIS | {"other"}
    counts = layout.roi_counts()
    for name, frac in ct.DEFAULT_ROI_FRACTIONS.items():
        assert counts[name] == round(frac * n)
    assert not layout.volume_index.flags.writeable


def test_custom_fractions(cache_dir):
    fractions = {"other": 0.5, "AC": 0.3, "Broca": 0.2}
    layout = ct.sample_layout(301, np.random.default_rng(1), fractions, cache_dir=cache_dir)
    assert layout.roi_counts() == {"AC": 90, "Broca": 60, "other": 151}  # largest remainder: 150.5 -> 151
    layout = ct.sample_layout(100, np.random.default_rng(1), {"AC": 1.0}, cache_dir=cache_dir)
    assert layout.roi_counts() == {"AC": 100}
    same = ct.sample_layout(100, np.random.default_rng(1), {"V1": 0.1, "AC": 0.2}, cache_dir=cache_dir)
    swapped = ct.sample_layout(100, np.random.default_rng(1), {"AC": 0.2, "V1": 0.1}, cache_dir=cache_dir)
    np.testing.assert_array_equal(same.volume_index, swapped.volume_index)
    everything = ct.sample_layout(N_THIN, np.random.default_rng(1), {}, cache_dir=cache_dir)
    assert everything.n_voxels == N_THIN


def test_geometry(cortex, table):
    mm = surface_mm(cortex, table["volume_index"].to_numpy())
    roi = table["roi"].to_numpy()
    hemi = table["hemisphere"].to_numpy()

    def mean(name):
        return mm[roi == name].mean(axis=0), np.abs(mm[roi == name, 0]).mean()

    (ac, ac_lat), (v1, v1_lat), (broca, _), (m1f, _) = map(mean, ["AC", "V1", "Broca", "M1F"])
    assert v1[1] < ac[1] - 40  # V1 is posterior (occipital pole)
    assert broca[1] > ac[1] + 15  # Broca is anterior (frontal)
    assert ac_lat > 45 and v1_lat < 15  # AC lateral (temporal lobe), V1 medial (calcarine)
    assert ac[2] < m1f[2] - 40  # AC far below the foot motor area at the vertex
    # hemisphere labels agree with the left/right side (x < 0 is left) away from the midline
    away = np.abs(mm[:, 0]) > 6
    np.testing.assert_array_equal(hemi[away] == "L", mm[away, 0] < 0)
    assert np.mean((hemi == "L") == (mm[:, 0] < 0)) > 0.98
    for name in ("AC", "V1", "Broca"):
        sides = hemi[roi == name]
        assert (sides == "L").sum() > 0.3 * sides.size and (sides == "R").sum() > 0.3 * sides.size


def test_voxel_coordinates(cache_dir, cortex):
    layout = ct.sample_layout(500, np.random.default_rng(3), cache_dir=cache_dir)
    np.testing.assert_allclose(ct.voxel_coordinates(layout, cache_dir), surface_mm(cortex, layout.volume_index))
    elsewhere = VoxelLayout("UTS01", "UTS01_auto", SHAPE, layout.volume_index, layout.roi, layout.hemisphere)
    with pytest.raises(ValueError, match="on UTS01/UTS01_auto, not S1/fullhead"):
        ct.voxel_coordinates(elsewhere, cache_dir)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_voxels=N_THIN + 1), ValueError, "n_voxels=37227 is larger than the 37226"),
        (dict(n_voxels=0), ValueError, "n_voxels=0"),
        (dict(n_voxels=True), ValueError, "n_voxels=True"),
        (dict(n_voxels=2.5), ValueError, "n_voxels=2.5"),
        (dict(roi_fractions={"Wernicke": 0.1}), ValueError, "'Wernicke'.*available ROIs: AC, Broca"),
        (dict(roi_fractions={"V4": 0.1}), ValueError, "unknown ROI 'V4'"),
        (dict(roi_fractions={"AC": 0.7, "V1": 0.4}), ValueError, "sum to 1.1"),
        (dict(roi_fractions={"AC": -0.1}), ValueError, r"roi_fractions\['AC'\]=-0.1"),
        (dict(roi_fractions={"Broca": 0.5}), ValueError, "'Broca' has only 185 voxels"),
        (dict(n_voxels=N_THIN, roi_fractions={"AC": 0.01}), ValueError, "only 35905 are left"),
        (dict(roi_fractions=[("AC", 0.1)]), TypeError, "roi_fractions"),
        (dict(mask="cortical"), ValueError, "mask='cortical'"),
    ],
)
def test_bad_arguments(cache_dir, kwargs, error, match):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    args = dict(n_voxels=1000, rng=rng, cache_dir=cache_dir) | kwargs
    with pytest.raises(error, match=match):
        ct.sample_layout(**args)
    assert rng.bit_generator.state == state  # nothing drawn on failure


def test_rng_must_be_generator(cache_dir):
    with pytest.raises(TypeError, match="Generator"):
        ct.sample_layout(10, 0, cache_dir=cache_dir)
