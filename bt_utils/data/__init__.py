"""The data: a dataset in the ds003020 layout, its TR grid, noise ceiling, ROIs and voxel layout."""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["Dataset", "SAMPLE_RATE", "StorySplit", "open_dataset"], "dataset"),
    **dict.fromkeys(["cc_max", "explainable_variance", "noise_ceiling_table", "select_voxels", "voxel_counts"],
                    "noise_ceiling"),
    "subject_rois": "rois",
    "subject_layout": "layout",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
