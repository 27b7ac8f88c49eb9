"""Downstream tasks: linear probes, CTC heads for ASR, and the semantic preference of layer representations."""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ModelEntry", "ProbeConfig", "model_entry", "run_downstream", "summarize"], "probes"),
    "CtcConfig": "asr",
    **dict.fromkeys(["DownstreamTask", "TASKS", "load_task"], "tasks"),
    **dict.fromkeys(["compare_variants", "plot_preference"], "semantic_preference"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
