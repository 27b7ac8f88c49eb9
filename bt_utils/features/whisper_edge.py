"""The fast mode of Whisper padded to 30 s: short spans of frames that read a shared forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models.encoder import WHISPER_FRAMES, SpeechEncoder
from .windows import WindowPlan, pads_to_30s

__all__ = ["AFTER_EVERY", "GROUP_SIZE", "SPAN_AFTER_FRAMES", "SPAN_BEFORE_FRAMES", "SPAN_FRAMES", "TAG", "frame_states",
           "member_rows", "shared_groups", "span_first"]

SPAN_BEFORE_FRAMES = 75
"""Frames of a member's span before its kept frame (1.5 s)."""
SPAN_AFTER_FRAMES = 15
"""Frames of a member's span after its kept frame (0.3 s of padding)."""
SPAN_FRAMES = SPAN_BEFORE_FRAMES + 1 + SPAN_AFTER_FRAMES
"""Frames the transformer layers run on for a member window, the kept one included."""
AFTER_EVERY = 16
"""After the span, a member reads the lead's middle frame of every block of this many frames."""
GROUP_SIZE = 23
"""Windows per group: one whole forward pass per group."""
TAG = f"shared{GROUP_SIZE}-span{SPAN_BEFORE_FRAMES}+{SPAN_AFTER_FRAMES}-every{AFTER_EVERY}"
"""Names this method in feature cache paths; it changes with any of the constants above."""


def span_first(kept_frame: int) -> int:
    """First frame of the span of a window keeping ``kept_frame`` (0-1499): ``SPAN_BEFORE_FRAMES`` before it,
    moved back where the span would pass frame 1499."""
    return int(np.clip(kept_frame - SPAN_BEFORE_FRAMES, 0, WHISPER_FRAMES - SPAN_FRAMES))


def shared_groups(plan: WindowPlan, kept_frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Every window of ``plan``, in groups of at most :data:`GROUP_SIZE` consecutive windows, as (lead, members);
    ``kept_frames`` (n_windows,) is the frame each window keeps.
    """
    full = plan.ends - plan.starts == plan.window_samples
    start_windows = np.flatnonzero(~full)  # the story's first windows, before the full-length ones
    firsts = [span_first(int(frame)) for frame in kept_frames[start_windows]]
    groups, lead = [], 0
    for member in range(1, len(start_windows) + 1):
        if (member == len(start_windows) or member - lead == GROUP_SIZE
                or firsts[member] > kept_frames[start_windows[lead]] - 1):
            groups.append((int(start_windows[lead]), start_windows[lead + 1:member]))
            lead = member
    full_windows = np.flatnonzero(full)
    for start in range(0, len(full_windows), GROUP_SIZE):
        group = full_windows[start:start + GROUP_SIZE]
        middle = len(group) // 2
        groups.append((int(group[middle]), np.delete(group, middle)))
    return groups


def member_rows(kept_frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The spans of member windows and what each reads from the lead beyond it.

    Parameters
    ----------
    kept_frames : ndarray of shape (B,)

    Returns
    -------
    spans : torch.Tensor
        Long, shape (B, SPAN_FRAMES): the frames each member's layers run on.
    context_counts : torch.Tensor
        Float, shape (B, 1500): 1 at every frame before the span, the block's length at the middle frame of every
        block of :data:`AFTER_EVERY` frames after it, 0 elsewhere.
    positions : ndarray of shape (B,)
        Place of each kept frame in its span.
    """
    kept_frames = np.asarray(kept_frames)
    spans = np.empty((len(kept_frames), SPAN_FRAMES), np.int64)
    counts = np.zeros((len(kept_frames), WHISPER_FRAMES), np.float32)
    for row, kept_frame in enumerate(kept_frames):
        first = span_first(int(kept_frame))
        spans[row] = np.arange(first, first + SPAN_FRAMES)
        counts[row, :first] = 1.0
        block_starts = np.arange(first + SPAN_FRAMES, WHISPER_FRAMES, AFTER_EVERY)
        block_ends = np.minimum(block_starts + AFTER_EVERY, WHISPER_FRAMES)
        counts[row, (block_starts + block_ends) // 2] = block_ends - block_starts
    return torch.from_numpy(spans), torch.from_numpy(counts), kept_frames - spans[:, 0]


def frame_states(encoder: SpeechEncoder, audio: torch.Tensor, lengths: torch.Tensor | None, frames: torch.Tensor,
                 context: Sequence[torch.Tensor] | None = None,
                 context_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Hidden states of padded Whisper at chosen frames, with the transformer layers run on those frames.

    Parameters
    ----------
    audio : torch.Tensor
        Float, shape (B, T), 16 kHz, T at most 30 s.
    lengths : torch.Tensor or None
        Long, shape (B,): valid samples per row; default all T.
    frames : torch.Tensor
        Long, shape (B, N): frame indices (0-1499, 20 ms apart) per row.
    context : sequence of torch.Tensor, optional
        One per layer (``n_layers``): the input states of layer ``l`` at every frame, shape (B or 1, 1500, D).
    context_counts : torch.Tensor, optional
        Float, shape (B or 1, 1500), >= 0; required with ``context``.

    Returns
    -------
    tuple of torch.Tensor
        ``n_layers + 1`` states of shape (B, N, D), the last after the final layer norm (as
        ``EncoderOutput.hidden_states``).
    """
    if not pads_to_30s(encoder):
        raise ValueError(f"frame_states needs Whisper padded to 30 s; {encoder.name} is {encoder.family} "
                         f"with native_length={encoder.native_length}")
    if encoder.training:
        raise RuntimeError("frame_states is for inference: call encoder.eval() first")
    if lengths is None:
        lengths = torch.full((len(audio),), audio.shape[-1])
    frames = torch.as_tensor(frames, dtype=torch.long).to(encoder.device)
    if frames.ndim != 2 or len(frames) != len(audio) or frames.numel() == 0:
        raise ValueError(f"frames must have shape (B, N) with B={len(audio)} rows of audio; "
                         f"got shape {tuple(frames.shape)}")
    if int(frames.min()) < 0 or int(frames.max()) >= WHISPER_FRAMES:
        raise ValueError(f"frames must lie within Whisper's {WHISPER_FRAMES} frames (0-{WHISPER_FRAMES - 1}); "
                         f"got {int(frames.min())}-{int(frames.max())}")
    if context is None and context_counts is not None:
        raise ValueError("context_counts weigh the frames of a context: give context too")
    hidden = _frame_inputs(encoder, audio, lengths, frames)
    states = [hidden]
    if context is None:
        for layer in encoder.encoder.layers:
            hidden = layer(hidden, None)
            states.append(hidden)
    else:
        keys, bias = _context_keys(encoder, context, context_counts, hidden)
        for layer, layer_keys in zip(encoder.encoder.layers, keys):
            hidden = _layer_reading(layer, hidden, layer_keys, bias)
            states.append(hidden)
    return (*states[:-1], encoder.encoder.layer_norm(states[-1]))


def _context_keys(encoder: SpeechEncoder, context: Sequence[torch.Tensor], context_counts: torch.Tensor | None,
                  hidden: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The context frames some row reads, per layer (B or 1, M, D), and the attention bias (B, 1, 1, N + M) of
    rows ``hidden`` (B, N, D) reading them: 0 for the rows' own frames, the log of the counts for the context."""
    n_layers, (batch, n_frames, width) = len(encoder.encoder.layers), hidden.shape
    if len(context) != n_layers or any(states.ndim != 3 or states.shape[0] not in (1, batch)
                                       or states.shape[1:] != (WHISPER_FRAMES, width) for states in context):
        raise ValueError(f"context must hold {n_layers} tensors (one per layer) of shape (B or 1, "
                         f"{WHISPER_FRAMES}, {width}) for B={batch} rows; got shapes "
                         f"{[tuple(states.shape) for states in context]}")
    if context_counts is None:
        raise ValueError("context needs context_counts: the frames each context frame stands for (0: not read)")
    counts = torch.as_tensor(context_counts, dtype=torch.float32).to(hidden.device)
    if (counts.ndim != 2 or counts.shape[0] not in (1, batch) or counts.shape[1] != WHISPER_FRAMES
            or bool((counts < 0).any())):
        raise ValueError(f"context_counts must have shape (B or 1, {WHISPER_FRAMES}) for B={batch} rows and be "
                         f">= 0; got shape {tuple(counts.shape)}")
    read = torch.nonzero(counts.sum(0) > 0).flatten()
    context_bias = torch.log(counts[:, read]).to(hidden.dtype).expand(batch, -1)
    own_bias = torch.zeros(batch, n_frames, dtype=hidden.dtype, device=hidden.device)
    bias = torch.cat([own_bias, context_bias], -1)[:, None, None, :]
    return [states[:, read].to(hidden.dtype) for states in context], bias


def _frame_inputs(encoder: SpeechEncoder, audio: torch.Tensor, lengths: torch.Tensor,
                  frames: torch.Tensor) -> torch.Tensor:
    """Inputs of the first layer (B, N, D) at ``frames`` (B, N) of each row's padded audio (B, T)."""
    whisper = encoder.encoder
    mel = encoder.preprocess(audio, lengths)["input_features"].to(whisper.conv1.weight.dtype)
    # Frame j is conv2 over conv1's outputs at mel frames 2j - 1 .. 2j + 1, which read mel frames
    # 2j - 2 .. 2j + 2: one patch of 5 mel frames per frame, zero outside the 3000 as in the padding.
    mel = F.pad(mel, (2, 2))
    patch_index = 2 * frames[:, :, None] + torch.arange(5, device=frames.device)  # into the padded mel
    rows = torch.arange(len(frames), device=frames.device)[:, None, None]
    patches = mel.transpose(1, 2)[rows, patch_index]  # (B, N, 5, n_mels)
    patches = patches.flatten(0, 1).transpose(1, 2)  # (B * N, n_mels, 5)
    conv1_at = 2 * frames.flatten()[:, None] + torch.arange(-1, 2, device=frames.device)
    inside = ((conv1_at >= 0) & (conv1_at < 2 * WHISPER_FRAMES)).to(mel.dtype)[:, None, :]
    hidden = F.gelu(F.conv1d(patches, whisper.conv1.weight, whisper.conv1.bias)) * inside
    hidden = F.gelu(F.conv1d(hidden, whisper.conv2.weight, whisper.conv2.bias))  # (B * N, D, 1)
    return hidden.view(*frames.shape, -1) + whisper.embed_positions.weight[frames]


def _layer_reading(layer: nn.Module, hidden: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A ``WhisperEncoderLayer`` (eval mode) on ``hidden`` (B, N, D), whose attention keys and values are the
    layer-normed ``hidden`` followed by the layer-normed ``context`` (B or 1, M, D); ``bias`` (B, 1, 1, N + M) is
    added to the attention logits."""
    attention = layer.self_attn
    batch, n_frames, width = hidden.shape
    heads = attention.num_heads

    def split_heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(len(states), -1, heads, width // heads).transpose(1, 2)

    def with_context(projection: nn.Module) -> torch.Tensor:  # the context is projected once, not once per row
        return torch.cat([projection(normed), projection(normed_context).expand(batch, -1, -1)], 1)

    normed = layer.self_attn_layer_norm(hidden)
    normed_context = layer.self_attn_layer_norm(context)
    mixed = F.scaled_dot_product_attention(split_heads(attention.q_proj(normed)),
                                           split_heads(with_context(attention.k_proj)),
                                           split_heads(with_context(attention.v_proj)), attn_mask=bias,
                                           scale=attention.scaling)
    hidden = hidden + attention.out_proj(mixed.transpose(1, 2).reshape(batch, n_frames, width))
    hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
    if hidden.dtype == torch.float16:  # as the layer does
        limit = torch.finfo(hidden.dtype).max - 1000
        hidden = hidden.clamp(-limit, limit)
    return hidden
