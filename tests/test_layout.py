"""Voxel layouts (bt_utils.data.layout): validation, the layout file format, volumes, dataset subjects."""

from pathlib import Path

import numpy as np
import pytest
from conftest import write_small_dataset

from bt_utils.data.dataset import Dataset
from bt_utils.data.layout import LAYOUT_KEYS, PycortexSpace, VoxelLayout, as_layout, subject_layout, to_volume

SHAPE = (4, 5, 6)


@pytest.fixture()
def layout():
    index = np.array([3, 17, 40, 41, 119])
    return VoxelLayout("UTS01", "UTS01_auto", SHAPE, index, ["A1", "other", "V1", "A1", "other"],
                       ["L", "L", "R", "R", "R"], "thick")


def test_layout_validation():
    roi, hemi = np.array(["AC", "AC"]), np.array(["L", "L"])
    with pytest.raises(ValueError, match="duplicate"):
        VoxelLayout("S1", "fullhead", SHAPE, np.array([1, 1]), roi, hemi)
    with pytest.raises(ValueError, match=r"outside \[0, 120\)"):
        VoxelLayout("S1", "fullhead", SHAPE, np.array([0, 120]), roi, hemi)
    with pytest.raises(ValueError, match="hemisphere labels"):
        VoxelLayout("S1", "fullhead", SHAPE, np.array([0]), ["AC"], ["left"])
    with pytest.raises(ValueError, match="roi has shape"):
        VoxelLayout("S1", "fullhead", SHAPE, np.array([0, 1]), ["AC"], hemi)
    with pytest.raises(ValueError, match="integer"):
        VoxelLayout("S1", "fullhead", SHAPE, np.array([0.5]), ["AC"], ["L"])
    with pytest.raises(ValueError, match="three positive sizes"):
        VoxelLayout("S1", "fullhead", (4, 5), np.array([0]), ["AC"], ["L"])
    with pytest.raises(ValueError, match="subject=''"):
        VoxelLayout("", "fullhead", SHAPE, np.array([0]), ["AC"], ["L"])
    with pytest.raises(ValueError, match="xfm=None"):
        PycortexSpace("UTS01", None)


def test_layout_accessors(layout):
    assert layout.n_voxels == 5 and layout.roi_counts() == {"A1": 2, "V1": 1, "other": 2}
    np.testing.assert_array_equal(layout.zyx()[2], np.unravel_index(40, SHAPE))
    assert not layout.volume_index.flags.writeable and not layout.roi.flags.writeable


def test_layout_file_round_trip(layout, tmp_path):
    arrays = layout.arrays()
    assert tuple(arrays) == LAYOUT_KEYS
    np.savez(tmp_path / "S.npz", **arrays)
    with np.load(tmp_path / "S.npz", allow_pickle=False) as npz:
        back = VoxelLayout.from_arrays({key: npz[key] for key in npz.files}, filestore=tmp_path)
    assert (back.subject, back.xfm, back.mask, back.volume_shape, back.filestore) == (
        "UTS01", "UTS01_auto", "thick", SHAPE, tmp_path)
    for field in ("volume_index", "roi", "hemisphere"):
        np.testing.assert_array_equal(getattr(back, field), getattr(layout, field))
    no_mask = VoxelLayout.from_arrays({**arrays, "mask": np.array("")})
    assert no_mask.mask is None and no_mask.arrays()["mask"] == ""
    with pytest.raises(ValueError, match=r"lack keys \['hemisphere'\]"):
        VoxelLayout.from_arrays({key: value for key, value in arrays.items() if key != "hemisphere"})


def test_as_layout(layout, tmp_path):
    assert as_layout(layout) is layout
    assert as_layout(layout.arrays()).subject == "UTS01"
    assert as_layout(("UTS01", "UTS01_auto", "thick", tmp_path)) == PycortexSpace("UTS01", "UTS01_auto", "thick",
                                                                                   tmp_path)
    with pytest.raises(ValueError, match="subject_layout"):
        as_layout(None)
    with pytest.raises(TypeError, match="int"):
        as_layout(3)


def test_to_volume(layout):
    values = np.arange(1, 6, dtype=float)
    volume = to_volume(layout, values)
    assert volume.shape == SHAPE and volume.dtype == np.float64
    assert np.isfinite(volume).sum() == 5
    np.testing.assert_array_equal(volume[tuple(layout.zyx().T)], values)
    assert volume.ravel()[40] == 3.0
    series = to_volume(layout, np.vstack([values, -values]).astype(np.float32), fill_value=0)
    assert series.shape == (2, *SHAPE) and series.dtype == np.float32
    assert series[1].ravel()[119] == -5.0 and series[0].sum() == values.sum()
    assert to_volume(layout, np.arange(5)).dtype == np.float64
    with pytest.raises(ValueError, match="layout's 5 voxels"):
        to_volume(layout, values[:-1])


def test_subject_layout(demo, tmp_path):
    subject = demo.subjects[0]
    layout = subject_layout(demo, subject)
    arrays = demo.voxel_layout(subject)
    assert isinstance(layout, VoxelLayout) and (layout.subject, layout.xfm, layout.mask) == ("S1", "fullhead", "thin")
    np.testing.assert_array_equal(layout.volume_index, arrays["volume_index"])
    np.testing.assert_array_equal(layout.roi, arrays["roi"])

    real = Dataset(write_small_dataset(tmp_path / "real", {"story": 40}))
    with pytest.raises(FileNotFoundError, match="derivative/pycortex-db/S01"):
        subject_layout(real, "S01")
    (real.derivative / "pycortex-db" / "S01").mkdir(parents=True)
    expected = PycortexSpace("S01", "S01_auto", "thick", real.derivative / "pycortex-db")
    assert subject_layout(real, "S01") == expected
    assert isinstance(expected.filestore, Path)
