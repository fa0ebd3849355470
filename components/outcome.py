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
    """The pipelines' exit handler: push a failed run's failure; return the version it registered.

    It runs after every step inside the pipeline's ``dsl.ExitHandler``, whether they succeeded
    or not. When KFP reports the steps failed or cancelled, it pushes ``aiops_pipeline_success
    0`` (when ``AIOPS_PUSHGATEWAY_URL`` is set), which ``AiopsPipelineRunFailed`` reads. A
    success is pushed by the step where the run's work ends, not here: the name of a successful
    state differs between KFP's backend (``COMPLETE``), the local runner and Vertex AI
    (``SUCCEEDED``), and some KFP backends leave a group with nested pipelines or conditions
    ``RUNNING`` (kubeflow/pipelines#11979). Only a state that says failure is read as one.

    If MLflow cannot be read here after the steps succeeded, this task fails, and with it the
    run: it pushes the failure too, so that the alert agrees with the run's state (the step
    that ended the run's work had already pushed a success).

    Returns the model version this run registered (the version tagged with ``kfp_run_id``),
    or ``""`` when it registered none (a retraining run that found no drift) or failed. The
    pipelines return it: KFP takes pipeline outputs only from tasks outside the exit handler's
    group, and this is the one task there.
    """
    import os

    from aiops.monitoring import report_run_failure
    from aiops.registry import find_version

    if str(status.state or "").upper() in ("FAILED", "CANCELED", "CANCELLED"):
        print(f"{job}: the run ended {status.state}: {status.error_message or 'no message from KFP'}")
        report_run_failure(job)
        return ""  # and no MLflow call: it may be what failed
    try:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ValueError("no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI")
        return find_version(model_name, "lineage.kfp_run_id", kfp_run_id, uri) or ""
    except Exception as exc:
        # This task failing fails the run; the success its last step pushed must not stand.
        print(f"{job}: the run's steps succeeded, but its exit handler could not read MLflow: {exc}")
        report_run_failure(job)
        raise
