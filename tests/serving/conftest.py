"""Fixtures of the serving tests: one small ensemble, trained once, as a bundle and in a registry.

kserve parses ``sys.argv`` when imported, so nothing here imports it: the tests that need it
get it through the ``kserve_ready`` fixture (``serving.server.import_kserve``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aiops.detectors.forecast import ForecastConfig
from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.features import build_features
from aiops.model import DetectorBundle
from aiops.schema import KEY_COLUMNS
from aiops.split import TimeSplit, time_split
from aiops.training import train_detector, train_ensemble

MODEL_NAME = "served-ensemble"


@dataclass(frozen=True)
class Trained:
    """The ensemble under test and the data around it."""

    bundle_dir: Path
    bundle: DetectorBundle
    split: TimeSplit
    features: pd.DataFrame


@pytest.fixture(scope="session")
def trained(small_telemetry: Any, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Isolation Forest (20 trees) + ARIMA forecaster, combined with a quantile threshold."""
    features = build_features(small_telemetry.metrics)
    split = time_split(features)
    members = {
        "isolation_forest": train_detector(
            "isolation_forest", split.train, split.validation, IsolationForestConfig(n_estimators=20)
        ),
        "forecast": train_detector(
            "forecast",
            split.train,
            split.validation,
            ForecastConfig(forecaster="arima", signals=("request_rate",)),
        ),
    }
    ensemble = train_ensemble(members, split.validation, small_telemetry.labels, threshold_policy="quantile")
    folder = ensemble.save(tmp_path_factory.mktemp("bundle") / "ensemble")
    # Reload: the predictor gets a fresh copy, and the tests compare against this one.
    return Trained(folder, DetectorBundle.load(folder), split, features)


@dataclass(frozen=True)
class Registered:
    """The ensemble registered in an MLflow store (SQLite) under ``tmp``."""

    tracking_uri: str
    name: str
    version: str


@pytest.fixture(scope="session")
def registered(
    trained: Trained, small_telemetry: Any, tmp_path_factory: pytest.TempPathFactory
) -> Registered:
    from aiops.publish import Lineage, publish_detector

    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result = publish_detector(
        trained.bundle_dir,
        trained.split.test,
        small_telemetry.labels,
        tracking_uri=uri,
        experiment="serving-tests",
        model_name=MODEL_NAME,
        lineage=Lineage(dataset_hash="test", data_rows=len(trained.split.test), source="synthetic", seed=7),
    )
    return Registered(uri, MODEL_NAME, result.registration.version)


@pytest.fixture(scope="session")
def kserve_ready() -> None:
    """Import kserve the way the server does (without it reading pytest's command line)."""
    from serving.server import import_kserve

    import_kserve()


def instances(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Feature-table rows as v1 ``instances``: ISO timestamps, ``null`` for NaN."""
    out = []
    for row in frame.to_dict("records"):
        item = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        item["timestamp"] = pd.Timestamp(row["timestamp"]).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append(item)
    return out


def vectors(frame: pd.DataFrame, feature_names: tuple[str, ...]) -> list[list[Any]]:
    """Feature-table rows as v1 feature vectors: the key columns, then the features in contract order."""
    return [[row[c] for c in (*KEY_COLUMNS, *feature_names)] for row in instances(frame)]


def telemetry_rows(metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """Canonical metric rows as v1 ``telemetry``."""
    return instances(metrics)


def v2_inputs(frame: pd.DataFrame, feature_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Feature-table rows as v2 input tensors (``features`` FP64 [n, F] + key columns)."""
    n = len(frame)
    values = frame.loc[:, list(feature_names)].to_numpy(dtype=np.float64)
    data = [None if math.isnan(v) else v for v in values.ravel().tolist()]
    keys = [
        {
            "name": "timestamp",
            "datatype": "BYTES",
            "shape": [n],
            "data": [r["timestamp"] for r in instances(frame)],
        }
    ]
    keys += [
        {"name": key, "datatype": "BYTES", "shape": [n], "data": frame[key].tolist()}
        for key in KEY_COLUMNS[1:]
    ]
    return [{"name": "features", "datatype": "FP64", "shape": [n, len(feature_names)], "data": data}, *keys]
