"""Each component's Python function, called directly on small artifacts under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

from aiops import package_version
from aiops.registry import mlflow_client as registry_client
from aiops.schema import SchemaError
from aiops.telemetry import Telemetry
from components.evaluate import evaluate_detector
from components.features import build_features
from components.ingest import ingest_telemetry
from components.outcome import report_outcome
from components.register import register_model
from components.split import split_by_time
from components.train_ensemble import train_ensemble
from components.train_forecast import train_forecast
from components.train_isolation_forest import train_isolation_forest
from components.train_lstm_autoencoder import train_lstm_autoencoder
from components.validate import validate_telemetry


def art(cls, root: Path, name: str):
    return cls(name=name, uri=str(root / name), metadata={})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run the training steps in order on one simulated day; return the artifacts."""
    root = tmp_path_factory.mktemp("chain")
    a = {
        "telemetry": art(dsl.Dataset, root, "telemetry"),
        "report": art(dsl.Markdown, root, "report.md"),
        "features": art(dsl.Dataset, root, "features"),
        "train": art(dsl.Dataset, root, "train"),
        "validation": art(dsl.Dataset, root, "validation"),
        "test": art(dsl.Dataset, root, "test"),
        "forest": art(dsl.Model, root, "forest"),
        "forecast": art(dsl.Model, root, "forecast"),
        "lstm": art(dsl.Model, root, "lstm"),
        "model": art(dsl.Model, root, "model"),
        "train_metrics": art(dsl.Metrics, root, "train_metrics"),
        "forecast_metrics": art(dsl.Metrics, root, "forecast_metrics"),
        "lstm_metrics": art(dsl.Metrics, root, "lstm_metrics"),
        "ensemble_metrics": art(dsl.Metrics, root, "ensemble_metrics"),
        "metrics": art(dsl.Metrics, root, "metrics"),
        "html": art(dsl.HTML, root, "report.html"),
        "plots": art(dsl.Artifact, root, "plots"),
    }
    ingest_telemetry.python_func(
        source="synthetic", telemetry=a["telemetry"], seed=3, duration="1D", n_anomalies=6
    )
    summary = validate_telemetry.python_func(telemetry=a["telemetry"], report=a["report"])
    build_features.python_func(telemetry=a["telemetry"], features=a["features"], windows=[5, 30], lags=[1])
    split_by_time.python_func(
        features=a["features"], train=a["train"], validation=a["validation"], test=a["test"]
    )
    periods = {"train": a["train"], "validation": a["validation"]}
    train_isolation_forest.python_func(
        **periods, model=a["forest"], metrics=a["train_metrics"], n_estimators=50, seed=3
    )
    train_forecast.python_func(
        **periods, model=a["forecast"], metrics=a["forecast_metrics"], forecaster="arima"
    )
    train_lstm_autoencoder.python_func(
        **periods, model=a["lstm"], metrics=a["lstm_metrics"], epochs=1, window=10
    )
    train_ensemble.python_func(
        isolation_forest=a["forest"],
        forecast=a["forecast"],
        lstm_autoencoder=a["lstm"],
        validation=a["validation"],
        telemetry=a["telemetry"],
        model=a["model"],
        metrics=a["ensemble_metrics"],
        threshold_policy="quantile",
    )
    f1 = evaluate_detector.python_func(
        model=a["model"],
        test=a["test"],
        telemetry=a["telemetry"],
        metrics=a["metrics"],
        report=a["html"],
        plots=a["plots"],
    )
    return a, summary, f1, root


def test_ingest_writes_canonical_telemetry(chain):
    a, *_ = chain
    bundle = Telemetry.load(a["telemetry"].path).validate()
    assert len(bundle.labels) == 6 and len(bundle.events) > 0 and len(bundle.logs) > 0
    assert a["telemetry"].metadata["source"] == "synthetic"


def test_unknown_source_fails_loudly(tmp_path):
    with pytest.raises(ValueError, match="unknown telemetry source 'influxdb'"):
        ingest_telemetry.python_func(source="influxdb", telemetry=art(dsl.Dataset, tmp_path, "t"))
    assert not (tmp_path / "t").exists()


def test_validate_summarises_and_hashes(chain):
    a, summary, *_ = chain
    assert summary.rows == len(Telemetry.load(a["telemetry"].path).metrics)
    assert summary.labelled_windows == 6 and len(summary.dataset_hash) == 64
    assert "content hash" in Path(a["report"].path).read_text()


def test_validate_stops_on_a_broken_dataset(chain, tmp_path):
    a, *_ = chain
    bundle = Telemetry.load(a["telemetry"].path)
    bundle.metrics = bundle.metrics.assign(error_ratio=bundle.metrics["error_ratio"] * 1000)
    broken = art(dsl.Dataset, tmp_path, "broken")
    bundle.save(broken.path)
    with pytest.raises(SchemaError, match="error_ratio"):
        validate_telemetry.python_func(telemetry=broken, report=art(dsl.Markdown, tmp_path, "r.md"))


def test_split_parts_are_ordered(chain):
    from aiops.features import load_features

    a, *_ = chain
    tr, va, te = (load_features(a[k].path)[0] for k in ("train", "validation", "test"))
    assert tr["timestamp"].max() < va["timestamp"].min() <= va["timestamp"].max() < te["timestamp"].min()
    assert a["test"].metadata["rows"] == len(te)


def test_detectors_train_without_labels_and_export(chain):
    a, *_ = chain
    for name in ("forest", "forecast", "lstm", "model"):
        assert (Path(a[name].path) / "feature_contract.json").exists()
    assert a["train_metrics"].metadata["threshold"] == a["forest"].metadata["threshold"]
    assert a["lstm_metrics"].metadata["train_loss_epoch_01"] > 0
    # the LSTM's network is also exported as TorchScript, loadable without our training code
    import torch

    from aiops.model import DetectorBundle

    n_signals = len(DetectorBundle.load(a["lstm"].path).detector.signals)
    scripted = torch.jit.load(str(Path(a["lstm"].path) / "lstm_autoencoder.pt"))
    assert scripted(torch.zeros(2, 10, n_signals)).shape == (2, 10, n_signals)


def test_ensemble_and_evaluation_outputs(chain):
    a, _, f1, _ = chain
    from aiops.model import DetectorBundle

    ensemble = DetectorBundle.load(a["model"].path)
    assert ensemble.detector.kind == "ensemble"
    assert set(ensemble.detector.members) == {"isolation_forest", "forecast", "lstm_autoencoder"}
    assert a["model"].metadata["policy"] == "quantile"
    assert 0.0 <= f1 <= 1.0 and a["metrics"].metadata["event_f1"] == f1
    assert "<img" in Path(a["html"].path).read_text()
    report = json.loads((Path(a["plots"].path) / "metrics.json").read_text())
    assert report["event_f1"] == f1
    assert {"forecast.event_f1", "lstm_autoencoder.event_f1", "forecast_mape"} <= set(report)
    assert (Path(a["plots"].path) / "detector_comparison.png").stat().st_size > 0


def _register(chain, uri: str, **options):
    """The register step on the chain's ensemble, into the MLflow store at ``uri``."""
    a, summary, *_ = chain
    return register_model.python_func(
        model=a["model"],
        train=a["train"],
        test=a["test"],
        telemetry=a["telemetry"],
        plots=a["plots"],
        dataset_hash=summary.dataset_hash,
        data_rows=summary.rows,
        source="synthetic",
        seed=3,
        experiment="unit",
        tracking_uri=uri,
        **options,
    )


def test_register_promotes_first_version(chain, tmp_path):
    _, summary, f1, _ = chain
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = _register(chain, uri, model_name="unit-model")
    assert out.version == "1" and out.promoted and out.aliases == "challenger,champion"
    run = registry_client(uri).get_run(out.run_id)
    assert run.data.tags["lineage.dataset_hash"] == summary.dataset_hash
    # the release whose pipeline ran, not a placeholder
    assert run.data.tags["lineage.pipeline_version"] == package_version() != "unknown"
    assert run.data.metrics["test_event_f1"] == pytest.approx(f1)


def _final(state: str) -> dsl.PipelineTaskFinalStatus:
    return dsl.PipelineTaskFinalStatus(state, "run/exit-handler-1", "exit-handler-1", None, None)


def test_exit_handler_returns_the_version_its_run_registered(chain, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = {"model_name": "outcome-model", "tracking_uri": uri}
    registered = _register(chain, uri, model_name=common["model_name"], kfp_run_id="run-a")
    failures: list[str] = []
    monkeypatch.setattr("aiops.monitoring.report_run_failure", failures.append)
    # KFP's backend says COMPLETE, the local runner SUCCEEDED; a backend that does not propagate
    # the state of nested groups leaves RUNNING (kubeflow/pipelines#11979): none is a failure
    for state in ("SUCCEEDED", "COMPLETE", "RUNNING"):
        assert report_outcome.python_func(status=_final(state), kfp_run_id="run-a", **common) == "1"
    # a later run that registered nothing (a retraining that kept the champion)
    assert report_outcome.python_func(status=_final("COMPLETE"), kfp_run_id="run-b", **common) == ""
    assert failures == [] and registered.version == "1"
    # a failed run pushes its failure, returns nothing and needs no MLflow (it may be what failed)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for state in ("FAILED", "CANCELED", "CANCELLED"):
        failed = report_outcome.python_func(status=_final(state), kfp_run_id="run-a", job="j", model_name="m")
        assert failed == ""
    assert failures == ["j", "j", "j"]


def test_exit_handler_that_cannot_read_mlflow_pushes_the_failure_it_causes(tmp_path, monkeypatch):
    failures: list[str] = []
    monkeypatch.setattr("aiops.monitoring.report_run_failure", failures.append)
    (tmp_path / "a-file").write_text("")
    unreadable = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # a store that cannot be opened
    with pytest.raises(OSError):  # the task fails with what MLflow raised
        report_outcome.python_func(
            status=_final("SUCCEEDED"), job="j", model_name="m", tracking_uri=unreadable
        )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="no MLflow tracking URI"):
        report_outcome.python_func(status=_final("SUCCEEDED"), job="k", model_name="m")
    assert failures == ["j", "k"]


def test_register_needs_a_tracking_uri(chain, monkeypatch):
    a, summary, *_ = chain
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="no MLflow tracking URI"):
        register_model.python_func(
            model=a["model"],
            train=a["train"],
            test=a["test"],
            telemetry=a["telemetry"],
            plots=a["plots"],
            dataset_hash="x",
            data_rows=1,
            source="synthetic",
            seed=0,
        )
