"""The promotion gate: pure decisions, then the real MLflow registry on a SQLite store."""

from __future__ import annotations

import numpy as np
import pytest

from aiops import publish, registry
from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.features import build_features
from aiops.publish import Lineage, publish_detector
from aiops.registry import mlflow_client as registry_client
from aiops.split import time_split
from aiops.training import train_isolation_forest


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promote"),
    [
        (0.8, None, 0.0, True),  # first version
        (0.8, 0.7, 0.0, True),  # better
        (0.6, 0.7, 0.0, False),  # worse
        (0.7, 0.7, 0.0, False),  # equal is not better
        (0.74, 0.7, 0.05, False),  # better, but within the margin
        (0.76, 0.7, 0.05, True),  # better by more than the margin
    ],
)
def test_decide(challenger, champion, margin, promote):
    decision = registry.decide("event_f1", challenger, champion, margin=margin, champion_version="3")
    assert decision.promote is promote
    assert "event_f1" in decision.reason or champion is None


def test_unscorable_champion_is_kept():
    decision = registry.decide("event_f1", 0.9, None, champion_version="2", champion_error="SchemaError: x")
    assert not decision.promote and "could not be evaluated" in decision.reason


@pytest.fixture(scope="module")
def trained(small_telemetry, tmp_path_factory):
    feats = build_features(small_telemetry.metrics)
    parts = time_split(feats, 0.2, 0.3)
    bundle = train_isolation_forest(parts.train, parts.validation, IsolationForestConfig(n_estimators=30))
    folder = bundle.save(tmp_path_factory.mktemp("bundle") / "model")
    return folder, parts.test, small_telemetry.labels


def alias_version(client, alias: str) -> str:
    return str(client.get_model_version_by_alias("gate-model", alias).version)


def _publish(trained, uri, **kw):
    folder, test, labels = trained
    return publish_detector(
        folder,
        test,
        labels,
        tracking_uri=uri,
        experiment="gate-test",
        model_name="gate-model",
        lineage=Lineage(dataset_hash="abc", data_rows=len(test), source="synthetic", seed=0),
        **kw,
    )


def test_registry_flow(trained, tmp_path, monkeypatch):
    import mlflow.pyfunc

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)

    first = _publish(trained, uri)
    assert first.registration.decision.promote
    assert alias_version(client, "champion") == "1"

    # the same model again: not better, so the champion stays and v2 is only challenger
    second = _publish(trained, uri)
    assert not second.registration.decision.promote
    assert alias_version(client, "champion") == "1"
    assert alias_version(client, "challenger") == "2"
    assert client.get_model_version("gate-model", "2").tags["gate.decision"] == "rejected"

    # a negative margin accepts anything: v3 becomes champion, v1 is kept as previous
    third = _publish(trained, uri, margin=-1.0)
    assert third.registration.decision.promote
    assert alias_version(client, "champion") == "3"
    assert alias_version(client, "previous") == "1"

    # a failure while evaluating leaves the champion where it was
    def broken(*_a, **_k):
        raise RuntimeError("evaluation blew up")

    monkeypatch.setattr(publish, "score_model_uri", broken)
    with pytest.raises(RuntimeError, match="blew up"):
        _publish(trained, uri, margin=-1.0)
    assert alias_version(client, "champion") == "3"

    # the champion loads by alias and predicts with its own threshold
    folder, test, _ = trained
    model = mlflow.pyfunc.load_model("models:/gate-model@champion")
    from aiops.pyfunc import to_model_input

    out = model.predict(to_model_input(test))
    assert list(out.columns) == ["anomaly_score", "is_anomaly"] and len(out) == len(test)
    assert out["is_anomaly"].dtype == bool and np.isfinite(out["anomaly_score"]).all()

    # lineage and artifacts on the run
    run = client.get_run(first.run_id)
    assert run.data.tags["lineage.dataset_hash"] == "abc"
    assert run.data.params["threshold"]
    names = {f.path for f in client.list_artifacts(first.run_id)}
    assert {"feature_contract.json", "gate_decision.json"} <= names
