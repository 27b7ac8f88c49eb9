"""Figures: the notebooks' plots (:mod:`bt_utils.viz.plots`), voxel maps and the interactive explorer."""

from .. import lazy_exports

_EXPORTS = {
    "plots": "plots",
    **dict.fromkeys(["maps_from_results", "save_maps"], "maps"),
    "explorer": "explore",
    "n_voxels": "volumes",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
