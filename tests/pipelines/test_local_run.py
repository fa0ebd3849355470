"""The real training DAG, run end to end by the KFP local subprocess runner on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.registry import mlflow_client as registry_client
from pipelines.runner import run_local
from tests.conftest import shared_absent

TINY = {
    "duration": "1D",
    "n_anomalies": 6,
    "n_estimators": 30,
    "seed": 5,
    "lstm_epochs": 1,
    "lstm_window": 10,
}


@pytest.mark.slow
def test_training_pipeline_runs_end_to_end(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    task = run_local(
        "training",
        {**TINY, "mlflow_tracking_uri": uri, "model_name": "tiny", "experiment": "tiny-exp"},
        tmp_path / "kfp",
    )
    assert task.output == "1"

    client = registry_client(uri)
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.tags["pipeline_run_id"])  # the pipeline-level (parent) run
    assert len(run.data.tags["lineage.dataset_hash"]) == 64
    assert run.data.tags["lineage.kfp_run_id"] not in ("", "local")
    assert run.data.tags["lineage.feature_service"].startswith(
        "anomaly_detector_v"
    )  # read back through Feast
    assert int(run.data.tags["lineage.data_rows"]) > 1000
    assert {"test_event_f1", "test_point_f1", "test_forecast.event_f1", "test_forecast_mape"} <= set(
        run.data.metrics
    )
    # nested runs: one per detector and one for the deployable ensemble, lined up for comparison
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    by_name = {child.info.run_name: child for child in children}
    assert set(by_name) == {"isolation_forest", "forecast", "lstm_autoencoder", "ensemble"}
    assert by_name["isolation_forest"].data.params["if_n_estimators"] == "30"
    assert "train_fit_seconds" in by_name["forecast"].data.metrics
    assert "test_event_f1" in by_name["lstm_autoencoder"].data.metrics
    curve = client.get_metric_history(by_name["lstm_autoencoder"].info.run_id, "train_loss")
    assert [m.step for m in curve] == [1]  # one epoch in this tiny run: the training curve
    assert by_name["ensemble"].data.params["members"] == "isolation_forest,forecast,lstm_autoencoder"
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/timelines.png" in plots and "evaluation/report.html" in plots


@pytest.mark.slow
def test_unknown_source_stops_the_pipeline_before_training(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError, match="ingest-telemetry"):
        run_local("training", {**TINY, "source": "influxdb", "mlflow_tracking_uri": uri}, tmp_path / "kfp")
    assert not (tmp_path / "mlflow.db").exists(), "nothing may be registered"


NEZHA = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "nezha"


@pytest.mark.slow
@pytest.mark.skipif(shared_absent(NEZHA.exists()), reason="shared Nezha data not found beside the repository")
def test_training_pipeline_runs_on_recorded_nezha_data(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = {
        **TINY,
        "source": "nezha",
        "data_path": str(NEZHA),
        "mlflow_tracking_uri": uri,
        "threshold_policy": "quantile",
    }
    del args["duration"], args["n_anomalies"]
    task = run_local("training", {**args, "model_name": "nezha"}, tmp_path / "kfp")
    assert task.output == "1"
    run = registry_client(uri).get_run(registry_client(uri).get_model_version("nezha", "1").run_id)
    assert run.data.tags["lineage.source"] == "nezha"
    assert int(run.data.tags["lineage.data_rows"]) == 12090
