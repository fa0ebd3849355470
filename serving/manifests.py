"""InferenceService, ServingRuntime and canary-route manifests, built with KServe's SDK classes.

Two deployment modes:

* **Serverless** (Knative): one InferenceService; a canary is the same object updated with the
  new ``storageUri`` and ``canaryTrafficPercent`` — Knative keeps the previous revision for
  the rest of the traffic, and promotion sets the percentage to 100.
* **RawDeployment** (plain Deployments, the default on many OpenShift AI installs): KServe
  ignores ``canaryTrafficPercent`` there, so a canary is a second InferenceService and an
  OpenShift Route splits traffic between the two predictor Services by weight
  (``spec.to`` + ``spec.alternateBackends``).

The predictor is this project's own ``kserve.Model`` (``python -m serving``), run by a
ServingRuntime on the pipeline image; the model arrives through ``storageUri`` (the MLflow
model's artifact location) at ``/mnt/models``. ``import kserve`` parses ``sys.argv`` at import
time, so it is imported inside the functions only, through ``serving.server.import_kserve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.server import import_kserve

#: Environment variable that gives the predictor its ``model_version`` metric label (the
#: registry version). A server that loads a folder (``/mnt/models``) otherwise labels its
#: metrics with a content hash, which the canary analysis cannot tell apart by version.
MODEL_VERSION_ENV = "AIOPS_MODEL_VERSION"

RUNTIME_NAME = "aiops-detector-runtime"
MODEL_FORMAT = "aiops-detector"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODES = ("Serverless", "RawDeployment")
HTTP_PORT = 8080


@dataclass(frozen=True)
class Resources:
    """Requests and limits of the predictor container."""

    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"

    def as_k8s(self) -> Any:
        """The ``V1ResourceRequirements`` object."""
        from kubernetes.client import V1ResourceRequirements

        return V1ResourceRequirements(
            requests={"cpu": self.cpu_request, "memory": self.memory_request},
            limits={"cpu": self.cpu_limit, "memory": self.memory_limit},
        )


@dataclass(frozen=True)
class ServiceSpec:
    """What to deploy.

    Attributes:
        name: InferenceService name (also the model name on the v1/v2 endpoints).
        namespace: Data science project.
        storage_uri: Where the model lives (``s3://...`` or ``pvc://...``), the MLflow model folder.
        mode: ``Serverless`` or ``RawDeployment``.
        model_version: Registry version: the ``aiops/model-version`` label, and the predictor's
            ``model_version`` metric label (through ``AIOPS_MODEL_VERSION``), by which the canary
            analysis tells the arms apart.
        resources: Predictor resources.
        min_replicas: Minimum replicas (1 keeps a warm predictor: no scale-to-zero latency).
        max_replicas: Maximum replicas.
        service_account: Service account with access to the storage (S3 data connection).
        labels: Extra labels.
    """

    name: str
    namespace: str
    storage_uri: str
    mode: str = "RawDeployment"
    model_version: str = ""
    resources: Resources = field(default_factory=Resources)
    min_replicas: int = 1
    max_replicas: int = 3
    service_account: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown deployment mode '{self.mode}'; choose one of {MODES}")
        if not self.storage_uri:
            raise ValueError("storage_uri is required (the model's artifact location)")


def _probe(path: str) -> Any:
    from kubernetes.client import V1HTTPGetAction, V1Probe

    return V1Probe(
        http_get=V1HTTPGetAction(path=path, port=HTTP_PORT),
        initial_delay_seconds=5,
        period_seconds=10,
        timeout_seconds=2,
        failure_threshold=6,
    )


def serving_runtime(image: str, name: str = RUNTIME_NAME, namespace: str | None = None) -> Any:
    """A ServingRuntime that runs this project's predictor on the pipeline image."""
    import_kserve()  # before the first `import kserve`: it would parse this process's argv
    from kserve import (
        V1alpha1ServingRuntime,
        V1alpha1ServingRuntimeSpec,
        V1alpha1SupportedModelFormat,
        constants,
    )
    from kubernetes.client import V1Container, V1ContainerPort, V1ObjectMeta

    container = V1Container(
        name="kserve-container",
        image=image,
        command=["python", "-m", "serving"],
        args=["--model", "/mnt/models", "--port", str(HTTP_PORT), "--host", "0.0.0.0", "--name", "{{.Name}}"],
        ports=[V1ContainerPort(container_port=HTTP_PORT, protocol="TCP")],
        readiness_probe=_probe("/v2/health/ready"),
        liveness_probe=_probe("/v2/health/live"),
    )
    return V1alpha1ServingRuntime(
        api_version=f"{constants.KSERVE_GROUP}/v1alpha1",
        kind="ServingRuntime",
        metadata=V1ObjectMeta(
            name=name, namespace=namespace, annotations={"prometheus.io/port": str(HTTP_PORT)}
        ),
        spec=V1alpha1ServingRuntimeSpec(
            supported_model_formats=[
                V1alpha1SupportedModelFormat(name=MODEL_FORMAT, version="1", auto_select=True)
            ],
            protocol_versions=["v1", "v2"],
            containers=[container],
        ),
    )


def inference_service(spec: ServiceSpec, canary_traffic_percent: int | None = None) -> Any:
    """An InferenceService for ``spec``; ``canary_traffic_percent`` only in Serverless mode."""
    import_kserve()  # before the first `import kserve`: it would parse this process's argv
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
        constants,
    )
    from kubernetes.client import V1EnvVar, V1ObjectMeta

    if canary_traffic_percent is not None:
        if spec.mode != "Serverless":
            raise ValueError(
                "canaryTrafficPercent is ignored by KServe in RawDeployment mode; use raw_canary() "
                "(a second InferenceService behind a weighted Route)"
            )
        if not 0 <= canary_traffic_percent <= 100:
            raise ValueError(f"canary_traffic_percent must lie in [0, 100], got {canary_traffic_percent}")
    predictor = V1beta1PredictorSpec(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        canary_traffic_percent=canary_traffic_percent,
        service_account_name=spec.service_account,
        model=V1beta1ModelSpec(
            model_format=V1beta1ModelFormat(name=MODEL_FORMAT, version="1"),
            runtime=RUNTIME_NAME,
            storage_uri=spec.storage_uri,
            protocol_version="v2",
            resources=spec.resources.as_k8s(),
            readiness_probe=_probe("/v2/health/ready"),
            env=[V1EnvVar(name=MODEL_VERSION_ENV, value=spec.model_version)] if spec.model_version else None,
        ),
    )
    labels = {"app.kubernetes.io/part-of": "aiops-selfheal", **spec.labels}
    if spec.model_version:
        labels["aiops/model-version"] = spec.model_version
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=spec.name,
            namespace=spec.namespace,
            labels=labels,
            annotations={
                DEPLOYMENT_MODE_ANNOTATION: spec.mode,
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def canary_route(
    name: str, namespace: str, stable_service: str, canary_service: str, canary_percent: int
) -> dict:
    """An OpenShift Route splitting traffic between two predictor Services by weight.

    At 0% the Route names the stable Service alone: the canary's may be about to be deleted.
    """
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must lie in [0, 100], got {canary_percent}")
    route = {
        "apiVersion": "route.openshift.io/v1",
        "kind": "Route",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "aiops-selfheal"},
        },
        "spec": {
            "to": {"kind": "Service", "name": stable_service, "weight": 100 - canary_percent},
            "alternateBackends": [{"kind": "Service", "name": canary_service, "weight": canary_percent}],
            "port": {"targetPort": HTTP_PORT},
            "tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"},
        },
    }
    if canary_percent == 0:
        del route["spec"]["alternateBackends"]
    return route


def raw_canary(stable: ServiceSpec, canary: ServiceSpec, canary_percent: int) -> list[Any]:
    """RawDeployment canary: the canary InferenceService plus the weighted Route in front of both."""
    if stable.mode != "RawDeployment" or canary.mode != "RawDeployment":
        raise ValueError("raw_canary() is for RawDeployment mode; Serverless uses canaryTrafficPercent")
    route = canary_route(
        stable.name, stable.namespace, f"{stable.name}-predictor", f"{canary.name}-predictor", canary_percent
    )
    return [inference_service(canary), route]


def to_dict(obj: Any) -> dict:
    """The manifest as plain JSON-able data (what ``kubectl apply`` would send)."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def to_yaml(objects: list[Any]) -> str:
    """A multi-document YAML of the manifests."""
    import yaml

    return yaml.safe_dump_all([to_dict(o) for o in objects], sort_keys=False)


def isvc_schema(crd_path: str | Path) -> dict:
    """The openAPIV3 schema of InferenceService v1beta1 from KServe's CRD file."""
    import yaml

    # The CRD is 2 MB of YAML: the C loader reads it in a second instead of twenty.
    crd = yaml.load(Path(crd_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if "v1beta1" not in versions:
        raise ValueError(f"{crd_path} holds no v1beta1 InferenceService schema")
    return versions["v1beta1"]["schema"]["openAPIV3Schema"]


def validate_isvc(manifest: Any, schema: dict) -> None:
    """Validate an InferenceService manifest against the CRD's schema.

    Raises:
        ValueError: Naming the first violation and where it is.
    """
    import jsonschema

    data = to_dict(manifest)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise ValueError(f"InferenceService {data.get('metadata', {}).get('name')}: {where}: {first.message}")
