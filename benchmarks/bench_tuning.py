"""Brain-tuning throughput: training samples/s and peak memory per model family and batch size.

Each configuration runs in a fresh process (so peak memory is its own) on 10-s inputs
(the paper's protocol) with random targets for 1,000 voxels, through the suite's own
training step (``BrainTuningModel`` + MSE + Adam). Whisper runs padded to 30 s (the
paper) and on the native 10 s; the script also prints how much the native-length
outputs differ from the padded ones on a speech clip.

Usage::

    python benchmarks/bench_tuning.py [--models tiny-wav2vec2 whisper-tiny.en ...] [--batch-sizes 4 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODELS = ("tiny-wav2vec2", "tiny-hubert", "tiny-whisper", "whisper-tiny.en")
N_VOXELS = 1000
SAMPLES_PER_INPUT = 160_000


def _run(model_name: str, native_length: bool, batch_size: int, steps: int, device: str, queue) -> None:
    import torch

    from bt_utils.models.registry import load_encoder
    from bt_utils.models.tuning import BrainTuningModel, compute_loss

    torch.manual_seed(0)
    encoder = load_encoder(model_name, device=device, native_length=native_length)
    encoder.freeze_feature_encoder()
    model = BrainTuningModel(encoder, N_VOXELS).to(encoder.device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    audio = 0.1 * torch.randn(batch_size, SAMPLES_PER_INPUT, device=encoder.device)
    target = torch.randn(batch_size, N_VOXELS, device=encoder.device)
    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        compute_loss("mse", model(audio), target).backward()
        optimizer.step()
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if encoder.device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put((statistics.median(times), peak_mb))


def measure(model_name: str, native_length: bool, batch_size: int, steps: int, device: str):
    """Median seconds per training step and peak memory (MiB) of one configuration, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(model_name, native_length, batch_size, steps, device, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def native_length_difference() -> tuple[float, float]:
    """Correlation and relative error between native-length and padded Whisper tiny.en pooled outputs."""
    import numpy as np
    import torch

    from bt_utils.models.registry import load_encoder
    from bt_utils.demo.speech import synthesize
    from bt_utils.models.tuning import masked_mean

    speech = synthesize("The old lighthouse keeper walked to the village market every morning before the rain came. "
                        "He bought bread and honey and talked with the baker about the winter.").audio[:SAMPLES_PER_INPUT]
    audio = torch.zeros(1, SAMPLES_PER_INPUT)
    audio[0, :len(speech)] = torch.from_numpy(speech)
    pooled = []
    for native in (False, True):
        encoder = load_encoder("whisper-tiny.en", device="cpu", native_length=native)
        with torch.no_grad():
            output = encoder(audio)
        pooled.append(masked_mean(output.last_hidden_state, output.frame_mask)[0].numpy())
    padded, native = pooled
    return float(np.corrcoef(padded, native)[0, 1]), float(np.linalg.norm(native - padded) / np.linalg.norm(padded))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from bt_utils.models.registry import select_device

    device = str(select_device(args.device))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"inputs: 10 s ({SAMPLES_PER_INPUT} samples) per sample, {N_VOXELS} targets, median of {args.steps} steps\n")
    header = f"{'model':<18} {'input':<8} {'batch':>5} {'s/step':>8} {'samples/s':>10} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    padded_rate = {}
    for model in args.models:
        for native in ((False, True) if "whisper" in model else (False,)):
            for batch_size in args.batch_sizes:
                seconds, peak = measure(model, native, batch_size, args.steps, device)
                label = "native" if native else ("30 s" if "whisper" in model else "10 s")
                rate = batch_size / seconds
                if not native:
                    padded_rate[model, batch_size] = rate
                speedup = f"  x{rate / padded_rate[model, batch_size]:.1f} vs 30 s" if native else ""
                print(f"{model:<18} {label:<8} {batch_size:>5} {seconds:>8.3f} {rate:>10.2f} {peak:>9.0f}{speedup}")
    if "whisper-tiny.en" in args.models:
        r, error = native_length_difference()
        print(f"\nwhisper-tiny.en native vs padded pooled output (10 s of speech): r = {r:.4f}, relative error {error:.3f}")


if __name__ == "__main__":
    main()
