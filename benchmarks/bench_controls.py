"""How hard each brain-tuning target drives the encoder at the first step, on the demo data.

For each model and control it prints the targets' mean standard deviation per dimension and the
norm of the encoder's gradient at the first step (8 training TRs, eval mode so that every control
sees the same forward pass): of the whole MSE loss, and of the part the targets drive (MSE's cross
term ``-2 mean(prediction * target)``; the rest of the loss does not depend on the targets), with
its ratio to brain-tuning's (``none``). At initialisation the whole loss is dominated by the random
head's predictions, so its gradient hardly depends on the targets; the target-driven part is what
the targets teach the encoder.

Run: ``.venv/bin/python benchmarks/bench_controls.py [--data demo_output/data]
[--models tiny-wav2vec2 tiny-hubert tiny-whisper whisper-tiny.en] [--threads 1]`` (builds the demo
dataset in ``--data`` if it is missing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bt_utils.data.dataset import Dataset  # noqa: E402
from bt_utils.models.registry import load_encoder  # noqa: E402
from bt_utils.models.tuning import CONTROLS, BrainTuningModel, TuningConfig, build_tuning_sets, compute_loss  # noqa: E402

QUICK = dict(max_train_trs=24, max_validation_trs=8, spec_augment=False, layerdrop=False, device="cpu")


def _gradient_norm(model: BrainTuningModel, loss: torch.Tensor) -> float:
    model.zero_grad()
    loss.backward()
    return float(torch.sqrt(sum((p.grad**2).sum() for p in model.encoder.parameters() if p.grad is not None)))


def measure(dataset: Dataset, model_name: str, control: str) -> dict:
    config = TuningConfig(model=model_name, control=control, **QUICK)
    train, _, _ = build_tuning_sets(dataset, "DEMO01", config)
    encoder = load_encoder(model_name, device="cpu", seed=config.seed)
    encoder.freeze_feature_encoder()  # as brain-tuning does
    torch.manual_seed(0)
    model = BrainTuningModel(encoder, train.targets.shape[1]).eval()
    audio, target = (torch.stack(x) for x in zip(*(train[i] for i in range(8))))
    return {"model": model_name, "control": control, "targets": target.shape[1],
            "target s.d.": float(train.targets.std(dim=0).mean()),
            "gradient (MSE)": _gradient_norm(model, compute_loss("mse", model(audio), target)),
            "gradient (target-driven)": _gradient_norm(model, -2 * (model(audio) * target).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("demo_output/data"))
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert", "tiny-whisper",
                                                         "whisper-tiny.en"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "derivative" / "demo.json").is_file():
        from bt_utils.demo.simulation import build_demo_dataset

        build_demo_dataset(args.data)
    dataset = Dataset(args.data)
    columns = ["model", "control", "targets", "target s.d.", "gradient (MSE)", "gradient (target-driven)",
               "brain / this (target-driven)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for model_name in args.models:
        rows = [measure(dataset, model_name, control) for control in CONTROLS]
        for row in rows:
            row["brain / this (target-driven)"] = rows[0]["gradient (target-driven)"] / row["gradient (target-driven)"]
            print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                                    for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
