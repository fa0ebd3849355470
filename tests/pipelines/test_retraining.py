"""The retraining loop, end to end with the local runner: drift retrains, no drift does not.

The first champion is trained in-process with the library functions the training pipeline's
steps call (the training DAG itself runs in test_local_run.py), then registered with its training
reference exactly as the register step does. The quiet window is checked in-process with the
functions the drift-check step calls (a whole DAG run for a False condition would add a minute of
CI for no extra coverage: the drifted run goes through the same step). The drifted run goes
through the retraining DAG and deploys: its new version passes the gate, then a canary rollout
against the champion (two real model servers and a real Prometheus) decides whether it takes over.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops.drift import DRIFT_EXPERIMENT, DriftDecision, check_against_champion, log_drift_check
from aiops.registry import alias_version, list_versions, mlflow_client
from pipelines.runner import run_local

FAST = {"seed": 5, "n_anomalies": 10, "lstm_epochs": 1, "model_name": "loop"}


def _first_champion(uri: str) -> tuple:
    """Two simulated days (seed 5), trained and registered as the pipeline would (``FAST`` settings)."""
    from aiops.detectors.forecast import ForecastConfig
    from aiops.detectors.isolation_forest import IsolationForestConfig
    from aiops.detectors.lstm_autoencoder import LstmConfig
    from aiops.features import build_features
    from aiops.ingest import SyntheticSource, synthetic_telemetry
    from aiops.publish import Lineage, publish_detector
    from aiops.split import time_split
    from aiops.training import DETECTOR_KINDS, train_detector, train_ensemble

    telemetry = synthetic_telemetry(SyntheticSource(seed=5, duration="2D", n_anomalies=10))
    parts = time_split(build_features(telemetry.metrics), 0.2, 0.25)
    configs = {
        "isolation_forest": IsolationForestConfig(seed=5),
        "forecast": ForecastConfig(seed=5),
        "lstm_autoencoder": LstmConfig(window=10, epochs=1, seed=5),
    }
    members = {k: train_detector(k, parts.train, parts.validation, configs[k]) for k in DETECTOR_KINDS}
    ensemble = train_ensemble(
        members, parts.validation, telemetry.labels, threshold_policy="event_f1", select_weights=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        publish_detector(
            ensemble.save(Path(tmp) / "ensemble"),
            parts.test,
            telemetry.labels,
            tracking_uri=uri,
            experiment="aiops-training",
            model_name="loop",
            lineage=Lineage(
                dataset_hash="first", data_rows=len(telemetry.metrics), source="synthetic", seed=5
            ),
            reference=parts.train,
        )
    return parts.train, ensemble


WINDOW = {"start": "2026-01-07T00:00:00Z", "duration": "2D"}  # the two days after the champion's


def _quiet_check(uri: str) -> DriftDecision:
    """The drift-check step on the two undrifted days after the champion's, logged as the step logs it."""
    from aiops.features import build_features
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    source = SyntheticSource(seed=5, n_anomalies=10, **WINDOW)
    features = build_features(synthetic_telemetry(source).metrics)
    decision = check_against_champion(features, "loop", uri, window="1D", max_drift_share=0.5)
    log_drift_check(decision, uri, "loop", "1D", 0.5)
    return decision


@pytest.mark.slow
def test_drift_triggers_retraining_and_no_drift_does_not(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "kfp"
    train, champion = _first_champion(uri)
    assert alias_version("loop", "champion", uri) == "1"
    # The drift baseline keeps the champion's scores of its training rows, computed in time order
    # (a random sample of rows, scored later, would break the LSTM's windows).
    from aiops.publish import REFERENCE_ARTIFACT, REFERENCE_SCORE
    from aiops.schema import KEY_COLUMNS

    client = mlflow_client(uri)
    model_run = client.get_run(client.get_model_version("loop", "1").run_id)
    stored = pd.read_parquet(client.download_artifacts(model_run.info.run_id, REFERENCE_ARTIFACT))
    in_context = train.assign(expected=champion.score(train))[[*KEY_COLUMNS, "expected"]]
    matched = stored.merge(in_context, on=list(KEY_COLUMNS))
    assert len(matched) == len(stored) > 0
    np.testing.assert_allclose(matched[REFERENCE_SCORE], matched["expected"], rtol=1e-9)

    quiet = _quiet_check(uri)
    assert quiet.retrain is False, quiet.reason
    assert [v.version for v in list_versions("loop", uri)] == ["1"], "no drift: nothing retrained"

    drifted = run_local(
        "retraining",
        {
            **FAST,
            **WINDOW,
            "concept_drift": "workload_doubles",
            "drift_start": "1D",
            "mlflow_tracking_uri": uri,
            "deploy": True,
        },
        root,
    )
    assert drifted.output == "2"  # the version this run registered
    assert [v.version for v in list_versions("loop", uri)] == ["2", "1"]
    # the model that knows the new traffic beats the stale one on the drifted test period (the
    # gate), then serves as well as the champion on live traffic (the canary), and takes over
    client = mlflow_client(uri)
    new = client.get_model_version("loop", "2").tags
    assert new["gate.decision"] == "passed", new.get("gate.reason")
    assert new["rollout.decision"] == "promoted", new.get("rollout.reason")
    assert alias_version("loop", "champion", uri) == "2" and alias_version("loop", "previous", uri) == "1"

    checks = client.search_runs(
        [client.get_experiment_by_name(DRIFT_EXPERIMENT).experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    assert [run.data.tags["decision"] for run in checks] == ["keep", "retrain"]
    assert checks[1].data.metrics["drift_share"] > 0.5 >= checks[0].data.metrics["drift_share"]
    assert "report" in {a.path for a in client.list_artifacts(checks[1].info.run_id)}
