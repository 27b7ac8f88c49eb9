"""Voxel maps: pycortex flatmaps and nilearn fsaverage5 surfaces, rendered headless.

Every map is a pyplot figure, shown with ``plt.show()`` or rendered with Agg (no display, browser or Inkscape);
save it with :func:`bt_utils.results.save_figure` or :func:`save_maps`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
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

from ..data.layout import as_layout
from ..results import save_figure
from ..validation import check_option
from .fsaverage import DEFAULT_RADIUS_MM, N_FSAVERAGE_VERTICES, fsaverage_mapping, fsaverage_meshes, to_fsaverage
from .volumes import import_cortex, pycortex_filestore, volume_data

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "MAP_KINDS",
    "flatmap",
    "map_defaults",
    "maps_from_results",
    "save_maps",
    "surface_map",
]

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
_FLATMAP_HEIGHT_PX = 1024  # pycortex's default; each height has its own pixel-map cache
_FLATMAP_WIDTH_IN = 10.0
_VIEWS = (("left", "lateral"), ("left", "medial"), ("right", "medial"), ("right", "lateral"))
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------
# values and colours
# ----------------------------------------------------------------------------
def map_defaults(kind: str, values=None) -> dict:
    """Colormap and colour limits for a kind of map; the data-driven limits come from ``values`` (n_voxels,), None
    without it.
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

    Raises
    ------
    ValueError
        If `values` does not have one finite-or-NaN number per voxel, or for an unknown `kind`, `cmap` or
        `with_rois`.
    FileNotFoundError
        If the layout's filestore, subject or transform is missing.
    """
    layout = as_layout(layout)
    renderer = _roi_renderer(with_rois)
    with pycortex_filestore(layout.filestore):
        data = volume_data(values, layout)
        style = _resolve_style(kind, data, cmap, vmin, vmax)
        volume = import_cortex().Volume(
            data, layout.subject, layout.xfm, cmap=style["cmap"], vmin=style["vmin"], vmax=style["vmax"]
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
    cortex = import_cortex()
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
        cortex = import_cortex()
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
    """Draw the ``rois`` layer of `subject`'s overlays.svg on a flatmap axes with matplotlib."""
    from matplotlib import patheffects

    cortex = import_cortex()
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
# nilearn fsaverage5 surfaces
# ----------------------------------------------------------------------------
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
    radius_mm: float = DEFAULT_RADIUS_MM,
) -> Figure:
    """Draw per-voxel values on fsaverage5 with nilearn: lateral and medial views of both hemispheres.

    Parameters
    ----------
    values : array_like, shape (n_voxels,)
    mapping : scipy.sparse matrix or numpy.ndarray, shape (20484, n_voxels), optional
        Voxel -> vertex weights (see :func:`bt_utils.viz.fsaverage.to_fsaverage`); its columns are the layout's
        voxels. Default: the mapping registered for the layout's subject
        (:func:`bt_utils.viz.fsaverage.fsaverage_mapping`).

    Raises
    ------
    NotImplementedError
        Without `mapping`, if no mapping is registered for the layout's subject.
    """
    from nilearn import plotting

    if mapping is None:
        mapping = fsaverage_mapping(layout, radius_mm)
    vertex_values = to_fsaverage(values, mapping)
    style = _resolve_style(kind, np.asarray(values, dtype=np.float64), cmap, vmin, vmax)
    meshes, background = fsaverage_meshes()["inflated"], fsaverage_meshes()["background"]
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
        Maps to draw; each name (letters, digits, ``_``, ``-``, ``.``) becomes the file name stem and the title.
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
        ``<out_dir>/<name>_flatmap.png`` (pycortex) and ``<out_dir>/<name>_surface.png`` (nilearn), map by map,
        written atomically; the figures are closed.
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
                      reference_variant: str = "pretrained", feature_set: str = "all",
                      layers: Sequence[int] | None = None) -> tuple[dict, dict]:
    """The maps of a subject from the result tables of notebooks 00, 02 and 03.

    Parameters
    ----------
    noise_ceiling : DataFrame, optional
        ``noise_ceiling.parquet`` (subject, voxel, cc_max): map ``noise_ceiling``.
    alignment : DataFrame, optional
        ``alignment_voxels.parquet``: maps ``alignment_<variant>_layer<L>`` of ``r_norm``, and
        ``difference_<variant>_layer<L>`` (variant minus ``reference_variant``).
    impact : DataFrame, optional
        ``low_level_impact_voxels.parquet``: maps ``impact_<variant>_layer<L>`` of ``drop_pct`` for ``feature_set``
        and their difference to the reference.
    layers : sequence of int, optional
        Draw only these layers of the alignment and impact tables (default: every layer in them).

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
        if layers is not None:
            missing = sorted(set(layers) - set(rows.layer))
            if missing:
                raise ValueError(f"the {prefix} table of subject {subject!r} has no layers {missing}; it has "
                                 f"{sorted(rows.layer.unique().tolist())}")
            rows = rows[rows.layer.isin(layers)]
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
