"""``aiops benchmark synthetic``: the training pipeline's detectors on a freshly simulated cluster.

The simulated cluster and its injected anomalies come from the caller's seed (the command
requires one): pick one not used in development (``benchmarks/README.md`` lists those), so the
numbers are not tuned to the data. Everything runs in-process
(no KFP) with the same library functions the pipeline steps call.

The default span is three weeks, so that the training period (the first 45%) holds a whole
week and its weekend: a forecaster cannot learn a weekly cycle it has never seen. The
anomaly count keeps the density of the earlier 8-day, 60-anomaly runs (7.5 a day).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from aiops.detectors.ensemble import COMBINE_RULES, EnsembleDetector
from aiops.detectors.forecast import ForecastConfig, ForecastDetector, forecast_errors
from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.detectors.lstm_autoencoder import LstmConfig
from aiops.evaluation import evaluate
from aiops.features import build_features
from aiops.ingest import SyntheticSource, synthetic_telemetry
from aiops.schema import row_labels
from aiops.split import time_split
from aiops.training import (
    DETECTOR_KINDS,
    DetectorConfig,
    EventF1Scorer,
    train_detector_scored,
    train_ensemble,
    weight_candidates,
)


@dataclass(frozen=True)
class SyntheticBenchmark:
    """Size and policy of the run.

    Attributes:
        seed: Seed of simulation and injection (pick one not used in development; the default,
            2027, is a development seed).
        duration: Simulated span.
        n_anomalies: Injected anomalies (spread over train, validation and test).
        validation_fraction: Share of time for validation.
        test_fraction: Share of time for test (the latest).
        threshold_policy: Ensemble threshold policy (``event_f1`` on validation labels, or ``quantile``).
        select_weights: Choose the ensemble's combine rule and member weights by validation
            event F1 (needs ``threshold_policy='event_f1'``).
        forecaster: ``prophet`` or ``arima``.
        if_estimators: Trees of the Isolation Forest.
        lstm_epochs: Training epochs of the LSTM autoencoder.
        lstm_max_windows: Training windows of the LSTM autoencoder.
    """

    seed: int = 2027
    duration: str = "21D"
    n_anomalies: int = 160
    validation_fraction: float = 0.25
    test_fraction: float = 0.3
    threshold_policy: str = "event_f1"
    select_weights: bool = True
    forecaster: str = "prophet"
    if_estimators: int = IsolationForestConfig.n_estimators
    lstm_epochs: int = LstmConfig.epochs
    lstm_max_windows: int = LstmConfig.max_windows

    def __post_init__(self) -> None:
        # train_ensemble refuses the pair too, but only after every detector has trained.
        if self.select_weights and self.threshold_policy != "event_f1":
            raise ValueError(
                f"select_weights chooses weights by validation event F1: it needs threshold_policy="
                f"'event_f1', not {self.threshold_policy!r} (pass select_weights=False)"
            )

    def configs(self) -> dict[str, DetectorConfig]:
        """The detectors' settings (defaults apart from the sizes above)."""
        return {
            "isolation_forest": IsolationForestConfig(n_estimators=self.if_estimators),
            "forecast": ForecastConfig(forecaster=self.forecaster),
            "lstm_autoencoder": LstmConfig(epochs=self.lstm_epochs, max_windows=self.lstm_max_windows),
        }


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


_ENSEMBLE_BASIS = ("validation_", "threshold", "selection_")


def _headroom(
    test: pd.DataFrame,
    labels: pd.DataFrame,
    test_scores: dict[str, np.ndarray],
    ensemble: EnsembleDetector,
) -> dict[str, Any]:
    """Event F1 each detector would reach with the threshold (and weights) chosen on the *test* labels.

    A diagnosis, never a result: it peeks at the labels it is scored on. It separates what
    the members can see from what the combination and the validation-chosen thresholds make
    of it. When even the best weights and threshold on the test period fall short of a
    target, the members, not the ensemble's choices, are what has to improve. Thresholds are
    searched over the same 60 score quantiles as on validation, so the figure can land a little
    below what the deployed threshold reaches: a guide, not a strict bound.
    """
    scorer = EventF1Scorer.of(test, labels)
    out: dict[str, Any] = {
        "note": "best choices on the test labels (60-quantile threshold grid); for diagnosis only",
        "event_f1_at_test_optimal_threshold": {
            name: round(scorer.best_threshold(scores)[0], 4) for name, scores in test_scores.items()
        },
    }
    # The validation calibration and member thresholds, as deployed; only weights, rule and
    # the ensemble threshold vary.
    probe = EnsembleDetector(
        members=dict(ensemble.members),
        reference=dict(ensemble.reference),
        member_thresholds=dict(ensemble.member_thresholds),
    )
    surprises = probe.member_surprise(test, {n: test_scores[n] for n in ensemble.members})
    best: tuple[float, dict[str, float], str] = (-1.0, {}, "")
    for _, rule, weights in weight_candidates(list(ensemble.members), list(COMBINE_RULES)):
        probe.combine, probe.weights = rule, weights
        f1 = scorer.best_threshold(probe.combine_surprises(surprises, raws=test_scores))[0]
        if f1 > best[0]:
            best = (f1, dict(weights), rule)
    out["ensemble_at_test_optimal_weights"] = {
        "event_f1": round(best[0], 4),
        "weights": best[1],
        "combine": best[2],
    }
    return out


def run_synthetic_benchmark(settings: SyntheticBenchmark = SyntheticBenchmark()) -> dict[str, Any]:
    """Simulate, train every detector and the ensemble, and score them on the test period.

    Returns:
        ``{"settings", "data", "detectors": {name: metrics}, "recall_by_type": {name: {type:
        recall}}, "forecast": {mape...}, "ensemble": {combine, weights, threshold basis},
        "seconds", "nan_free"}``.
    """
    started = time.perf_counter()
    telemetry = synthetic_telemetry(
        SyntheticSource(seed=settings.seed, duration=settings.duration, n_anomalies=settings.n_anomalies)
    )
    t = time.perf_counter()
    features = build_features(telemetry.metrics)
    seconds: dict[str, float] = {"features": round(time.perf_counter() - t, 2)}
    parts = time_split(features, settings.validation_fraction, settings.test_fraction)
    validation = parts.validation.reset_index(drop=True)
    bundles, validation_scores = {}, {}
    configs = settings.configs()
    for kind in DETECTOR_KINDS:
        t = time.perf_counter()
        bundles[kind], validation_scores[kind] = train_detector_scored(
            kind, parts.train, validation, configs[kind]
        )
        seconds[f"train_{kind}"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    ensemble = train_ensemble(
        bundles,
        validation,
        telemetry.labels,
        threshold_policy=settings.threshold_policy,
        select_weights=settings.select_weights,
        validation_scores=validation_scores,
    )
    seconds["train_ensemble"] = round(time.perf_counter() - t, 2)
    test = parts.test.reset_index(drop=True)
    t = time.perf_counter()
    test_scores = {name: b.score(test) for name, b in bundles.items()}
    detector = ensemble.detector
    test_scores["ensemble"] = detector.combine_surprises(
        detector.member_surprise(test, test_scores), raws=test_scores
    )
    seconds["score_test"] = round(time.perf_counter() - t, 2)
    # Members are judged at the thresholds the ensemble deploys for their own alarms.
    thresholds = {**detector.member_thresholds, "ensemble": ensemble.threshold}
    headroom = _headroom(test, telemetry.labels, test_scores, detector)
    table, by_type = {}, {}
    for name, scores in test_scores.items():
        result = evaluate(test, scores >= thresholds[name], telemetry.labels)
        table[name] = {
            "threshold": float(thresholds[name]),
            **{k: float(result.metrics[k]) for k in _REPORTED},
        }
        windows = result.windows
        by_type[name] = (
            {str(k): float(v) for k, v in windows.groupby("anomaly_type")["detected"].mean().items()}
            if len(windows)
            else {}
        )
    forecaster = bundles["forecast"].detector
    assert isinstance(forecaster, ForecastDetector)
    normal = ~row_labels(test, telemetry.labels)
    reported = pd.DataFrame(table).T[list(_REPORTED[:6])].to_numpy(dtype=float)
    return {
        "settings": asdict(settings),
        "data": {
            "rows": len(telemetry.metrics),
            "pods": int(telemetry.metrics["pod"].nunique()),
            "labelled_windows": len(telemetry.labels),
            "test_rows": len(test),
            "train_end": str(parts.validation_start),
            "test_start": str(parts.test_start),
        },
        "detectors": table,
        "recall_by_type": by_type,
        "forecast": forecast_errors(forecaster, test, normal),
        "ensemble": {
            "combine": detector.combine,
            "weights": dict(detector.weights),
            **{
                k: v
                for k, v in ensemble.meta.items()
                if k.startswith(("validation_", "threshold", "selection_"))
            },
        },
        "headroom": headroom,
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 2)},
        "nan_free": bool(np.isfinite(reported).all()),
    }
