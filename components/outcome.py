from kfp import dsl

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def report_outcome(
    status: dsl.PipelineTaskFinalStatus,
    job: str = "aiops-training",
    model_name: str = "aiops-anomaly-detector",
    tracking_uri: str = "",
    kfp_run_id: str = "local",
) -> str:
    """The pipelines' exit handler: push how the run ended; return the version it registered.

    It runs after every step inside the pipeline's ``dsl.ExitHandler``, whether they succeeded
    or not, and pushes ``aiops_pipeline_success`` (1 or 0) with the time the run ended (when
    ``AIOPS_PUSHGATEWAY_URL`` is set), which ``AiopsPipelineRunFailed`` reads.

    Returns the model version this run registered (the version tagged with ``kfp_run_id``),
    or ``""`` when it registered none (a retraining run that found no drift) or failed. The
    pipelines return it: KFP takes pipeline outputs only from tasks outside the exit handler's
    group, and this is the one task there.
    """
    import os

    from aiops.monitoring import report_run_outcome
    from aiops.registry import find_version

    succeeded = status.state == "SUCCEEDED"
    if not succeeded:
        print(
            f"{job}: the run ended {status.state} in {status.pipeline_task_name}: "
            f"{status.error_message or 'no message'}"
        )
    report_run_outcome(job, succeeded)
    if not succeeded:
        return ""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI")
    return find_version(model_name, "lineage.kfp_run_id", kfp_run_id, uri) or ""
