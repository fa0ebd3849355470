"""The retraining loop, end to end with the local runner: drift retrains, no drift does not.

The drifted run deploys: its new version passes the gate, then a canary rollout against the
champion (two real model servers and a real Prometheus) decides whether it takes over.
"""

from __future__ import annotations

import pytest

from aiops.drift import DRIFT_EXPERIMENT
from aiops.registry import alias_version, list_versions, mlflow_client
from pipelines.runner import run_local

FAST = {"seed": 5, "n_anomalies": 10, "lstm_epochs": 1, "model_name": "loop"}
WINDOW = {"start": "2026-01-07T00:00:00Z", "duration": "2D"}  # the two days after the champion's


@pytest.mark.slow
def test_drift_triggers_retraining_and_no_drift_does_not(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "kfp"
    run_local("training", {**FAST, "duration": "2D", "lstm_window": 10, "mlflow_tracking_uri": uri}, root)
    assert alias_version("loop", "champion", uri) == "1"

    quiet = run_local("retraining", {**FAST, **WINDOW, "mlflow_tracking_uri": uri}, root)
    assert quiet.output is False
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
    assert drifted.output is True
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
