"""Training entry points: fit detectors on the training period, set thresholds on validation.

Detectors never see labels. Thresholds are set on the validation period by an explicit
policy:

* ``quantile`` – the alarm budget: the given quantile of the validation scores (no labels).
* ``event_f1`` – the threshold that maximises event-wise F1 on the validation period's
  labelled windows. It uses labels, but only those of the validation period, never the
  test period the model is judged on; it refuses to run when validation holds no labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from aiops.detectors.ensemble import EnsembleDetector
from aiops.detectors.forecast import ForecastConfig, ForecastDetector
from aiops.detectors.isolation_forest import IsolationForestConfig, IsolationForestDetector
from aiops.detectors.lstm_autoencoder import LstmAutoencoderDetector, LstmConfig
from aiops.evaluation import evaluate
from aiops.features import FeatureConfig, contract_for
from aiops.model import DetectorBundle
from aiops.schema import label_masks

THRESHOLD_POLICIES = ("quantile", "event_f1")
#: Training metadata that is measured (tracked as metrics); every other entry is a setting (a param).
MEASURED_META = frozenset(
    {
        "fit_seconds",
        "train_rows",
        "validation_rows",
        "validation_score_median",
        "validation_event_f1",
        "calibration_seconds",
        "n_features",
    }
)
DetectorConfig = IsolationForestConfig | ForecastConfig | LstmConfig
_DETECTORS: dict[str, tuple[type, type]] = {
    "isolation_forest": (IsolationForestDetector, IsolationForestConfig),
    "forecast": (ForecastDetector, ForecastConfig),
    "lstm_autoencoder": (LstmAutoencoderDetector, LstmConfig),
}
DETECTOR_KINDS = tuple(_DETECTORS)


def _check_quantile(alarm_quantile: float) -> None:
    if not 0.5 <= alarm_quantile < 1:
        raise ValueError(f"alarm_quantile must lie in [0.5, 1), got {alarm_quantile}")


def choose_threshold(
    scores: np.ndarray,
    frame: pd.DataFrame,
    labels: pd.DataFrame,
    policy: str = "quantile",
    alarm_quantile: float = 0.99,
) -> tuple[float, dict[str, float]]:
    """Pick an alarm threshold on validation scores by ``policy`` (see module docstring).

    Returns:
        The threshold and what the choice was based on (for tracking).

    Raises:
        ValueError: Unknown policy, or ``event_f1`` without labelled windows in ``frame``.
    """
    _check_quantile(alarm_quantile)
    scores = np.asarray(scores, dtype=float)
    if policy == "quantile":
        return float(np.quantile(scores, alarm_quantile)), {"threshold_quantile": alarm_quantile}
    if policy != "event_f1":
        raise ValueError(f"unknown threshold policy '{policy}'; choose one of {THRESHOLD_POLICIES}")
    if not any(mask.any() for _, mask in label_masks(frame, labels)):
        raise ValueError(
            "threshold policy 'event_f1' needs labelled windows in the validation period and there are "
            "none; use threshold_policy='quantile' (an alarm budget) for unlabelled data"
        )
    # Candidates: upper quantiles of the validation scores, from a 10% to a 0.01% alarm rate.
    candidates = np.unique(np.quantile(scores, 1 - np.geomspace(0.1, 1e-4, 60)))
    best = (-1.0, 0.0)
    for threshold in candidates:
        f1 = evaluate(frame, scores >= threshold, labels).metrics["event_f1"]
        if f1 >= best[0]:  # ties go to the higher threshold: fewer alarms for the same F1
            best = (f1, float(threshold))
    return best[1], {"validation_event_f1": best[0], "threshold_quantile": float(np.mean(scores < best[1]))}


def make_detector(kind: str, config: DetectorConfig | None = None) -> Any:
    """Build an unfitted detector of ``kind`` (``isolation_forest``, ``forecast``, ``lstm_autoencoder``)."""
    if kind not in _DETECTORS:
        raise ValueError(f"unknown detector '{kind}'; choose one of {DETECTOR_KINDS}")
    detector_cls, config_cls = _DETECTORS[kind]
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"detector '{kind}' takes a {config_cls.__name__}, got {type(config).__name__}")
    return detector_cls(config if config is not None else config_cls())


def train_detector(
    kind: str,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: DetectorConfig | None = None,
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Fit one detector on the training period; its own threshold is a validation quantile.

    Args:
        kind: Detector kind.
        train: Feature table of the earliest period.
        validation: Feature table of the following period.
        config: The detector's settings (defaults when ``None``).
        feature_config: The transform settings the features were built with.
        alarm_quantile: Share of validation rows expected to stay quiet.
    """
    _check_quantile(alarm_quantile)
    if validation.empty:
        raise ValueError("the validation split is empty; the threshold cannot be set")
    contract = contract_for(train, feature_config)
    detector = make_detector(kind, config)
    started = time.perf_counter()
    detector.fit(train, contract)
    fit_seconds = time.perf_counter() - started
    val_scores = detector.score(validation)
    threshold, basis = choose_threshold(val_scores, validation, pd.DataFrame(), "quantile", alarm_quantile)
    meta = {
        **detector.config.params(),
        **basis,
        "alarm_quantile": alarm_quantile,
        "n_features": len(contract.feature_names),
        "feature_transform_version": contract.transform_version,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_start": str(train["timestamp"].min()),
        "train_end": str(train["timestamp"].max()),
        "fit_seconds": round(fit_seconds, 3),
        "validation_score_median": float(np.median(val_scores)),
    }
    return DetectorBundle(detector=detector, contract=contract, threshold=threshold, meta=meta)


def train_isolation_forest(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: IsolationForestConfig = IsolationForestConfig(),
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Fit an Isolation Forest (see :func:`train_detector`)."""
    return train_detector("isolation_forest", train, validation, config, feature_config, alarm_quantile)


def train_ensemble(
    members: Mapping[str, DetectorBundle],
    validation: pd.DataFrame,
    labels: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    threshold_policy: str = "quantile",
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Combine fitted detectors into one deployable ensemble with one threshold.

    Args:
        members: Trained member bundles by name (all built on the same feature contract).
        validation: Feature table of the validation period (calibration and threshold).
        labels: Label table; used only by the ``event_f1`` policy, on validation rows only.
        weights: Weight per member (equal when ``None``).
        threshold_policy: ``quantile`` or ``event_f1``.
        alarm_quantile: Quantile for the ``quantile`` policy.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    contracts = {b.contract.feature_names for b in members.values()}
    if len(contracts) != 1:
        raise ValueError("ensemble members were trained on different feature contracts")
    started = time.perf_counter()
    ensemble = EnsembleDetector(
        members={name: bundle.detector for name, bundle in members.items()},
        weights=dict(weights or {}),
        member_thresholds={name: bundle.threshold for name, bundle in members.items()},
    ).calibrate(validation)
    scores = ensemble.score(validation)
    threshold, basis = choose_threshold(scores, validation, labels, threshold_policy, alarm_quantile)
    contract = next(iter(members.values())).contract
    meta: dict[str, Any] = {
        "members": ",".join(members),
        "weights": ",".join(f"{k}={v:g}" for k, v in ensemble.weights.items()),
        "threshold_policy": threshold_policy,
        **basis,
        "calibration_seconds": round(time.perf_counter() - started, 3),
        "validation_rows": len(validation),
        "feature_transform_version": contract.transform_version,
    }
    for name, bundle in members.items():
        meta.update({f"{name}.{k}": v for k, v in bundle.meta.items()})
    return DetectorBundle(detector=ensemble, contract=contract, threshold=threshold, meta=meta)


def train_from_folders(
    kind: str,
    config: DetectorConfig,
    train_dir: str,
    validation_dir: str,
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Load the split feature tables written by the pipeline and train one detector on them."""
    from aiops.features import load_features

    train, feature_config = load_features(train_dir)
    validation, _ = load_features(validation_dir)
    return train_detector(kind, train, validation, config, feature_config, alarm_quantile)


def step_metrics(bundle: DetectorBundle) -> dict[str, float]:
    """The numbers a training step shows on the dashboard (KFP Metrics)."""
    keys = ("fit_seconds", "train_rows", "validation_rows", "train_seconds")
    out = {"threshold": bundle.threshold}
    out.update({k: float(v) for k, v in bundle.meta.items() if k in keys})
    history = getattr(bundle.detector, "history", None)
    if history:
        out["final_train_loss"] = float(history[-1])
    return out
