"""``aiops benchmark synthetic``: the training pipeline's detectors on a freshly simulated cluster.

The simulated cluster and its injected anomalies come from a seed that differs from the ones
used in development, so the numbers are not tuned to the data. Everything runs in-process
(no KFP) with the same library functions the pipeline steps call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiops.detectors.forecast import ForecastDetector, forecast_errors
from aiops.evaluation import compare_detectors
from aiops.features import build_features
from aiops.ingest import SyntheticSource, synthetic_telemetry
from aiops.schema import row_labels
from aiops.split import time_split
from aiops.training import DETECTOR_KINDS, train_detector, train_ensemble


@dataclass(frozen=True)
class SyntheticBenchmark:
    """Size and policy of the run.

    Attributes:
        seed: Seed of simulation and injection (pick one not used in development).
        duration: Simulated span.
        n_anomalies: Injected anomalies (spread over train, validation and test).
        validation_fraction: Share of time for validation.
        test_fraction: Share of time for test (the latest).
        threshold_policy: Ensemble threshold policy (``event_f1`` on validation labels, or ``quantile``).
    """

    seed: int = 2027
    duration: str = "8D"
    n_anomalies: int = 60
    validation_fraction: float = 0.25
    test_fraction: float = 0.3
    threshold_policy: str = "event_f1"


_REPORTED = (
    "point_precision",
    "point_recall",
    "point_f1",
    "event_precision",
    "event_recall",
    "event_f1",
    "windows",
    "windows_detected",
    "false_alarm_events",
    "median_delay_s",
)


def run_synthetic_benchmark(settings: SyntheticBenchmark = SyntheticBenchmark()) -> dict[str, Any]:
    """Simulate, train every detector and the ensemble, and score them on the test period.

    Returns:
        ``{"settings", "data", "detectors": {name: metrics}, "forecast": {mape...}, "seconds"}``.
    """
    started = time.perf_counter()
    telemetry = synthetic_telemetry(
        SyntheticSource(seed=settings.seed, duration=settings.duration, n_anomalies=settings.n_anomalies)
    )
    features = build_features(telemetry.metrics)
    parts = time_split(features, settings.validation_fraction, settings.test_fraction)
    seconds: dict[str, float] = {}
    bundles = {}
    for kind in DETECTOR_KINDS:
        t = time.perf_counter()
        bundles[kind] = train_detector(kind, parts.train, parts.validation)
        seconds[f"train_{kind}"] = round(time.perf_counter() - t, 2)
    ensemble = train_ensemble(
        bundles, parts.validation, telemetry.labels, threshold_policy=settings.threshold_policy
    )
    test = parts.test.reset_index(drop=True)
    outputs = {name: (b.score(test), b.threshold) for name, b in {**bundles, "ensemble": ensemble}.items()}
    table = compare_detectors(test, telemetry.labels, outputs)
    forecaster = bundles["forecast"].detector
    assert isinstance(forecaster, ForecastDetector)
    normal = ~row_labels(test, telemetry.labels)
    return {
        "settings": settings.__dict__,
        "data": {
            "rows": len(telemetry.metrics),
            "pods": int(telemetry.metrics["pod"].nunique()),
            "labelled_windows": len(telemetry.labels),
            "test_rows": len(test),
            "test_start": str(parts.test_start),
        },
        "detectors": {
            name: {k: float(row[k]) for k in ("threshold", *_REPORTED)} for name, row in table.iterrows()
        },
        "forecast": forecast_errors(forecaster, test, normal),
        "ensemble_threshold_basis": {
            k: v for k, v in ensemble.meta.items() if k.startswith(("validation_", "threshold"))
        },
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 2)},
        "nan_free": bool(np.isfinite(table[list(_REPORTED[:6])].to_numpy()).all()),
    }
