import numpy as np
import pytest

from bt_utils.data.rois import HCP_ROI_GROUPS, hcp_parcel_name, hcp_rois, subject_rois
from bt_utils.validation import DataError


def test_hcp_groups_follow_the_method():
    assert len(HCP_ROI_GROUPS["late_language"]) == 16 and HCP_ROI_GROUPS["primary_auditory"] == ("A1",)
    assert hcp_parcel_name("L_STSdp_ROI") == "STSdp" and hcp_parcel_name("44") == "44"
    rois = hcp_rois(np.array(["L_A1_ROI", "R_LBelt_ROI", "L_44_ROI", "L_V1_ROI", "???", "R_A1_ROI"]))
    assert rois["primary_auditory"].tolist() == [0, 5]
    assert rois["early_auditory"].tolist() == [0, 1, 5]
    assert rois["late_language"].tolist() == [2] and rois["visual_control"].tolist() == [3]
    # nibabel's read_annot gives bytes; an .npz of them loads back as a bytes array
    from_bytes = hcp_rois(np.array([b"L_A1_ROI", b"R_45_ROI", b"L_V1_ROI"]))
    assert from_bytes["primary_auditory"].tolist() == [0] and from_bytes["late_language"].tolist() == [1]


def test_demo_rois_include_template_and_planted(demo):
    rois = subject_rois(demo, "DEMO01")
    truth = demo.truth("DEMO01")
    assert {"AC", "Broca", "V1", "planted_semantic", "planted_auditory", "planted_noise"} <= set(rois)
    assert "other" not in rois
    np.testing.assert_array_equal(rois["planted_auditory"], np.flatnonzero(truth["voxel_class"] == "auditory"))


def test_real_data_needs_an_atlas(tmp_path):
    from conftest import write_small_dataset
    from bt_utils.data.dataset import Dataset

    dataset = Dataset(write_small_dataset(tmp_path / "d", {"a": 30}))
    with pytest.raises(FileNotFoundError, match="pass atlas_dir"):
        subject_rois(dataset, "S01")
    with pytest.raises(FileNotFoundError, match="S01.npz not found"):
        subject_rois(dataset, "S01", tmp_path)
    np.savez(tmp_path / "S01.npz", parcel=np.array(["L_A1_ROI", "", "R_V2_ROI", "L_45_ROI"]))
    rois = subject_rois(dataset, "S01", tmp_path)
    assert rois["primary_auditory"].tolist() == [0] and rois["late_language"].tolist() == [3]
    assert dataset.n_voxels("S01") == 4
    np.savez(tmp_path / "S01.npz", parcel=np.array(["L_A1_ROI", "", "R_V2_ROI", "L_45_ROI", "L_A1_ROI"]))
    with pytest.raises(DataError, match=r"parcels of shape \(5,\) but S01's responses have 4 voxels"):
        subject_rois(dataset, "S01", tmp_path)  # an atlas of another voxel mask would mislabel every voxel
    np.savez(tmp_path / "S01.npz", labels=np.array(["A1"]))
    with pytest.raises(DataError, match="no array 'parcel'"):
        subject_rois(dataset, "S01", tmp_path)
    # names in another convention leave a group empty: an error, not an ROI without voxels
    np.savez(tmp_path / "S01.npz", parcel=np.array(["L_A1_ROI", "L_45_ROI", "lh.V1", "lh.V2"]))
    with pytest.raises(DataError, match=r"S01.npz lies in the HCP-MMP1 parcels of ROI 'visual_control'.*'lh.V1'"):
        subject_rois(dataset, "S01", tmp_path)
