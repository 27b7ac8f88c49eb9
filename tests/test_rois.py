import numpy as np
import pandas as pd
import pytest

from bt_utils.data.rois import HCP_ROI_GROUPS, hcp_parcel_name, hcp_rois, subject_rois
from bt_utils.encoding.stats import roi_table
from bt_utils.validation import DataError


def _as_lists(parcels):
    return {parcel: voxels.tolist() for parcel, voxels in parcels.items()}


def test_hcp_groups_follow_the_method():
    assert len(HCP_ROI_GROUPS["late_language"]) == 16 and HCP_ROI_GROUPS["primary_auditory"] == ("A1",)
    assert hcp_parcel_name("L_STSdp_ROI") == "STSdp" and hcp_parcel_name("44") == "44"
    rois = hcp_rois(np.array(["L_A1_ROI", "R_LBelt_ROI", "L_44_ROI", "L_V1_ROI", "???", "R_A1_ROI"]))
    # an ROI is its parcels, each pooling both hemispheres; parcels without voxels are left out
    assert _as_lists(rois["primary_auditory"]) == {"A1": [0, 5]}
    assert _as_lists(rois["early_auditory"]) == {"A1": [0, 5], "LBelt": [1]}
    assert _as_lists(rois["late_language"]) == {"44": [2]} and _as_lists(rois["visual_control"]) == {"V1": [3]}
    # nibabel's read_annot gives bytes; an .npz of them loads back as a bytes array
    from_bytes = hcp_rois(np.array([b"L_A1_ROI", b"R_45_ROI", b"L_V1_ROI"]))
    assert _as_lists(from_bytes["primary_auditory"]) == {"A1": [0]} and _as_lists(from_bytes["late_language"]) == {"45": [1]}


def test_demo_rois_include_template_and_planted(demo):
    rois = subject_rois(demo, "DEMO01")
    truth = demo.truth("DEMO01")
    assert {"AC", "Broca", "V1", "planted_semantic", "planted_auditory", "planted_noise"} <= set(rois)
    assert "other" not in rois
    assert all(list(parcels) == [name] for name, parcels in rois.items())  # each demo ROI is one parcel
    np.testing.assert_array_equal(rois["planted_auditory"]["planted_auditory"],
                                  np.flatnonzero(truth["voxel_class"] == "auditory"))


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
    assert _as_lists(rois["primary_auditory"]) == {"A1": [0]} and _as_lists(rois["late_language"]) == {"45": [3]}
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


def test_demo_roi_means_are_the_plain_voxel_means(demo):
    # every demo ROI is one parcel: weighing parcels equally changes nothing there
    rois = subject_rois(demo, "DEMO01")
    layout, classes = demo.voxel_layout("DEMO01"), demo.truth("DEMO01")["voxel_class"]
    rng = np.random.default_rng(0)
    r_norm = rng.normal(0.2, 0.3, (2, 3000))
    r_norm[rng.uniform(size=r_norm.shape) < 0.3] = np.nan
    voxels = pd.DataFrame({"subject": "DEMO01", "model": "m", "variant": "v", "layer": np.repeat([1, 2], 3000),
                           "voxel": np.tile(np.arange(3000), 2), "r_norm": r_norm.ravel()})
    by_parcel = roi_table(voxels, {"DEMO01": rois})
    by_voxel = roi_table(voxels, {"DEMO01": rois}, weighting="voxel")
    np.testing.assert_allclose(by_parcel.r_norm_mean, by_voxel.r_norm_mean, rtol=1e-12)
    assert (by_parcel.n_parcels == (by_parcel.n_voxels > 0)).all()  # one parcel, unless all its voxels are NaN
    for (layer, roi), mean in by_parcel.set_index(["layer", "roi"]).r_norm_mean.items():
        members = classes == roi.removeprefix("planted_") if roi.startswith("planted_") else layout["roi"] == roi
        values = r_norm[layer - 1][members]
        values = values[np.isfinite(values)]
        assert mean == pytest.approx(values.mean() if values.size else np.nan, nan_ok=True)
