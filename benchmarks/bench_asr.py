"""Cost and score of the ASR measure (CTC heads on frozen encoders) on the offline demo task.

For each model and demo_asr size it prints one row: the utterances per split, the seconds to
encode every split's frames, to train the CTC heads of one seed (all layers side by side) and
to transcribe the test split with Whisper's own decoder (Whisper models), the chosen layer and
epoch, and test 1 - WER of the CTC heads and of Whisper's decoder.

Run: ``.venv/bin/python benchmarks/bench_asr.py [--models whisper-tiny.en tiny-wav2vec2]
[--sizes 192 384] [--epochs 20] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bt_utils.demo.tasks import demo_task  # noqa: E402
from bt_utils.downstream.asr import CtcConfig, FrameSet, fit_ctc_heads, whisper_decoder_task  # noqa: E402
from bt_utils.downstream.metrics import corpus_word_error_rate  # noqa: E402
from bt_utils.models.registry import load_encoder  # noqa: E402

SPLITS = ("train", "validation", "test")


def measure(model: str, size: int, epochs: int) -> dict:
    task = demo_task("demo_asr", per_class=size)
    encoder = load_encoder(model, device="cpu", **({"native_length": True} if "whisper" in model else {}))
    started = time.perf_counter()
    frames = {split: FrameSet.encode(encoder, task.split(split)) for split in SPLITS}
    encoded = time.perf_counter()
    texts = {split: [e.label for e in task.split(split)] for split in SPLITS}
    fit = fit_ctc_heads(frames["train"], texts["train"], frames["validation"], texts["validation"],
                        config=CtcConfig(max_epochs=epochs))
    fitted = time.perf_counter()
    wer = corpus_word_error_rate(texts["test"], fit.transcribe(frames["test"].get(range(len(frames["test"])))))
    row = {"model": model, "train/val/test": "/".join(str(len(texts[s])) for s in SPLITS),
           "encode s": encoded - started, "fit s (1 seed)": fitted - encoded, "layer": fit.layer, "epoch": fit.epoch,
           "1 - WER (CTC)": 1 - wer, "decoder s": float("nan"), "1 - WER (decoder)": float("nan")}
    if encoder.family == "whisper" and model != "tiny-whisper":
        started = time.perf_counter()
        decoded = whisper_decoder_task(encoder, model, task, progress=False)
        row["decoder s"] = time.perf_counter() - started
        row["1 - WER (decoder)"] = 1 - corpus_word_error_rate(decoded.label.tolist(), decoded.prediction.tolist())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["whisper-tiny.en", "tiny-wav2vec2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[192, 384], help="demo_asr utterances (1/2 train)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(model, size, args.epochs) for model in args.models for size in args.sizes]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
