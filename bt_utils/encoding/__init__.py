"""Encoding models: voxelwise ridge, brain alignment, low-level feature impact and statistics."""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["AlignmentSettings", "align", "alignment_rois", "model_variants", "subject_model",
                     "variant_features"], "alignment"),
    **dict.fromkeys(["default_feature_sets", "impact_rois", "low_level_impact", "partition_variants",
                     "story_low_level", "variance_partition"], "impact"),
    **dict.fromkeys(["EigenRidgeCV", "correlation_score"], "ridge"),
    **dict.fromkeys(["across_subjects", "fdr_bh", "paired_test", "paired_tests"], "stats"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
