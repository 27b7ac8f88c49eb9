"""Speech models: the registry, the encoder wrapper and brain-tuning."""

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["MODELS", "available_models", "load_encoder", "select_device"], "registry"),
    "SpeechEncoder": "encoder",
    "resolve_precision": "precision",
    **dict.fromkeys(["TuningConfig", "build_tuning_sets", "evaluate", "load_brain_tuned", "target_names", "tune"],
                    "tuning"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
