"""Every generated manifest validates against KServe's own InferenceService CRD schema."""

from __future__ import annotations

import math
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
from tests.conftest import shared_absent

CRD = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "reference"
    / "kserve"
    / "serving.kserve.io_inferenceservices.yaml"
)


@pytest.fixture(scope="module")
def schema():
    if shared_absent(CRD.exists()):
        pytest.skip(f"KServe CRD not found at {CRD} (the shared reference folder is absent)")
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
    # The predictor labels its metrics with the registry version, which the cluster canary selects on.
    assert model["env"] == [{"name": "AIOPS_MODEL_VERSION", "value": "7"}]


def test_the_predictor_takes_its_version_label_from_the_environment(monkeypatch):
    from serving.__main__ import parse_args

    assert parse_args(["--model", "/mnt/models", "--port", "8080"]).model_version is None
    monkeypatch.setenv("AIOPS_MODEL_VERSION", "7")
    assert parse_args(["--model", "/mnt/models", "--port", "8080"]).model_version == "7"
    assert parse_args(["--model", "m", "--port", "1", "--model-version", "8"]).model_version == "8"


def test_arm_stats_refuse_a_selector_that_matches_no_predictor(tmp_path):
    """An arm Prometheus has no series for is an error, not an arm that served 0 requests."""
    from aiops.localprom import serve
    from serving.rollout import arm_stats
    from tests.conftest import need_binary

    need_binary("prometheus", "prometheus")
    (tmp_path / "data").mkdir()
    with (
        serve(tmp_path / "data", tmp_path) as url,
        pytest.raises(
            RuntimeError, match=r'no predictor series matching \{model_version="6"\} in the last 15m'
        ),
    ):
        arm_stats(url, 'model_version="6"', "15m")


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


class _RecordingKServe:
    """Records what the rollout asks of ``KServeClient`` (no cluster can run here): the calls'
    order and the InferenceServices they send, each validated against KServe's CRD."""

    def __init__(self, schema):
        self.schema, self.calls = schema, []

    def create(self, isvc, namespace):
        validate_isvc(to_dict(isvc), self.schema)
        self.calls.append(("create", isvc.metadata.name, isvc.spec.predictor.model.storage_uri))

    def patch(self, name, isvc, namespace):
        validate_isvc(to_dict(isvc), self.schema)
        self.calls.append(("patch", name, isvc.spec.predictor.model.storage_uri))

    def wait_isvc_ready(self, name, namespace, timeout_seconds):
        self.calls.append(("ready", name))

    def delete(self, name, namespace):
        self.calls.append(("delete", name))


@pytest.mark.parametrize("outcome", ["promote", "rollback"])
def test_raw_deployment_rollout_leaves_one_service_and_all_traffic_on_it(schema, outcome):
    """After either outcome the next rollout finds ``{name}`` serving the champion and no canary."""
    from serving.rollout import KServeCanary

    kserve = _RecordingKServe(schema)
    routes = []
    stable = spec("RawDeployment")
    canary = KServeCanary(stable, 20, "http://prometheus", client=kserve, apply_route=routes.append)
    new_uri = "s3://mlflow/1/models/m-new/artifacts"
    canary.deploy(new_uri, "8")
    assert kserve.calls == [
        ("create", "anomaly-detector-canary", new_uri),
        ("ready", "anomaly-detector-canary"),
    ]
    assert routes[-1]["spec"]["alternateBackends"][0]["weight"] == 20
    kserve.calls.clear()
    getattr(canary, outcome)(new_uri, "8")
    served = new_uri if outcome == "promote" else stable.storage_uri
    final = routes[-1]["spec"]
    assert final["to"] == {"kind": "Service", "name": "anomaly-detector-predictor", "weight": 100}
    assert "alternateBackends" not in final  # the canary's Service is deleted next
    assert kserve.calls[-1] == ("delete", "anomaly-detector-canary")
    if outcome == "promote":
        # traffic moves to the canary before the stable service is replaced, and back once it is ready
        assert routes[-2]["spec"]["to"]["weight"] == 0
        assert kserve.calls[:2] == [("patch", "anomaly-detector", new_uri), ("ready", "anomaly-detector")]
    assert canary.stable.storage_uri == served


def test_a_raw_deployment_promotion_whose_stable_never_gets_ready_puts_the_old_model_back(schema):
    """The stable service was patched to the new model but never got ready: its old spec goes
    back before the Route returns traffic to it, so it cannot switch to the new model later."""
    from serving.rollout import KServeCanary

    class StableNeverReady(_RecordingKServe):
        def wait_isvc_ready(self, name, namespace, timeout_seconds):
            super().wait_isvc_ready(name, namespace, timeout_seconds)
            if name == "anomaly-detector":
                raise RuntimeError("timed out waiting for anomaly-detector to get ready")

    kserve, routes = StableNeverReady(schema), []
    stable = spec("RawDeployment")
    canary = KServeCanary(stable, 20, "http://prometheus", client=kserve, apply_route=routes.append)
    new_uri = "s3://mlflow/1/models/m-new/artifacts"
    canary.deploy(new_uri, "8")
    kserve.calls.clear()
    with pytest.raises(RuntimeError, match="timed out"):
        canary.promote(new_uri, "8")
    canary.rollback(new_uri, "8")  # what run_cluster_rollout does next
    assert kserve.calls == [
        ("patch", "anomaly-detector", new_uri),
        ("ready", "anomaly-detector"),
        ("patch", "anomaly-detector", stable.storage_uri),  # the old model back on the stable service
        ("delete", "anomaly-detector-canary"),
    ]
    assert (
        routes[-1]["spec"]["to"]["name"] == "anomaly-detector-predictor"
        and "alternateBackends" not in (routes[-1]["spec"])
    )
    assert canary.stable.storage_uri == stable.storage_uri


def test_raw_deployment_routes_traffic_to_the_canary_only_once_it_is_ready(schema):
    from serving.rollout import KServeCanary

    kserve = _RecordingKServe(schema)
    canary = KServeCanary(
        spec("RawDeployment"), 20, "http://prometheus", client=kserve,
        apply_route=lambda route: kserve.calls.append(("route", route["spec"].get("alternateBackends"))),
    )  # fmt: skip
    canary.deploy("s3://mlflow/1/models/m-new/artifacts", "8")
    assert [call[0] for call in kserve.calls] == ["create", "ready", "route"]


def test_a_cluster_rollout_that_breaks_off_rolls_back_and_records_why(schema, tmp_path):
    """Prometheus unreachable after the canary went live: traffic back on stable, alias kept, run recorded."""
    from aiops.registry import alias_version, mlflow_client
    from serving.rollout import ROLLOUT_EXPERIMENT, KServeCanary, run_cluster_rollout

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow_client(uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "1")
    kserve, routes = _RecordingKServe(schema), []
    stable = spec("RawDeployment")
    # Port 9 (discard) is closed here: the evidence query fails after the canary was deployed.
    canary = KServeCanary(stable, 20, "http://127.0.0.1:9", client=kserve, apply_route=routes.append)
    with pytest.raises(OSError):
        run_cluster_rollout(canary, "m", "2", "s3://mlflow/1/models/m-new/artifacts", "1", uri, wait_s=0)
    assert routes[-1]["spec"]["to"]["weight"] == 100 and "alternateBackends" not in routes[-1]["spec"]
    assert kserve.calls[-1] == ("delete", "anomaly-detector-canary")
    assert alias_version("m", "champion", uri) == "1"
    [run] = client.search_runs([client.get_experiment_by_name(ROLLOUT_EXPERIMENT).experiment_id])
    assert run.data.tags["decision"] == "rolled_back"
    assert run.data.tags["reason"].startswith("rollout failed before a verdict")
    assert client.get_model_version("m", "2").tags["rollout.decision"] == "rolled_back"


def _registry(tmp_path, champion: str | None = "1") -> str:
    from aiops.registry import mlflow_client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow_client(uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    if champion:
        client.set_registered_model_alias("m", "champion", champion)
    return uri


def _arm(errors: int):
    from aiops.canary import ArmStats

    latency = {0.01: 900.0, 0.1: 1000.0, math.inf: 1000.0}
    scores = {0.5: 600.0, 1.0: 950.0, 2.0: 990.0, math.inf: 1000.0}
    return ArmStats(1000, errors, 1000, 10, latency, scores)


def _recorded(uri: str) -> tuple[str, str]:
    from aiops.registry import mlflow_client
    from serving.rollout import ROLLOUT_EXPERIMENT

    client = mlflow_client(uri)
    [run] = client.search_runs([client.get_experiment_by_name(ROLLOUT_EXPERIMENT).experiment_id])
    return run.data.tags["decision"], run.data.tags["reason"]


class _DeleteFails(_RecordingKServe):
    def delete(self, name, namespace):
        super().delete(name, namespace)
        raise RuntimeError("apiserver: 503 on delete")


def test_a_promotion_whose_canary_cannot_be_removed_is_still_a_promotion(schema, tmp_path, monkeypatch):
    """The stable service serves the new version once it is ready: a failed clean-up after that
    must not be recorded as a rollback while the cluster serves the candidate."""
    from aiops.registry import alias_version
    from serving.rollout import KServeCanary, run_cluster_rollout

    uri = _registry(tmp_path)
    kserve, routes = _DeleteFails(schema), []
    canary = KServeCanary(
        spec("RawDeployment"), 20, "http://prometheus", client=kserve, apply_route=routes.append
    )
    monkeypatch.setattr(canary, "evidence", lambda stable, new: (_arm(1), _arm(1)))
    new_uri = "s3://mlflow/1/models/m-new/artifacts"
    result = run_cluster_rollout(canary, "m", "2", new_uri, "1", uri, wait_s=0)
    assert result.promoted and alias_version("m", "champion", uri) == "2"
    assert canary.stable.storage_uri == new_uri and canary.stable.model_version == "2"
    assert ("patch", "anomaly-detector", new_uri) in kserve.calls
    assert _recorded(uri)[0] == "promoted"


def test_a_rollback_that_fails_is_recorded_with_the_verdict(schema, tmp_path, monkeypatch):
    from aiops.registry import alias_version
    from serving.rollout import KServeCanary, run_cluster_rollout

    uri = _registry(tmp_path)
    kserve = _DeleteFails(schema)
    canary = KServeCanary(
        spec("RawDeployment"), 20, "http://prometheus", client=kserve, apply_route=lambda r: None
    )
    monkeypatch.setattr(canary, "evidence", lambda stable, new: (_arm(1), _arm(300)))
    with pytest.raises(RuntimeError, match="503 on delete"):
        run_cluster_rollout(canary, "m", "2", "s3://mlflow/1/models/m-new/artifacts", "1", uri, wait_s=0)
    assert alias_version("m", "champion", uri) == "1"
    decision, reason = _recorded(uri)
    assert decision == "rolled_back"
    assert "error rate" in reason and "the rollback failed (RuntimeError: apiserver: 503 on delete)" in reason


def test_a_rollout_that_breaks_off_and_cannot_roll_back_does_not_claim_it_did(schema, tmp_path):
    from serving.rollout import KServeCanary, run_cluster_rollout

    uri = _registry(tmp_path)
    # Port 9 (discard) is closed here: the evidence query fails, then so does the rollback.
    canary = KServeCanary(
        spec("RawDeployment"),
        20,
        "http://127.0.0.1:9",
        client=_DeleteFails(schema),
        apply_route=lambda r: None,
    )
    with pytest.raises(OSError):
        run_cluster_rollout(canary, "m", "2", "s3://mlflow/1/models/m-new/artifacts", "1", uri, wait_s=0)
    decision, reason = _recorded(uri)
    assert decision == "rolled_back" and "its rollback failed too" in reason and "rolled back:" not in reason


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
@pytest.mark.parametrize("exists", [False, True])
def test_the_first_version_on_a_cluster_is_deployed_without_comparing_it_with_itself(
    schema, tmp_path, mode, exists
):
    """No champion yet: the candidate becomes the stable service; no canary, no analysis."""
    from kubernetes.client.rest import ApiException

    from aiops.registry import alias_version
    from serving.rollout import KServeCanary, run_cluster_rollout

    class Cluster(_RecordingKServe):
        def create(self, isvc, namespace):
            if exists:
                try:
                    raise ApiException(status=409, reason="Conflict")
                except ApiException as exc:  # as KServeClient.create wraps it
                    raise RuntimeError(f"Exception when calling CustomObjectsApi: {exc}")  # noqa: B904
            super().create(isvc, namespace)

    uri = _registry(tmp_path, champion=None)
    kserve, routes = Cluster(schema), []
    canary = KServeCanary(spec(mode), 20, "http://127.0.0.1:9", client=kserve, apply_route=routes.append)
    new_uri = "s3://mlflow/1/models/m-new/artifacts"
    result = run_cluster_rollout(canary, "m", "2", new_uri, "2", uri, wait_s=0)
    assert result.promoted and alias_version("m", "champion", uri) == "2"
    assert "no other serving version to compare with" in result.reasons[0]
    assert kserve.calls == [
        ("patch" if exists else "create", "anomaly-detector", new_uri),
        ("ready", "anomaly-detector"),
    ]
    if mode == "RawDeployment":
        assert routes[-1]["spec"]["to"]["weight"] == 100 and "alternateBackends" not in routes[-1]["spec"]
    else:
        assert routes == []


def test_cluster_arms_count_only_this_services_series(monkeypatch):
    """Another model, or a copy in another namespace, serving the same version number is not an arm."""
    from serving import rollout

    selectors = []
    monkeypatch.setattr(rollout, "arm_stats", lambda url, selector, window: selectors.append(selector))
    canary = rollout.KServeCanary(spec(), 20, "http://prometheus")
    canary.evidence("1", "2")
    assert selectors == [
        'namespace="aiops",model_name=~"anomaly-detector|anomaly-detector-canary",model_version="1"',
        'namespace="aiops",model_name=~"anomaly-detector|anomaly-detector-canary",model_version="2"',
    ]


def test_requests_an_arm_never_answers_count_as_its_errors(tmp_path):
    """A canary that crashed or hangs cannot count its own failures: the driver counts them."""
    from aiops.canary import ArmStats
    from serving.rollout import LocalCanary, _with_unanswered
    from tests.conftest import make_metrics

    dead = {"stable": "http://127.0.0.1:9", "canary": "http://127.0.0.1:9"}  # nothing listens
    canary = LocalCanary("models:/m/1", "models:/m/2", tmp_path, "sqlite://", urls=dead)
    sent = canary.drive(make_metrics(n_steps=10), 50, 20, batch=2)
    assert sent["stable"] + sent["canary"] == 20
    assert sent["unanswered"] == {"stable": sent["stable"], "canary": sent["canary"]}
    stats = _with_unanswered(ArmStats(requests=100, errors=1, rows=800, anomalies=5), 7)
    assert (stats.requests, stats.errors, stats.rows) == (107, 8, 800)


def test_a_promotion_the_registry_refuses_is_recorded_with_how_to_reconcile(schema, tmp_path):
    """The analysis passed and the cluster serves the canary, but the alias cannot move."""
    import math

    from aiops.canary import ArmStats
    from aiops.registry import mlflow_client
    from serving.rollout import ROLLOUT_EXPERIMENT, KServeCanary, run_cluster_rollout

    def healthy() -> ArmStats:
        latency = {0.01: 900.0, 0.05: 1000.0, math.inf: 1000.0}
        scores = {1.0: 800.0, 2.0: 990.0, math.inf: 1000.0}
        return ArmStats(1000, 0, 1000, 10, latency, scores)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kserve = _RecordingKServe(schema)
    canary = KServeCanary(
        spec("RawDeployment"), 20, "http://prometheus", client=kserve, apply_route=lambda r: None
    )
    canary.evidence = lambda stable, candidate: (healthy(), healthy())
    # "missing" was never registered: moving its alias fails after the cluster promoted.
    with pytest.raises(Exception, match="missing"):
        run_cluster_rollout(
            canary, "missing", "2", "s3://mlflow/1/models/m-new/artifacts", "1", uri, wait_s=0
        )
    assert ("patch", "anomaly-detector", "s3://mlflow/1/models/m-new/artifacts") in kserve.calls
    client = mlflow_client(uri)
    [run] = client.search_runs([client.get_experiment_by_name(ROLLOUT_EXPERIMENT).experiment_id])
    assert run.data.tags["decision"] == "promoted"
    assert "champion alias could not be moved" in run.data.tags["reason"]
    assert "aiops models promote missing --version 2" in run.data.tags["reason"]


def test_building_manifests_leaves_the_callers_command_line_alone(tmp_path):
    """``import kserve`` parses ``sys.argv``: a caller's own options must not reach its parser.

    A fresh interpreter, since this one has imported kserve already; its command line holds an
    option kserve's server would refuse.
    """
    import subprocess
    import sys

    script = tmp_path / "build.py"
    script.write_text(
        "from serving.manifests import ServiceSpec, inference_service, serving_runtime\n"
        "serving_runtime('quay.io/x/y:1')\n"
        "print(inference_service(ServiceSpec(name='m', namespace='ns', storage_uri='s3://b/m')).kind)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "--http_port", "not-a-port"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "InferenceService"
