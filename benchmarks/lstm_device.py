"""Train the LSTM autoencoder on the CPU and on a GPU, on the same data, and compare.

Usage:
    python benchmarks/lstm_device.py [--duration 8D] [--repeats 3] [--devices cpu,cuda]
        [--output benchmarks/results/lstm_device.json]

Two settings are timed: ``pipeline`` (the training pipeline's defaults: 4,000 windows of 30
steps, hidden size 32) and ``large`` (every full window of the data, hidden size 128: what a
week of a real cluster's telemetry asks for). For each device and setting the script reports the
median seconds of the training loop (``train_seconds``: the optimiser's epochs, without data
preparation or export), the final training loss, and how far the GPU-trained detector's test
scores are from the CPU-trained one's (rank correlation; the kernels differ, so the numbers are
close, not equal). Writes JSON and prints a table. The first CUDA fit of a process is a warm-up
and is not timed (it pays for context creation and cuDNN's set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops.detectors.lstm_autoencoder import LstmAutoencoderDetector, LstmConfig
from aiops.features import build_features, contract_for
from aiops.ingest import SyntheticSource, synthetic_telemetry
from aiops.split import time_split

SETTINGS = {
    "pipeline": LstmConfig(),
    "large": LstmConfig(hidden=128, latent=32, max_windows=10**9, epochs=5, batch_size=256),
}


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def _fit(train: pd.DataFrame, contract: Any, cfg: LstmConfig) -> tuple[LstmAutoencoderDetector, float]:
    started = time.perf_counter()
    detector = LstmAutoencoderDetector(cfg).fit(train, contract)
    return detector, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", default="8D", help="simulated span of the synthetic cluster")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/lstm_device.json"))
    args = parser.parse_args()

    import torch

    devices = [d for d in args.devices.split(",") if d]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices names cuda but torch sees no GPU; pass --devices cpu")

    telemetry = synthetic_telemetry(SyntheticSource(duration=args.duration, seed=7))
    features = build_features(telemetry.metrics)
    contract = contract_for(features)
    parts = time_split(features, 0.2, 0.25)
    print(f"data: {len(features):,} feature rows ({args.duration}); train {len(parts.train):,}", flush=True)

    if "cuda" in devices:  # warm-up: CUDA context, cuDNN handles, kernel loading
        _fit(parts.train.head(5000), contract, replace(LstmConfig(), device="cuda", epochs=1))

    results: dict[str, dict[str, Any]] = {}
    for name in args.settings.split(","):
        base = SETTINGS[name]
        results[name] = {"config": base.params()}
        scores: dict[str, np.ndarray] = {}
        for device in devices:
            cfg = replace(base, device=device)
            runs = [_fit(parts.train, contract, cfg) for _ in range(args.repeats)]
            detector = runs[-1][0]
            scores[device] = detector.score(parts.test)
            results[name][device] = {
                "train_seconds": statistics.median(d.train_seconds for d, _ in runs),
                "fit_seconds": statistics.median(s for _, s in runs),
                "final_loss": detector.history[-1],
                "runs": [d.train_seconds for d, _ in runs],
            }
            print(f"{name:>9} {device:>5}: train {results[name][device]['train_seconds']:.2f} s", flush=True)
        if "cpu" in scores and "cuda" in scores:
            cpu, gpu = results[name]["cpu"], results[name]["cuda"]
            results[name]["speedup"] = cpu["train_seconds"] / gpu["train_seconds"]
            results[name]["score_rank_correlation"] = _rank_correlation(scores["cpu"], scores["cuda"])

    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    report = {
        "machine": machine,
        "duration": args.duration,
        "train_rows": len(parts.train),
        "settings": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))

    print(f"\n{'setting':>9} {'device':>6} {'train s':>8} {'final loss':>10}")
    for name, res in results.items():
        for device in devices:
            cell = res[device]
            print(f"{name:>9} {device:>6} {cell['train_seconds']:8.2f} {cell['final_loss']:10.4f}")
        if "speedup" in res:
            correlation = res["score_rank_correlation"]
            print(f"{name:>9} speed-up {res['speedup']:.1f}x, score rank correlation {correlation:.3f}")
    print(f"machine: {machine}")


if __name__ == "__main__":
    main()
