from kfp import dsl

from components.check_drift import check_drift
from components.image import PIPELINE_IMAGE
from pipelines.cluster import with_mlflow_credentials, with_pushgateway
from pipelines.training import ingest_validate_features, outcome_reporter, roll_out, train_and_register


@dsl.pipeline(
    name="aiops-retraining",
    description="Read a recent window, check it for drift against the champion's training reference, and "
    "when it drifted (or force=True) run the training sub-DAG: train, gate, register; with deploy=True "
    "the new version then goes through a canary rollout.",
)
def retraining_pipeline(
    source: str = "synthetic",
    data_path: str = "",
    prometheus_url: str = "",
    prometheus_catalog: str = "",
    start: str = "",
    end: str = "",
    seed: int = 42,
    duration: str = "4D",
    step: str = "1min",
    n_anomalies: int = 24,
    concept_drift: str = "",
    drift_start: str = "0min",
    drift_window: str = "1D",
    max_drift_share: float = 0.5,
    force: bool = False,
    forecaster: str = "prophet",
    lstm_epochs: int = 5,
    threshold_policy: str = "event_f1",
    model_name: str = "aiops-anomaly-detector",
    experiment: str = "aiops-training",
    mlflow_tracking_uri: str = "",
    promotion_margin: float = 0.0,
    git_commit: str = "unknown",
    image: str = PIPELINE_IMAGE,
    deploy: bool = False,
    rollout_mode: str = "local",
    canary_percent: int = 30,
    rollout_namespace: str = "",
    rollout_prometheus_url: str = "",
    rollout_min_anomaly_rate_ratio: float = 0.0,
    rollout_deployment_mode: str = "RawDeployment",
    rollout_service_name: str = "aiops-anomaly-detector",
    rollout_analysis_window: str = "15m",
) -> str:
    """Retraining pipeline; returns the model version it registered, ``""`` when it kept the champion.

    The drift check's decision and reason are in MLflow and the dashboard. Every step runs
    inside an exit handler that reports the run's outcome (``components.outcome``).
    """
    outcome = outcome_reporter("aiops-retraining", model_name, mlflow_tracking_uri)
    with dsl.ExitHandler(outcome, name="retraining run"):
        telemetry, validate, store, started_at = ingest_validate_features(
            source,
            data_path,
            prometheus_url,
            prometheus_catalog,
            end,
            seed,
            duration,
            step,
            n_anomalies,
            start=start,
            concept_drift=concept_drift,
            drift_start=drift_start,
        )
        drift = check_drift(
            features=store.outputs["training"],
            model_name=model_name,
            tracking_uri=mlflow_tracking_uri,
            window=drift_window,
            max_drift_share=max_drift_share,
            force=force,
            pipeline_started_at=started_at,
        ).set_display_name("drift check")
        drift.set_caching_options(False)
        with_mlflow_credentials(drift)
        with_pushgateway(drift)
        with dsl.If(drift.outputs["Output"] == True, name="drifted or forced"):  # noqa: E712 - a KFP condition, not Python
            trained = train_and_register(
                telemetry=telemetry,
                features=store.outputs["training"],
                dataset_hash=validate.outputs["dataset_hash"],
                data_rows=validate.outputs["rows"],
                source=source,
                feature_service=store.outputs["Output"],
                seed=seed,
                forecaster=forecaster,
                lstm_epochs=lstm_epochs,
                threshold_policy=threshold_policy,
                model_name=model_name,
                experiment=experiment,
                mlflow_tracking_uri=mlflow_tracking_uri,
                promotion_margin=promotion_margin,
                git_commit=git_commit,
                image=image,
                job="aiops-retraining",
                pipeline_started_at=started_at,
                hold_for_canary=deploy,
            ).set_display_name("train and register")
            roll_out(
                deploy,
                store.outputs["training"],
                trained.output,
                model_name,
                mlflow_tracking_uri,
                canary_percent,
                rollout_mode,
                rollout_namespace,
                rollout_prometheus_url,
                rollout_min_anomaly_rate_ratio,
                rollout_deployment_mode,
                rollout_service_name,
                rollout_analysis_window,
            )
    return outcome.output
