"""Regions of interest per participant: HCP-MMP1 groups for ds003020, template ROIs for the demo.

An ROI is a set of parcels, each a set of voxels: ``{parcel name: voxel indices}``, so that ROI means can weigh
every parcel the same. docs/method.md ("ROIs") lists ds003020's ROIs and how to provide the atlas they need.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .dataset import Dataset
from ..validation import DataError

HCP_ROI_GROUPS: dict[str, tuple[str, ...]] = {
    "late_language": ("A5", "44", "45", "IFJa", "IFSp", "PGi", "PGp", "PGs", "TPOJ1", "TPOJ2", "TPOJ3",
                      "STGa", "STSda", "STSdp", "TA2", "STSva"),
    "primary_auditory": ("A1",),
    "early_auditory": ("A1", "LBelt", "PBelt", "MBelt", "RI", "A4"),
    "visual_control": ("V1", "V2"),
}
PLANTED_CLASSES = ("semantic", "auditory", "noise")


def hcp_parcel_name(label: str | bytes) -> str:
    """Bare HCP-MMP1 parcel name: ``"L_A1_ROI"`` -> ``"A1"``, ``"R_STSdp_ROI"`` -> ``"STSdp"``."""
    if isinstance(label, (bytes, np.bytes_)):
        label = label.decode("utf-8")
    return re.sub(r"^[LR]_|_ROI$", "", str(label).strip())


def hcp_rois(parcels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Parcels of each HCP ROI group with their voxels, from per-voxel parcel names.

    Parameters
    ----------
    parcels : ndarray of shape (n_voxels,)
        HCP-MMP1 parcel name of every voxel (``"L_A1_ROI"``, ``"A1"``, bytes, ...).
    """
    names = np.array([hcp_parcel_name(p) for p in parcels])
    rois = {}
    for group, members in HCP_ROI_GROUPS.items():
        voxels = {parcel: np.flatnonzero(names == parcel) for parcel in members}
        rois[group] = {parcel: indices for parcel, indices in voxels.items() if indices.size}
    return rois


def subject_rois(dataset: Dataset, subject: str,
                 atlas_dir: str | os.PathLike | None = None) -> dict[str, dict[str, np.ndarray]]:
    """ROIs of a participant as voxel indices.

    Parameters
    ----------
    atlas_dir : path-like, optional
        Folder with ``<subject>.npz`` per-voxel HCP-MMP1 parcels (real data; see docs/method.md, "ROIs").

    Returns
    -------
    rois : dict of str to dict of str to ndarray of int
        ``rois[roi][parcel]``: voxel indices of each parcel of each ROI.

    Raises
    ------
    FileNotFoundError
        Real data without ``atlas_dir`` or without ``<atlas_dir>/<subject>.npz``.
    DataError
        The atlas file has no array ``parcel``, its length differs from the subject's voxel count, or an ROI group
        matches none of its voxels.
    """
    layout = dataset.voxel_layout(subject)
    if layout is not None and dataset.demo_info is not None:
        labels = {str(name): layout["roi"] == name for name in np.unique(layout["roi"]) if name != "other"}
        classes = dataset.truth(subject)["voxel_class"]
        labels |= {f"planted_{c}": classes == c for c in PLANTED_CLASSES}
        return {name: {name: np.flatnonzero(members)} for name, members in labels.items()}
    if atlas_dir is None:
        raise FileNotFoundError(
            f"{subject} has no ROI definitions: pass atlas_dir, a folder with {subject}.npz holding the HCP-MMP1 "
            "parcel of every voxel (array 'parcel'); see bt_utils.data.rois for how to make it"
        )
    path = Path(atlas_dir) / f"{subject}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"ROI file {path} not found; see bt_utils.data.rois for how to make it from HCP-MMP1")
    with np.load(path, allow_pickle=False) as atlas:
        if "parcel" not in atlas.files:
            raise DataError(f"{path} has no array 'parcel' (arrays found: {atlas.files})")
        parcels = atlas["parcel"]
    n_voxels = dataset.n_voxels(subject)
    if parcels.shape != (n_voxels,):
        raise DataError(f"{path} gives parcels of shape {parcels.shape} but {subject}'s responses have {n_voxels} "
                        "voxels: the atlas was projected into another voxel mask (ds003020 uses the pycortex "
                        f"'thick' mask of transform {subject}_auto); rebuild it for that mask")
    rois = hcp_rois(parcels)
    for group, parcels_of_group in rois.items():
        if not parcels_of_group:
            found = sorted({hcp_parcel_name(p) for p in parcels[:1000]})[:8]
            raise DataError(f"no voxel of {path} lies in the HCP-MMP1 parcels of ROI {group!r} "
                            f"({', '.join(HCP_ROI_GROUPS[group])}); its parcel names look like {found}. Expected "
                            "names such as 'L_A1_ROI' or 'A1' for every cortical voxel: see bt_utils.data.rois")
    return rois
