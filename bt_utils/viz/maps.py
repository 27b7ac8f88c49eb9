"""Voxel maps: pycortex flatmaps and nilearn fsaverage5 surfaces, rendered headless.

Every map is a pyplot figure, like those of :mod:`bt_utils.viz.plots`: a notebook
shows it with ``plt.show()``, a script or test renders it with Agg
(``MPLBACKEND=Agg``; nothing needs a display, a browser or Inkscape). Save it
with :func:`bt_utils.results.save_figure` (or :func:`save_maps`, which also
closes it) and close it with ``plt.close(figure)`` when drawing many.

Where the voxels live
---------------------
A *layout* says which cortical voxels a ``values`` array belongs to:

* :class:`~bt_utils.demo.template.VoxelLayout`: demo participants, whose
  voxels are voxels of pycortex's bundled subject ``S1`` (transform
  ``fullhead``). ``Dataset.voxel_layout(subject)`` returns its arrays;
  :func:`as_layout` turns them into a ``VoxelLayout``.
* :class:`PycortexSpace`: real ds003020 participants, whose responses are the
  voxels of the pycortex ``"thick"`` mask of subject ``UTS0X`` with transform
  ``UTS0X_auto``, in C order of the (z, y, x) volume. The dataset ships that
  subject's pycortex database folder in ``derivative/pycortex-db/UTS0X``;
  :func:`subject_layout` builds the space for a :class:`~bt_utils.data.dataset.Dataset`.

Using a dataset's own pycortex filestore
----------------------------------------
pycortex reads every subject from one folder, the *filestore* (option
``[basic] filestore`` of ``~/.config/pycortex/options.cfg``), through its
singleton ``cortex.db``. Rather than editing that file, :func:`pycortex_filestore`
points ``cortex.db`` at another folder for the duration of a ``with`` block and
then restores it (its folder, subject list and memoised surfaces); every
pycortex module shares that one object, so rendering inside the block reads the
dataset's subject. This is not thread-safe. pycortex writes caches into
``<filestore>/<subject>/cache`` (flatmap pixel maps, about 15 s to build the
first time, 1 s afterwards), ``surface-info/curvature.npz`` (about 5 s, once) and,
when ``transforms/<xfm>/mask_thick.nii.gz`` is missing, the mask itself, so the
folder must be writable.

ROI outlines and Inkscape
-------------------------
pycortex draws ROI outlines and labels by rasterising the subject's
``overlays.svg`` with Inkscape. Without Inkscape (``shutil.which("inkscape")`` is
None) :func:`flatmap` draws the same outlines itself: pycortex parses the
``rois`` layer of ``overlays.svg`` into matplotlib paths without Inkscape (these
are the very polygons that :mod:`bt_utils.demo.template` labels voxels
with), and they are drawn as plain white lines with white labels at the
outline centres. What is lost without Inkscape is only pycortex's styling (drop
shadow, its label font and placement). If the overlay cannot be read at all, the
map is drawn without outlines, a warning is logged and the title says so.

From S1 voxels to fsaverage5 vertices (display only)
----------------------------------------------------
S1 has no spherical registration (its filestore holds fiducial, pial, white,
inflated and flat surfaces, no sphere), so the demo voxels are carried to
nilearn's bundled fsaverage5 by a surface-to-surface fit:

1. each S1 voxel of the ROI table's mask goes to its nearest vertex of S1's
   fiducial (mid-thickness) surface;
2. per hemisphere, an affine map from S1's fiducial surface onto fsaverage5's
   mid-thickness surface (mean of pial and white) is fitted: start by matching
   the means and per-axis standard deviations of the vertex coordinates, then
   30 rounds of symmetric iterative-closest-point, each a least-squares affine
   fit between every 10th S1 vertex and its nearest fsaverage5 vertex and
   between every fsaverage5 vertex and its nearest S1 vertex;
3. the voxel's S1 vertex, moved by that affine map, is its position in
   fsaverage5 space; a vertex shows the mean value of the voxels within
   `radius_mm` (4 mm) of it, and every voxel reaches at least its nearest vertex.

Measured on the thin mask (37,226 voxels): 96 % of S1's auditory cortex (AC)
voxels land on the superior temporal region of fsaverage5 (pial |x| > 35,
-50 < y < 10, z < 20 in MNI305 mm) against 14 % of the other voxels; the
centroids of the 12 larger ROIs per hemisphere land 4-14 mm (median 8 mm) from
approximate literature MNI coordinates (AC at (-55, -15, 0) and (56, -16, 0),
V1 at (-8, -88, -6) and (10, -88, -1), left Broca at (-50, 18, 14)); and a
voxel's S1 curvature has the sign of its fsaverage5 vertex's curvature for 78 %
of voxels (50 % would be chance). With the 4 mm radius, the full thin mask
reaches 98 % of the fsaverage5 vertices, a 3,000-voxel demo layout 41 %.

Limits: an affine fit cannot follow individual folds, so a voxel can land a
sulcus away, or on the opposite bank of a sulcus; maps on fsaverage5 are a
picture of where effects are, not a registration to compute statistics on.
The fit takes a few seconds once per mask and is cached (atomically) in
``cache_root()/maps/``.

For real ds003020 participants no registration to fsaverage exists in the
dataset, so :func:`surface_map` needs an explicit `mapping` (e.g. from FreeSurfer's
``mri_vol2surf`` + ``mri_surf2surf``) and raises ``NotImplementedError`` without one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import numbers
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch
from matplotlib.transforms import Affine2D
from scipy import sparse
from scipy.spatial import cKDTree

from ..cache import cache_root
from ..demo.template import (
    TEMPLATE_SUBJECT,
    TEMPLATE_XFM,
    VoxelLayout,
    _import_cortex,
    template_roi_table,
    to_cortex_volume,
    to_volume,
    voxel_coordinates,
)
from ..results import atomic_path, save_figure
from ..validation import check_option

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "FSAVERAGE_MESH",
    "MAP_KINDS",
    "N_FSAVERAGE_VERTICES",
    "PycortexSpace",
    "as_layout",
    "flatmap",
    "fsaverage_mapping",
    "map_defaults",
    "n_voxels",
    "pycortex_filestore",
    "save_maps",
    "subject_layout",
    "surface_map",
    "template_to_fsaverage",
    "to_fsaverage",
    "volume_data",
]

FSAVERAGE_MESH = "fsaverage5"
"""nilearn's bundled template mesh used by :func:`surface_map`."""

N_FSAVERAGE_VERTICES = 2 * 10242
"""Vertices of fsaverage5, left hemisphere first."""

BACKENDS = ("pycortex", "nilearn")
"""Map renderers: pycortex flatmaps and nilearn fsaverage5 surfaces."""

MAP_KINDS = {
    "noise_ceiling": "noise ceiling (cc_max); fixed range 0..1, sequential colormap",
    "alignment": "brain alignment (r or r_norm); 0 .. 99th percentile (at most 1), sequential colormap",
    "difference": "brain-tuned minus pretrained; symmetric around 0, diverging colormap",
    "low_level_impact": "drop of alignment from removing low-level features (%); fixed range -100..100, diverging",
    "impact_difference": "brain-tuned minus pretrained low-level impact (percentage points); fixed range -100..100, "
                         "diverging",
}
"""Kinds of maps the notebooks draw, with their colour rules (see :func:`map_defaults`)."""

_STYLES = {
    "noise_ceiling": {"cmap": "inferno", "range": (0.0, 1.0), "label": "noise ceiling (cc_max)"},
    "alignment": {"cmap": "inferno", "range": "positive", "label": "alignment"},
    "difference": {"cmap": "RdBu_r", "range": "symmetric", "label": "brain-tuned - pretrained"},
    "low_level_impact": {"cmap": "PuOr_r", "range": (-100.0, 100.0), "label": "low-level impact (% drop)"},
    "impact_difference": {"cmap": "PuOr_r", "range": (-100.0, 100.0),
                          "label": "low-level impact: brain-tuned - pretrained (pp)"},
}
_PERCENTILE = 99.0
_FLATMAP_HEIGHT_PX = 1024  # pycortex's default; each height has its own ~15 s cache
_FLATMAP_WIDTH_IN = 10.0
_RADIUS_MM = 4.0
_ICP_ROUNDS = 30
_ICP_SUBSAMPLE = 10
_MAPPING_FORMAT = 1
_HEMIS = ("left", "right")
_VIEWS = (("left", "lateral"), ("left", "medial"), ("right", "medial"), ("right", "lateral"))
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PycortexSpace:
    """Voxels of a pycortex mask of a subject in a pycortex filestore (real data).

    Values for this space are the mask's voxels in C order of the (z, y, x)
    volume, i.e. ``volume[mask]``, as in ds003020's responses.

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

    Parameters
    ----------
    layout : VoxelLayout, PycortexSpace, dict or tuple
        A ``VoxelLayout`` or ``PycortexSpace`` (returned as is); the dict of
        arrays of ``Dataset.voxel_layout(subject)`` (keys template, xfm, mask,
        volume_shape, volume_index, roi, hemisphere); or a tuple
        ``(subject, xfm, mask)`` or ``(subject, xfm, mask, filestore)``.

    Returns
    -------
    VoxelLayout or PycortexSpace

    Raises
    ------
    ValueError
        If `layout` is None (a real-data subject: use :func:`subject_layout`)
        or a layout dict is not on ``S1``/``fullhead``.
    TypeError
        For any other type.
    """
    if isinstance(layout, (VoxelLayout, PycortexSpace)):
        return layout
    if layout is None:
        raise ValueError(
            "layout is None, as Dataset.voxel_layout returns for real data; use "
            "bt_utils.viz.maps.subject_layout(dataset, subject) to get the subject's pycortex space"
        )
    if isinstance(layout, Mapping):
        return _layout_from_arrays(layout)
    if isinstance(layout, (tuple, list)) and len(layout) in (3, 4):
        return PycortexSpace(*layout)
    raise TypeError(
        "layout must be a VoxelLayout, a PycortexSpace, the dict of Dataset.voxel_layout(subject) or a tuple "
        f"(subject, xfm, mask[, filestore]); got {type(layout).__name__}"
    )


def _layout_from_arrays(arrays: Mapping) -> VoxelLayout:
    missing = sorted({"template", "xfm", "mask", "volume_shape", "volume_index", "roi", "hemisphere"} - set(arrays))
    if missing:
        raise ValueError(f"voxel layout dict lacks keys {missing}")
    where = (str(arrays["template"]), str(arrays["xfm"]))
    if where != (TEMPLATE_SUBJECT, TEMPLATE_XFM):
        raise ValueError(
            f"voxel layout is on {where[0]}/{where[1]}, but demo layouts must be on "
            f"{TEMPLATE_SUBJECT}/{TEMPLATE_XFM}; use a PycortexSpace for other subjects"
        )
    return VoxelLayout(
        volume_index=np.asarray(arrays["volume_index"]),
        roi=np.asarray(arrays["roi"]),
        hemisphere=np.asarray(arrays["hemisphere"]),
        volume_shape=tuple(int(s) for s in np.asarray(arrays["volume_shape"])),
        mask=str(arrays["mask"]),
    )


def subject_layout(dataset, subject: str) -> VoxelLayout | PycortexSpace:
    """Layout of a dataset subject's voxels: demo layout or ds003020 pycortex space.

    Parameters
    ----------
    dataset : bt_utils.data.dataset.Dataset
    subject : str

    Returns
    -------
    VoxelLayout
        For demo subjects (``derivative/voxel_layout/<subject>.npz``).
    PycortexSpace
        For real ds003020 subjects: ``PycortexSpace(subject, subject + "_auto",
        "thick", <root>/derivative/pycortex-db)``.

    Raises
    ------
    FileNotFoundError
        If a real subject's ``derivative/pycortex-db/<subject>`` folder is absent.
    KeyError
        If `subject` is not in the dataset.
    """
    arrays = dataset.voxel_layout(subject)
    if arrays is not None:
        return _layout_from_arrays(arrays)
    filestore = dataset.derivative / "pycortex-db"
    if not (filestore / subject).is_dir():
        raise FileNotFoundError(
            f"no pycortex database for {subject}: {filestore / subject} does not exist; ds003020 ships it as "
            f"derivative/pycortex-db/{subject} (download that folder to draw maps of real subjects)"
        )
    return PycortexSpace(subject, f"{subject}_auto", "thick", filestore)


# ----------------------------------------------------------------------------
# pycortex filestore
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def pycortex_filestore(filestore: str | os.PathLike | None) -> Iterator:
    """Point pycortex's database at `filestore` inside a ``with`` block.

    Leaves the user's pycortex configuration file alone: the shared
    ``cortex.db`` object gets the new folder (and an empty subject list and
    surface memo) and has its previous state back when the block ends.

    Parameters
    ----------
    filestore : path-like or None
        Folder holding pycortex subject folders; None changes nothing.

    Yields
    ------
    cortex.database.Database
        ``cortex.db``.

    Raises
    ------
    FileNotFoundError
        If `filestore` is not a folder.
    """
    cortex = _import_cortex()
    db = cortex.db
    if filestore is None:
        yield db
        return
    folder = Path(filestore).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"pycortex filestore {folder} is not a folder")
    keys = ("filestore", "_subjects", "_memocache")
    saved = {key: db.__dict__[key] for key in keys if key in db.__dict__}
    db.filestore, db._subjects, db._memocache = str(folder), None, {}
    try:
        yield db
    finally:
        for key in keys:
            db.__dict__.pop(key, None)
        db.__dict__.update(saved)


def _check_space(db, space: PycortexSpace) -> None:
    """Raise a clear error when `space`'s subject or transform is not in the active filestore."""
    folder = Path(db.filestore) / space.subject
    if not folder.is_dir():
        raise FileNotFoundError(
            f"pycortex subject {space.subject!r} not found: {folder} does not exist "
            "(for ds003020 it is derivative/pycortex-db/<subject>)"
        )
    transforms = folder / "transforms"
    available = sorted(p.name for p in transforms.iterdir()) if transforms.is_dir() else []
    if space.xfm not in available:
        raise FileNotFoundError(
            f"transform {space.xfm!r} of {space.subject} not found in {transforms}; available: {available}"
        )


def _space_mask(db, space: PycortexSpace) -> np.ndarray:
    """Boolean (z, y, x) mask of `space` from the active filestore (pycortex builds and saves it if missing)."""
    _check_space(db, space)
    with contextlib.redirect_stdout(io.StringIO()):  # "Mask not found, generating..."
        return np.asarray(db.get_mask(space.subject, space.xfm, space.mask), dtype=bool)


def n_voxels(layout) -> int:
    """Number of voxels of a layout (reads the mask of a :class:`PycortexSpace`).

    Parameters
    ----------
    layout : VoxelLayout, PycortexSpace, dict or tuple
        See :func:`as_layout`.

    Returns
    -------
    int
    """
    layout = as_layout(layout)
    if isinstance(layout, VoxelLayout):
        return layout.n_voxels
    with pycortex_filestore(layout.filestore) as db:
        return int(_space_mask(db, layout).sum())


# ----------------------------------------------------------------------------
# values and colours
# ----------------------------------------------------------------------------
def _check_values(values, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"values has shape {array.shape}, expected ({n},): one value per voxel of the layout")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"values must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if np.isinf(array).any():
        raise ValueError(f"values contain {int(np.isinf(array).sum())} infinite entries; use NaN for missing voxels")
    return array


def map_defaults(kind: str, values=None) -> dict:
    """Colormap and colour limits for a kind of map.

    Rules (see :data:`MAP_KINDS`): ``"noise_ceiling"`` 0..1 with ``inferno``;
    ``"alignment"`` 0 .. the 99th percentile of the finite values, at most 1
    (no model correlates better than 1, and ``r / cc_max`` above 1 only comes
    from voxels with a low noise ceiling), with ``inferno``; ``"difference"``
    (``RdBu_r``) symmetric around 0 at +- the 99th percentile of the absolute
    values; ``"low_level_impact"`` and ``"impact_difference"`` (``PuOr_r``)
    fixed at -100..100 %: a percentage drop has no bound where the original
    alignment is near 0, and those voxels would otherwise set the range and
    wash out the informative ones (they saturate instead).

    Parameters
    ----------
    kind : str
        One of :data:`MAP_KINDS`.
    values : array_like, shape (n_voxels,), optional
        Data the limits are computed from; without it the data-driven limits are None.

    Returns
    -------
    dict
        ``cmap`` (str), ``vmin`` and ``vmax`` (float or None) and ``label``
        (str, for a colorbar).
    """
    check_option("kind", kind, MAP_KINDS)
    style = _STYLES[kind]
    limits = {"positive": (0.0, None), "symmetric": (None, None)}.get(style["range"], style["range"])
    if values is not None and None in limits:
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if style["range"] == "positive":
            top = min(np.percentile(finite, _PERCENTILE), 1.0) if finite.size else 1.0
            limits = (0.0, float(top) if top > 0 else 1.0)
        else:
            top = np.percentile(np.abs(finite), _PERCENTILE) if finite.size else 1.0
            top = float(top) if top > 0 else 1.0
            limits = (-top, top)
    return {"cmap": style["cmap"], "vmin": limits[0], "vmax": limits[1], "label": style["label"]}


def _resolve_style(kind: str, values: np.ndarray, cmap, vmin, vmax) -> dict:
    style = map_defaults(kind, values)
    for key, given in (("cmap", cmap), ("vmin", vmin), ("vmax", vmax)):
        if given is not None:
            style[key] = given
    if isinstance(style["cmap"], str) and style["cmap"] not in colormaps:
        raise ValueError(f"unknown colormap cmap={style['cmap']!r}; use a matplotlib colormap name")
    if not style["vmin"] < style["vmax"]:
        raise ValueError(f"need vmin < vmax, got vmin={style['vmin']!r}, vmax={style['vmax']!r}")
    return style


def volume_data(values, layout) -> np.ndarray:
    """Per-voxel values placed in the layout's functional volume (NaN elsewhere).

    Parameters
    ----------
    values : array_like, shape (n_voxels,)
    layout : VoxelLayout, PycortexSpace, dict or tuple
        See :func:`as_layout`.

    Returns
    -------
    numpy.ndarray of float64, shape (z, y, x)
        What :func:`flatmap` draws.
    """
    layout = as_layout(layout)
    if isinstance(layout, VoxelLayout):
        return to_volume(layout, _check_values(values, layout.n_voxels))
    with pycortex_filestore(layout.filestore) as db:
        return _space_volume(db, layout, values)


def _space_volume(db, space: PycortexSpace, values) -> np.ndarray:
    mask = _space_mask(db, space)
    volume = np.full(mask.shape, np.nan)
    volume[mask] = _check_values(values, int(mask.sum()))
    return volume


# ----------------------------------------------------------------------------
# pycortex flatmaps
# ----------------------------------------------------------------------------
def _roi_renderer(with_rois) -> str | None:
    """Which ROI outlines to draw: ``"inkscape"`` (pycortex's), ``"matplotlib"`` or None."""
    if with_rois is False:
        return None
    check_option("with_rois", with_rois, ("auto", True, "outlines"))
    if with_rois != "outlines" and shutil.which("inkscape"):
        return "inkscape"
    return "matplotlib"


def flatmap(
    values,
    layout,
    title: str = "",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    kind: str = "alignment",
    with_rois="auto",
    with_curvature: bool = True,
) -> Figure:
    """Draw per-voxel values on the subject's pycortex flatmap.

    Parameters
    ----------
    values : array_like, shape (n_voxels,)
        One value per voxel of `layout`; NaN voxels are not drawn.
    layout : VoxelLayout, PycortexSpace, dict or tuple
        See :func:`as_layout`.
    title : str, default ""
    cmap, vmin, vmax : optional
        Override the defaults of `kind` (see :func:`map_defaults`).
    kind : str, default "alignment"
        One of :data:`MAP_KINDS`.
    with_rois : {"auto", True, "outlines", False}, default "auto"
        ``"auto"`` (or True): pycortex's own ROI overlay when Inkscape is
        installed, otherwise ``"outlines"``: the outlines of the subject's
        ``overlays.svg`` drawn with matplotlib (no Inkscape needed, see the
        module docstring). False: none.
    with_curvature : bool, default True
        Grey curvature background (pycortex computes it once per subject, ~5 s).

    Returns
    -------
    matplotlib.figure.Figure
        10 inches wide: the title (with a note if ROI outlines could not be
        drawn) in a band above the flatmap axes, a horizontal colorbar in a
        band below. Outline patches carry their ROI name as label.

    Raises
    ------
    ValueError
        If `values` does not have one finite-or-NaN number per voxel, or for an
        unknown `kind`, `cmap` or `with_rois`.
    FileNotFoundError
        If a :class:`PycortexSpace`'s filestore, subject or transform is missing.
    """
    layout = as_layout(layout)
    renderer = _roi_renderer(with_rois)
    space = layout if isinstance(layout, PycortexSpace) else None
    with pycortex_filestore(space.filestore if space else None) as db:
        if space is None:
            data = _check_values(values, layout.n_voxels)
            style = _resolve_style(kind, data, cmap, vmin, vmax)
            volume = to_cortex_volume(layout, data, cmap=style["cmap"], vmin=style["vmin"], vmax=style["vmax"])
        else:
            data = _space_volume(db, space, values)
            style = _resolve_style(kind, data, cmap, vmin, vmax)
            cortex = _import_cortex()
            volume = cortex.Volume(
                data, space.subject, space.xfm, cmap=style["cmap"], vmin=style["vmin"], vmax=style["vmax"]
            )
        figure, ax = _draw_flatmap(volume, with_curvature)
        note = _add_rois(ax, volume, renderer)
    heading = " ".join(part for part in (title, note) if part)
    top_in, bottom_in = (0.45 if heading else 0.0), 0.8
    _grow(figure, top_in, bottom_in)
    height = figure.get_size_inches()[1]
    _add_colorbar(figure, style, (0.4, 0.5 / height, 0.2, 0.15 / height))
    if heading:
        figure.text(0.5, 1 - top_in / 2 / height, heading, ha="center", va="center", fontsize=13)
    return figure


def _draw_flatmap(volume, with_curvature: bool) -> tuple[Figure, Axes]:
    """pycortex flatmap of a ``cortex.Volume`` in a new 10-inch-wide figure whose axes fill it."""
    cortex = _import_cortex()
    figure = plt.figure()
    ax = figure.add_axes((0, 0, 1, 1))
    with contextlib.redirect_stdout(io.StringIO()):  # "Generating a flatmap cache"
        cortex.quickflat.make_figure(
            volume, fig=ax, height=_FLATMAP_HEIGHT_PX, with_rois=False, with_labels=False,
            with_colorbar=False, with_curvature=with_curvature,
        )
    left, right, bottom, top = _data_image(ax).get_extent()
    figure.set_size_inches(_FLATMAP_WIDTH_IN, _FLATMAP_WIDTH_IN * abs(top - bottom) / abs(right - left))
    return figure, ax


def _grow(figure: Figure, top_in: float, bottom_in: float) -> None:
    """Add empty bands of `top_in` and `bottom_in` inches above and below, keeping every axes' size."""
    width, height = figure.get_size_inches()
    grown = height + top_in + bottom_in
    boxes = [axes.get_position(original=True).bounds for axes in figure.axes]
    figure.set_size_inches(width, grown)
    for axes, (left, bottom, w, h) in zip(figure.axes, boxes, strict=True):
        axes.set_position((left, (bottom * height + bottom_in) / grown, w, h * height / grown))


def _data_image(ax: Axes):
    """The flatmap's data image (pycortex labels it "data")."""
    return next(image for image in ax.images if image.get_label() == "data")


def _add_rois(ax, volume, renderer: str | None) -> str:
    """Draw ROI outlines; return a note for the title when they could not be drawn."""
    if renderer is None:
        return ""
    if renderer == "inkscape":
        cortex = _import_cortex()
        try:
            cortex.quickflat.composite.add_rois(ax, volume, with_labels=True)
            return ""
        except Exception as error:  # noqa: BLE001 - an external program; fall back to plain outlines
            log.warning("pycortex/Inkscape ROI overlay failed (%s); drawing plain outlines instead", error)
    try:
        _draw_roi_outlines(ax, volume.subject)
    except (OSError, KeyError, ValueError, SyntaxError) as error:  # SyntaxError: lxml's XMLSyntaxError
        log.warning("no ROI outlines for %s: %s", volume.subject, error)
        return "(no ROI outlines)"
    return ""


def _draw_roi_outlines(ax, subject: str) -> None:
    """Draw the ``rois`` layer of `subject`'s overlays.svg on a flatmap axes with matplotlib.

    The svg canvas spans the flatmap's bounding box with y pointing down, so
    ``x_flat = left + x_svg * (right - left) / width`` and
    ``y_flat = top - y_svg * (top - bottom) / height``.
    """
    from matplotlib import patheffects

    cortex = _import_cortex()
    overlay_path = Path(cortex.db.get_paths(subject)["overlays"])
    if not overlay_path.is_file():  # pycortex would create one: do not write into the filestore
        raise FileNotFoundError(f"{overlay_path} does not exist")
    svg = cortex.db.get_overlay(subject, overlays_available=("rois",))
    width, height = svg.svgshape
    left, right, bottom, top = _data_image(ax).get_extent()
    to_flat = Affine2D().scale((right - left) / width, -(top - bottom) / height).translate(left, top)
    halo = [patheffects.withStroke(linewidth=2.2, foreground="black", alpha=0.6)]
    limits = ax.get_xlim(), ax.get_ylim()
    for name, shape in svg.rois.shapes.items():
        for path in shape.splines:
            ax.add_patch(PathPatch(to_flat.transform_path(path), fill=False, edgecolor="white", linewidth=1.0,
                                   path_effects=halo, zorder=5, label=name))
        for position in shape.get_labelpos():
            x, y = to_flat.transform(position)
            ax.text(x, y, name, color="white", fontsize=7, ha="center", va="center", zorder=6, path_effects=halo)
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])


def _add_colorbar(figure: Figure, style: dict, rect: tuple[float, float, float, float]) -> None:
    """Horizontal colorbar of `style` in the figure-fraction rectangle `rect` (left, bottom, width, height)."""
    mappable = ScalarMappable(Normalize(style["vmin"], style["vmax"]), style["cmap"])
    figure.colorbar(mappable, cax=figure.add_axes(rect), orientation="horizontal").set_label(style["label"])


# ----------------------------------------------------------------------------
# S1 -> fsaverage5
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _fsaverage() -> dict:
    """fsaverage5 meshes and a sulcal background from nilearn's bundled copy (about 1.5 s, once)."""
    from nilearn import datasets

    meshes = datasets.load_fsaverage(FSAVERAGE_MESH)
    sulc = datasets.load_fsaverage_data(FSAVERAGE_MESH, data_type="sulcal")
    return {
        "inflated": meshes["inflated"],
        "pial": np.vstack([meshes["pial"].parts[h].coordinates for h in _HEMIS]),
        "midthickness": [
            (meshes["pial"].parts[h].coordinates + meshes["white_matter"].parts[h].coordinates) / 2 for h in _HEMIS
        ],
        # two grey levels (sulci darker), like pycortex's curvature; values inside
        # [0, 1] are used as is by nilearn's grey background colormap
        "background": {h: np.where(np.asarray(sulc.data.parts[h]) > 0, 0.6, 0.35) for h in _HEMIS},
    }


def _fit_affine(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Affine map of `source` points onto the `target` surface by symmetric ICP.

    Parameters
    ----------
    source : numpy.ndarray, shape (n_source, 3)
    target : numpy.ndarray, shape (n_target, 3)

    Returns
    -------
    numpy.ndarray, shape (4, 3)
        ``np.c_[points, ones] @ affine`` maps points of the source space.
    """
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
    table = template_roi_table(mask=mask)
    layout = VoxelLayout(table["volume_index"].to_numpy(), table["roi"].to_numpy(), table["hemisphere"].to_numpy(),
                         table.attrs["volume_shape"], mask)
    voxels_mm = voxel_coordinates(layout)
    cortex = _import_cortex()
    surfaces = [pts for pts, _ in cortex.db.get_surf(TEMPLATE_SUBJECT, "fiducial")]
    merged = np.vstack(surfaces)
    _, vertex = cKDTree(merged).query(voxels_mm)
    hemisphere = (vertex >= len(surfaces[0])).astype(np.int8)
    position = np.empty((layout.n_voxels, 3))
    targets = _fsaverage()["midthickness"]
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

    Computed once (a few seconds, see the module docstring) and cached in
    ``cache_root(cache_dir)/maps``.

    Parameters
    ----------
    mask : {"thin", "thick"}, default "thin"
        Mask of :func:`bt_utils.demo.template.template_roi_table`.
    cache_dir : path-like, optional
        Cache root, see :func:`bt_utils.cache.cache_root`.

    Returns
    -------
    pandas.DataFrame, shape (n_mask_voxels, 6)
        Columns ``volume_index`` (ascending), ``hemisphere`` ("L"/"R"),
        ``x``, ``y``, ``z`` (mm, fsaverage5 mid-thickness space, about MNI305)
        and ``vertex`` (nearest fsaverage5 vertex, 0..20483, left hemisphere first).
    """
    check_option("mask", mask, ("thin", "thick"))
    data = _alignment(mask, (cache_root(cache_dir) / "maps").absolute())
    vertex = np.empty(data["volume_index"].size, dtype=np.int64)
    for h, surface in enumerate(_fsaverage()["midthickness"]):
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


def fsaverage_mapping(layout, radius_mm: float = _RADIUS_MM, cache_dir=None) -> sparse.csr_matrix:
    """Which fsaverage5 vertices show which voxels of a demo layout.

    Parameters
    ----------
    layout : VoxelLayout or dict
        A demo layout on S1 (see :func:`as_layout`).
    radius_mm : float, default 4.0
        A vertex shows every voxel whose fsaverage5 position (see
        :func:`template_to_fsaverage`) is within this distance; each voxel also
        reaches its nearest vertex. 0 keeps only the nearest vertex.
    cache_dir : path-like, optional
        Cache root of the S1 -> fsaverage5 fit.

    Returns
    -------
    scipy.sparse.csr_matrix of float64, shape (20484, n_voxels)
        1 where a vertex shows a voxel; use with :func:`to_fsaverage`.

    Raises
    ------
    NotImplementedError
        For a :class:`PycortexSpace` (real subjects have no fsaverage registration here).
    ValueError
        If `radius_mm` is negative or a voxel is not in S1's mask.
    """
    layout = as_layout(layout)
    if isinstance(layout, PycortexSpace):
        raise NotImplementedError(
            f"no voxel -> {FSAVERAGE_MESH} mapping for pycortex subject {layout.subject}: only the demo voxels on "
            f"{TEMPLATE_SUBJECT} have one. Pass surface_map(..., mapping=M) with a sparse matrix M of shape "
            f"({N_FSAVERAGE_VERTICES}, n_voxels), e.g. from FreeSurfer's mri_vol2surf and mri_surf2surf, "
            "or draw a flatmap() instead"
        )
    if isinstance(radius_mm, bool) or not isinstance(radius_mm, numbers.Real) or not radius_mm >= 0:
        raise ValueError(f"radius_mm={radius_mm!r} must be a number >= 0")
    table = template_to_fsaverage(layout.mask, cache_dir)
    rows = np.searchsorted(table["volume_index"].to_numpy(), layout.volume_index)
    rows = np.minimum(rows, len(table) - 1)
    outside = table["volume_index"].to_numpy()[rows] != layout.volume_index
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} layout voxels (e.g. volume_index {int(layout.volume_index[outside][0])}) are not "
            f"in {TEMPLATE_SUBJECT}'s {layout.mask!r} mask"
        )
    vertices = [table["vertex"].to_numpy()[rows]]
    voxels = [np.arange(layout.n_voxels)]
    if radius_mm > 0:
        position = table[["x", "y", "z"]].to_numpy()[rows]
        hemisphere = table["hemisphere"].to_numpy()[rows]
        for h, (name, surface) in enumerate(zip("LR", _fsaverage()["midthickness"], strict=True)):
            members = np.flatnonzero(hemisphere == name)
            near = cKDTree(surface).query_ball_point(position[members], r=float(radius_mm), return_sorted=False)
            counts = np.fromiter((len(n) for n in near), dtype=np.int64, count=len(near))
            if counts.sum():
                vertices.append(np.concatenate([np.asarray(n, dtype=np.int64) for n in near]) + h * len(surface))
                voxels.append(np.repeat(members, counts))
    vertices, voxels = np.concatenate(vertices), np.concatenate(voxels)
    shape = (N_FSAVERAGE_VERTICES, layout.n_voxels)
    matrix = sparse.csr_matrix((np.ones(vertices.size), (vertices, voxels)), shape=shape)
    matrix.data[:] = 1.0  # duplicates (nearest vertex also within the radius) were summed
    return matrix


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
    """
    mapping = sparse.csr_matrix(mapping)
    if mapping.shape[0] != N_FSAVERAGE_VERTICES:
        raise ValueError(
            f"mapping has {mapping.shape[0]} rows, expected {N_FSAVERAGE_VERTICES} {FSAVERAGE_MESH} vertices"
        )
    if mapping.nnz and mapping.data.min() < 0:
        raise ValueError("mapping weights must be >= 0")
    data = _check_values(values, mapping.shape[1])
    finite = np.isfinite(data)
    total = mapping @ np.where(finite, data, 0.0)
    weight = mapping @ finite.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def surface_map(
    values,
    layout,
    title: str = "",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    kind: str = "alignment",
    mapping=None,
    radius_mm: float = _RADIUS_MM,
) -> Figure:
    """Draw per-voxel values on fsaverage5 with nilearn: lateral and medial views of both hemispheres.

    Parameters
    ----------
    values : array_like, shape (n_voxels,)
    layout : VoxelLayout, PycortexSpace, dict or tuple
        See :func:`as_layout`.
    title : str, default ""
    cmap, vmin, vmax : optional
        Override the defaults of `kind` (see :func:`map_defaults`).
    kind : str, default "alignment"
    mapping : scipy.sparse matrix or numpy.ndarray, shape (20484, n_voxels), optional
        Voxel -> vertex weights (see :func:`to_fsaverage`); its columns are the
        layout's voxels. Default :func:`fsaverage_mapping` (demo layouts only).
    radius_mm : float, default 4.0
        Passed to :func:`fsaverage_mapping` when `mapping` is None.

    Returns
    -------
    matplotlib.figure.Figure
        Four views (left lateral, left medial, right medial, right lateral) of
        the inflated fsaverage5 surface over its sulcal depth, and a colorbar.
        A display approximation, see the module docstring.

    Raises
    ------
    NotImplementedError
        For a :class:`PycortexSpace` without `mapping`.
    """
    from nilearn import plotting

    if mapping is None:
        mapping = fsaverage_mapping(layout, radius_mm)
    vertex_values = to_fsaverage(values, mapping)
    style = _resolve_style(kind, np.asarray(values, dtype=np.float64), cmap, vmin, vmax)
    meshes, background = _fsaverage()["inflated"], _fsaverage()["background"]
    split = N_FSAVERAGE_VERTICES // 2
    parts = {"left": vertex_values[:split], "right": vertex_values[split:]}
    figure = plt.figure(figsize=(12, 4))
    for index, (hemi, view) in enumerate(_VIEWS):
        ax = figure.add_axes((index * 0.25, 0.2, 0.25, 0.75), projection="3d")
        plotting.plot_surf_stat_map(
            meshes.parts[hemi], parts[hemi], hemi=hemi, view=view, bg_map=background[hemi], axes=ax, figure=figure,
            colorbar=False, cmap=style["cmap"], vmin=style["vmin"], vmax=style["vmax"],
            symmetric_cbar=math.isclose(style["vmin"], -style["vmax"]),
        )
    _add_colorbar(figure, style, (0.4, 0.16, 0.2, 0.04))
    if title:
        figure.suptitle(title, y=0.98)
    return figure


# ----------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------
def save_maps(
    values_by_name: Mapping[str, object],
    layout,
    out_dir: str | os.PathLike,
    backends: Sequence[str] = BACKENDS,
    *,
    kind: str | Mapping[str, str] = "alignment",
    mapping=None,
) -> list[Path]:
    """Render and save one PNG per map and backend.

    Parameters
    ----------
    values_by_name : dict of str to array_like, shape (n_voxels,)
        Maps to draw; each name (letters, digits, ``_``, ``-``, ``.``) becomes
        the file name stem and the title.
    layout : VoxelLayout, PycortexSpace, dict or tuple
        See :func:`as_layout`.
    out_dir : path-like
        Created if missing.
    backends : sequence of {"pycortex", "nilearn"}, default both
    kind : str or dict of str to str, default "alignment"
        Kind of every map, or the kind of each map by name (every name needed).
    mapping : optional
        Voxel -> fsaverage5 weights for the nilearn backend, see :func:`surface_map`.

    Returns
    -------
    list of pathlib.Path
        ``<out_dir>/<name>_flatmap.png`` (pycortex) and
        ``<out_dir>/<name>_surface.png`` (nilearn), map by map, written
        atomically; the figures are closed.
    """
    backends = tuple(backends)
    for backend in backends:
        check_option("backend", backend, BACKENDS)
    kinds = kind if isinstance(kind, Mapping) else dict.fromkeys(values_by_name, kind)
    missing = sorted(set(values_by_name) - set(kinds))
    if missing:
        raise ValueError(f"kind has no entry for maps {missing}")
    bad = [name for name in values_by_name if not isinstance(name, str) or not _SAFE_NAME.match(name)]
    if bad:
        raise ValueError(f"map names {bad} are not usable as file names (letters, digits, '_', '-', '.')")
    layout = as_layout(layout)
    out_dir = Path(out_dir)
    paths = []
    for name, values in values_by_name.items():
        for backend in backends:
            if backend == "pycortex":
                figure, path = flatmap(values, layout, name, kind=kinds[name]), out_dir / f"{name}_flatmap.png"
            else:
                figure = surface_map(values, layout, name, kind=kinds[name], mapping=mapping)
                path = out_dir / f"{name}_surface.png"
            paths.append(save_figure(figure, path))
            plt.close(figure)
    return paths


def maps_from_results(subject: str, n_voxels: int, noise_ceiling: pd.DataFrame | None = None,
                      alignment: pd.DataFrame | None = None, impact: pd.DataFrame | None = None,
                      reference_variant: str = "pretrained", feature_set: str = "all") -> tuple[dict, dict]:
    """The maps of a subject from the result tables of notebooks 00, 02 and 03.

    Parameters
    ----------
    subject : str
    n_voxels : int
    noise_ceiling : DataFrame, optional
        ``noise_ceiling.parquet`` (subject, voxel, cc_max): map ``noise_ceiling``.
    alignment : DataFrame, optional
        ``alignment_voxels.parquet``: maps ``alignment_<variant>_layer<L>`` of ``r_norm``,
        and ``difference_<variant>_layer<L>`` (variant minus ``reference_variant``).
    impact : DataFrame, optional
        ``low_level_impact_voxels.parquet``: maps ``impact_<variant>_layer<L>`` of
        ``drop_pct`` for ``feature_set`` and their difference to the reference.
    reference_variant : str
    feature_set : str

    Returns
    -------
    values : dict of str to ndarray of shape (n_voxels,)
        NaN where a voxel has no value.
    kinds : dict of str to str
        The :func:`map_defaults` kind of each map.
    """
    values, kinds = {}, {}

    def per_voxel(rows: pd.DataFrame, column: str) -> np.ndarray:
        repeated = rows.voxel[rows.voxel.duplicated()].unique()
        if repeated.size:
            raise ValueError(f"the {column} rows of subject {subject!r} repeat voxels {repeated[:5].tolist()} "
                             "within one variant and layer; pass one model's table (filter by model)")
        out = np.full(n_voxels, np.nan)
        out[rows.voxel.to_numpy()] = rows[column].to_numpy(dtype=float)
        return out

    def add(name: str, array: np.ndarray, kind: str) -> None:
        values[name], kinds[name] = array, kind

    if noise_ceiling is not None:
        add("noise_ceiling", per_voxel(noise_ceiling[noise_ceiling.subject == subject], "cc_max"), "noise_ceiling")
    for table, column, prefix, kind in ((alignment, "r_norm", "alignment", "alignment"),
                                        (impact, "drop_pct", "impact", "low_level_impact")):
        if table is None:
            continue
        rows = table[table.subject == subject]
        if "model" in rows and rows.model.nunique() > 1:
            raise ValueError(f"the {prefix} table holds several models ({sorted(rows.model.unique())}); "
                             "draw one model's maps at a time (filter the table by model)")
        if "feature_set" in rows:
            rows = rows[rows.feature_set == feature_set]
        for (variant, layer), group in rows.groupby(["variant", "layer"]):
            add(f"{prefix}_{variant}_layer{layer}", per_voxel(group, column), kind)
        for (variant, layer), group in rows.groupby(["variant", "layer"]):
            reference = f"{prefix}_{reference_variant}_layer{layer}"
            if variant != reference_variant and reference in values:
                add(f"{prefix}-difference_{variant}_layer{layer}",
                    values[f"{prefix}_{variant}_layer{layer}"] - values[reference],
                    "difference" if prefix == "alignment" else "impact_difference")
    if not values:
        raise ValueError(f"no result rows for subject {subject!r}: give at least one of the tables")
    return values, kinds
