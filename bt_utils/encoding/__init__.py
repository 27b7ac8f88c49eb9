"""Encoding models: voxelwise ridge, brain alignment, low-level feature impact and statistics.

The function ``low_level_impact`` has its module's name, so it is imported from its module:
``from bt_utils.encoding.low_level_impact import low_level_impact`` (the package attribute of that
name is the module).
"""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["AlignmentSettings", "align", "alignment_rois", "model_variants", "subject_model",
                     "variant_features"], "alignment"),
    **dict.fromkeys(["default_feature_sets", "impact_rois", "partition_variants", "story_low_level",
                     "variance_partition"], "low_level_impact"),
    **dict.fromkeys(["EigenRidgeCV", "correlation_score"], "ridge"),
    **dict.fromkeys(["across_subjects", "fdr_bh", "paired_test"], "stats"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
