"""Autocast precision of encoder runs: resolution per device and the autocast context."""

import pytest
import torch

from bt_utils.models.precision import autocast_context, resolve_precision

NATIVE_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_explicit_precisions_are_kept_and_auto_follows_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "off") == "off" and resolve_precision("cpu", "bf16") == "bf16"
    assert resolve_precision(cpu, "auto") == ("bf16" if NATIVE_BF16 else "off")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device preference 'auto' picks the GPU here")
def test_auto_device_is_resolved_first():
    assert resolve_precision("auto", "auto") == resolve_precision(torch.device("cpu"), "auto")


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device, not cpu"):
        resolve_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="precision='half' is not valid"):
        resolve_precision("cpu", "half")
    with pytest.raises(ValueError, match="precision='auto' is not valid"):
        autocast_context("cpu", "auto")  # resolve first


def test_autocast_context_sets_the_matmul_type():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_context("cpu", "off"):
        assert (a @ b).dtype == torch.float32
    with autocast_context("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
