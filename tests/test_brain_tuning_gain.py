"""The suite's central claim on a smaller run than `make demo`: brain-tuning whisper-tiny.en with the demo
protocol on one demo participant raises the held-out alignment of the planted semantic voxels in its top layer.

This is the slowest test of the suite (minutes on one core): the real Whisper is tuned as the demo tunes it and
its features are extracted for the whole demo, because nothing smaller shows the effect."""

import numpy as np
import pytest

from bt_utils.encoding.alignment import AlignmentSettings, align
from bt_utils.features import WindowSettings
from bt_utils.models.precision import resolve_precision
from bt_utils.models.tuning import TuningConfig, tune
from bt_utils.protocols import PROTOCOLS

DEMO = PROTOCOLS["demo"]
TUNING_SETTINGS = {key: value for key, value in DEMO.items() if key in TuningConfig.__dataclass_fields__}


@pytest.fixture(scope="module")
def alignment(demo, tmp_path_factory):
    """Mean r / cc_max per planted class of the pretrained and the brain-tuned model, top layer, DEMO01."""
    config = TuningConfig(model="whisper-tiny.en", device="cpu", **TUNING_SETTINGS)
    result = tune(demo, "DEMO01", config, tmp_path_factory.mktemp("gain") / "tuning", progress=False)
    window = WindowSettings(DEMO["feature_mode"], DEMO["feature_context_s"],
                            precision=resolve_precision("cpu", DEMO["feature_precision"]))
    settings = AlignmentSettings(layers=(4,), window=window, native_length=True)
    variants = {"pretrained": "whisper-tiny.en", "brain-tuned": str(result.checkpoint_dir)}
    voxels = align(demo, ["DEMO01"], variants, "whisper-tiny.en", settings, device="cpu", progress=False)
    voxels["planted"] = demo.truth("DEMO01")["voxel_class"][voxels.voxel.to_numpy()]
    return voxels.groupby(["variant", "planted"]).r_norm.mean().unstack("planted")


def test_brain_tuning_raises_semantic_alignment_by_a_quarter(alignment):
    print(alignment.round(3).to_string())
    semantic = alignment["semantic"]
    assert semantic["brain-tuned"] >= 1.25 * semantic["pretrained"] > 0


def test_brain_tuning_keeps_auditory_alignment_and_finds_nothing_in_noise(alignment):
    auditory = alignment["auditory"]
    assert auditory["brain-tuned"] >= 0.95 * auditory["pretrained"]
    np.testing.assert_array_less(alignment["noise"].abs(), 0.05)
