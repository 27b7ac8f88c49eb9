"""Interactive exploration of alignment results in JupyterLab (ipywidgets).

:func:`explorer` shows the voxel map and ROI bars of a chosen subject, model, variant, layer and metric; the logic
is in pure functions, and :class:`Explorer` only wires them to widgets."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import maps, volumes
from ..data.layout import as_layout
from ..validation import check_option

__all__ = [
    "CHOICE_COLUMNS",
    "Explorer",
    "Selection",
    "choices",
    "color_limits",
    "explorer",
    "metric_columns",
    "render_bars",
    "render_map",
    "roi_bars",
    "select_values",
]

CHOICE_COLUMNS = ("subject", "model", "variant", "layer")
"""Columns both tables share that identify one map, in the order the dropdowns cascade."""

_VOXEL_COLUMNS = (*CHOICE_COLUMNS, "voxel")
_ROI_COLUMNS = (*CHOICE_COLUMNS, "roi", "n_voxels")
_HANDLED_ERRORS = (ValueError, KeyError, FileNotFoundError, NotImplementedError)
_PNG_DPI = 72


@dataclass(frozen=True)
class Selection:
    """One choice of the explorer's dropdowns."""

    subject: str
    model: str
    variant: str
    layer: object
    metric: str

    def title(self) -> str:
        """Short caption, e.g. ``"DEMO01 | wav2vec2 tuned | layer 6 | r_norm"``."""
        return f"{self.subject} | {self.model} {self.variant} | layer {self.layer} | {self.metric}"


# ----------------------------------------------------------------------------
# pure logic
# ----------------------------------------------------------------------------
def _check_columns(table: pd.DataFrame, required, name: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(table.columns)}")


def metric_columns(voxel_table: pd.DataFrame) -> list[str]:
    """Numeric columns of the voxel table that can be mapped (e.g. ``["r", "r_norm"]``)."""
    _check_columns(voxel_table, _VOXEL_COLUMNS, "voxel_table")
    return [
        column for column in voxel_table.columns
        if column not in _VOXEL_COLUMNS and pd.api.types.is_numeric_dtype(voxel_table[column])
        and not pd.api.types.is_bool_dtype(voxel_table[column])
    ]


def _sorted_unique(series: pd.Series) -> list:
    return sorted(pd.unique(series).tolist(), key=lambda value: (isinstance(value, str), value))


def choices(voxel_table: pd.DataFrame, **upstream) -> dict[str, list]:
    """Values each dropdown can take, given the values chosen above it; ValueError for an unknown column or value."""
    _check_columns(voxel_table, _VOXEL_COLUMNS, "voxel_table")
    for name in upstream:
        check_option("choice", name, CHOICE_COLUMNS[:-1])
    options: dict[str, list] = {}
    rows = voxel_table
    for column in CHOICE_COLUMNS:
        options[column] = _sorted_unique(rows[column])
        if column in upstream:
            check_option(column, upstream[column], options[column])
            rows = rows[rows[column] == upstream[column]]
    options["metric"] = metric_columns(voxel_table)
    return options


def _rows(table: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    keep = np.ones(len(table), dtype=bool)
    for column in CHOICE_COLUMNS:
        keep &= (table[column] == getattr(selection, column)).to_numpy()
    return table[keep]


def select_values(voxel_table: pd.DataFrame, selection: Selection, n_voxels: int) -> np.ndarray:
    """Values of one metric per voxel for one choice: float64 of shape (n_voxels,).

    Raises
    ------
    ValueError
        If a value of `selection` is not in the table (the message lists the available ones), the metric is
        unknown, a voxel index is outside [0, n_voxels) or a voxel appears twice.
    """
    options = choices(voxel_table, subject=selection.subject, model=selection.model, variant=selection.variant)
    check_option("layer", selection.layer, options["layer"])
    check_option("metric", selection.metric, options["metric"])
    rows = _rows(voxel_table, selection)
    voxel = rows["voxel"].to_numpy()
    if voxel.min() < 0 or voxel.max() >= n_voxels:
        raise ValueError(
            f"voxel indices of {selection.title()} span [{voxel.min()}, {voxel.max()}], "
            f"outside the layout's {n_voxels} voxels"
        )
    if np.unique(voxel).size != voxel.size:
        raise ValueError(f"{selection.title()} has duplicate rows for some voxels")
    values = np.full(n_voxels, np.nan)
    values[voxel] = rows[selection.metric].to_numpy(dtype=np.float64)
    return values


def roi_bars(roi_table: pd.DataFrame, selection: Selection) -> pd.Series:
    """ROI means of the selected metric (column ``<metric>_mean`` of ``roi_table``): a Series of shape (n_rois,) indexed
    by ROI name, alphabetical with ``"other"`` last.

    Raises
    ------
    KeyError
        If the table has no ``<metric>_mean`` column.
    ValueError
        If the table has no rows for the selection.
    """
    _check_columns(roi_table, _ROI_COLUMNS, "roi_table")
    column = f"{selection.metric}_mean"
    if column not in roi_table.columns:
        raise KeyError(f"the ROI table has no {column!r} column, so no ROI bars for metric {selection.metric!r}")
    rows = _rows(roi_table, selection)
    if rows.empty:
        raise ValueError(f"the ROI table has no rows for {selection.title()}")
    bars = rows.set_index("roi")[column].astype(float)
    order = sorted(bars.index, key=lambda roi: (roi == "other", str(roi).lower()))
    return bars.loc[order].rename(column)


def color_limits(voxel_table: pd.DataFrame, subject: str, metric: str) -> tuple[float, float]:
    """Colour range shared by all maps of a subject and metric, so layers and models compare."""
    options = choices(voxel_table, subject=subject)
    check_option("metric", metric, options["metric"])
    values = voxel_table.loc[voxel_table["subject"] == subject, metric].to_numpy(dtype=np.float64)
    style = maps.map_defaults("alignment", values)
    return style["vmin"], style["vmax"]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PNG_DPI)
    return buffer.getvalue()


def render_map(values: np.ndarray, layout, backend: str, title: str, vmin: float, vmax: float) -> bytes:
    """PNG of a voxel map of ``values`` (n_voxels,)."""
    check_option("backend", backend, maps.BACKENDS)
    draw = maps.flatmap if backend == "pycortex" else maps.surface_map
    figure = draw(values, layout, title, vmin=vmin, vmax=vmax, kind="alignment")
    try:
        return _png(figure)
    finally:
        plt.close(figure)


def render_bars(bars: pd.Series, title: str) -> bytes:
    """PNG of a bar chart of ROI means, ``bars`` of shape (n_rois,) as from :func:`roi_bars`."""
    figure = Figure(figsize=(7, 3.2))
    ax = figure.add_subplot()
    ax.bar(range(len(bars)), bars.to_numpy(), color="tab:blue")
    ax.set_xticks(range(len(bars)), [str(roi) for roi in bars.index], rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_ylabel(str(bars.name))
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return _png(figure)


# ----------------------------------------------------------------------------
# widgets
# ----------------------------------------------------------------------------
def _message(error: Exception) -> str:
    """The text of an error (``str`` of a KeyError is the repr of its message)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


class Explorer(widgets.VBox):
    """Dropdowns, a voxel map and an ROI bar chart that follow each other.

    Parameters
    ----------
    layouts : dict of str to layout
        Layout of every subject of `voxel_table` (see :func:`bt_utils.data.layout.as_layout`).
    backend : {"pycortex", "nilearn"}, default "pycortex"
    """

    def __init__(self, voxel_table: pd.DataFrame, roi_table: pd.DataFrame, layouts: Mapping, backend: str = "pycortex"):
        options = choices(voxel_table)
        _check_columns(roi_table, _ROI_COLUMNS, "roi_table")
        check_option("backend", backend, maps.BACKENDS)
        if not options["metric"]:
            raise ValueError("voxel_table has no numeric metric column (e.g. r, r_norm)")
        missing = [subject for subject in options["subject"] if subject not in layouts]
        if missing:
            raise ValueError(f"layouts has no entry for subjects {missing}; it has {sorted(layouts)}")
        self.voxel_table, self.roi_table, self.backend = voxel_table, roi_table, backend
        self.layouts = {subject: as_layout(layouts[subject]) for subject in options["subject"]}
        self._n_voxels: dict[str, int] = {}
        self._updating = False
        metric = "r_norm" if "r_norm" in options["metric"] else options["metric"][0]
        self.dropdowns = {
            name: widgets.Dropdown(options=options[name], value=metric if name == "metric" else options[name][0],
                                   description=name)
            for name in (*CHOICE_COLUMNS, "metric")
        }
        self.map_image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.bars_image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.status = widgets.HTML()
        self.values: np.ndarray | None = None
        self.bars: pd.Series | None = None
        controls = widgets.HBox(list(self.dropdowns.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([controls, self.status, self.map_image, self.bars_image])
        self._cascade()
        for dropdown in self.dropdowns.values():
            dropdown.observe(self._on_change, names="value")
        self.update()

    @property
    def selection(self) -> Selection:
        """The current choice of the dropdowns."""
        return Selection(**{name: dropdown.value for name, dropdown in self.dropdowns.items()})

    def select(self, **choice) -> None:
        """Set several dropdowns at once and redraw once, e.g. ``select(model="hubert", layer=3)``.

        Parameters
        ----------
        **choice
            Dropdown name (subject, model, variant, layer, metric) to value.

        Raises
        ------
        ValueError
            For an unknown dropdown or a value it does not offer (after the choices above it are applied).
        """
        unknown = sorted(set(choice) - set(self.dropdowns))
        if unknown:
            raise ValueError(f"unknown dropdowns {unknown}; the explorer has {list(self.dropdowns)}")
        self._updating = True
        try:
            for name, dropdown in self.dropdowns.items():  # in cascade order
                if name in choice:
                    check_option(name, choice[name], dropdown.options)
                    dropdown.value = choice[name]
                self._cascade()
        finally:
            self._updating = False
            self.update()

    def _on_change(self, change) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            self._cascade()
        finally:
            self._updating = False
        self.update()

    def _cascade(self) -> None:
        """Restrict each dropdown to what the table has for the choices above it."""
        upstream = {}
        for name in CHOICE_COLUMNS:
            dropdown = self.dropdowns[name]
            offered = choices(self.voxel_table, **upstream)[name]
            if list(dropdown.options) != offered:
                current = dropdown.value
                dropdown.options = offered
                dropdown.value = current if current in offered else offered[0]
            upstream[name] = dropdown.value

    def _layout_size(self, subject: str) -> int:
        if subject not in self._n_voxels:
            self._n_voxels[subject] = volumes.n_voxels(self.layouts[subject])
        return self._n_voxels[subject]

    def update(self) -> None:
        """Recompute the values, the map image and the ROI bars for the current selection."""
        selection = self.selection
        messages = []
        try:
            layout = self.layouts[selection.subject]
            self.values = select_values(self.voxel_table, selection, self._layout_size(selection.subject))
            vmin, vmax = color_limits(self.voxel_table, selection.subject, selection.metric)
            self.map_image.value = render_map(self.values, layout, self.backend, selection.title(), vmin, vmax)
        except _HANDLED_ERRORS as error:
            self.values, self.map_image.value = None, b""
            messages.append(f"map: {_message(error)}")
        try:
            self.bars = roi_bars(self.roi_table, selection)
            self.bars_image.value = render_bars(self.bars, selection.title())
        except _HANDLED_ERRORS as error:
            self.bars, self.bars_image.value = None, b""
            messages.append(f"ROI bars: {_message(error)}")
        self.status.value = "<br>".join(f"<b>{html.escape(message)}</b>" for message in messages)


def explorer(
    voxel_table: pd.DataFrame, roi_table: pd.DataFrame, layouts: Mapping, backend: str = "pycortex"
) -> Explorer:
    """Interactive map and ROI bar chart of alignment results, for JupyterLab.

    Parameters
    ----------
    voxel_table : pandas.DataFrame
        ``alignment_voxels.parquet``: subject, model, variant, layer, voxel, r, r_norm.
    roi_table : pandas.DataFrame
        ``alignment_rois.parquet``: subject, model, variant, layer, roi, r_norm_mean, n_voxels.
    layouts : dict of str to layout
        Layout of every subject, e.g. ``{s: subject_layout(dataset, s) for s in dataset.subjects}``
        (:func:`bt_utils.data.layout.subject_layout`).
    backend : {"pycortex", "nilearn"}, default "pycortex"
        Flatmaps or fsaverage5 surfaces (demo subjects only).

    Returns
    -------
    Explorer
        An ``ipywidgets.VBox``; display it as the last expression of a cell.

    Raises
    ------
    ValueError
        If a table lacks columns, has no metric, or a subject has no layout.
    """
    return Explorer(voxel_table, roi_table, layouts, backend)
