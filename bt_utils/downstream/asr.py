"""ASR that measures the encoder: CTC heads trained on its frozen frames, the same way for every family.

One linear CTC head per layer, chosen on validation WER, transcribes the test split, as SUPERB evaluates a frozen
upstream; docs/method.md ("ASR") gives the protocol."""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..models.encoder import SpeechEncoder
from ..models.registry import MODELS, RANDOM_INIT
from .features import encode_frames, one_torch_thread
from .metrics import word_edits
from .tasks import SAMPLE_RATE, DownstreamTask, Example, audio_length, load_audio

ASR_METRIC = "one_minus_wer"
"""Metric of the CTC heads: 1 - corpus WER on the test split."""
WHISPER_DECODER_KIND = "asr_whisper_decoder"
"""``kind`` of the prediction rows transcribed by Whisper's pretrained decoder (never mixed with the CTC rows)."""
WHISPER_DECODER_METRIC = "one_minus_wer_whisper_decoder"
"""Metric of those rows: 1 - corpus WER of Whisper's pretrained decoder around the variant's encoder."""
ASR_METRICS = {"asr": ASR_METRIC, WHISPER_DECODER_KIND: WHISPER_DECODER_METRIC}
"""Metric of each kind of ASR prediction row."""

_FRAME_HOP = 320  # samples per encoder frame (50 Hz) in every family


# ======================================================================================
# Characters
# ======================================================================================


def ctc_text(text: str) -> str:
    """A transcript as the CTC heads spell it."""
    text = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    return " ".join(re.findall(r"[a-z]+(?:'[a-z]+)*", "".join(c for c in text if not unicodedata.combining(c))))


@dataclass(frozen=True)
class CharacterVocabulary:
    """The output classes of a CTC head: the blank (index 0), then ``characters`` (index 1, 2, ...)."""

    characters: tuple[str, ...]

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> CharacterVocabulary:
        """The characters of ``texts`` as :func:`ctc_text` spells them, and the space."""
        return cls(tuple(sorted(set("".join(ctc_text(t) for t in texts)) | {" "})))

    def __len__(self) -> int:
        return len(self.characters) + 1

    def encode(self, text: str) -> list[int]:
        """Class indices (1, 2, ...) of ``ctc_text(text)``; characters outside the vocabulary are left out."""
        index = {c: i + 1 for i, c in enumerate(self.characters)}
        return [index[c] for c in ctc_text(text) if c in index]

    def decode(self, frame_classes: Sequence[int]) -> str:
        """Greedy CTC decoding of the best class of each frame: repeats merged, blanks dropped, spaces tidied."""
        kept = [c for i, c in enumerate(frame_classes) if c and (i == 0 or c != frame_classes[i - 1])]
        return " ".join("".join(self.characters[c - 1] for c in kept).split())


def _word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER of hypotheses in the heads' spelling against references spelled by :func:`ctc_text`."""
    words = [ctc_text(r).split() for r in references]
    edits = sum(word_edits(r, h.split()) for r, h in zip(words, hypotheses))
    return edits / max(1, sum(len(r) for r in words))


# ======================================================================================
# Frames
# ======================================================================================


@dataclass(frozen=True)
class CtcConfig:
    """Training of the CTC heads.

    Attributes
    ----------
    max_epochs : int
        Epochs trained; the epoch used is chosen on the validation split.
    batch_size : int
        Utterances per step.
    learning_rate : float
        Adam's learning rate.
    memory_gb : float
        A split's frame features stay in memory (float16, on the CPU) when they take at most this; otherwise the
        encoder computes them again in every epoch.
    """

    max_epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 3e-3
    memory_gb: float = 8.0

    def __post_init__(self):
        for name in ("max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be at least 1")
        for name in ("learning_rate", "memory_gb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")


class FrameSet:
    """Frame features of a list of utterances, each of shape (n_layers + 1, n_frames_i, D): kept in memory, or
    computed again by an encoder on each request (build with :meth:`encode`).
    """

    def __init__(self, kept: list[torch.Tensor] | None = None, encoder: SpeechEncoder | None = None,
                 examples: Sequence[Example] = (), batch_size: int = 8):
        if (kept is None) == (encoder is None):
            raise ValueError("give the frames (kept), or an encoder and the examples whose frames it computes")
        self.kept, self.encoder, self.examples, self.batch_size = kept, encoder, list(examples), batch_size

    @classmethod
    def encode(cls, encoder: SpeechEncoder, examples: Sequence[Example], batch_size: int = 8,
               memory_gb: float = 8.0) -> FrameSet:
        """The frames of ``examples``: computed now and kept if they take at most ``memory_gb`` (float16),
        else computed on each request."""
        frames = sum(audio_length(e) // _FRAME_HOP + 1 for e in examples)
        if frames * (encoder.n_layers + 1) * encoder.hidden_size * 2 <= memory_gb * 2**30:
            return cls(kept=encode_frames(encoder, examples, batch_size))
        return cls(encoder=encoder, examples=examples, batch_size=batch_size)

    def __len__(self) -> int:
        return len(self.kept) if self.kept is not None else len(self.examples)

    def get(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Frames of the utterances at ``indices``: tensors of shape (n_layers + 1, n_frames_i, D)."""
        if self.kept is not None:
            return [self.kept[i] for i in indices]
        return encode_frames(self.encoder, [self.examples[i] for i in indices], self.batch_size)


def _padded_frames(frames: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (n_layers + 1, n_frames_i, D) of B utterances -> (n_layers + 1, B, max n_frames, D) float32
    (zeros past each utterance's end) and the frame counts (B,)."""
    lengths = torch.tensor([f.shape[1] for f in frames])
    padded = torch.zeros(frames[0].shape[0], len(frames), int(lengths.max()), frames[0].shape[2], device=device)
    for row, f in enumerate(frames):
        padded[:, row, : f.shape[1]] = f.to(device, torch.float32)
    return padded, lengths


# ======================================================================================
# CTC heads
# ======================================================================================


@dataclass(frozen=True, eq=False)
class CtcFit:
    """The CTC head chosen on the validation split.

    Attributes
    ----------
    weight : torch.Tensor
        Shape (D, n_classes), n_classes = ``len(vocabulary)``; it reads standardised frames.
    bias : torch.Tensor
        Shape (n_classes,).
    """

    layer: int
    epoch: int
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    vocabulary: CharacterVocabulary
    layers: pd.DataFrame
    history: pd.DataFrame

    @torch.no_grad()
    def transcribe(self, frames: list[torch.Tensor]) -> list[str]:
        """Greedy transcripts of utterances from their frames (n_layers + 1, n_frames_i, D)."""
        x, lengths = _padded_frames([f[self.layer:self.layer + 1] for f in frames], self.weight.device)
        log_probs = _layer_log_probs(x, self.weight[None], self.bias[None, None], self.mean[None, None],
                                     self.std[None, None])
        return [self.vocabulary.decode(row[:n].tolist()) for row, n in zip(log_probs[0].argmax(dim=-1).cpu(), lengths)]


def _layer_log_probs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (L, B, T, C) of every layer's head from frames ``x`` (L, B, T, D); weight (L, D, C),
    bias (L, 1, C); the heads read frames standardised with ``mean`` and ``std`` (L, 1, D), which is folded
    into the weights: ``((x - mean) / std) @ weight = x @ (weight / std) - (mean / std) @ weight``."""
    n_layers, batch, n_frames, width = x.shape
    scaled = weight / std.transpose(1, 2)
    logits = torch.baddbmm(bias - torch.bmm(mean, scaled), x.view(n_layers, batch * n_frames, width), scaled)
    return logits.view(n_layers, batch, n_frames, -1).log_softmax(dim=-1)


def _ctc_losses(log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Mean over utterances of each layer's CTC loss per target character, shape (L,), from log-probabilities
    (L, B, T, C), frame counts (B,) and targets (B lists of class indices); an utterance too short for its
    transcript counts 0."""
    n_layers, batch = log_probs.shape[:2]
    device = log_probs.device
    target_lengths = torch.tensor([len(t) for t in targets], device=device)
    flat = torch.tensor([c for t in targets for c in t], dtype=torch.long, device=device)
    losses = F.ctc_loss(log_probs.permute(2, 0, 1, 3).flatten(1, 2),  # (T, L * B, C)
                        flat.repeat(n_layers), lengths.to(device).repeat(n_layers), target_lengths.repeat(n_layers),
                        blank=0, reduction="none", zero_infinity=True)
    return (losses.view(n_layers, batch) / target_lengths.clamp(min=1)).mean(dim=1)


def _frame_statistics(frames: FrameSet, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (L, 1, D) of every layer's training frames (floor 1e-6)."""
    total = squares = count = 0
    for start in range(0, len(frames), batch_size):
        for f in frames.get(range(start, min(start + batch_size, len(frames)))):
            f = f.double()  # on the CPU, where the frames are kept
            total, squares, count = total + f.sum(dim=1), squares + (f**2).sum(dim=1), count + f.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp(min=0).sqrt().clamp(min=1e-6)
    return mean.float()[:, None].to(device), std.float()[:, None].to(device)


def fit_ctc_heads(train: FrameSet, train_texts: Sequence[str], validation: FrameSet, validation_texts: Sequence[str],
                  seed: int = 0, config: CtcConfig = CtcConfig(), device: str | torch.device = "cpu",
                  progress: bool = False) -> CtcFit:
    """Train one linear CTC head per layer and choose the layer and epoch on the validation split."""
    if len(train) != len(train_texts) or len(validation) != len(validation_texts) or not len(train) \
            or not len(validation):
        raise ValueError(f"need matching, non-empty frames and transcripts; got {len(train)} / {len(train_texts)} "
                         f"training and {len(validation)} / {len(validation_texts)} validation utterances")
    vocabulary = CharacterVocabulary.from_texts(train_texts)
    n_layers, _, width = train.get([0])[0].shape
    mean, std = _frame_statistics(train, config.batch_size, device)
    generator = torch.Generator().manual_seed(seed)
    bound = width**-0.5  # torch.nn.Linear's initialisation range
    weight = ((torch.rand(n_layers, width, len(vocabulary), generator=generator) * 2 - 1) * bound).to(device)
    bias = ((torch.rand(n_layers, 1, len(vocabulary), generator=generator) * 2 - 1) * bound).to(device)
    weight.requires_grad_()
    bias.requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=config.learning_rate)
    targets = [vocabulary.encode(t) for t in train_texts]
    history, best = [], [None] * n_layers
    for epoch in tqdm(range(1, config.max_epochs + 1), desc="CTC heads", disable=not progress):
        train_loss = torch.zeros(n_layers, device=device)
        for batch in torch.randperm(len(train), generator=generator).split(config.batch_size):
            x, lengths = _padded_frames(train.get(batch.tolist()), device)
            losses = _ctc_losses(_layer_log_probs(x, weight, bias, mean, std), lengths, [targets[i] for i in batch])
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()
            train_loss += losses.detach() * len(batch) / len(train)
        scores = _validation_scores(validation, validation_texts, vocabulary, weight.detach(), bias.detach(), mean, std,
                                    config.batch_size)
        for layer, score in enumerate(scores):
            history.append({"layer": layer, "epoch": epoch, "train_loss": float(train_loss[layer]), **score})
            previous = best[layer]
            if previous is None or (score["wer"], score["loss"]) < (previous["wer"], previous["loss"]):
                best[layer] = score | {"epoch": epoch, "weight": weight[layer].detach().clone(),
                                       "bias": bias[layer, 0].detach().clone()}
    layer = min(range(n_layers), key=lambda i: (best[i]["wer"], best[i]["loss"], i))
    layers = pd.DataFrame([{"layer": i, "epoch": b["epoch"], "wer": b["wer"], "loss": b["loss"]}
                           for i, b in enumerate(best)])
    history = pd.DataFrame(history, columns=["layer", "epoch", "train_loss", "wer", "loss"])
    return CtcFit(layer, best[layer]["epoch"], best[layer]["weight"], best[layer]["bias"], mean[layer, 0],
                  std[layer, 0], vocabulary, layers, history)


@torch.no_grad()
def _validation_scores(frames: FrameSet, texts: Sequence[str], vocabulary: CharacterVocabulary, weight: torch.Tensor,
                       bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int) -> list[dict]:
    """Per layer: corpus WER of the greedy transcripts of ``frames`` and mean CTC loss per character."""
    n_layers = weight.shape[0]
    hypotheses: list[list[str]] = [[] for _ in range(n_layers)]
    loss = torch.zeros(n_layers, device=weight.device)
    for start in range(0, len(frames), batch_size):
        indices = range(start, min(start + batch_size, len(frames)))
        x, lengths = _padded_frames(frames.get(indices), weight.device)
        log_probs = _layer_log_probs(x, weight, bias, mean, std)
        loss += _ctc_losses(log_probs, lengths, [vocabulary.encode(texts[i]) for i in indices]) * len(indices)
        best = log_probs.argmax(dim=-1).cpu()  # (L, B, T)
        for layer in range(n_layers):
            hypotheses[layer] += [vocabulary.decode(best[layer, row, :n].tolist()) for row, n in enumerate(lengths)]
    return [{"wer": _word_errors(texts, h), "loss": float(value) / len(frames)} for h, value in zip(hypotheses, loss)]


def ctc_task(encoder: SpeechEncoder, task: DownstreamTask, seeds: Sequence[int] = (0,), config: CtcConfig = CtcConfig(),
             batch_size: int = 8, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train CTC heads on the frozen encoder for several seeds and transcribe the test split with the chosen ones."""
    if task.kind != "asr":
        raise ValueError(f"task {task.name!r} is a {task.kind} task; CTC heads are for ASR tasks")
    splits = {split: task.split(split) for split in ("train", "validation", "test")}
    for split, examples in splits.items():
        if not examples:
            raise ValueError(f"ASR task {task.name!r} has no {split} utterances: the CTC heads train on the training "
                             "split, are chosen on the validation split and scored on the test split")
    frames = {split: FrameSet.encode(encoder, examples, batch_size, config.memory_gb)
              for split, examples in splits.items()}
    test = frames["test"]
    in_memory = all(f.kept is not None for f in frames.values())  # else the encoder runs too: keep its threads
    predictions, selections = [], []
    for seed in seeds:
        with one_torch_thread() if in_memory else contextlib.nullcontext():
            fit = fit_ctc_heads(frames["train"], [e.label for e in splits["train"]], frames["validation"],
                                [e.label for e in splits["validation"]], seed, config, encoder.device, progress)
            # the test split is touched only now, by the chosen head
            transcripts = [text for start in range(0, len(test), config.batch_size)
                           for text in fit.transcribe(test.get(range(start, min(start + config.batch_size, len(test)))))]
        predictions += [{"seed": seed, "layer": fit.layer, "example_id": e.id, "label": e.label, "prediction": t}
                        for e, t in zip(splits["test"], transcripts)]
        selections.append(fit.layers.assign(seed=seed, chosen=fit.layers.layer == fit.layer))
    selection = pd.concat(selections, ignore_index=True)[["seed", "layer", "epoch", "wer", "loss", "chosen"]]
    return pd.DataFrame(predictions), selection


# ======================================================================================
# Whisper's own decoder
# ======================================================================================


class WhisperTranscriber:
    """Greedy transcription with a full Whisper model (built by :func:`load_whisper_transcriber`)."""

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor

    @torch.inference_mode()
    def __call__(self, audio: Sequence[np.ndarray]) -> list[str]:
        device = next(self.model.parameters()).device
        features = self.processor.feature_extractor(list(audio), sampling_rate=SAMPLE_RATE,
                                                    return_tensors="pt").input_features.to(device)
        options = {"language": "en", "task": "transcribe"} if self.model.generation_config.is_multilingual else {}
        seconds = max(len(a) for a in audio) / SAMPLE_RATE
        tokens = self.model.generate(features, max_new_tokens=_token_budget(seconds), num_beams=1, **options)
        return self.processor.batch_decode(tokens, skip_special_tokens=True)


def _token_budget(seconds: float) -> int:
    """Most tokens Whisper may generate for ``seconds`` of speech: about twice a fast speaker's rate
    (3 words/s, ~1.3 tokens a word), so that a decoder stuck repeating itself stops early."""
    return min(440, 10 + round(8 * seconds))


@contextlib.contextmanager
def _unavailable_model(source: str):
    """Turn Hugging Face's error for a model that is neither a folder nor downloaded into one that says what to do."""
    try:
        yield
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load {source!r} for ASR: it is not a local folder with a config.json and not in the Hugging Face "
            f"cache. Download it on a machine with internet (`hf download {source}`) and copy the cache here, or "
            f"pass a local folder ({error.__class__.__name__}: {str(error).splitlines()[0]})") from error


def _full_whisper(base: str):
    """The full pretrained Whisper (model, processor) of a registry name, Hub id or folder."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    spec = MODELS[base] if base in MODELS else None
    source = spec.source if spec else base
    if spec and spec.local_folder is not None:
        source = spec.local_folder()
    if source == RANDOM_INIT:
        raise ValueError(f"{base!r} is a random test model without a trained decoder; Whisper's decoder needs a "
                         "pretrained Whisper such as 'whisper-tiny.en' (or pass whisper_decoder=False)")
    with _unavailable_model(source):
        model, info = WhisperForConditionalGeneration.from_pretrained(source, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"{base!r} is not a complete Whisper ({len(info['missing_keys'])} weights missing, e.g. "
                         f"{info['missing_keys'][0]}): its decoder needs the full pretrained model the encoder was "
                         "tuned from, e.g. 'openai/whisper-small'")
    return model.eval(), WhisperProcessor.from_pretrained(source)


def swap_encoder(target: torch.nn.Module, encoder: SpeechEncoder) -> torch.nn.Module:
    """Copy ``encoder``'s weights into the encoder part of a full model, in place."""
    state = encoder.encoder.state_dict()
    mismatched = [k for k, v in target.state_dict().items() if k in state and state[k].shape != v.shape]
    result = target.load_state_dict(state, strict=False) if not mismatched else None
    problems = mismatched or sorted(set(result.missing_keys) | set(result.unexpected_keys))
    if problems:
        raise ValueError(f"encoder {encoder.name!r} does not fit the decoding model's encoder "
                         f"({len(problems)} weights differ, e.g. {problems[:3]}): use a decoder "
                         "of the same base architecture")
    return target


def load_whisper_transcriber(encoder: SpeechEncoder, base_model: str) -> WhisperTranscriber:
    """Whisper's pretrained decoder around ``encoder``: the encoder's weights swapped into the full base model."""
    if encoder.family != "whisper":
        raise ValueError(f"{encoder.name!r} is a {encoder.family} encoder; only Whisper has a decoder of its own")
    model, processor = _full_whisper(base_model)
    swap_encoder(model.model.encoder, encoder)
    return WhisperTranscriber(model.to(encoder.device), processor)


def whisper_decoder_task(encoder: SpeechEncoder, base_model: str, task: DownstreamTask, batch_size: int = 8,
                         progress: bool = True) -> pd.DataFrame:
    """Transcripts of the test split of an ASR task by Whisper's pretrained decoder around ``encoder``."""
    transcriber = load_whisper_transcriber(encoder, base_model)
    examples = task.split("test")
    hypotheses = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"Whisper decoder {task.name}", disable=not progress):
        hypotheses += transcriber([load_audio(e) for e in examples[start:start + batch_size]])
    return pd.DataFrame({"example_id": [e.id for e in examples], "label": [e.label for e in examples],
                         "prediction": [h.strip() for h in hypotheses]})
