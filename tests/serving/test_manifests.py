"""Every generated manifest validates against KServe's own InferenceService CRD schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.manifests import (
    Resources,
    ServiceSpec,
    inference_service,
    isvc_schema,
    raw_canary,
    serving_runtime,
    to_dict,
    to_yaml,
    validate_isvc,
)

CRD = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "reference"
    / "kserve"
    / "serving.kserve.io_inferenceservices.yaml"
)
pytestmark = pytest.mark.skipif(not CRD.exists(), reason="KServe CRD not found beside the repository")


@pytest.fixture(scope="module")
def schema():
    return isvc_schema(CRD)


def spec(mode="Serverless", name="anomaly-detector", **kw):
    return ServiceSpec(
        name=name,
        namespace="aiops",
        storage_uri="s3://mlflow/1/models/m-abc/artifacts",
        mode=mode,
        model_version="7",
        **kw,
    )


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_inference_service_validates(schema, mode):
    isvc = to_dict(inference_service(spec(mode)))
    validate_isvc(isvc, schema)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"].startswith("s3://") and model["runtime"] == "aiops-detector-runtime"
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert model["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert isvc["metadata"]["labels"]["aiops/model-version"] == "7"


def test_serverless_canary_sets_the_traffic_share(schema):
    isvc = to_dict(inference_service(spec(), canary_traffic_percent=10))
    validate_isvc(isvc, schema)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_raw_deployment_canary_uses_a_second_service_and_a_weighted_route(schema):
    with pytest.raises(ValueError, match="ignored by KServe in RawDeployment"):
        inference_service(spec("RawDeployment"), canary_traffic_percent=10)
    canary_isvc, route = raw_canary(
        spec("RawDeployment"), spec("RawDeployment", name="anomaly-detector-canary"), 20
    )
    validate_isvc(to_dict(canary_isvc), schema)
    assert route["spec"]["to"] == {"kind": "Service", "name": "anomaly-detector-predictor", "weight": 80}
    assert route["spec"]["alternateBackends"][0]["weight"] == 20


def test_invalid_manifest_is_reported(schema):
    bad = to_dict(inference_service(spec(), canary_traffic_percent=10))
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(ValueError, match="canaryTrafficPercent"):
        validate_isvc(bad, schema)
    with pytest.raises(ValueError, match="unknown deployment mode"):
        spec("Knative")
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        inference_service(spec(), canary_traffic_percent=120)


def test_serving_runtime_and_yaml():
    runtime = to_dict(serving_runtime("quay.io/example/aiops@sha256:" + "0" * 64, namespace="aiops"))
    assert runtime["kind"] == "ServingRuntime" and runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "aiops-detector"
    container = runtime["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "serving"] and "/mnt/models" in container["args"]
    docs = list(
        yaml.safe_load_all(to_yaml([serving_runtime("img"), inference_service(spec(resources=Resources()))]))
    )
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
