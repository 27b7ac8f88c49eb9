"""Autocast precision of encoder runs, shared by brain-tuning and feature extraction."""

from __future__ import annotations

import contextlib

import torch

from ..validation import check_option
from .registry import select_device

PRECISIONS = ("auto", "off", "bf16", "fp16")
"""``"off"``: float32; ``"bf16"``/``"fp16"``: autocast to that type; ``"auto"``: bf16 where the device runs it
natively (CUDA with bf16, CPUs with native bf16), fp16 on older CUDA devices, else off."""


def resolve_precision(device: torch.device | str, precision: str) -> str:
    """The precision a run on ``device`` (a torch device or a preference of :func:`select_device`, e.g. ``"auto"``)
    uses: ``"off"``, ``"bf16"`` or ``"fp16"``.

    Raises
    ------
    ValueError
        An unknown precision, or ``"fp16"`` on a device other than CUDA.
    """
    check_option("precision", precision, PRECISIONS)
    device = select_device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device, not {device.type}: use 'bf16' or 'off'")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "off"


def autocast_context(device: torch.device | str, precision: str):
    """Autocast context of a resolved precision (a no-op context for ``"off"``)."""
    check_option("precision", precision, PRECISIONS[1:])
    if precision == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
