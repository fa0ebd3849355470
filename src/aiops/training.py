"""Training entry points: fit a detector on the training split, set its threshold on validation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from aiops.detectors.isolation_forest import IsolationForestConfig, IsolationForestDetector
from aiops.features import FeatureConfig, contract_for
from aiops.model import DetectorBundle


def train_isolation_forest(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: IsolationForestConfig = IsolationForestConfig(),
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Fit an Isolation Forest and choose its alarm threshold.

    The detector never sees labels: it is fitted on the training rows and the
    threshold is the ``alarm_quantile`` of its scores on the validation rows
    (the alarm budget an SRE team accepts), so nothing here can overfit the
    labelled windows of the test split.

    Args:
        train: Feature table (from :func:`aiops.features.build_features`), earliest period.
        validation: Feature table of the following period.
        config: Isolation Forest settings.
        feature_config: The transform settings the features were built with.
        alarm_quantile: Share of validation rows expected to stay quiet.

    Returns:
        The fitted :class:`~aiops.model.DetectorBundle`.

    """
    if not 0.5 <= alarm_quantile < 1:
        raise ValueError(f"alarm_quantile must lie in [0.5, 1), got {alarm_quantile}")
    if validation.empty:
        raise ValueError("the validation split is empty; the threshold cannot be set")
    contract = contract_for(train, feature_config)
    started = time.perf_counter()
    detector = IsolationForestDetector(config).fit(contract.matrix(train))
    fit_seconds = time.perf_counter() - started
    val_scores = detector.score(contract.matrix(validation))
    threshold = float(np.quantile(val_scores, alarm_quantile))
    meta = {
        **config.params(),
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
