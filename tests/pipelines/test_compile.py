"""Every pipeline compiles to IR YAML that parses as a KFP PipelineSpec, with its cluster settings."""

import json

import yaml
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from components.image import PIPELINE_IMAGE
from pipelines.cluster import (
    GPU_RESOURCE,
    MLFLOW_SECRET,
    PROMETHEUS_SECRET,
    S3_SECRET,
    SERVICE_CA_DIR,
    on_gpu,
)
from pipelines.runner import PIPELINES, compile_pipeline


def _load(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = docs[1] if len(docs) > 1 else {}
    return spec, platform


def test_every_pipeline_compiles_to_a_pipeline_spec(tmp_path):
    for name in PIPELINES:
        spec, _ = _load(compile_pipeline(name, tmp_path))
        assert spec.pipeline_info.name == f"aiops-{name}"
        executors = json_format.MessageToDict(spec.deployment_spec)["executors"].values()
        images = {e["container"]["image"] for e in executors}
        assert images == {PIPELINE_IMAGE}, "every component runs on the one pipeline image"


def test_training_pipeline_cluster_settings(tmp_path):
    spec, platform = _load(compile_pipeline("training", tmp_path))
    # every step runs inside the exit handler's group; the training steps live in the
    # sub-pipeline the retraining pipeline reuses
    assert set(spec.root.dag.tasks) == {"exit-handler-1", "report-outcome"}
    run_dag = spec.components["comp-exit-handler-1"].dag
    sub_dag = spec.components["comp-aiops-train-and-register"].dag
    tasks = set(run_dag.tasks) | set(sub_dag.tasks)
    assert {
        "ingest-telemetry",
        "validate-telemetry",
        "build-features",
        "split-by-time",
        "train-isolation-forest",
        "train-forecast",
        "train-lstm-autoencoder",
        "train-ensemble",
        "evaluate-detector",
        "register-model",
    } <= tasks
    # the three detectors depend on the split only: the DAG runs them in parallel
    for name in ("train-isolation-forest", "train-forecast", "train-lstm-autoencoder"):
        assert set(sub_dag.tasks[name].dependent_tasks) == {"split-by-time"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {s["secretName"] for s in executors["exec-register-model"]["secretAsEnv"]}
    assert secrets == {MLFLOW_SECRET, S3_SECRET}
    deployment = json_format.MessageToDict(spec.deployment_spec)["executors"]
    resources = deployment["exec-train-isolation-forest"]["container"]["resources"]
    assert resources["resourceMemoryRequest"] == "8Gi"
    # the LSTM autoencoder trains on a GPU node on the cluster
    lstm = deployment["exec-train-lstm-autoencoder"]["container"]["resources"]["accelerator"]
    assert lstm["resourceType"] == GPU_RESOURCE
    tolerations = executors["exec-train-lstm-autoencoder"]["tolerations"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # the ingest step and the canary rollout may read a Prometheus token and the service CA (both
    # optional); the CA is mounted, not named in the environment, where it would override the
    # user's PROMETHEUS_CA_BUNDLE in local runs
    for step in ("exec-ingest-telemetry", "exec-canary-rollout"):
        token = [s for s in executors[step]["secretAsEnv"] if s["secretName"] == PROMETHEUS_SECRET]
        assert token and token[0]["optional"] is True
        assert executors[step]["configMapAsVolume"][0]["mountPath"] == SERVICE_CA_DIR
    env = json.dumps(deployment)
    assert "PROMETHEUS_CA_BUNDLE" not in env
    # the feature-store step can be pointed at a production Feast (both optional)
    feast = executors["exec-sync-feature-store"]
    assert feast["configMapAsEnv"][0]["optional"] is True and feast["secretAsEnv"][0]["optional"] is True
    # the rollout's cluster settings are pipeline parameters, passed through
    declared = spec.root.input_definitions.parameters
    assert {"rollout_deployment_mode", "rollout_service_name", "rollout_analysis_window"} <= set(declared)
    # the register step must not be cached: each run registers a new version; nor the ingest:
    # its key is the parameters alone, and an empty end means "now"
    assert not sub_dag.tasks["register-model"].caching_options.enable_cache
    assert not run_dag.tasks["ingest-telemetry"].caching_options.enable_cache
    # the exit handler: runs after the group whatever its outcome, is never cached, reads the
    # run's final status, and provides the pipeline's output (the registered version)
    outcome = spec.root.dag.tasks["report-outcome"]
    policy = outcome.trigger_policy
    assert policy.strategy == policy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    assert outcome.inputs.parameters["status"].task_final_status.producer_task == "exit-handler-1"
    assert not outcome.caching_options.enable_cache
    returned = spec.root.dag.outputs.parameters["Output"].value_from_parameter
    assert returned.producer_subtask == "report-outcome"
    outcome_env = executors["exec-report-outcome"]
    # it only searches the registry: no S3 secret that could keep it from starting
    assert {s["secretName"] for s in outcome_env["secretAsEnv"]} == {MLFLOW_SECRET}
    assert outcome_env["configMapAsEnv"][0]["keyToEnv"][0]["envVar"] == "AIOPS_PUSHGATEWAY_URL"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def noop() -> int:
    return 1


def test_gpu_helper_requests_gpu_and_tolerates_the_taint(tmp_path):
    @dsl.pipeline(name="gpu-check")
    def gpu_pipeline():
        on_gpu(noop(), count=2)

    path = tmp_path / "gpu.yaml"
    compiler.Compiler().compile(gpu_pipeline, str(path))
    spec, platform = _load(path)
    container = json_format.MessageToDict(spec.deployment_spec)["executors"]["exec-noop"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == GPU_RESOURCE
    assert container["resources"]["accelerator"]["resourceCount"] == "2"
    [toleration] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-noop"][
        "tolerations"
    ]
    assert toleration == {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
