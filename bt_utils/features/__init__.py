"""Features of the stories: speech-model layers per TR (windows, extraction, design) and low-level features."""

from .design import (
    DELAYS,
    TEST_STIMULUS_START,
    layer_design,
    make_delays,
    response_rows_test,
    stimulus_rows,
    tr_features,
    zscore_per_story,
)
from .extraction import (
    PROTOCOL_LAYERS,
    check_layers,
    dataset_tr_features,
    default_layers,
    encoder_plan,
    extract_layer_features,
    feature_tag,
    kept_frame_index,
    story_features,
    window_stride_s,
)
from .windows import (
    CHUNK_S,
    CONTEXT_S,
    MODES,
    WindowPlan,
    WindowSettings,
    pads_to_30s,
    plan_windows,
)

__all__ = ["CHUNK_S", "CONTEXT_S", "DELAYS", "MODES", "PROTOCOL_LAYERS", "TEST_STIMULUS_START", "WindowPlan",
           "WindowSettings", "check_layers", "dataset_tr_features", "default_layers", "encoder_plan",
           "extract_layer_features", "feature_tag", "kept_frame_index", "layer_design", "make_delays", "pads_to_30s",
           "plan_windows", "response_rows_test", "stimulus_rows", "story_features", "tr_features", "window_stride_s",
           "zscore_per_story"]
