"""Voxels of the demo participants, drawn from pycortex's bundled template subject ``S1``.

The demo's voxels are real voxels of S1's functional volume (transform ``fullhead``), so maps render offline.
:func:`template_roi_table` labels every voxel of a cortical mask as pycortex would, without Inkscape or writing
to pycortex's filestore; :func:`sample_layout` draws a participant's voxels. docs/maps.md lists the voxels per ROI.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import cache_root
from ..data.layout import VoxelLayout
from ..validation import check_option
from ..viz.volumes import import_cortex

__all__ = [
    "TEMPLATE_SUBJECT",
    "TEMPLATE_XFM",
    "TEMPLATE_MASK",
    "MASKS",
    "OTHER",
    "DEFAULT_ROI_FRACTIONS",
    "default_cache_dir",
    "template_roi_table",
    "roi_voxel_counts",
    "sample_layout",
    "voxel_coordinates",
]

TEMPLATE_SUBJECT = "S1"
"""pycortex subject that hosts the demo voxels."""

TEMPLATE_XFM = "fullhead"
"""pycortex transform of :data:`TEMPLATE_SUBJECT` that defines the functional volume."""

TEMPLATE_MASK = "thin"
"""Default cortical mask: voxels whose centre is < 2 mm from the fiducial surface."""

MASKS = {"thin": 2.0, "thick": 8.0}
"""Supported masks and their distance threshold to the fiducial surface, in mm."""

OTHER = "other"
"""Label of mask voxels outside every (non-overlapping) ROI outline."""

DEFAULT_ROI_FRACTIONS: dict[str, float] = {
    # speech and language
    "AC": 0.20,  # auditory cortex
    "Broca": 0.035,  # Broca's area
    "sPMv": 0.03,  # superior ventral premotor speech area
    "M1M": 0.04,  # primary motor cortex, mouth (articulation)
    # controls
    "V1": 0.06,
    "V2": 0.04,
    "M1H": 0.03,  # primary motor cortex, hand
    "M1F": 0.02,  # primary motor cortex, foot
}
"""Default share of the sampled voxels drawn from each ROI.

Speech-related ROIs (auditory cortex, Broca's area, the speech premotor area
sPMv and mouth motor cortex M1M) take 30.5 % of the voxels, visual and non-mouth
motor control ROIs 15 %; the remaining 54.5 % are drawn uniformly from all other
mask voxels (other ROIs and ``"other"``). With the thin mask these defaults work
up to ``n_voxels`` of about 5,000, where sPMv (151 voxels) runs out.
"""

_CACHE_FORMAT = 1
_HEMISPHERES = np.array(["L", "R"])
_MEMORY_CACHE: dict[Path, dict] = {}


# ----------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Folder where the ROI table is cached: ``cortical_template`` under :func:`bt_utils.cache.cache_root`."""
    return cache_root() / "cortical_template"


def _pycortex_version() -> str:
    try:
        return metadata.version("pycortex")
    except metadata.PackageNotFoundError as err:  # pragma: no cover - dependency missing
        raise ImportError("pycortex is required for the cortical template (pip install pycortex)") from err


def _cache_file(cache_dir, mask: str) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = (
        f"{TEMPLATE_SUBJECT}_{TEMPLATE_XFM}_{mask}_pycortex-{_pycortex_version()}"
        f"_v{_CACHE_FORMAT}.npz"
    )
    return (folder / name).absolute()


def _load_cache(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
        if int(data["format"]) != _CACHE_FORMAT:
            return None
        data["volume_shape"] = tuple(int(s) for s in data["volume_shape"])
        return data
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def _save_cache(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder + os.replace)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as err:
        warnings.warn(f"could not cache the cortical template table in {path.parent}: {err}", stacklevel=3)
        return
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not cache the cortical template table in {path}: {err}", stacklevel=3)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------
# computation with pycortex
# ----------------------------------------------------------------------------
def _roi_vertex_masks() -> tuple[dict[str, np.ndarray], int]:
    """ROI membership of every vertex of S1's merged (left then right) surface."""
    from scipy import sparse

    cortex = import_cortex()
    db = cortex.db
    # restricting the overlay to the "rois" layer also keeps pycortex from adding
    # missing default layers to (i.e. rewriting) the subject's overlays.svg
    svg = db.get_overlay(TEMPLATE_SUBJECT, overlays_available=("rois",))
    flat_pts, flat_polys = db.get_surf(TEMPLATE_SUBJECT, "flat", merge=True, nudge=True)
    _, polys = db.get_surf(TEMPLATE_SUBJECT, "fiducial", merge=True)
    (left_pts, _), _ = db.get_surf(TEMPLATE_SUBJECT, "fiducial", merge=False)
    n_vertices = len(flat_pts)
    on_flatmap = np.zeros(n_vertices, dtype=bool)
    on_flatmap[np.unique(flat_polys)] = True

    # vertex adjacency of the full (uncut) surface
    rows = np.concatenate([polys[:, 0], polys[:, 1], polys[:, 2]])
    cols = np.concatenate([polys[:, 1], polys[:, 2], polys[:, 0]])
    adjacency = sparse.coo_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_vertices, n_vertices)
    ).tocsr()
    adjacency = adjacency + adjacency.T

    masks: dict[str, np.ndarray] = {}
    for name, shape in svg.rois.shapes.items():
        if not shape.paths:  # declared but never drawn (V3A, V3B, LO, V4, V7, IFSFP)
            continue
        inside = np.zeros(n_vertices, dtype=bool)
        inside[np.asarray(shape.get_mask(svg.coords), dtype=np.int64)] = True
        inside &= on_flatmap
        # add the vertices cut out of the flatmap that touch the ROI on the full surface
        touching = np.asarray(adjacency @ inside.astype(np.float32)).ravel() > 0
        masks[name] = inside | (touching & ~on_flatmap)
    return masks, len(left_pts)


def _compute_table(mask: str) -> dict:
    from scipy.spatial import cKDTree

    cortex = import_cortex()
    db = cortex.db
    xfm = db.get_xfm(TEMPLATE_SUBJECT, TEMPLATE_XFM)
    volume_shape = tuple(int(s) for s in xfm.shape)  # (z, y, x)
    fiducial, _ = db.get_surf(TEMPLATE_SUBJECT, "fiducial", merge=True)

    # voxel centres, enumerated in C order of (z, y, x), mapped to surface mm
    z, y, x = np.indices(volume_shape).reshape(3, -1)
    voxel_to_mm = np.linalg.inv(np.asarray(xfm.xfm, dtype=float))
    mm = np.column_stack([x, y, z]) @ voxel_to_mm[:3, :3].T + voxel_to_mm[:3, 3]
    dist, vertex = cKDTree(fiducial).query(mm, distance_upper_bound=MASKS[mask])
    volume_index = np.flatnonzero(dist < MASKS[mask]).astype(np.int64)
    vertex = vertex[volume_index]

    roi_masks, n_left = _roi_vertex_masks()
    names = list(roi_masks)
    membership = np.column_stack([roi_masks[name][vertex] for name in names])
    n_rois = membership.sum(axis=1)
    code = np.where(n_rois == 1, membership.argmax(axis=1) + 1, 0)  # 0 = other
    labels = np.array([OTHER, *names])
    return {
        "format": np.int64(_CACHE_FORMAT),
        "volume_shape": np.asarray(volume_shape, dtype=np.int64),
        "volume_index": volume_index,
        "roi_code": code.astype(np.int16),
        "roi_names": labels,
        "hemisphere_code": (vertex >= n_left).astype(np.int8),
        "voxel_to_mm": voxel_to_mm,
    }


def _table_data(cache_dir, mask: str, refresh: bool = False) -> dict:
    check_option("mask", mask, MASKS)
    path = _cache_file(cache_dir, mask)
    if not refresh:
        if path in _MEMORY_CACHE:
            return _MEMORY_CACHE[path]
        data = _load_cache(path)
        if data is not None:
            _MEMORY_CACHE[path] = data
            return data
    data = _compute_table(mask)
    _save_cache(path, data)
    data["volume_shape"] = tuple(int(s) for s in data["volume_shape"])
    _MEMORY_CACHE[path] = data
    return data


def template_roi_table(cache_dir=None, *, mask: str = TEMPLATE_MASK, refresh: bool = False) -> pd.DataFrame:
    """ROI and hemisphere of every voxel of S1's cortical mask.

    Returns
    -------
    pandas.DataFrame, shape (n_mask_voxels, 3)
        Columns ``volume_index`` (int64, flat C-order index into the (z, y, x) volume, ascending), ``roi`` (str,
        ROI name or ``"other"``) and ``hemisphere`` (str, ``"L"`` or ``"R"``). ``attrs`` holds ``subject``,
        ``xfm``, ``mask``, ``volume_shape`` (tuple (z, y, x)) and ``pycortex_version``.
    """
    data = _table_data(cache_dir, mask, refresh)
    table = pd.DataFrame(
        {
            "volume_index": data["volume_index"].copy(),
            "roi": data["roi_names"][data["roi_code"]],
            "hemisphere": _HEMISPHERES[data["hemisphere_code"]],
        }
    )
    table.attrs.update(
        subject=TEMPLATE_SUBJECT,
        xfm=TEMPLATE_XFM,
        mask=mask,
        volume_shape=data["volume_shape"],
        pycortex_version=_pycortex_version(),
    )
    return table


def roi_voxel_counts(cache_dir=None, *, mask: str = TEMPLATE_MASK) -> dict[str, int]:
    """Number of mask voxels per ROI label (both hemispheres), largest first."""
    data = _table_data(cache_dir, mask)
    counts = np.bincount(data["roi_code"], minlength=len(data["roi_names"]))
    order = np.lexsort((data["roi_names"], -counts))
    return {str(data["roi_names"][i]): int(counts[i]) for i in order if counts[i] > 0}


# ----------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------
def _apportion(fractions: dict[str, float], n: int) -> dict[str, int]:
    """Integer voxel counts for `fractions` of `n` by the largest-remainder rule."""
    names = sorted(fractions)
    quotas = np.array([fractions[k] * n for k in names], dtype=float)
    counts = np.floor(quotas + 1e-9).astype(np.int64)
    target = min(n, int(round(math.fsum(quotas))))
    extra = target - int(counts.sum())
    if extra > 0:
        order = sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), names[i]))
        counts[order[:extra]] += 1
    return {k: int(c) for k, c in zip(names, counts)}


def _check_fractions(roi_fractions, available: dict[str, int]) -> dict[str, float]:
    if not isinstance(roi_fractions, Mapping):
        raise TypeError(f"roi_fractions must be a dict of ROI name to fraction, got {type(roi_fractions).__name__}")
    known = ", ".join(sorted(available, key=str.lower))
    fractions: dict[str, float] = {}
    for name, frac in roi_fractions.items():
        if name not in available:
            raise ValueError(f"unknown ROI {name!r} in roi_fractions; available ROIs: {known}")
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 <= frac <= 1:
            raise ValueError(f"roi_fractions[{name!r}]={frac!r} must be a number between 0 and 1")
        fractions[name] = float(frac)
    total = math.fsum(fractions.values())
    if total > 1 + 1e-9:
        raise ValueError(f"roi_fractions sum to {total:g}, which is more than 1")
    return fractions


def sample_layout(
    n_voxels: int,
    rng: np.random.Generator,
    roi_fractions: Mapping[str, float] | None = None,
    *,
    mask: str = TEMPLATE_MASK,
    cache_dir=None,
) -> VoxelLayout:
    """Draw the voxels of a demo participant from S1's cortical mask.

    Raises
    ------
    ValueError
        If `n_voxels` is not a positive integer or exceeds the mask, if `roi_fractions` names an ROI without voxels
        (the message lists the available ones), has a fraction outside [0, 1] or sums to more than 1, or if an ROI
        (or the remainder) has fewer voxels than requested.
    TypeError
        If `rng` is not a ``numpy.random.Generator``.
    """
    if isinstance(n_voxels, bool) or not isinstance(n_voxels, numbers.Integral) or n_voxels < 1:
        raise ValueError(f"n_voxels={n_voxels!r} must be a positive integer")
    n_voxels = int(n_voxels)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    data = _table_data(cache_dir, mask)
    codes = data["roi_code"]
    names = data["roi_names"]
    n_mask = codes.size
    if n_voxels > n_mask:
        raise ValueError(
            f"n_voxels={n_voxels} is larger than the {n_mask} voxels of the {mask!r} mask "
            f"of {TEMPLATE_SUBJECT}/{TEMPLATE_XFM}"
        )
    counts_available = np.bincount(codes, minlength=len(names))
    available = {str(names[i]): int(c) for i, c in enumerate(counts_available) if c > 0}
    fractions = _check_fractions(DEFAULT_ROI_FRACTIONS if roi_fractions is None else roi_fractions, available)
    counts = _apportion(fractions, n_voxels)

    code_of = {str(name): i for i, name in enumerate(names)}
    pools = {}
    for name, count in counts.items():
        pools[name] = np.flatnonzero(codes == code_of[name])
        if count > pools[name].size:
            raise ValueError(
                f"roi_fractions[{name!r}]={fractions[name]:g} asks for {count} of {n_voxels} voxels, but ROI "
                f"{name!r} has only {pools[name].size} voxels in the {mask!r} mask; "
                "lower its fraction or n_voxels"
            )
    rest = np.flatnonzero(~np.isin(codes, [code_of[k] for k in counts]))
    n_rest = n_voxels - sum(counts.values())
    if n_rest > rest.size:
        raise ValueError(
            f"{n_rest} voxels must come from outside {sorted(counts)}, but only {rest.size} are left in the "
            f"{mask!r} mask; raise their fractions or lower n_voxels"
        )

    chosen = [pools[name][rng.choice(pools[name].size, size=count, replace=False)] for name, count in counts.items()]
    chosen.append(rest[rng.choice(rest.size, size=n_rest, replace=False)])
    rows = np.sort(np.concatenate(chosen))  # volume_index is ascending, so rows sort it too
    return VoxelLayout(
        subject=TEMPLATE_SUBJECT,
        xfm=TEMPLATE_XFM,
        volume_shape=data["volume_shape"],
        volume_index=data["volume_index"][rows],
        roi=names[codes[rows]],
        hemisphere=_HEMISPHERES[data["hemisphere_code"][rows]],
        mask=mask,
    )


# ----------------------------------------------------------------------------
# positions
# ----------------------------------------------------------------------------
def voxel_coordinates(layout: VoxelLayout, cache_dir=None) -> np.ndarray:
    """Positions of the layout's voxel centres in S1's surface space.

    Returns
    -------
    numpy.ndarray of float64, shape (n_voxels, 3)
        (x, y, z) in mm in the space of S1's surfaces; x grows towards the right hemisphere, y towards the front, z
        upwards.

    Raises
    ------
    ValueError
        If the layout is on another subject or transform.
    """
    if (layout.subject, layout.xfm) != (TEMPLATE_SUBJECT, TEMPLATE_XFM):
        raise ValueError(f"layout is on {layout.subject}/{layout.xfm}, not {TEMPLATE_SUBJECT}/{TEMPLATE_XFM}")
    voxel_to_mm = _table_data(cache_dir, TEMPLATE_MASK)["voxel_to_mm"]  # the same for every mask
    z, y, x = np.unravel_index(layout.volume_index, layout.volume_shape)
    ijk = np.column_stack([x, y, z]).astype(float)
    return ijk @ voxel_to_mm[:3, :3].T + voxel_to_mm[:3, 3]
