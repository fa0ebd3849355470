"""The KServe predictor in-process: loading from each source, both protocols, error mapping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.errors import ModelLoadError
from tests.serving.conftest import instances, v2_inputs

NAME = "detector"


@pytest.fixture
def predictor_cls(kserve_ready):
    from serving.predictor import AnomalyPredictor

    return AnomalyPredictor


def loaded(predictor_cls, uri: str, **kwargs):
    predictor = predictor_cls(NAME, uri, registry=CollectorRegistry(), **kwargs)
    assert predictor.ready is False
    assert predictor.load() is True and predictor.ready is True
    return predictor


def v1_scores(predictor, frame) -> np.ndarray:
    answer = predictor.predict({"instances": instances(frame)})
    return np.array([p["anomaly_score"] for p in answer["predictions"]])


def test_bundle_folder(predictor_cls, trained):
    predictor = loaded(predictor_cls, str(trained.bundle_dir))
    rows = trained.split.test.iloc[::25]
    np.testing.assert_array_equal(v1_scores(predictor, rows), trained.bundle.score(rows))
    assert predictor.service.version.startswith("sha256:")
    assert predictor.service.scorer.scorer_kinds == {"isolation_forest": "fast", "forecast": "fast"}


@pytest.mark.parametrize("reference", ["@champion", "/1"])
def test_registered_model_by_alias_or_version(predictor_cls, trained, registered, reference):
    uri = f"models:/{registered.name}{reference}"
    predictor = loaded(predictor_cls, uri, tracking_uri=registered.tracking_uri)
    assert predictor.service.version == registered.version
    assert predictor.service.loaded.example is not None  # the input example became the probe rows
    rows = trained.split.test.iloc[::25]
    np.testing.assert_array_equal(v1_scores(predictor, rows), trained.bundle.score(rows))


def test_aliases_resolve_to_their_own_versions(predictor_cls, trained, small_telemetry, tmp_path):
    """With two versions, @champion, @challenger and /N each load the version they name."""
    from aiops.publish import Lineage, publish_detector

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for move_champion in (True, False):  # v1 champion; v2 challenger only
        publish_detector(
            trained.bundle_dir,
            trained.split.test,
            small_telemetry.labels,
            tracking_uri=uri,
            experiment="alias-tests",
            model_name="two-versions",
            lineage=Lineage(dataset_hash="t", data_rows=1, source="synthetic", seed=7),
            margin=-1.0,
            move_champion=move_champion,
        )
    for reference, version in (("@champion", "1"), ("@challenger", "2"), ("/2", "2"), ("/1", "1")):
        predictor = loaded(predictor_cls, f"models:/two-versions{reference}", tracking_uri=uri)
        assert predictor.service.version == version, reference


def test_mlflow_model_folder_as_kserve_mounts_it(predictor_cls, trained, registered, tmp_path):
    import mlflow.artifacts

    from aiops.registry import mlflow_client

    client = mlflow_client(registered.tracking_uri)
    source = client.get_model_version_download_uri(registered.name, registered.version)
    mounted = tmp_path / "mnt" / "models"
    mlflow.artifacts.download_artifacts(
        artifact_uri=source,
        dst_path=str(mounted),
        tracking_uri=registered.tracking_uri,
        registry_uri=registered.tracking_uri,
    )
    predictor = loaded(predictor_cls, str(tmp_path / "mnt"), model_version="7")  # found one level down
    assert predictor.service.version == "7"
    rows = trained.split.test.iloc[::40]
    np.testing.assert_array_equal(v1_scores(predictor, rows), trained.bundle.score(rows))


def test_v2_request_gives_the_v1_numbers_as_tensors(predictor_cls, trained):
    from kserve import InferInput, InferRequest

    predictor = loaded(predictor_cls, str(trained.bundle_dir))
    rows = trained.split.test.iloc[10:13]
    inputs = [
        InferInput(t["name"], t["shape"], t["datatype"], t["data"])
        for t in v2_inputs(rows, predictor.service.decoder.names)
    ]
    response = predictor.predict(InferRequest(NAME, inputs, request_id="r1", parameters={"top_k": 2}))
    body, _ = response.to_rest()
    outputs = {o["name"]: o for o in body["outputs"]}
    np.testing.assert_array_equal(outputs["anomaly_score"]["data"], trained.bundle.score(rows))
    assert outputs["is_anomaly"]["datatype"] == "BOOL"
    assert outputs["top_features"]["shape"] == [3, 2]
    assert {"isolation_forest.surprise", "forecast.raw", "forecast.signal", "pod"} <= set(outputs)
    assert body["model_version"] == predictor.service.version and body["id"] == "r1"


def test_client_errors_become_400_and_the_unconfigured_501(predictor_cls, trained):
    from kserve.errors import InvalidInput

    predictor = loaded(predictor_cls, str(trained.bundle_dir))
    with pytest.raises(InvalidInput, match="1 unknown"):
        predictor.predict({"instances": [{**instances(trained.split.test.head(1))[0], "extra": 1.0}]})
    with pytest.raises(NotImplementedError, match="not configured"):
        predictor.predict({"entities": [{"cluster": "c", "namespace": "n", "pod": "p", "node": ""}]})


def test_metrics_count_rows_and_anomalies_under_the_model_version(predictor_cls, trained):
    registry = CollectorRegistry()
    predictor = predictor_cls(NAME, str(trained.bundle_dir), registry=registry)
    predictor.load()
    # a batch in which the model flags some rows and not others (scored as sent: in its own context)
    test = trained.split.test
    batches = (test.iloc[i : i + 40] for i in range(0, len(test) - 40, 40))
    rows, flagged = next(
        (b, n) for b in batches if 0 < (n := int(trained.bundle.predict(b)["is_anomaly"].sum())) < len(b)
    )
    predictor.predict({"instances": instances(rows)})
    labels = {"model_name": NAME, "model_version": predictor.service.version}
    assert registry.get_sample_value("aiops_serving_rows_total", labels) == len(rows)
    assert registry.get_sample_value("aiops_serving_anomalies_total", labels) == flagged
    ok = registry.get_sample_value(
        "aiops_serving_requests_total", {**labels, "protocol": "v1", "outcome": "ok"}
    )
    assert ok == 1


def test_a_v2_request_for_an_output_the_model_lacks_is_a_counted_client_error(predictor_cls, trained):
    from kserve import InferInput, InferRequest
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import RequestedOutput

    registry = CollectorRegistry()
    predictor = predictor_cls(NAME, str(trained.bundle_dir), registry=registry)
    predictor.load()
    inputs = [
        InferInput(t["name"], t["shape"], t["datatype"], t["data"])
        for t in v2_inputs(trained.split.test.iloc[10:12], predictor.service.decoder.names)
    ]
    asked = [RequestedOutput("anomaly_score"), RequestedOutput("nonexistent")]
    with pytest.raises(InvalidInput, match=r"requested output\(s\) \['nonexistent'\] are not outputs"):
        predictor.predict(InferRequest(NAME, inputs, request_outputs=asked))
    labels = {"model_name": NAME, "model_version": predictor.service.version, "protocol": "v2"}
    assert (
        registry.get_sample_value("aiops_serving_requests_total", {**labels, "outcome": "client_error"}) == 1
    )
    assert registry.get_sample_value("aiops_serving_requests_total", {**labels, "outcome": "ok"}) == 0
    # nothing was answered, so no row counts as scored
    assert not registry.get_sample_value(
        "aiops_serving_rows_total", {"model_name": NAME, "model_version": predictor.service.version}
    )
    body, _ = predictor.predict(InferRequest(NAME, inputs, request_outputs=asked[:1])).to_rest()
    assert [o["name"] for o in body["outputs"]] == ["anomaly_score"]


def test_a_model_that_cannot_load_leaves_the_predictor_unready(predictor_cls, registered, tmp_path):
    predictor = predictor_cls(NAME, str(tmp_path / "nothing-here"), registry=CollectorRegistry())
    with pytest.raises(ModelLoadError, match="does not exist"):
        predictor.load()
    assert predictor.ready is False
    unknown = predictor_cls(NAME, f"models:/{registered.name}@nobody", tracking_uri=registered.tracking_uri)
    with pytest.raises(ModelLoadError, match="not found in the registry"):
        unknown.load()


def test_a_model_of_another_feature_transform_is_refused(predictor_cls, trained, tmp_path):
    copy = shutil.copytree(trained.bundle_dir, tmp_path / "old")
    contract = json.loads((copy / "feature_contract.json").read_text())
    (copy / "feature_contract.json").write_text(json.dumps({**contract, "transform_version": "0"}))
    with pytest.raises(ModelLoadError, match="feature transform v0"):
        predictor_cls(NAME, str(copy), registry=CollectorRegistry()).load()


def test_a_model_of_another_bundle_format_is_refused_with_both_versions(predictor_cls, trained, tmp_path):
    copy = shutil.copytree(trained.bundle_dir, tmp_path / "future")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "bundle_format": 99, "aiops_version": "7.0"}))
    expected = r"future is a detector bundle of format 99, written by aiops 7\.0"
    with pytest.raises(ModelLoadError, match=expected):
        predictor_cls(NAME, str(copy), registry=CollectorRegistry()).load()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("feature_contract.json", "cannot be read \\(JSONDecodeError"),
        ("meta.json", "cannot be read"),
    ],
)
def test_a_corrupt_model_file_is_a_load_error_naming_the_model(
    predictor_cls, trained, tmp_path, damage, message
):
    copy = shutil.copytree(trained.bundle_dir, tmp_path / "partial")
    (copy / damage).write_text((copy / damage).read_text()[:25])  # a copy cut short
    with pytest.raises(ModelLoadError, match=message):
        predictor_cls(NAME, str(copy), registry=CollectorRegistry()).load()


def test_a_sqlite_store_that_is_not_there_is_an_error_not_a_new_store(predictor_cls, tmp_path):
    missing = tmp_path / "no" / "such" / "mlflow.db"
    predictor = predictor_cls(NAME, "models:/m@champion", tracking_uri=f"sqlite:///{missing}")
    with pytest.raises(ModelLoadError, match="no MLflow store at"):
        predictor.load()
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--port", "70000"], "a port is 1 to 65535"), (["--port", "8080", "--max-batch", "0"], "at least 1")],
)
def test_command_line_options_are_checked_before_the_model_loads(capsys, option, message):
    from serving.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--model", "models:/m@champion", *option])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_aiops_serve_takes_the_same_options_as_the_container_entry_point():
    from typer.testing import CliRunner

    from aiops.cli import app

    text = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    for option in ("--model-version", "--feature-service", "--feature-repo", "--max-batch", "--tracking-uri"):
        assert option in text


def test_command_line_exits_2_with_the_reason_when_the_model_is_missing(kserve_ready, tmp_path, capsys):
    from serving.__main__ import main

    assert main(["--model", str(tmp_path / "missing"), "--port", "8080"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_aiops_serve_exits_2_with_the_reason_when_the_model_is_missing(kserve_ready, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "missing"), "--port", "8080"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
