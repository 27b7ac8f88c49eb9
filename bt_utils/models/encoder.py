"""Speech encoders behind one interface: Wav2vec2.0, HuBERT and the Whisper encoder.

A :class:`SpeechEncoder` takes raw 16 kHz audio of shape ``(B, T)`` with per-sample lengths, prepares the model
inputs itself on the model's device, and returns every layer's hidden states with a mask of the real frames."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    HubertModel,
    Wav2Vec2Model,
)
from transformers.audio_utils import mel_filter_bank
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.models.whisper.modeling_whisper import WhisperEncoder

FAMILIES = ("wav2vec2", "hubert", "whisper")
"""Model families (Hugging Face ``model_type``) a :class:`SpeechEncoder` can wrap."""

SAMPLE_RATE = 16_000
"""Sampling rate (Hz) of the audio every encoder takes."""

WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_MAX_SAMPLES = 30 * SAMPLE_RATE
"""Whisper's input window: 30 s, i.e. 3000 mel frames and 1500 encoder frames."""
WHISPER_FRAMES = WHISPER_MAX_SAMPLES // WHISPER_HOP // 2
"""Encoder frames of Whisper's 30 s input (10 ms mel hop, then the stride-2 ``conv2``)."""

ENCODER_RECORD = "bt_encoder.json"
"""File that :meth:`SpeechEncoder.save_pretrained` writes beside the Hugging Face files."""

_RECORD_VERSION = 1
_TRAIN_ONLY_SETTINGS = ("spec_augment", "layerdrop", "layerdrop_rate")
"""Settings that act in train mode only, so features in eval mode do not depend on them."""
_DEFAULT_NORMALIZE = {"wav2vec2": True, "hubert": True}  # Wav2Vec2FeatureExtractor's default
_HF_CLASSES = {"wav2vec2": Wav2Vec2Model, "hubert": HubertModel}


def _train_only_or_provenance(config_key: str) -> bool:
    """Whether a config field leaves eval-mode outputs unchanged (dropout, masking, names, versions)."""
    return (config_key.startswith(("_", "mask_")) or "dropout" in config_key or config_key in {
        "layerdrop", "apply_spec_augment", "transformers_version", "architectures", "name_or_path", "dtype"})


@dataclass
class EncoderOutput:
    """What :meth:`SpeechEncoder.forward` returns.

    Attributes
    ----------
    hidden_states : tuple of torch.Tensor
        ``n_layers + 1`` tensors of shape (B, F, D): the input of the first transformer layer, then each layer's
        output.
    frame_mask : torch.Tensor
        Bool, shape (B, F): True for frames computed from real (unpadded) audio.
    """

    hidden_states: tuple[torch.Tensor, ...]
    frame_mask: torch.Tensor
    last_hidden_state: torch.Tensor | None = None

    def __post_init__(self):
        if self.last_hidden_state is None:
            self.last_hidden_state = self.hidden_states[-1]


class SpeechEncoder(nn.Module):
    """A Wav2vec2, HuBERT or Whisper encoder that takes raw audio.

    Parameters
    ----------
    encoder : transformers.Wav2Vec2Model, HubertModel or WhisperEncoder
        The Hugging Face module; kept as ``self.encoder``.
    family : {"wav2vec2", "hubert", "whisper"}
    name : str
        Registry name, Hub id or folder it came from.
    source : str
        Where the weights came from (see :class:`ModelSpec`).
    settings : dict, optional
        Overrides of :attr:`settings`' defaults.

    Attributes
    ----------
    settings : dict
        ``spec_augment``, ``layerdrop`` (switches), ``layerdrop_rate`` (the checkpoint's rate, used when LayerDrop
        is on); whisper: ``native_length``; wav2vec2/hubert: ``do_normalize`` and ``attention_mask``
        (preprocessing).
    checkpoint_spec_augment : bool
        Whether the checkpoint's config switches SpecAugment on in train mode (wav2vec2/HuBERT: yes; Whisper: no).
    frozen_layers : int
        How many of the lowest transformer layers (with everything below them) a brain-tuning run left as it loaded
        them (0: none known); saved with the encoder. Feature extraction continues from cached states of those
        layers (:func:`bt_utils.features.extraction.story_features`).

    Notes
    -----
    Inputs are prepared as the Hugging Face feature extractors do (Whisper: log-mel of the audio padded to 30 s,
    or to the batch's longest sample with ``native_length``); docs/method.md ("Feature windows") says which hidden
    states are returned.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, family: str, name: str, source: str, settings: dict | None = None):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is not valid; choose one of: {', '.join(FAMILIES)}")
        self.encoder = encoder
        self.family = family
        self.name = name
        self.source = source
        self.settings = _default_settings(family, encoder.config)
        unknown = set(settings or {}) - set(self.settings)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)} for {family}; known: {sorted(self.settings)}")
        self.settings.update(settings or {})
        self.checkpoint_spec_augment = bool(getattr(encoder.config, "apply_spec_augment", False))
        self.frozen_layers = 0
        if family == "whisper":
            filters = mel_filter_bank(num_frequency_bins=1 + WHISPER_N_FFT // 2,
                                      num_mel_filters=encoder.config.num_mel_bins, min_frequency=0.0,
                                      max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney",
                                      mel_scale="slaney")
            self.register_buffer("mel_filters", torch.tensor(filters.T, dtype=torch.float32), persistent=False)
            self.register_buffer("window", torch.hann_window(WHISPER_N_FFT), persistent=False)
        self.set_regularisation(self.settings["spec_augment"], self.settings["layerdrop"])

    # ----- description -------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        """Number of transformer layers."""
        config = self.encoder.config
        return config.encoder_layers if self.family == "whisper" else config.num_hidden_layers

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers, in order."""
        return self.encoder.layers if self.family == "whisper" else self.encoder.encoder.layers

    @property
    def hidden_size(self) -> int:
        """Width D of the hidden states."""
        config = self.encoder.config
        return config.d_model if self.family == "whisper" else config.hidden_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.encoder.parameters()).device

    @property
    def native_length(self) -> bool:
        """Whether the encoder runs on the batch's real length (always True for wav2vec2/hubert)."""
        return self.family != "whisper" or self.settings["native_length"]

    @native_length.setter
    def native_length(self, value: bool) -> None:
        if self.family != "whisper":
            raise ValueError(f"native_length applies to whisper only; {self.family} always runs at the input length")
        self.settings["native_length"] = bool(value)

    # ----- training policy ---------------------------------------------------------------------

    def freeze_feature_encoder(self) -> list[str]:
        """Freeze the CNN feature encoder and make everything else trainable; returns the frozen parameters' names."""
        frozen_modules = (
            [self.encoder.conv1, self.encoder.conv2, self.encoder.embed_positions]
            if self.family == "whisper" else [self.encoder.feature_extractor]
        )
        frozen_ids = {id(p) for module in frozen_modules for p in module.parameters()}
        for parameter in self.parameters():
            parameter.requires_grad = id(parameter) not in frozen_ids
        if self.family != "whisper":
            self.encoder.feature_extractor._requires_grad = False  # HF skips its gradient hook when frozen
        return [name for name, p in self.named_parameters() if id(p) in frozen_ids]

    def train_top_layers(self, n_layers: int) -> list[str]:
        """Make only the top ``n_layers`` transformer layers (and the final layer norm, if any) trainable; returns the
        trainable parameters' names.
        """
        if not 1 <= n_layers <= self.n_layers:
            raise ValueError(f"n_layers={n_layers!r} must lie in 1..{self.n_layers}: {self.name} has {self.n_layers} layers")
        for parameter in self.parameters():
            parameter.requires_grad = False
        for module in (*self.layers[self.n_layers - n_layers:], self._final_layer_norm()):
            for parameter in module.parameters():
                parameter.requires_grad = True
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def set_regularisation(self, spec_augment: bool, layerdrop: bool, layerdrop_rate: float | None = None) -> None:
        """Switch SpecAugment and LayerDrop (train mode only) on or off.

        Parameters
        ----------
        layerdrop_rate : float, optional
            Probability of skipping each layer when LayerDrop is on; default: the checkpoint's rate
            (``settings["layerdrop_rate"]``).
        """
        if layerdrop_rate is not None:
            if not 0.0 <= layerdrop_rate <= 1.0:
                raise ValueError(f"layerdrop_rate={layerdrop_rate!r} must be in [0, 1]")
            self.settings["layerdrop_rate"] = float(layerdrop_rate)
        self.settings["spec_augment"] = bool(spec_augment)
        self.settings["layerdrop"] = bool(layerdrop)
        rate = self.settings["layerdrop_rate"] if layerdrop else 0.0
        config = self.encoder.config
        config.apply_spec_augment = bool(spec_augment)
        if self.family == "whisper":
            config.encoder_layerdrop = rate
        else:
            config.layerdrop = rate

    # ----- inputs ------------------------------------------------------------------------------

    def _check_audio(self, audio: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_tensor(audio) or audio.ndim != 2 or not audio.is_floating_point():
            shape = tuple(audio.shape) if torch.is_tensor(audio) else type(audio).__name__
            raise ValueError(f"audio must be a float tensor of shape (batch, samples); got {shape}")
        batch, n_samples = audio.shape
        if lengths is None:
            lengths = torch.full((batch,), n_samples)
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=self.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},); got {tuple(lengths.shape)}")
        if bool(((lengths < 1) | (lengths > n_samples)).any()):
            raise ValueError(f"lengths must be between 1 and {n_samples} (the padded length); got {lengths.tolist()}")
        if self.family == "whisper" and int(lengths.max()) > WHISPER_MAX_SAMPLES:
            raise ValueError(f"Whisper takes at most 30 s ({WHISPER_MAX_SAMPLES} samples); got lengths "
                             f"{lengths.tolist()}: cut the audio into windows first")
        return audio.to(self.device, torch.float32), lengths

    def preprocess(self, audio: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs from padded raw audio, computed in torch on the model's device.

        Parameters
        ----------
        audio : torch.Tensor
            Float, shape (B, T), 16 kHz; samples past each length are ignored.
        lengths : torch.Tensor
            Long, shape (B,): valid samples per row.

        Returns
        -------
        dict
            whisper: ``input_features`` (B, n_mels, 3000), or (B, n_mels, ceil(max(lengths) / 160)) with
            ``native_length``; wav2vec2/hubert: ``input_values`` (B, T) and, for layer-norm models,
            ``attention_mask`` (B, T).
        """
        audio, lengths = self._check_audio(audio, lengths)
        valid = torch.arange(audio.shape[1], device=audio.device) < lengths[:, None]
        audio = audio * valid
        if self.family == "whisper":
            return {"input_features": self._log_mel(audio, lengths)}
        if self.settings["do_normalize"]:
            audio = _normalise(audio, valid, lengths)
        inputs = {"input_values": audio}
        if self.settings["attention_mask"]:
            inputs["attention_mask"] = valid.long()
        return inputs

    def _log_mel(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Whisper log-mel features, shape (B, n_mels, n_frames), of zero-padded audio (B, T)."""
        n_frames = WHISPER_MAX_SAMPLES // WHISPER_HOP
        if self.native_length:
            n_frames = _ceil_div(int(lengths.max()), WHISPER_HOP)
        n_samples = max(n_frames * WHISPER_HOP, WHISPER_N_FFT)  # the STFT's reflect padding needs n_fft / 2 + 1
        audio = F.pad(audio, (0, max(0, n_samples - audio.shape[1])))[:, :n_samples]
        spectrum = torch.stft(audio, WHISPER_N_FFT, WHISPER_HOP, window=self.window.float(), return_complex=True)
        power = (spectrum[..., :n_frames].abs() ** 2).contiguous()
        log_mel = torch.clamp(self.mel_filters.float() @ power, min=1e-10).log10()
        peak = log_mel.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames computed from each sample's real audio, from its valid samples ``lengths`` (long, shape (B,)).
        """
        frames = torch.as_tensor(lengths, dtype=torch.long)
        if self.family == "whisper":
            frames = _ceil_div(frames, WHISPER_HOP).clamp(max=WHISPER_MAX_SAMPLES // WHISPER_HOP)
        for conv in self._convolutions():
            frames = (frames + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        return frames.clamp(min=0)

    def _convolutions(self) -> list[nn.Conv1d]:
        if self.family == "whisper":
            return [self.encoder.conv1, self.encoder.conv2]
        return [layer.conv for layer in self.encoder.feature_extractor.conv_layers]

    # ----- forward -----------------------------------------------------------------------------

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Hidden states of all layers for a batch of padded audio.

        Parameters
        ----------
        audio : torch.Tensor
            Float, shape (B, T), 16 kHz.
        lengths : torch.Tensor, optional
            Long, shape (B,): valid samples per row; default: all T.

        Returns
        -------
        EncoderOutput
            ``n_layers + 1`` hidden states of shape (B, F, D), the frame mask
            (B, F) and the last hidden state (B, F, D), after the final layer norm.
        """
        audio, lengths = self._check_audio(audio, lengths)
        inputs = self.preprocess(audio, lengths)
        frames = self.frame_lengths(lengths)
        masking = self.training and self.settings["spec_augment"]
        with _numpy_draws_from_torch() if masking else contextlib.nullcontext():
            if self.family == "whisper":
                hidden_states = self._whisper_states(inputs["input_features"], lengths, frames)
            else:
                hidden_states = self._wav2vec2_states(inputs)
        last_hidden_state = self._final_layer_norm()(hidden_states[-1])
        if self.family == "whisper":  # Whisper's last hidden state is after its final layer norm, as in HF
            hidden_states = (*hidden_states[:-1], last_hidden_state)
        n_frames = hidden_states[0].shape[1]
        frame_mask = torch.arange(n_frames, device=frames.device) < frames[:, None]
        return EncoderOutput(hidden_states=hidden_states, frame_mask=frame_mask, last_hidden_state=last_hidden_state)

    def _final_layer_norm(self) -> nn.Module:
        """The layer norm the encoder applies after its last layer (``nn.Identity`` when it has none)."""
        if self.family == "whisper":
            return self.encoder.layer_norm
        if self.encoder.config.do_stable_layer_norm:
            return self.encoder.encoder.layer_norm
        return nn.Identity()

    def _wav2vec2_states(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run the Hugging Face model and collect the input of layer 1 and each layer's output."""
        body = self.encoder.encoder
        captured: dict[int, torch.Tensor] = {}

        def keep(index: int):
            def hook(module, args, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = [body.dropout.register_forward_hook(keep(0))]
        handles += [layer.register_forward_hook(keep(i + 1)) for i, layer in enumerate(body.layers)]
        try:
            self.encoder(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        states = [captured[0]]
        for index in range(1, self.n_layers + 1):
            states.append(captured.get(index, states[-1]))
        return tuple(states)

    def _whisper_states(self, features: torch.Tensor, lengths: torch.Tensor,
                        frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The Whisper encoder's layers, on 3000 mel frames or on the native length; the last
        state is before the final layer norm (see :meth:`_final_layer_norm`)."""
        encoder = self.encoder
        features = features.to(encoder.conv1.weight.dtype)
        if self.training and self.settings["spec_augment"]:
            features = self._mask_features(features, lengths)
        hidden = F.gelu(encoder.conv1(features))
        hidden = F.gelu(encoder.conv2(hidden)).transpose(1, 2)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.config.dropout, training=self.training)
        attention_mask = None
        if self.native_length:
            valid = torch.arange(hidden.shape[1], device=hidden.device) < frames[:, None]
            attention_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden,
                                                       attention_mask=valid)
        return self._whisper_layers(hidden, attention_mask)

    def run_layers(self, hidden: torch.Tensor, frame_mask: torch.Tensor, start: int) -> torch.Tensor:
        """The model's output computed from the input of layer ``start + 1``.

        Parameters
        ----------
        hidden : torch.Tensor
            Float, shape (B, F, D): ``hidden_states[start]`` of :meth:`forward`.
        frame_mask : torch.Tensor
            Bool, shape (B, F): the frames computed from real audio.
        start : int
            Layers already applied, 0 to ``n_layers - 1``.

        Returns
        -------
        torch.Tensor
            Shape (B, F, D): ``last_hidden_state`` of :meth:`forward`.
        """
        return self._final_layer_norm()(self._layer_states(hidden, frame_mask, start)[-1])

    def hidden_states_from(self, hidden: torch.Tensor, frame_mask: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
        """``hidden_states[start:]`` of :meth:`forward` computed from ``hidden_states[start]`` (arguments as
        :meth:`run_layers`); ``n_layers - start + 1`` tensors of shape (B, F, D)."""
        states = self._layer_states(hidden, frame_mask, start)
        if self.family == "whisper":  # as in forward: Whisper's last state is after its final layer norm
            states = (*states[:-1], self._final_layer_norm()(states[-1]))
        return states

    def _layer_states(self, hidden: torch.Tensor, frame_mask: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
        """``hidden`` (the input of layer ``start + 1``) and the output of each layer above it, before any final
        layer norm."""
        if not 0 <= start < self.n_layers:
            raise ValueError(f"start={start!r} must lie in 0..{self.n_layers - 1}: {self.name} has {self.n_layers} layers")
        uses_mask = self.native_length if self.family == "whisper" else self.settings["attention_mask"]
        attention_mask = None
        if uses_mask:
            attention_mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                                       attention_mask=frame_mask.to(hidden.device))
        states = [hidden]
        for layer in self.layers[start:]:
            if not self._skip_layer():
                hidden = layer(hidden, attention_mask) if self.family == "whisper" else layer(
                    hidden, attention_mask=attention_mask)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            states.append(hidden)
        return tuple(states)

    def _whisper_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The input ``hidden`` (B, F, D) and each Whisper layer's output (B, F, D)."""
        states = [hidden]
        for layer in self.encoder.layers:
            if not self._skip_layer():
                hidden = layer(hidden, attention_mask)
            states.append(hidden)
        return tuple(states)

    def _skip_layer(self) -> bool:
        rate = self.settings["layerdrop_rate"]
        return self.training and self.settings["layerdrop"] and bool(torch.rand([]) < rate)

    def _mask_features(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """SpecAugment on log-mel features (B, n_mels, n_frames): zero time spans (within the real
        audio of each sample, ``lengths`` (B,) samples) and mel bands."""
        config = self.encoder.config
        batch, n_mels, n_frames = features.shape
        valid = torch.arange(n_frames, device=features.device) < _ceil_div(lengths, WHISPER_HOP)[:, None]
        if config.mask_time_prob > 0:
            spans = _compute_mask_indices((batch, n_frames), mask_prob=config.mask_time_prob,
                                          mask_length=config.mask_time_length, attention_mask=valid.long(),
                                          min_masks=config.mask_time_min_masks)
            features = features.masked_fill(torch.as_tensor(spans, device=features.device)[:, None, :], 0.0)
        if config.mask_feature_prob > 0:
            bands = _compute_mask_indices((batch, n_mels), mask_prob=config.mask_feature_prob,
                                          mask_length=config.mask_feature_length,
                                          min_masks=config.mask_feature_min_masks)
            features = features.masked_fill(torch.as_tensor(bands, device=features.device)[:, :, None], 0.0)
        return features

    # ----- persistence -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash (16 hexadecimal characters) of the weights, architecture, family and input settings: the key of
        feature caches.
        """
        config = {key: value for key, value in self.encoder.config.to_dict().items()
                  if not _train_only_or_provenance(key)}
        digest = hashlib.sha256(json.dumps([self.family, self.settings, config], sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def prefix_fingerprint(self, depth: int) -> str:
        """A hash (16 hexadecimal characters) of everything that ``hidden_states[:depth + 1]`` depend on in eval mode:
        the weights other than those of layers ``depth + 1`` and above and of the final layer norm, the architecture
        and the input settings. Equal for a model and a brain-tuned copy whose top layers alone were trained."""
        if not 0 <= depth < self.n_layers:
            raise ValueError(f"depth={depth!r} must lie in 0..{self.n_layers - 1}: {self.name} has {self.n_layers} layers")
        above = {id(tensor) for module in (*self.layers[depth:], self._final_layer_norm())
                 for tensor in (*module.parameters(), *module.buffers())}
        config = {key: value for key, value in self.encoder.config.to_dict().items()
                  if not _train_only_or_provenance(key)}
        settings = {key: value for key, value in self.settings.items() if key not in _TRAIN_ONLY_SETTINGS}
        digest = hashlib.sha256(json.dumps([self.family, settings, config, depth], sort_keys=True,
                                           default=str).encode())
        named = dict(self.encoder.named_parameters()) | dict(self.encoder.named_buffers())
        for name, tensor in sorted(named.items()):
            if id(tensor) not in above:
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Save the encoder weights and config (Hugging Face form) and ``bt_encoder.json`` to ``folder`` (created if
        missing).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder)
        record = {"format_version": _RECORD_VERSION, "family": self.family, "name": self.name,
                  "source": self.source, "settings": self.settings, "frozen_layers": self.frozen_layers}
        (folder / ENCODER_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> SpeechEncoder:
        """Load an encoder saved by :meth:`save_pretrained`, on the CPU in eval mode."""
        folder = Path(folder)
        path = folder / ENCODER_RECORD
        if not path.is_file():
            raise ValueError(f"{folder} was not saved by SpeechEncoder.save_pretrained: {ENCODER_RECORD} is missing")
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format_version") != _RECORD_VERSION or record.get("family") not in FAMILIES:
            raise ValueError(f"{path} has format_version {record.get('format_version')!r} and family "
                             f"{record.get('family')!r}; expected version {_RECORD_VERSION} and one of {FAMILIES}")
        hf_class = WhisperEncoder if record["family"] == "whisper" else _HF_CLASSES[record["family"]]
        encoder = _load_weights(hf_class, folder)
        loaded = cls(encoder, record["family"], record["name"], record["source"], record["settings"])
        loaded.frozen_layers = int(record.get("frozen_layers", 0))
        return loaded.eval()


# ----- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _numpy_draws_from_torch():
    """Seed NumPy's global RNG from torch's for the block, then restore it."""
    saved = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**32 - 1, ())))
    try:
        yield
    finally:
        np.random.set_state(saved)



def _ceil_div(numerator, denominator: int):
    return -(-numerator // denominator)


def _normalise(audio: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each row's valid samples; padding stays 0. Shapes (B, T)."""
    count = lengths[:, None].to(audio.dtype)
    mean = audio.sum(dim=1, keepdim=True) / count
    centred = (audio - mean) * valid
    variance = (centred**2).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(variance + 1e-7)


def _default_settings(family: str, config) -> dict:
    layerdrop_rate = config.encoder_layerdrop if family == "whisper" else config.layerdrop
    settings = {"spec_augment": False, "layerdrop": False, "layerdrop_rate": float(layerdrop_rate)}
    if family == "whisper":
        settings["native_length"] = False
    else:
        settings["do_normalize"] = _DEFAULT_NORMALIZE[family]
        settings["attention_mask"] = config.feat_extract_norm == "layer"
    return settings


def _load_weights(hf_class, location: str | os.PathLike) -> nn.Module:
    """``hf_class.from_pretrained`` in float32, refusing checkpoints whose weights do not fit."""
    model, info = hf_class.from_pretrained(location, dtype=torch.float32, output_loading_info=True)
    missing = sorted(set(info["missing_keys"]) - {"masked_spec_embed"})  # SpecAugment's mask vector: may be absent
    if missing:
        raise ValueError(f"{location} is not a compatible {hf_class.__name__} checkpoint: {len(missing)} weights "
                         f"are missing, e.g. {', '.join(missing[:5])}")
    return model
