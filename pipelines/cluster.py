"""Cluster-only task settings, applied through kfp-kubernetes.

The local runner ignores all of these; Data Science Pipelines honours them.
Names of secrets are the contract with the platform team (see README).
"""

from pathlib import PurePosixPath

from kfp import kubernetes
from kfp.dsl import PipelineTask

from aiops.ingest import SERVICE_CA_BUNDLE

#: Secret holding MLFLOW_TRACKING_URI (+ optional MLFLOW_TRACKING_TOKEN) for the tracking server.
MLFLOW_SECRET = "aiops-mlflow"
#: Data-connection style secret with the S3 credentials of the MLflow artifact store.
S3_SECRET = "aiops-s3"
#: Secret holding a bearer token (key ``token``) for thanos-querier / Prometheus.
PROMETHEUS_SECRET = "aiops-prometheus"
#: ConfigMap OpenShift injects in every namespace with the service CA (signs thanos-querier's cert).
SERVICE_CA_CONFIGMAP = "openshift-service-ca.crt"
SERVICE_CA_DIR = str(PurePosixPath(SERVICE_CA_BUNDLE).parent)
GPU_RESOURCE = "nvidia.com/gpu"


def with_mlflow_credentials(task: PipelineTask, artifacts: bool = True) -> PipelineTask:
    """Inject the MLflow server address and the artifact store's S3 credentials.

    ``artifacts=False``: the address (and token) only. A step that only reads the registry
    needs no S3 secret, and must not fail to start for want of one.
    """
    kubernetes.use_secret_as_env(
        task,
        secret_name=MLFLOW_SECRET,
        secret_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=MLFLOW_SECRET,
        secret_key_to_env={"MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN"},
        optional=True,
    )
    if not artifacts:
        return task
    kubernetes.use_secret_as_env(
        task,
        secret_name=S3_SECRET,
        secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            "AWS_S3_ENDPOINT": "MLFLOW_S3_ENDPOINT_URL",
        },
    )
    return task


def with_prometheus_credentials(task: PipelineTask) -> PipelineTask:
    """Give a step that reads Prometheus a bearer token and the cluster's service CA.

    Both are optional: a synthetic or recorded-data run needs neither. The CA is mounted, not
    named in the environment: ``aiops.ingest.prometheus_credentials`` uses it when it is there
    and ``PROMETHEUS_CA_BUNDLE`` is unset, so a local run keeps the user's own setting (the local
    runner applies a task's environment variables too).
    """
    kubernetes.use_secret_as_env(
        task, secret_name=PROMETHEUS_SECRET, secret_key_to_env={"token": "PROMETHEUS_TOKEN"}, optional=True
    )
    kubernetes.use_config_map_as_volume(
        task, config_map_name=SERVICE_CA_CONFIGMAP, mount_path=SERVICE_CA_DIR, optional=True
    )
    return task


#: ConfigMap (key AIOPS_FEAST_YAML, e.g. ``feature_store.production.yaml``) and Secret (keys
#: FEAST_REGISTRY_URL, FEAST_REDIS_CONNECTION) of a production Feast; both optional.
FEAST_CONFIGMAP = "aiops-feast"
FEAST_SECRET = "aiops-feast"


def with_feast(task: PipelineTask) -> PipelineTask:
    """Point the feature-store step at the platform's Feast registry and online store, if any.

    Without the ConfigMap the step uses the repository's embedded ``feature_store.yaml`` (a
    SQLite registry and online store inside the run's artifact).
    """
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=FEAST_CONFIGMAP,
        config_map_key_to_env={"AIOPS_FEAST_YAML": "AIOPS_FEAST_YAML"},
        optional=True,
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=FEAST_SECRET,
        secret_key_to_env={
            "FEAST_REGISTRY_URL": "FEAST_REGISTRY_URL",
            "FEAST_REDIS_CONNECTION": "FEAST_REDIS_CONNECTION",
        },
        optional=True,
    )
    return task


#: ConfigMap with key AIOPS_PUSHGATEWAY_URL (optional: without it nothing is pushed).
MONITORING_CONFIGMAP = "aiops-monitoring"


def with_pushgateway(task: PipelineTask) -> PipelineTask:
    """Tell a step where the Pushgateway is, when the platform has one."""
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=MONITORING_CONFIGMAP,
        config_map_key_to_env={"AIOPS_PUSHGATEWAY_URL": "AIOPS_PUSHGATEWAY_URL"},
        optional=True,
    )
    return task


def on_gpu(task: PipelineTask, count: int = 1) -> PipelineTask:
    """Request GPUs and tolerate the taint OpenShift AI puts on GPU nodes."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(count)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def sized(task: PipelineTask, cpu: str, memory: str) -> PipelineTask:
    """Set CPU and memory requests (limits: twice the CPU, the same memory)."""
    task.set_cpu_request(cpu).set_cpu_limit(str(2 * float(cpu))).set_memory_request(memory).set_memory_limit(
        memory
    )
    return task
