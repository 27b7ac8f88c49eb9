"""Voxel layouts: which cortical voxels the values of a participant's voxel arrays belong to.

A response matrix or a map has one column per voxel; a *layout* places those voxels in the functional volume of a
pycortex subject, so that maps can be drawn.

This module is plain numpy: it describes voxels and never imports pycortex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LAYOUT_KEYS", "PycortexSpace", "VoxelLayout", "as_layout", "subject_layout", "to_volume"]

LAYOUT_KEYS = ("template", "xfm", "mask", "volume_shape", "volume_index", "roi", "hemisphere")
"""Arrays of a ``derivative/voxel_layout/<subject>.npz`` file (``template`` is the pycortex subject)."""


@dataclass(frozen=True, eq=False)
class VoxelLayout:
    """Voxels of a pycortex subject's functional volume that a values array holds, in order.

    Parameters
    ----------
    subject : str
        pycortex subject, e.g. ``"S1"``.
    xfm : str
        pycortex transform of the functional volume, e.g. ``"fullhead"``.
    volume_shape : tuple of int, length 3
        Shape of the functional volume in pycortex's (z, y, x) order.
    volume_index : numpy.ndarray of int64, shape (n_voxels,)
        Unique flat (C-order) indices into a volume of shape `volume_shape`, i.e. ``np.ravel_multi_index((z, y, x),
        volume_shape)``.
    roi : numpy.ndarray of str, shape (n_voxels,)
        ROI name of each voxel, ``"other"`` outside every ROI.
    hemisphere : numpy.ndarray of str, shape (n_voxels,)
        ``"L"`` or ``"R"``.
    mask : str, optional
        pycortex mask the voxels were drawn from (e.g. ``"thin"``), if any.
    filestore : path-like, optional
        Folder that holds ``<subject>/``; None uses pycortex's configured filestore.
    """

    subject: str
    xfm: str
    volume_shape: tuple[int, int, int]
    volume_index: np.ndarray
    roi: np.ndarray
    hemisphere: np.ndarray
    mask: str | None = None
    filestore: Path | None = None

    def __post_init__(self):
        for name in ("subject", "xfm"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"VoxelLayout {name}={value!r} must be a non-empty string")
        shape = tuple(int(s) for s in self.volume_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"volume_shape={self.volume_shape!r} must be three positive sizes (z, y, x)")
        index = np.asarray(self.volume_index)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(
                f"volume_index must be a 1-D integer array, got dtype {index.dtype} and shape {index.shape}"
            )
        index = index.astype(np.int64)
        n = index.size
        roi = np.asarray(self.roi, dtype=str)
        hemi = np.asarray(self.hemisphere, dtype=str)
        for name, arr in (("roi", roi), ("hemisphere", hemi)):
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) like volume_index")
        if n and (index.min() < 0 or index.max() >= math.prod(shape)):
            raise ValueError(f"volume_index has values outside [0, {math.prod(shape)}) for volume_shape={shape}")
        if np.unique(index).size != n:
            raise ValueError("volume_index contains duplicate voxels")
        bad = sorted(set(np.unique(hemi)) - {"L", "R"})
        if bad:
            raise ValueError(f"hemisphere labels must be 'L' or 'R', got {bad}")
        for arr in (index, roi, hemi):
            arr.setflags(write=False)
        object.__setattr__(self, "volume_index", index)
        object.__setattr__(self, "roi", roi)
        object.__setattr__(self, "hemisphere", hemi)
        object.__setattr__(self, "volume_shape", shape)
        if self.filestore is not None:
            object.__setattr__(self, "filestore", Path(self.filestore).expanduser())

    @property
    def n_voxels(self) -> int:
        """Number of voxels."""
        return int(self.volume_index.size)

    def roi_counts(self) -> dict[str, int]:
        """Voxels per ROI label, sorted by label."""
        names, counts = np.unique(self.roi, return_counts=True)
        return {str(k): int(v) for k, v in zip(names, counts)}

    def zyx(self) -> np.ndarray:
        """Voxel indices along each volume axis: int64 of shape (n_voxels, 3), columns (z, y, x)."""
        return np.column_stack(np.unravel_index(self.volume_index, self.volume_shape)).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The layout as the arrays of a ``voxel_layout/<subject>.npz`` file (keys :data:`LAYOUT_KEYS`): 0-d string
        arrays ``template``, ``xfm`` and ``mask``, ``volume_shape`` of shape (3,), ``volume_index``, ``roi`` and
        ``hemisphere`` of shape (n_voxels,).
        """
        return {
            "template": np.array(self.subject),
            "xfm": np.array(self.xfm),
            "mask": np.array(self.mask or ""),
            "volume_shape": np.array(self.volume_shape),
            "volume_index": self.volume_index,
            "roi": self.roi,
            "hemisphere": self.hemisphere,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping, filestore=None) -> VoxelLayout:
        """Inverse of :meth:`arrays` (``filestore``: the subject's pycortex filestore, which the arrays do not hold).

        Raises
        ------
        ValueError
            If a key of :data:`LAYOUT_KEYS` is missing or an array is invalid.
        """
        missing = [key for key in LAYOUT_KEYS if key not in arrays]
        if missing:
            raise ValueError(f"voxel layout arrays lack keys {missing}; a layout file holds {list(LAYOUT_KEYS)}")
        return cls(
            subject=str(arrays["template"]),
            xfm=str(arrays["xfm"]),
            volume_shape=tuple(int(s) for s in np.asarray(arrays["volume_shape"])),
            volume_index=np.asarray(arrays["volume_index"]),
            roi=np.asarray(arrays["roi"]),
            hemisphere=np.asarray(arrays["hemisphere"]),
            mask=str(arrays["mask"]) or None,
            filestore=filestore,
        )


@dataclass(frozen=True)
class PycortexSpace:
    """Voxels of a pycortex mask of a subject in a pycortex filestore (real data).

    Parameters
    ----------
    subject : str
        pycortex subject, e.g. ``"UTS03"``.
    xfm : str
        Transform of the functional volume, e.g. ``"UTS03_auto"``.
    mask : str, default "thick"
        pycortex mask type (``transforms/<xfm>/mask_<mask>.nii.gz``).
    filestore : path-like, optional
        Folder that holds ``<subject>/``; None uses pycortex's configured filestore.
    """

    subject: str
    xfm: str
    mask: str = "thick"
    filestore: Path | None = None

    def __post_init__(self):
        for name in ("subject", "xfm", "mask"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"PycortexSpace {name}={value!r} must be a non-empty string")
        if self.filestore is not None:
            object.__setattr__(self, "filestore", Path(self.filestore).expanduser())


def as_layout(layout) -> VoxelLayout | PycortexSpace:
    """Normalise the ways a voxel layout can be given.

    Raises
    ------
    ValueError
        If `layout` is None (a real-data subject: use :func:`subject_layout`) or a layout dict lacks arrays.
    TypeError
        For any other type.
    """
    if isinstance(layout, (VoxelLayout, PycortexSpace)):
        return layout
    if layout is None:
        raise ValueError(
            "layout is None, as Dataset.voxel_layout returns for real data; use "
            "bt_utils.data.layout.subject_layout(dataset, subject) to get the subject's pycortex space"
        )
    if isinstance(layout, Mapping):
        return VoxelLayout.from_arrays(layout)
    if isinstance(layout, (tuple, list)) and len(layout) in (3, 4):
        return PycortexSpace(*layout)
    raise TypeError(
        "layout must be a VoxelLayout, a PycortexSpace, the dict of Dataset.voxel_layout(subject) or a tuple "
        f"(subject, xfm, mask[, filestore]); got {type(layout).__name__}"
    )


def subject_layout(dataset, subject: str) -> VoxelLayout | PycortexSpace:
    """Layout of a dataset subject's voxels: its layout file, or its ds003020 pycortex space.

    Returns
    -------
    VoxelLayout
        When the dataset has ``derivative/voxel_layout/<subject>.npz`` (demo subjects).
    PycortexSpace
        Otherwise (real ds003020 subjects):
        ``PycortexSpace(subject, subject + "_auto", "thick", <root>/derivative/pycortex-db)``.

    Raises
    ------
    FileNotFoundError
        If a real subject's ``derivative/pycortex-db/<subject>`` folder is absent.
    KeyError
        If `subject` is not in the dataset.
    """
    arrays = dataset.voxel_layout(subject)
    if arrays is not None:
        return VoxelLayout.from_arrays(arrays)
    filestore = dataset.derivative / "pycortex-db"
    if not (filestore / subject).is_dir():
        raise FileNotFoundError(
            f"no pycortex database for {subject}: {filestore / subject} does not exist; ds003020 ships it as "
            f"derivative/pycortex-db/{subject} (download that folder to draw maps of real subjects)"
        )
    return PycortexSpace(subject, f"{subject}_auto", "thick", filestore)


def to_volume(layout: VoxelLayout, values, fill_value: float = np.nan) -> np.ndarray:
    """Place per-voxel values into the layout's full functional volume.

    Parameters
    ----------
    values : array_like, shape (..., n_voxels)
        One value per voxel in the order of ``layout.volume_index``; leading axes (e.g. time) are kept.

    Returns
    -------
    numpy.ndarray, shape (..., z, y, x)
        Floating point (float64 unless `values` is already floating) volume of shape ``(*values.shape[:-1],
        *layout.volume_shape)``.

    Raises
    ------
    ValueError
        If the last axis of `values` does not have one entry per voxel.
    """
    values = np.asarray(values)
    if values.ndim == 0 or values.shape[-1] != layout.n_voxels:
        raise ValueError(
            f"values has shape {values.shape}, but its last axis must have the layout's {layout.n_voxels} voxels"
        )
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
    lead = values.shape[:-1]
    volume = np.full((*lead, math.prod(layout.volume_shape)), fill_value, dtype=dtype)
    volume[..., layout.volume_index] = values
    return volume.reshape(*lead, *layout.volume_shape)
