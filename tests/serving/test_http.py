"""The real KServe model server (``python -m serving``) on 127.0.0.1, loading from an MLflow registry."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiops.features import build_features
from aiops.localprom import free_port
from tests.serving.conftest import instances, telemetry_rows, v2_inputs, vectors

pytestmark = pytest.mark.integration
NAME = "anomaly"
MAX_BATCH = 100


@dataclass
class Server:
    port: int
    log: Path

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request on a fresh connection; JSON answers are decoded."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if body is not None and not isinstance(body, bytes | str):
                body = json.dumps(body)
            connection.request(
                method, path, body=body, headers=headers or {"content-type": "application/json"}
            )
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data.decode()

    def predict(self, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return self.call("POST", f"/v1/models/{NAME}:predict", body, **kwargs)

    def infer(self, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return self.call("POST", f"/v2/models/{NAME}/infer", body, **kwargs)


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    port = free_port()
    command = [
        sys.executable, "-m", "serving",
        "--model", f"models:/{registered.name}@champion",
        "--tracking-uri", registered.tracking_uri,
        "--port", str(port), "--name", NAME, "--max-batch", str(MAX_BATCH),
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
    running = Server(port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the model server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if running.call("GET", f"/v2/models/{NAME}/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the model server was not ready in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the model server ignored SIGTERM for 30 s")
        assert code == 0, f"the model server exited with {code} on SIGTERM:\n{log.read_text()[-2000:]}"


def test_ready_only_for_the_loaded_model(server):
    assert server.call("GET", "/v2/health/live") == (200, {"live": True})
    assert server.call("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.call("GET", f"/v2/models/{NAME}/ready") == (200, {"name": NAME, "ready": True})
    assert server.call("GET", f"/v1/models/{NAME}") == (200, {"name": NAME, "ready": True})
    status, body = server.call("GET", "/v2/models/other/ready")
    assert status == 404 and "other" in body["error"]


def test_v1_scores_equal_the_registered_bundle(server, trained):
    rows = trained.split.test.iloc[[3, 150, 900]]
    status, body = server.predict({"instances": instances(rows)})
    assert status == 200, body
    assert body["model_version"] == "1" and body["threshold"] == trained.bundle.threshold
    predictions = body["predictions"]
    np.testing.assert_allclose(
        [p["anomaly_score"] for p in predictions], trained.bundle.score(rows), rtol=1e-12
    )
    first = predictions[0]
    assert first["pod"] == rows["pod"].iloc[0]
    assert set(first["detectors"]) == {"isolation_forest", "forecast"}
    assert {"raw", "surprise", "raw_threshold", "alarm", "signal"} <= set(first["detectors"]["forecast"])
    assert (
        len(first["top_features"]) == 5
        and first["top_features"][0]["name"] in trained.bundle.contract.feature_names
    )


def test_v1_feature_vectors_score_like_objects(server, trained):
    rows = trained.split.test.iloc[[3, 150, 900]]
    status, objects = server.predict({"instances": instances(rows)})
    assert status == 200, objects
    names = trained.bundle.contract.feature_names
    status, positional = server.predict({"instances": vectors(rows, names), "parameters": {"top_k": 5}})
    assert status == 200, positional
    assert positional["predictions"] == objects["predictions"]


def test_v2_infer_with_the_contract_from_the_contract_endpoint(server, trained):
    status, contract = server.call("GET", f"/v2/models/{NAME}/contract")
    assert status == 200 and tuple(contract["feature_names"]) == trained.bundle.contract.feature_names
    status, metadata = server.call("GET", f"/v2/models/{NAME}")
    assert status == 200 and metadata["inputs"][0]["shape"] == [-1, len(contract["feature_names"])]

    rows = trained.split.test.iloc[[10, 11]]
    inputs = v2_inputs(rows, tuple(contract["feature_names"]))
    inputs[0]["parameters"] = {"contract_id": contract["contract_id"]}
    status, body = server.infer({"inputs": inputs, "parameters": {"top_k": 3}})
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    np.testing.assert_allclose(outputs["anomaly_score"]["data"], trained.bundle.score(rows), rtol=1e-12)
    assert outputs["top_features"]["shape"] == [2, 3]
    assert body["parameters"]["model_version"] == "1"
    # the metadata lists every output a response carries, with its type
    listed = {o["name"]: o["datatype"] for o in metadata["outputs"]}
    assert listed == {name: o["datatype"] for name, o in outputs.items()}


def _binary_infer(server, rows, names, cut: int = 0):
    """POST ``rows`` in the binary tensor extension, the last ``cut`` bytes of the features dropped."""
    features, *keys = v2_inputs(rows, names)
    raw = rows.loc[:, list(names)].to_numpy(dtype="<f8").tobytes()
    raw = raw[: len(raw) - cut]
    del features["data"]
    features["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [features, *keys]}).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return server.infer(header + raw, headers=headers)


def test_v2_binary_tensor_extension(server, trained):
    """The open inference protocol's binary data extension: a JSON header, then raw FP64 bytes."""
    rows = trained.split.test.iloc[[20, 21, 22]]
    status, body = _binary_infer(server, rows, trained.bundle.contract.feature_names)
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    np.testing.assert_allclose(outputs["anomaly_score"]["data"], trained.bundle.score(rows), rtol=1e-12)


def test_raw_telemetry_is_turned_into_features_on_the_server(server, trained, small_telemetry):
    metrics = small_telemetry.metrics
    end = trained.split.test["timestamp"].iloc[500]
    window = metrics[(metrics["timestamp"] <= end) & (metrics["timestamp"] > end - pd.Timedelta("40min"))]
    pods = window.loc[window["timestamp"] == end, "pod"].drop_duplicates().iloc[:2].tolist()
    recent = window[window["pod"].isin(pods)]
    status, body = server.predict({"telemetry": telemetry_rows(recent)})
    assert status == 200, body
    # The whole history is scored (the forecaster's level correction and the LSTM read it),
    # the latest row of each pod is reported.
    features = build_features(recent)
    scores = pd.Series(trained.bundle.score(features), index=features.index)
    expected = scores[features.groupby("pod").tail(1).index].set_axis(features.groupby("pod").tail(1)["pod"])
    got = {p["pod"]: p["anomaly_score"] for p in body["predictions"]}
    assert set(got) == set(pods)
    for pod in pods:
        assert got[pod] == pytest.approx(expected[pod], rel=1e-12)


def _one(trained) -> dict[str, Any]:
    return instances(trained.split.test.iloc[[7]])[0]


def _without(row: dict[str, Any], column: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != column}


def _v2(trained, **features_tensor: Any) -> dict[str, Any]:
    """A one-row v2 body whose ``features`` tensor is changed by ``features_tensor``."""
    inputs = v2_inputs(trained.split.test.iloc[[7]], trained.bundle.contract.feature_names)
    return {"inputs": [{**inputs[0], **features_tensor}, *inputs[1:]]}


JSON: dict[str, str] = {}
ENTITY = {"cluster": "c", "namespace": "n", "pod": "p", "node": ""}
BAD_REQUESTS = [
    ("v1", lambda t: b'{"instances": [', JSON, 400, "Unrecognized request format"),
    ("v1", lambda t: b"instances please", {"content-type": "text/plain"}, 400, "not valid JSON"),
    ("v1", lambda t: {"instances": {"a": 1}}, JSON, 400, 'Expected "instances" to be a list'),
    ("v1", lambda t: {"rows": []}, JSON, 400, "exactly one of 'instances'"),
    ("v1", lambda t: {"instances": [_without(_one(t), "request_rate")]}, JSON, 400, "1 missing"),
    ("v1", lambda t: {"instances": [{**_one(t), "gpu_temp": 1.0}]}, JSON, 400, "1 unknown ('gpu_temp')"),
    ("v1", lambda t: {"instances": [{**_one(t), "request_rate": "high"}]}, JSON, 400, "must be a number"),
    ("v1", lambda t: b'{"instances": [{"request_rate": 1e999}]}', JSON, 400, "Unrecognized request format"),
    ("v1", lambda t: {"instances": [{**_one(t), "timestamp": "soon"}]}, JSON, 400, "ISO 8601"),
    ("v1", lambda t: {"instances": [_one(t)] * (MAX_BATCH + 1)}, JSON, 400, f"limit of {MAX_BATCH}"),
    ("v1", lambda t: {"instances": [_one(t)], "parameters": {"top_k": 1000}}, JSON, 400, "'top_k'"),
    ("v1", lambda t: {"instances": [[0.0, 1.0]]}, JSON, 400, "a feature vector needs"),
    ("v1", lambda t: {"telemetry": [{"timestamp": "2026-01-05T00:00:00Z"}]}, JSON, 400, "key column(s)"),
    ("v1", lambda t: {"entities": [ENTITY]}, JSON, 501, "Feast"),
    ("v2", lambda t: b"{", JSON, 400, "not valid JSON"),
    ("v2", lambda t: {"inputs": [{"name": "features"}]}, JSON, 422, "shape"),
    ("v2", lambda t: {"inputs": [_v2(t)["inputs"][0]]}, JSON, 400, "5 missing ('timestamp'"),
    ("v2", lambda t: _v2(t, shape=[1, 5], data=[0.0] * 5), JSON, 400, "the model expects [n, "),
    ("v2", lambda t: _v2(t, parameters={"feature_names": "a,b"}), JSON, 400, "feature_names"),
    ("v2", lambda t: _v2(t, datatype="BYTES"), JSON, 400, "must be FP64"),
]


@pytest.mark.parametrize(("protocol", "make_body", "headers", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_that_says_what_was_expected(
    server, trained, protocol, make_body, headers, status, message
):
    send = server.predict if protocol == "v1" else server.infer
    got, body = send(make_body(trained), headers={"content-type": "application/json", **headers})
    assert got == status, body
    text = body if isinstance(body, str) else json.dumps(body)
    assert message in (body.get("error", text) if isinstance(body, dict) else text)


def test_the_server_survives_bad_requests_and_counts_them(server, trained):
    for _, make_body, headers, _, _ in BAD_REQUESTS:
        server.predict(make_body(trained), headers={"content-type": "application/json", **headers})
    assert server.call("GET", f"/v2/models/{NAME}/ready")[0] == 200
    assert server.predict({"instances": [_one(trained)]})[0] == 200

    status, text = server.call("GET", "/metrics", headers={})
    assert status == 200
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    model = {"model_name": NAME, "model_version": "1"}

    def value(name: str, **labels: str) -> float:
        wanted = {**model, **labels}
        found = [s.value for s in samples if s.name == name and s.labels == wanted]
        assert found, f"{name}{wanted} not exposed"
        return found[0]

    assert value("aiops_serving_requests_total", protocol="v1", outcome="client_error") >= 10
    assert value("aiops_serving_requests_total", protocol="v1", outcome="not_configured") >= 1
    assert value("aiops_serving_requests_total", protocol="v1", outcome="ok") >= 1
    assert value("aiops_serving_request_seconds_count", protocol="v1") >= 1
    assert value("aiops_serving_batch_rows_count", protocol="v1") >= 1
    assert value("aiops_serving_rows_total") >= 1
    assert value("aiops_serving_anomalies_total") <= value(
        "aiops_serving_rows_total"
    )  # exact counts: test_predictor
    assert value("aiops_serving_anomaly_score_bucket", le="+Inf") >= 1
    assert value("aiops_serving_stage_seconds_count", stage="score.forecast") >= 1
    info = [s for s in samples if s.name == "aiops_serving_model_info"]
    assert info and info[0].labels["members"] == "isolation_forest:fast,forecast:fast"


@pytest.mark.parametrize("cut", [8, 3])  # one value short; a byte count no FP64 tensor can have
def test_a_binary_tensor_that_does_not_fill_its_shape_is_a_400(server, trained, cut):
    rows = trained.split.test.iloc[[20]]
    status, body = _binary_infer(server, rows, trained.bundle.contract.feature_names, cut=cut)
    assert status == 400, body
    assert "binary tensor request could not be decoded" in json.dumps(body)
