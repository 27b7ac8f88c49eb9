"""The brain-tuning model and its losses: encoder, mean pooling over valid frames, linear head(s).

:class:`BrainTuningModel` predicts the targets of a TR from its 10-s input window (or from the cached states of the
frozen layers). With several participants its head holds every participant's outputs side by side, and the loss is
computed per participant over the items it has responses for, then pooled (:func:`participant_losses`,
:func:`pooled_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .encoder import SpeechEncoder
from ..validation import check_option

LOSSES = ("mse", "pearson", "huber_cosine")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, F, D) over the frames where ``mask`` (B, F) is True, shape (B, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class BrainTuningModel(nn.Module):
    """Speech encoder + mean pooling over valid frames + linear head."""

    def __init__(self, encoder: SpeechEncoder, n_targets: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.hidden_size, n_targets)
        self.frozen_layers: int | None = None
        self.frame_mask: torch.Tensor | None = None

    def take_frozen_states(self, frozen_layers: int, frame_mask: torch.Tensor) -> None:
        """Take, from now on, the states entering layer ``frozen_layers + 1`` instead of audio.

        Parameters
        ----------
        frame_mask : torch.Tensor
            Bool, shape (F,): the frames of the inputs computed from real audio.
        """
        self.frozen_layers, self.frame_mask = frozen_layers, frame_mask

    def pooled(self, inputs: torch.Tensor) -> torch.Tensor:
        """The head's input, shape (B, D): the encoder's output averaged over valid frames, from audio
        (B, n_samples) or frozen states (B, F, D)."""
        if self.frozen_layers is None:
            output = self.encoder(inputs)
            hidden, mask = output.last_hidden_state, output.frame_mask
        else:
            mask = self.frame_mask.to(inputs.device).expand(len(inputs), -1)
            hidden = self.encoder.run_layers(inputs, mask, self.frozen_layers)
        return masked_mean(hidden, mask)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predicted targets, shape (B, n_targets), from audio (B, n_samples) or frozen states (B, F, D)."""
        return self.head(self.pooled(inputs))


def compute_loss(name: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss over a batch; ``prediction`` and ``target`` have shape (B, n_targets)."""
    check_option("loss", name, LOSSES)
    prediction, target = prediction.float(), target.float()
    if name == "mse":
        return nn.functional.mse_loss(prediction, target)
    if name == "pearson":
        p = prediction - prediction.mean(dim=1, keepdim=True)
        t = target - target.mean(dim=1, keepdim=True)
        r = (p * t).sum(dim=1) / (p.norm(dim=1) * t.norm(dim=1)).clamp(min=1e-8)
        return (1.0 - r).mean()
    cosine = nn.functional.cosine_similarity(prediction, target, dim=1)
    return nn.functional.huber_loss(prediction, target) + (1.0 - cosine).mean()


def by_participant(prediction, target, heads: Mapping[str, slice]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each participant's predictions and targets over the items it has a response for.

    Parameters
    ----------
    prediction, target : Tensor or ndarray of shape (n_items, n_targets)
        ``target`` is NaN where a participant has no response (see
        :func:`bt_utils.models.tuning_data.build_tuning_sets`).
    heads : mapping of str to slice
        Participant -> its columns.

    Returns
    -------
    pairs : dict of str to (Tensor, Tensor)
        Participant -> (prediction, target), each of shape (n_rows, n_columns): the items whose targets of that
        participant are all finite. Participants without such an item are left out.
    """
    prediction, target = torch.as_tensor(prediction), torch.as_tensor(target)
    pairs = {}
    for subject, columns in heads.items():
        rows = torch.isfinite(target[:, columns]).all(dim=1)
        if rows.any():
            pairs[subject] = (prediction[rows, columns], target[rows, columns])
    return pairs


def participant_losses(name: str, prediction, target, heads: Mapping[str, slice]) -> dict[str, torch.Tensor]:
    """:func:`compute_loss` of each participant's head over the items it has a response for (:func:`by_participant`)."""
    return {subject: compute_loss(name, p, t) for subject, (p, t) in by_participant(prediction, target, heads).items()}


def pooled_loss(losses: Mapping[str, torch.Tensor | float]):
    """The loss of a run on several participants: the mean of their losses."""
    return sum(losses.values()) / len(losses)
