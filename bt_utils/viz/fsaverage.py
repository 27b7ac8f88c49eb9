"""Voxel values on nilearn's fsaverage5 surface, through a voxel -> vertex mapping.

A mapping is a sparse matrix of shape (20484, n_voxels) (:func:`to_fsaverage`), registered per pycortex subject in
:data:`bt_utils.registry.SURFACE_MAPPINGS` (the demo's ``S1``). ds003020 ships no registration to fsaverage: pass
your own mapping (e.g. from FreeSurfer) or draw flatmaps."""

from __future__ import annotations

import functools
import numbers

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from ..data.layout import as_layout
from ..registry import SURFACE_MAPPINGS
from .volumes import check_values

__all__ = [
    "DEFAULT_RADIUS_MM",
    "FSAVERAGE_MESH",
    "N_FSAVERAGE_VERTICES",
    "fsaverage_mapping",
    "fsaverage_meshes",
    "mapping_from_positions",
    "to_fsaverage",
]

FSAVERAGE_MESH = "fsaverage5"
"""nilearn's bundled template mesh that surface maps are drawn on."""

N_FSAVERAGE_VERTICES = 2 * 10242
"""Vertices of fsaverage5, left hemisphere first."""

DEFAULT_RADIUS_MM = 4.0
"""Distance within which a vertex shows a voxel, see :func:`mapping_from_positions`."""

_HEMISPHERES = ("left", "right")


@functools.lru_cache(maxsize=1)
def fsaverage_meshes() -> dict:
    """fsaverage5 meshes from nilearn's bundled copy (loaded once): ``inflated`` (nilearn ``PolyMesh``),
    ``midthickness`` (two arrays of shape (10242, 3), mm) and a sulcal ``background`` per hemisphere (10242,).
    """
    from nilearn import datasets

    meshes = datasets.load_fsaverage(FSAVERAGE_MESH)
    sulc = datasets.load_fsaverage_data(FSAVERAGE_MESH, data_type="sulcal")
    return {
        "inflated": meshes["inflated"],
        "midthickness": [
            (meshes["pial"].parts[h].coordinates + meshes["white_matter"].parts[h].coordinates) / 2
            for h in _HEMISPHERES
        ],
        # values inside [0, 1] are used as is by nilearn's grey background colormap
        "background": {h: np.where(np.asarray(sulc.data.parts[h]) > 0, 0.6, 0.35) for h in _HEMISPHERES},
    }


def _check_radius(radius_mm) -> float:
    if isinstance(radius_mm, bool) or not isinstance(radius_mm, numbers.Real) or not radius_mm >= 0:
        raise ValueError(f"radius_mm={radius_mm!r} must be a number >= 0")
    return float(radius_mm)


def mapping_from_positions(position: np.ndarray, hemisphere: np.ndarray,
                           radius_mm: float = DEFAULT_RADIUS_MM) -> sparse.csr_matrix:
    """Which fsaverage5 vertices show which voxels, from the voxels' positions on fsaverage5.

    Parameters
    ----------
    position : numpy.ndarray, shape (n_voxels, 3)
        Voxel positions in the space of the fsaverage5 mid-thickness surface (mm).
    hemisphere : numpy.ndarray of str, shape (n_voxels,)
        ``"L"`` or ``"R"``: the hemisphere whose vertices may show the voxel.

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (20484, n_voxels)
        1 where a vertex shows a voxel; use with :func:`to_fsaverage`.

    Raises
    ------
    ValueError
        If `radius_mm` is negative or the shapes do not match.
    """
    radius_mm = _check_radius(radius_mm)
    position, hemisphere = np.asarray(position), np.asarray(hemisphere)
    n = len(position)
    if position.shape != (n, 3) or hemisphere.shape != (n,):
        raise ValueError(f"position {position.shape} and hemisphere {hemisphere.shape} must be (n, 3) and (n,)")
    if not np.isin(hemisphere, ("L", "R")).all():
        bad = sorted(str(label) for label in set(np.unique(hemisphere)) - {"L", "R"})
        raise ValueError(f"hemisphere labels must be 'L' or 'R', got {bad}")
    nearest = np.empty(n, dtype=np.int64)  # filled per hemisphere below
    vertices, voxels = [nearest], [np.arange(n)]
    for h, (name, surface) in enumerate(zip("LR", fsaverage_meshes()["midthickness"], strict=True)):
        members, offset, tree = np.flatnonzero(hemisphere == name), h * len(surface), cKDTree(surface)
        nearest[members] = tree.query(position[members])[1] + offset
        if radius_mm > 0:
            near = tree.query_ball_point(position[members], r=radius_mm, return_sorted=False)
            counts = np.fromiter((len(i) for i in near), dtype=np.int64, count=len(near))
            if counts.sum():
                vertices.append(np.concatenate([np.asarray(i, dtype=np.int64) for i in near]) + offset)
                voxels.append(np.repeat(members, counts))
    vertices, voxels = np.concatenate(vertices), np.concatenate(voxels)
    matrix = sparse.csr_matrix((np.ones(vertices.size), (vertices, voxels)), shape=(N_FSAVERAGE_VERTICES, n))
    matrix.data[:] = 1.0  # duplicates (nearest vertex also within the radius) were summed
    return matrix


def fsaverage_mapping(layout, radius_mm: float = DEFAULT_RADIUS_MM, cache_dir=None) -> sparse.csr_matrix:
    """The registered voxel -> fsaverage5 mapping of a layout's pycortex subject.

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (20484, n_voxels)

    Raises
    ------
    NotImplementedError
        If no mapping is registered for the layout's subject (real ds003020 subjects have no fsaverage registration
        here).
    ValueError
        If `radius_mm` is negative, or the registered mapping cannot place the layout's voxels.
    """
    layout = as_layout(layout)
    radius_mm = _check_radius(radius_mm)
    if layout.subject not in SURFACE_MAPPINGS:
        registered = ", ".join(SURFACE_MAPPINGS) or "none"
        raise NotImplementedError(
            f"no voxel -> {FSAVERAGE_MESH} mapping for pycortex subject {layout.subject} (registered: "
            f"{registered}). Pass surface_map(..., mapping=M) with a sparse matrix M of shape "
            f"({N_FSAVERAGE_VERTICES}, n_voxels), e.g. from FreeSurfer's mri_vol2surf and mri_surf2surf, "
            "or draw a flatmap() instead"
        )
    return SURFACE_MAPPINGS[layout.subject](layout, radius_mm, cache_dir)


def to_fsaverage(values, mapping) -> np.ndarray:
    """Per-vertex mean of the finite voxel values each fsaverage5 vertex shows.

    Parameters
    ----------
    values : array_like, shape (n_voxels,)
    mapping : scipy.sparse matrix or numpy.ndarray, shape (20484, n_voxels)
        Non-negative weights, e.g. from :func:`fsaverage_mapping`.

    Returns
    -------
    numpy.ndarray of float64, shape (20484,)
        Weighted mean of the non-NaN voxels of each vertex; NaN for vertices without any.

    Raises
    ------
    ValueError
        If `mapping` does not have 20484 rows, has negative weights, or `values` does not match its columns.
    """
    mapping = sparse.csr_matrix(mapping)
    if mapping.shape[0] != N_FSAVERAGE_VERTICES:
        raise ValueError(
            f"mapping has {mapping.shape[0]} rows, expected {N_FSAVERAGE_VERTICES} {FSAVERAGE_MESH} vertices"
        )
    if mapping.nnz and mapping.data.min() < 0:
        raise ValueError("mapping weights must be >= 0")
    data = check_values(values, mapping.shape[1])
    finite = np.isfinite(data)
    total = mapping @ np.where(finite, data, 0.0)
    weight = mapping @ finite.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)
