"""Voxel values as pycortex volumes, read from the pycortex filestore a layout names."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data.layout import PycortexSpace, VoxelLayout, as_layout, to_volume

__all__ = ["check_values", "import_cortex", "n_voxels", "pycortex_filestore", "volume_data"]


def import_cortex():
    """Import pycortex without its "Inkscape not found" banner on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        import cortex
    return cortex


@contextlib.contextmanager
def pycortex_filestore(filestore: str | os.PathLike | None) -> Iterator:
    """Point pycortex's database at `filestore` inside a ``with`` block; FileNotFoundError if it is not a folder."""
    db = import_cortex().db
    folder = None if filestore is None else Path(filestore).expanduser()
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"pycortex filestore {folder} is not a folder")
    if folder is None or folder == Path(db.filestore):
        yield db
        return
    keys = ("filestore", "_subjects", "_memocache")
    saved = {key: db.__dict__[key] for key in keys if key in db.__dict__}
    db.filestore, db._subjects, db._memocache = str(folder), None, {}
    try:
        yield db
    finally:
        for key in keys:
            db.__dict__.pop(key, None)
        db.__dict__.update(saved)


def _check_subject(db, subject: str, xfm: str) -> None:
    """Raise a clear error when `subject` or its transform `xfm` is not in the active filestore."""
    folder = Path(db.filestore) / subject
    if not folder.is_dir():
        raise FileNotFoundError(
            f"pycortex subject {subject!r} not found: {folder} does not exist "
            "(for ds003020 it is derivative/pycortex-db/<subject>)"
        )
    transforms = folder / "transforms"
    available = sorted(p.name for p in transforms.iterdir()) if transforms.is_dir() else []
    if xfm not in available:
        raise FileNotFoundError(f"transform {xfm!r} of {subject} not found in {transforms}; available: {available}")


def _space_mask(db, space: PycortexSpace) -> np.ndarray:
    """Boolean (z, y, x) mask of `space` from the active filestore (pycortex builds and saves it if missing)."""
    _check_subject(db, space.subject, space.xfm)
    with contextlib.redirect_stdout(io.StringIO()):  # "Mask not found, generating..."
        return np.asarray(db.get_mask(space.subject, space.xfm, space.mask), dtype=bool)


def check_values(values, n: int) -> np.ndarray:
    """One finite-or-NaN real number per voxel, as float64 of shape (n,); ValueError for another shape, a non-real dtype
    or infinite entries.
    """
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"values has shape {array.shape}, expected ({n},): one value per voxel of the layout")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"values must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if np.isinf(array).any():
        raise ValueError(f"values contain {int(np.isinf(array).sum())} infinite entries; use NaN for missing voxels")
    return array


def n_voxels(layout) -> int:
    """Number of voxels of a layout (reads the mask of a :class:`~bt_utils.data.layout.PycortexSpace`)."""
    layout = as_layout(layout)
    if isinstance(layout, VoxelLayout):
        return layout.n_voxels
    with pycortex_filestore(layout.filestore) as db:
        return int(_space_mask(db, layout).sum())


def volume_data(values, layout) -> np.ndarray:
    """Per-voxel values placed in the layout's functional volume (NaN elsewhere).

    Parameters
    ----------
    values : array_like, shape (n_voxels,)

    Returns
    -------
    numpy.ndarray of float64, shape (z, y, x)
        What :func:`bt_utils.viz.maps.flatmap` draws, e.g. as ``cortex.Volume(volume_data(values, layout),
        layout.subject, layout.xfm)`` inside ``pycortex_filestore(layout.filestore)``.

    Raises
    ------
    FileNotFoundError
        If the layout's filestore, subject or transform is missing.
    ValueError
        If `values` does not have one finite-or-NaN number per voxel.
    """
    layout = as_layout(layout)
    with pycortex_filestore(layout.filestore) as db:
        if isinstance(layout, VoxelLayout):
            _check_subject(db, layout.subject, layout.xfm)
            return to_volume(layout, check_values(values, layout.n_voxels))
        mask = _space_mask(db, layout)
    volume = np.full(mask.shape, np.nan)
    volume[mask] = check_values(values, int(mask.sum()))
    return volume
