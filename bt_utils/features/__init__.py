"""Features of the stories: speech-model layers per TR (windows, extraction, design) and low-level features."""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["DELAYS", "TEST_STIMULUS_START", "layer_design", "make_delays", "response_rows_test",
                     "stimulus_rows", "tr_features", "zscore_per_story"], "design"),
    **dict.fromkeys(["PROTOCOL_LAYERS", "check_layers", "dataset_tr_features", "default_layers", "encoder_plan",
                     "extract_layer_features", "feature_tag", "kept_frame_index", "story_features",
                     "window_stride_s"], "extraction"),
    **dict.fromkeys(["CHUNK_S", "CONTEXT_S", "MODES", "WindowPlan", "WindowSettings", "pads_to_30s", "plan_windows"],
                    "windows"),
    **dict.fromkeys(["DEFAULT_LOW_LEVEL_FEATURES", "low_level_features"], "low_level"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
