"""Time each library step of the training pipeline at several data sizes.

Usage:
    python benchmarks/training_steps.py [--repeats 3] [--output benchmarks/results/training_steps.json]

Writes JSON (median seconds and rows/s per step and size, plus the machine) and prints a table.
Timings on shared machines are noisy: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.evaluation import evaluate
from aiops.features import build_features
from aiops.ingest import SyntheticSource, synthetic_telemetry
from aiops.split import time_split
from aiops.training import train_isolation_forest

SIZES = {"1D": 6, "4D": 24, "8D": 48}


def measure(duration: str, n_anomalies: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    telemetry = synthetic_telemetry(SyntheticSource(duration=duration, n_anomalies=n_anomalies))
    timings["simulate+inject"] = time.perf_counter() - t
    t = time.perf_counter()
    features = build_features(telemetry.metrics)
    timings["features"] = time.perf_counter() - t
    parts = time_split(features, 0.2, 0.25)
    t = time.perf_counter()
    bundle = train_isolation_forest(parts.train, parts.validation, IsolationForestConfig(seed=42))
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = bundle.score(parts.test)
    timings["score"] = time.perf_counter() - t
    timings["rows"] = float(len(telemetry.metrics))
    timings["test_event_f1"] = evaluate(parts.test, scores >= bundle.threshold, telemetry.labels).metrics[
        "event_f1"
    ]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/training_steps.json"))
    args = parser.parse_args()

    results = {}
    for duration, n_anomalies in SIZES.items():
        runs = [measure(duration, n_anomalies) for _ in range(args.repeats)]
        results[duration] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    steps = ["simulate+inject", "features", "train", "score"]
    rows_per_s = {size: {s: r["rows"] / r[s] for s in steps} for size, r in results.items()}
    payload = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "repeats": args.repeats,
        "median": results,
        "rows_per_s": rows_per_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))

    print(f"{'size':>5} {'rows':>8} " + " ".join(f"{s:>16}" for s in steps) + f" {'event F1':>9}")
    for size, r in results.items():
        cells = " ".join(f"{r[s]:>8.2f}s {rows_per_s[size][s] / 1e3:>5.0f}k/s" for s in steps)
        print(f"{size:>5} {int(r['rows']):>8} {cells} {r['test_event_f1']:>9.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
