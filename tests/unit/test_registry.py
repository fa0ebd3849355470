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


def m(f1, precision=0.9):
    return {"event_f1": f1, "event_precision": precision}


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "promote"),
    [
        (m(0.8), None, 0.0, True),  # first version
        (m(0.8), m(0.7), 0.0, True),  # better
        (m(0.6), m(0.7), 0.0, False),  # worse
        (m(0.7), m(0.7), 0.0, False),  # equal is not better
        (m(0.74), m(0.7), 0.05, False),  # better, but within the margin
        (m(0.76), m(0.7), 0.05, True),  # better by more than the margin
        (m(0.9, 0.80), m(0.7, 0.90), 0.0, False),  # better, but precision regresses past the guard
        (m(0.9, 0.88), m(0.7, 0.90), 0.0, True),  # precision dips within the guard's tolerance
    ],
)
def test_decide(challenger, champion, margin, promote):
    decision = registry.decide(
        "event_f1",
        challenger,
        champion,
        margin=margin,
        guards={"event_precision": 0.05},
        champion_version="3",
    )
    assert decision.promote is promote
    if champion is not None:
        assert "event_f1" in decision.reason and "v3" in decision.reason
        assert bool(decision.guard_regressions) is ("guard regression" in decision.reason)


def test_guards_where_lower_is_better_and_missing_numbers():
    nan = float("nan")
    champion = {"event_f1": 0.7, "false_alarm_events": 3.0, "mean_delay_s": 60.0}
    noisier = {"event_f1": 0.8, "false_alarm_events": 12.0, "mean_delay_s": 600.0}
    guards = {"false_alarm_events": 2.0, "mean_delay_s": 120.0}
    decision = registry.decide("event_f1", noisier, champion, guards=guards, champion_version="1")
    assert not decision.promote and set(decision.guard_regressions) == set(guards)
    assert "false_alarm_events 12.0000 > 3.0000 + tolerance 2" in decision.reason
    quieter = {"event_f1": 0.8, "false_alarm_events": 1.0, "mean_delay_s": 30.0}
    assert registry.decide("event_f1", quieter, champion, guards=guards, champion_version="1").promote
    # Missing evidence is not a pass: a NaN guard on the challenger regresses, a NaN primary blocks.
    unmeasured = {**quieter, "mean_delay_s": nan}
    assert not registry.decide("event_f1", unmeasured, champion, guards=guards, champion_version="1").promote
    assert not registry.decide("event_f1", {"event_f1": nan}, None).promote
    assert registry.lower_is_better("point_fp") and not registry.lower_is_better("event_precision")
    # forecast errors, overall and per signal
    for metric in ("test_forecast_mape", "forecast_mape_cpu_usage_cores", "forecast_wape_request_rate"):
        assert registry.lower_is_better(metric), metric


def test_unscorable_champion_is_kept():
    decision = registry.decide(
        "event_f1", m(0.9), None, champion_version="2", champion_error="SchemaError: x"
    )
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


def _publish(trained, uri, kfp_run_id="local", **kw):
    folder, test, labels = trained
    return publish_detector(
        folder,
        test,
        labels,
        tracking_uri=uri,
        experiment="gate-test",
        model_name="gate-model",
        lineage=Lineage(
            dataset_hash="abc", data_rows=len(test), source="synthetic", seed=0, kfp_run_id=kfp_run_id
        ),
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

    monkeypatch.undo()  # evaluation works again

    # a registry that fails while the champion is looked up is not "no champion yet": the
    # challenger is not promoted unexamined, and the champion stays
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def unavailable(*_a, **_k):
        raise MlflowException("upstream connect error", error_code="TEMPORARILY_UNAVAILABLE")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "get_model_version_by_alias", unavailable)
        with pytest.raises(MlflowException, match="upstream connect error"):
            _publish(trained, uri, margin=-1.0)
    assert alias_version(client, "champion") == "3"
    assert registry.alias_version("gate-model", "nope", uri) is None  # a missing alias is None
    assert registry.alias_version("no-such-model", "champion", uri) is None

    # the champion loads by alias and predicts with its own threshold
    folder, test, _ = trained
    model = mlflow.pyfunc.load_model("models:/gate-model@champion")
    from aiops.pyfunc import to_model_input

    out = model.predict(to_model_input(test))
    assert list(out.columns) == ["anomaly_score", "is_anomaly"] and len(out) == len(test)
    assert out["is_anomaly"].dtype == bool and np.isfinite(out["anomaly_score"]).all()

    # lineage and artifacts: the parent run holds the gate decision and the card, the nested
    # model run holds the model's params and feature contract; the version carries the lineage
    run = client.get_run(first.run_id)
    assert run.data.tags["lineage.dataset_hash"] == "abc"
    assert {f.path for f in client.list_artifacts(first.run_id)} >= {"gate_decision.json", "model_card.md"}
    version = client.get_model_version("gate-model", "1")
    assert version.tags["lineage.dataset_hash"] == "abc" and version.tags["pipeline_run_id"] == first.run_id
    model_run = client.get_run(version.tags["model_run_id"])
    assert model_run.data.tags["mlflow.parentRunId"] == first.run_id
    assert model_run.data.params["threshold"] and "test_event_f1" in model_run.data.metrics
    assert "feature_contract.json" in {f.path for f in client.list_artifacts(model_run.info.run_id)}
    assert "# gate-model v1" in version.description and "## Known limits" in version.description


def test_a_gate_followed_by_a_canary_leaves_the_champion_to_the_canary(trained, tmp_path):
    """With a rollout to follow, a passed gate only marks the version; the canary moves the alias."""
    from components.rollout import canary_rollout

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    held = _publish(trained, uri, margin=-1.0, move_champion=False)
    assert held.registration.decision.promote and "champion" not in held.registration.aliases
    assert client.get_model_version("gate-model", "2").tags["gate.decision"] == "passed"
    assert alias_version(client, "champion") == "1" and alias_version(client, "challenger") == "2"
    card = client.get_model_version("gate-model", "2").description
    assert "passed the gate; a canary rollout decides" in card and "promoted to champion" not in card
    assert "promoted to champion" in client.get_model_version("gate-model", "1").description

    # a version the gate rejected is never rolled out (no servers start; nothing moves)
    rejected = _publish(trained, uri, move_champion=False)
    assert client.get_model_version("gate-model", "3").tags["gate.decision"] == "rejected"
    assert (
        canary_rollout.python_func(
            features=None, version=rejected.registration.version, model_name="gate-model", tracking_uri=uri
        )
        is False
    )
    assert alias_version(client, "champion") == "1"


def test_a_champion_of_another_feature_transform_is_kept_with_a_reason(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    client.set_model_version_tag(
        "gate-model", "1", "lineage.feature_transform_version", "0"
    )  # an older transform
    second = _publish(trained, uri, margin=-1.0)  # would win on any score
    assert not second.registration.decision.promote
    assert "feature transform v0" in second.registration.decision.reason
    assert "aiops models promote gate-model --version 2" in second.registration.decision.reason
    assert alias_version(client, "champion") == "1"
    # A version registered before the lineage tag existed: its run's parameter tells.
    client.delete_model_version_tag("gate-model", "1", "lineage.feature_transform_version")
    run_id = client.get_model_version("gate-model", "1").run_id
    assert client.get_run(run_id).data.params["feature_transform_version"] == "2"
    assert registry._transform_version(client, "gate-model", "1") == "2"


def test_rerunning_a_pipeline_step_does_not_duplicate_versions(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    first = _publish(trained, uri, kfp_run_id="run-123")
    again = _publish(trained, uri, kfp_run_id="run-123")
    assert again.registration.reused and again.registration.version == first.registration.version == "1"
    assert first.registration.decision.reason.startswith("no champion yet")
    assert again.registration.decision.promote
    assert (
        again.registration.decision.reason
        == "v1 is already champion (a re-run); no earlier version to compare"
    )
    assert len(client.search_model_versions("name = 'gate-model'")) == 1
    assert alias_version(client, "champion") == "1"
    other = _publish(trained, uri, kfp_run_id="run-456")
    assert other.registration.version == "2" and not other.registration.reused


def test_manual_promote_and_rollback(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    _publish(trained, uri)  # v2: rejected by the gate (not better)
    assert alias_version(client, "champion") == "1"
    with pytest.raises(ValueError, match="needs a reason"):
        registry.promote("gate-model", "2", " ", uri)
    assert registry.promote("gate-model", "2", "validated by hand on incident replay", uri) == "1"
    assert alias_version(client, "champion") == "2" and alias_version(client, "previous") == "1"
    assert client.get_model_version("gate-model", "2").tags["promotion.reason"].startswith("validated")
    with pytest.raises(ValueError, match="already the champion"):
        registry.promote("gate-model", "2", "again", uri)
    # MLflow reads "02" as version 2: still the champion, and `previous` must not become it.
    with pytest.raises(ValueError, match="already the champion"):
        registry.promote("gate-model", "02", "padded", uri)
    assert alias_version(client, "previous") == "1"
    assert registry.rollback("gate-model", "false alarms in prod", uri) == ("2", "1")
    assert alias_version(client, "champion") == "1"
    assert client.get_model_version("gate-model", "2").tags["rollback.reason"] == "false alarms in prod"
    with pytest.raises(ValueError, match="no 'previous' version.*aiops models promote"):
        registry.rollback("gate-model", "twice", uri)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="nope not found"):  # not "no previous version"
        registry.rollback("nope", "typo", uri)
    listed = registry.list_versions("gate-model", uri)
    assert [v.version for v in listed] == ["2", "1"] and listed[1].aliases == ("champion",)
    assert "test_event_f1" in listed[0].metrics


def test_models_command_line(trained, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _publish(trained, uri)
    _publish(trained, uri)
    run = CliRunner().invoke
    listed = run(app, ["models", "list", "gate-model", "--tracking-uri", uri])
    assert listed.exit_code == 0 and "champion" in listed.output and "rejected" in listed.output
    shown = run(app, ["models", "show", "gate-model", "--tracking-uri", uri])
    assert shown.exit_code == 0 and "lineage.dataset_hash" in shown.output and "test_event_f1" in shown.output
    no_reason = run(
        app, ["models", "promote", "gate-model", "--version", "2", "--reason", "", "--tracking-uri", uri]
    )
    assert no_reason.exit_code == 2 and "needs a reason" in no_reason.output
    promoted = run(
        app, ["models", "promote", "gate-model", "--version", "2", "--reason", "ok", "--tracking-uri", uri]
    )
    assert promoted.exit_code == 0 and "champion is now version 2 (was 1)" in promoted.output
    rolled = run(app, ["models", "rollback", "gate-model", "--reason", "regression", "--tracking-uri", uri])
    assert rolled.exit_code == 0 and "from version 2 to 1" in rolled.output
    # the list shows what happened after the gate: version 2 was rolled back
    rows = {
        line.split()[0]: line
        for line in run(app, ["models", "list", "gate-model", "--tracking-uri", uri]).output.splitlines()[1:]
    }
    assert "rolled back" in rows["2"] and "rolled back" not in rows["1"]
    missing = run(app, ["models", "list", "nope", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "cannot list 'nope'" in missing.output


def test_a_retried_step_neither_restores_a_rolled_back_version_nor_brands_the_champion(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    _publish(trained, uri)  # v2, kept out by the gate
    registry.promote("gate-model", "2", "looked better by hand", uri)
    registry.rollback("gate-model", "false alarms in prod", uri)  # champion 1 again

    def v2_looks_better(model_uri: str) -> dict[str, float]:
        return {"event_f1": 0.9 if model_uri.endswith("/2") else 0.5}

    retry = registry.register_and_gate(
        "gate-model", None, v2_looks_better, primary_metric="event_f1", tracking_uri=uri, existing_version="2"
    )
    assert not retry.decision.promote and "rolled back by an operator" in retry.decision.reason
    assert alias_version(client, "champion") == "1"

    registry.promote("gate-model", "2", "fixed and re-validated", uri)  # champion 2, previous 1

    def previous_breaks(model_uri: str) -> dict[str, float]:
        if model_uri.endswith("/1"):
            raise OSError("artifact store unreachable")
        return {"event_f1": 0.9}

    retry = registry.register_and_gate(
        "gate-model", None, previous_breaks, primary_metric="event_f1", tracking_uri=uri, existing_version="2"
    )
    assert retry.decision.promote and retry.decision.reason.startswith("already champion, kept")
    assert alias_version(client, "champion") == "2" and alias_version(client, "previous") == "1"
    assert client.get_model_version("gate-model", "2").tags["gate.decision"] != "rejected"


def test_a_drift_check_compares_only_new_rows_and_the_same_hours(trained, tmp_path):
    import pandas as pd

    from aiops.drift import TRAINING_END_TAG, check_against_champion
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    source = SyntheticSource(seed=7, duration="2D", n_anomalies=6, deployments_per_namespace=1)
    features = build_features(synthetic_telemetry(source).metrics)
    end = pd.Timestamp("2026-01-06T06:00:00Z")
    train = features[features["timestamp"] <= end]  # the first 30 hours
    _publish(trained, uri, reference=train)
    client = registry_client(uri)
    model_run = client.get_model_version("gate-model", "1").tags["model_run_id"]
    assert pd.Timestamp(client.get_run(model_run).data.tags[TRAINING_END_TAG]) == end

    # the last day: its first six hours were training rows, the 18 after them meet the same hours
    decision = check_against_champion(features, "gate-model", uri, window="1D")
    assert f"were training data and are left out: compared {end + pd.Timedelta('1min')}" in decision.reason
    assert "compared with the reference rows from 06:01-23:59 UTC" in decision.reason
    with pytest.raises(ValueError, match="lies within the champion's training period"):
        check_against_champion(train, "gate-model", uri, window="1D")
    forced = check_against_champion(train, "gate-model", uri, window="1D", force=True)
    assert forced.retrain and forced.reason.startswith("retraining forced; the drift check could not run")
    with pytest.raises(ValueError, match="widen the window"):
        check_against_champion(features, "gate-model", uri, window="10min")


def test_a_champion_without_a_drift_reference_is_retrained_when_forced(trained, tmp_path):
    from aiops.drift import check_against_champion

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _publish(trained, uri)  # no reference sample, as before drift checks existed
    _, test, _ = trained
    refused = "stores no reference_sample.parquet; retrain with force=True"
    with pytest.raises(FileNotFoundError, match=refused):
        check_against_champion(test, "gate-model", uri)
    forced = check_against_champion(test, "gate-model", uri, force=True)
    assert forced.retrain and forced.champion_version == "1"
    assert forced.reason.startswith("retraining forced; gate-model v1 stores no reference_sample.parquet")


def test_the_gate_does_not_promote_over_a_champion_it_did_not_compare(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    _publish(trained, uri)  # v2, kept out by the gate
    registry.promote("gate-model", "2", "by hand", uri)  # champion 2, previous 1
    source = client.get_model_version("gate-model", "1").source

    def operator_rolls_back_while_the_champion_is_scored(model_uri: str) -> dict[str, float]:
        if model_uri.endswith("/2"):
            registry.rollback("gate-model", "paged at night", uri)  # champion 1 now
            return {"event_f1": 0.5}
        return {"event_f1": 0.9}

    gated = registry.register_and_gate(
        "gate-model", source, operator_rolls_back_while_the_champion_is_scored, primary_metric="event_f1",
        tracking_uri=uri,
    )  # fmt: skip
    assert not gated.decision.promote and "the champion changed while the gate ran" in gated.decision.reason
    assert alias_version(client, "champion") == "1"
    assert client.get_model_version("gate-model", gated.version).tags["gate.decision"] == "rejected"


def test_a_gate_naming_an_unknown_metric_registers_nothing(trained, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    source = client.get_model_version("gate-model", "1").source
    for _ in range(2):
        with pytest.raises(KeyError, match="event_precison"):
            registry.register_and_gate(
                "gate-model", source, lambda uri: {"event_f1": 0.9}, primary_metric="event_f1",
                guards={"event_precison": 0.1}, tracking_uri=uri,
            )  # fmt: skip
    assert [str(v.version) for v in client.search_model_versions("name = 'gate-model'")] == ["1"]


def test_a_version_an_operator_replaced_by_hand_is_not_put_back_by_a_retry(trained, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    _publish(trained, uri)
    _publish(trained, uri)
    registry.promote("gate-model", "2", "looked better", uri)
    registry.promote("gate-model", "1", "v2 misbehaved; back by hand", uri)  # not a rollback
    retry = registry.register_and_gate(
        "gate-model", None, lambda model_uri: {"event_f1": 0.9 if model_uri.endswith("/2") else 0.5},
        primary_metric="event_f1", tracking_uri=uri, existing_version="2",
    )  # fmt: skip
    assert not retry.decision.promote and "taken out of service" in retry.decision.reason
    assert alias_version(client, "champion") == "1"
    rows = {
        line.split()[0]: line
        for line in CliRunner()
        .invoke(app, ["models", "list", "gate-model", "--tracking-uri", uri])
        .output.splitlines()[1:]
    }
    assert "replaced" in rows["2"] and "promoted" in rows["1"]
    registry.promote("gate-model", "2", "fixed", uri)  # promoted again by hand: no longer "replaced"
    assert registry.last_manual_action(client.get_model_version("gate-model", "2").tags)[0] == "promotion"


def test_models_list_survives_a_version_whose_run_is_gone(trained, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gone = _publish(trained, uri).run_id
    _publish(trained, uri)
    first_run = registry_client(uri).get_model_version("gate-model", "1").run_id
    real = MlflowClient.get_run

    def get_run(self, run_id):
        if run_id == first_run:
            raise MlflowException(f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        return real(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", get_run)
    listed = registry.list_versions("gate-model", uri)
    assert [v.version for v in listed] == ["2", "1"] and listed[1].metrics == {} and gone


def test_a_relative_sqlite_uri_keeps_the_artifacts_beside_its_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///store/mlflow.db"  # relative to the working directory, as SQLAlchemy reads it
    assert registry.sqlite_path(uri) == tmp_path / "store" / "mlflow.db"
    assert registry.sqlite_path(f"sqlite:///{tmp_path}/abs.db") == tmp_path / "abs.db"
    registry.configure(uri)
    experiment = registry_client(uri).get_experiment(registry.ensure_experiment("x", uri))
    assert experiment.artifact_location == (tmp_path / "store" / "artifacts").as_uri()


def test_a_retried_registration_completes_what_the_failed_attempt_left(trained, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry_client(uri)
    real = publish._record_outcome

    def fails(*args, **kwargs):
        raise OSError("artifact store hiccup")

    monkeypatch.setattr(publish, "_record_outcome", fails)
    with pytest.raises(OSError):
        _publish(trained, uri, kfp_run_id="run-9")
    version = client.get_model_version("gate-model", "1")
    assert not version.description
    monkeypatch.setattr(publish, "_record_outcome", real)
    again = _publish(trained, uri, kfp_run_id="run-9")
    assert again.registration.reused and again.registration.version == "1"
    assert client.get_model_version("gate-model", "1").description.startswith("# ")
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED" and "test_event_f1" in run.data.metrics
    assert {"model_card.md", "gate_decision.json"} <= {a.path for a in client.list_artifacts(again.run_id)}
