"""Regions of interest per participant: HCP-MMP1 groups for ds003020, template ROIs for the demo.

An ROI is a set of parcels, each a set of voxels: ``{parcel name: voxel indices}``,
so that ROI means can weigh every parcel the same (:func:`bt_utils.encoding.stats.roi_mean`).

ds003020: ROIs are groups of HCP-MMP1 parcels, a parcel pooling both hemispheres:

- ``late_language``: A5, 44, 45, IFJa, IFSp, PGi, PGp, PGs, TPOJ1-3, STGa, STSda, STSdp, TA2, STSva;
- ``primary_auditory``: A1; ``early_auditory``: A1, LBelt, PBelt, MBelt, RI, A4;
- ``visual_control``: V1, V2.

The atlas is not part of ds003020 and cannot be downloaded here. A user provides,
per subject, the HCP-MMP1 parcel of every voxel in
``<atlas_dir>/<subject>.npz`` with an array ``parcel`` of shape (n_voxels,) holding
parcel names such as ``"L_A1_ROI"`` or ``"A1"`` ("" or "???" for unlabelled voxels).
docs/method.md ("ROIs") gives one way to make it from the HCP-MMP1 atlas.

The demo: every voxel carries a label of the template subject S1 (AC, Broca, sPMv,
V1, ...), and the planted classes give the ROIs ``planted_semantic``,
``planted_auditory`` and ``planted_noise``; each of them is a single parcel.
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
    """Bare HCP-MMP1 parcel name: ``"L_A1_ROI"`` -> ``"A1"``, ``"R_STSdp_ROI"`` -> ``"STSdp"``.

    Bytes (as nibabel's ``read_annot`` returns names) are decoded as UTF-8.
    """
    if isinstance(label, (bytes, np.bytes_)):
        label = label.decode("utf-8")
    return re.sub(r"^[LR]_|_ROI$", "", str(label).strip())


def hcp_rois(parcels: np.ndarray) -> dict[str, np.ndarray]:
    """Voxel indices of each HCP ROI group, from per-voxel parcel names (shape (n_voxels,))."""
    names = np.array([hcp_parcel_name(p) for p in parcels])
    return {group: np.flatnonzero(np.isin(names, members)) for group, members in HCP_ROI_GROUPS.items()}


def subject_rois(dataset: Dataset, subject: str, atlas_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """ROIs of a participant as voxel indices.

    Parameters
    ----------
    dataset : Dataset
    subject : str
    atlas_dir : path-like, optional
        Folder with ``<subject>.npz`` per-voxel HCP-MMP1 parcels (real data; see
        docs/method.md, "ROIs"). Not needed for the demo.

    Returns
    -------
    rois : dict of str to ndarray of int
        Demo: each template ROI (except "other") plus ``planted_<class>``.
        ds003020: the groups of :data:`HCP_ROI_GROUPS`.

    Raises
    ------
    FileNotFoundError
        Real data without ``atlas_dir`` or without ``<atlas_dir>/<subject>.npz``.
    DataError
        The atlas file has no array ``parcel``, its length differs from the
        subject's voxel count, or an ROI group matches none of its voxels.
    """
    layout = dataset.voxel_layout(subject)
    if layout is not None and dataset.demo_info is not None:
        rois = {str(name): np.flatnonzero(layout["roi"] == name) for name in np.unique(layout["roi"]) if name != "other"}
        classes = dataset.truth(subject)["voxel_class"]
        rois |= {f"planted_{c}": np.flatnonzero(classes == c) for c in PLANTED_CLASSES}
        return rois
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
    for group, voxels in rois.items():
        if not voxels.size:
            found = sorted({hcp_parcel_name(p) for p in parcels[:1000]})[:8]
            raise DataError(f"no voxel of {path} lies in the HCP-MMP1 parcels of ROI {group!r} "
                            f"({', '.join(HCP_ROI_GROUPS[group])}); its parcel names look like {found}. Expected "
                            "names such as 'L_A1_ROI' or 'A1' for every cortical voxel: see bt_utils.data.rois")
    return rois
