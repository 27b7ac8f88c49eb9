"""Cost of brain-tuning one encoder on 1, 2 and 3 participants at once, on the demo data.

Each run tunes the same model on DEMO01, DEMO01+DEMO02 or DEMO01+DEMO02+DEMO03 (the same training
TRs: one encoder pass per TR serves every participant, each with its own head) in a fresh process,
and reports the training time per epoch, the whole run's time (data, cached frozen states,
validation, checkpoints) and the process's peak resident memory. Runs of the three sizes are
interleaved, repeat after repeat, and the table gives the medians.

Run: ``.venv/bin/python benchmarks/bench_multi_tuning.py [--data demo_output/data] [--model tiny-wav2vec2]
[--trainable-layers 1] [--repeats 3] [--threads 1]`` (builds the demo dataset in ``--data`` if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

PARTICIPANTS = ["DEMO01", "DEMO02", "DEMO03"]
SETTINGS = dict(epochs=2, batch_size=16, max_train_trs=64, max_validation_trs=16, encoder_lr=2e-4, head_lr=1e-3,
                warmup_epochs=0.5, native_length=True, spec_augment=None, layerdrop=False, device="cpu")


def run_once(data: Path, model: str, trainable_layers: int | None, n_participants: int, threads: int) -> dict:
    """Tune in this process and return its measurements."""
    import torch

    from bt_utils.data.dataset import open_dataset
    from bt_utils.models.tuning import TuningConfig, tune

    torch.set_num_threads(threads)
    dataset = open_dataset(data, build_demo_if_missing=True)
    config = TuningConfig(model=model, trainable_layers=trainable_layers, **SETTINGS)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = tune(dataset, PARTICIPANTS[:n_participants], config, folder, progress=False)
        total = time.perf_counter() - started
    record = result.record
    return {"participants": n_participants, "targets": record["selection"]["n_targets"],
            "epoch s": record["n_train"] / record["train_samples_per_s"], "run s": total,
            "peak MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("demo_output/data"))
    parser.add_argument("--model", default="tiny-wav2vec2")
    parser.add_argument("--trainable-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run in a child process
    args = parser.parse_args()
    layers = args.trainable_layers or None
    if args.one:
        print(json.dumps(run_once(args.data, args.model, layers, args.one, args.threads)))
        return
    rows = []
    for repeat in range(args.repeats):
        for n in range(1, len(PARTICIPANTS) + 1):
            command = [sys.executable, __file__, "--data", str(args.data), "--model", args.model,
                       "--trainable-layers", str(args.trainable_layers), "--threads", str(args.threads),
                       "--one", str(n)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]) | {"repeat": repeat})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby("participants").agg(
        targets=("targets", "first"), epoch_s=("epoch s", "median"), run_s=("run s", "median"),
        peak_mb=("peak MB", "median"), repeats=("repeat", "count"))
    table["epoch vs 1"] = table.epoch_s / table.epoch_s.iloc[0]
    table["peak vs 1"] = table.peak_mb / table.peak_mb.iloc[0]
    print(f"{args.model}, trainable_layers={layers}, {SETTINGS['max_train_trs']} training TRs, "
          f"{SETTINGS['epochs']} epochs, {args.threads} thread(s); medians of {args.repeats} interleaved repeats")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
