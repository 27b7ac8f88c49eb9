"""The demo voxels on fsaverage5: an affine surface fit from pycortex's ``S1`` (display only).

An affine fit cannot follow individual folds: a voxel can land a sulcus away or on the opposite bank, so these maps
show where effects are, not a registration to compute statistics on (docs/maps.md gives its measured accuracy). The
fit takes a few seconds per mask and is cached in ``cache_root()/maps/``. :func:`bt_utils.demo.register` adds
:func:`s1_fsaverage_mapping` to :data:`bt_utils.registry.SURFACE_MAPPINGS` under ``S1``.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from ..cache import cache_root
from ..data.layout import PycortexSpace, VoxelLayout
from ..results import atomic_path
from ..validation import check_option
from ..viz.fsaverage import FSAVERAGE_MESH, fsaverage_meshes, mapping_from_positions
from ..viz.volumes import import_cortex
from .template import MASKS, TEMPLATE_SUBJECT, TEMPLATE_XFM, template_roi_table, voxel_coordinates

log = logging.getLogger(__name__)

__all__ = ["s1_fsaverage_mapping", "template_to_fsaverage"]

_ICP_ROUNDS = 30
_ICP_SUBSAMPLE = 10
_MAPPING_FORMAT = 1


def _fit_affine(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Affine map of `source` points onto the `target` surface by symmetric ICP."""
    scale = target.std(axis=0) / source.std(axis=0)
    affine = np.vstack([np.diag(scale), target.mean(axis=0) - source.mean(axis=0) * scale])
    augmented = np.c_[source, np.ones(len(source))]
    target_tree = cKDTree(target)
    for _ in range(_ICP_ROUNDS):
        moved = augmented @ affine
        _, to_target = target_tree.query(moved)
        _, to_source = cKDTree(moved).query(target)
        inputs = np.vstack([augmented, augmented[to_source]])
        outputs = np.vstack([target[to_target], target])
        affine = np.linalg.lstsq(inputs, outputs, rcond=None)[0]
    return affine


def _compute_alignment(mask: str) -> dict:
    """fsaverage5 position and hemisphere of every voxel of S1's `mask`."""
    table = template_roi_table(mask=mask)
    layout = VoxelLayout(TEMPLATE_SUBJECT, TEMPLATE_XFM, table.attrs["volume_shape"], table["volume_index"].to_numpy(),
                         table["roi"].to_numpy(), table["hemisphere"].to_numpy(), mask)
    voxels_mm = voxel_coordinates(layout)
    cortex = import_cortex()
    surfaces = [pts for pts, _ in cortex.db.get_surf(TEMPLATE_SUBJECT, "fiducial")]
    merged = np.vstack(surfaces)
    _, vertex = cKDTree(merged).query(voxels_mm)
    hemisphere = (vertex >= len(surfaces[0])).astype(np.int8)
    position = np.empty((layout.n_voxels, 3))
    targets = fsaverage_meshes()["midthickness"]
    for h, (surface, target) in enumerate(zip(surfaces, targets, strict=True)):
        affine = _fit_affine(surface[::_ICP_SUBSAMPLE], target)
        rows = hemisphere == h
        position[rows] = np.c_[merged[vertex[rows]], np.ones(rows.sum())] @ affine
    return {
        "volume_index": layout.volume_index,
        "hemisphere": hemisphere,
        "position": position.astype(np.float32),
    }


def _versions() -> str:
    return "_".join(f"{name}-{metadata.version(name)}" for name in ("pycortex", "nilearn"))


@functools.lru_cache(maxsize=4)
def _alignment(mask: str, cache_dir: Path) -> dict:
    name = f"{TEMPLATE_SUBJECT}_{TEMPLATE_XFM}_{mask}_to_{FSAVERAGE_MESH}_{_versions()}_v{_MAPPING_FORMAT}.npz"
    path = cache_dir / name
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    data = _compute_alignment(mask)
    try:
        with atomic_path(path) as staged:
            with open(staged, "wb") as handle:
                np.savez(handle, **data)
    except OSError as error:
        log.warning("could not cache the S1 -> %s mapping in %s: %s", FSAVERAGE_MESH, path, error)
    return data


def template_to_fsaverage(mask: str = "thin", cache_dir=None) -> pd.DataFrame:
    """Position on fsaverage5 of every voxel of S1's cortical mask (display approximation).

    Returns
    -------
    pandas.DataFrame, shape (n_mask_voxels, 6)
        Columns ``volume_index`` (ascending), ``hemisphere`` ("L"/"R"), ``x``, ``y``, ``z`` (mm, fsaverage5
        mid-thickness space, about MNI305) and ``vertex`` (nearest fsaverage5 vertex, 0..20483, left hemisphere
        first).
    """
    check_option("mask", mask, MASKS)
    data = _alignment(mask, (cache_root(cache_dir) / "maps").absolute())
    vertex = np.empty(data["volume_index"].size, dtype=np.int64)
    for h, surface in enumerate(fsaverage_meshes()["midthickness"]):
        rows = data["hemisphere"] == h
        vertex[rows] = cKDTree(surface).query(data["position"][rows])[1] + h * len(surface)
    return pd.DataFrame({
        "volume_index": data["volume_index"],
        "hemisphere": np.array(["L", "R"])[data["hemisphere"]],
        "x": data["position"][:, 0],
        "y": data["position"][:, 1],
        "z": data["position"][:, 2],
        "vertex": vertex,
    })


def s1_fsaverage_mapping(layout: VoxelLayout, radius_mm: float, cache_dir=None) -> sparse.csr_matrix:
    """Which fsaverage5 vertices show which voxels of a layout on S1/fullhead.

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (20484, n_voxels)

    Raises
    ------
    ValueError
        If the layout is not a voxel list on S1/fullhead with mask thin or thick, or a voxel is outside that mask.
    """
    if isinstance(layout, PycortexSpace) or (layout.subject, layout.xfm) != (TEMPLATE_SUBJECT, TEMPLATE_XFM):
        raise ValueError(
            f"the {TEMPLATE_SUBJECT} -> {FSAVERAGE_MESH} mapping needs a VoxelLayout on "
            f"{TEMPLATE_SUBJECT}/{TEMPLATE_XFM}, got a {type(layout).__name__} on {layout.subject}/{layout.xfm}"
        )
    check_option("layout.mask", layout.mask, MASKS)
    table = template_to_fsaverage(layout.mask, cache_dir)
    rows = np.searchsorted(table["volume_index"].to_numpy(), layout.volume_index)
    rows = np.minimum(rows, len(table) - 1)
    outside = table["volume_index"].to_numpy()[rows] != layout.volume_index
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} layout voxels (e.g. volume_index {int(layout.volume_index[outside][0])}) are not "
            f"in {TEMPLATE_SUBJECT}'s {layout.mask!r} mask"
        )
    position = table[["x", "y", "z"]].to_numpy()[rows]
    return mapping_from_positions(position, table["hemisphere"].to_numpy()[rows], radius_mm)
