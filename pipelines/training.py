from typing import Any

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.evaluate import evaluate_detector
from components.feature_store import sync_feature_store
from components.features import build_features
from components.image import PIPELINE_IMAGE
from components.ingest import ingest_telemetry
from components.outcome import report_outcome
from components.register import register_model
from components.rollout import canary_rollout
from components.split import split_by_time
from components.train_ensemble import train_ensemble
from components.train_forecast import train_forecast
from components.train_isolation_forest import train_isolation_forest
from components.train_lstm_autoencoder import train_lstm_autoencoder
from components.validate import validate_telemetry
from pipelines.cluster import (
    on_gpu,
    sized,
    with_feast,
    with_mlflow_credentials,
    with_prometheus_credentials,
    with_pushgateway,
)


@dsl.pipeline(
    name="aiops-train-and-register",
    description="Split by time, train three detectors in parallel, combine them, evaluate on the latest "
    "period and register the ensemble behind the champion/challenger gate.",
)
def train_and_register(
    telemetry: Input[Dataset],
    features: Input[Dataset],
    dataset_hash: str,
    data_rows: int,
    source: str,
    feature_service: str = "in-pipeline (aiops.features)",
    seed: int = 42,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.25,
    n_estimators: int = 200,
    max_samples: int = 4096,
    forecaster: str = "prophet",
    lstm_window: int = 30,
    lstm_epochs: int = 5,
    lstm_device: str = "auto",
    alarm_quantile: float = 0.99,
    threshold_policy: str = "event_f1",
    model_name: str = "aiops-anomaly-detector",
    experiment: str = "aiops-training",
    mlflow_tracking_uri: str = "",
    primary_metric: str = "event_f1",
    promotion_margin: float = 0.0,
    promotion_guards: dict = {"event_precision": 0.05},  # noqa: B006 - KFP literal default
    git_commit: str = "unknown",
    image: str = PIPELINE_IMAGE,
    job: str = "aiops-training",
    pipeline_started_at: str = "",
    hold_for_canary: bool = False,
) -> str:
    """The training sub-DAG shared by the training and retraining pipelines; returns the version.

    ``hold_for_canary=True`` (a canary rollout follows): a passed gate leaves ``champion`` to the
    canary's verdict.
    """
    split = split_by_time(
        features=features, validation_fraction=validation_fraction, test_fraction=test_fraction
    ).set_display_name("time split")
    periods = {"train": split.outputs["train"], "validation": split.outputs["validation"]}

    # The three detectors share no inputs but the split: the DAG trains them in parallel.
    forest = train_isolation_forest(
        **periods,
        n_estimators=n_estimators,
        max_samples=max_samples,
        seed=seed,
        alarm_quantile=alarm_quantile,
    ).set_display_name("train isolation forest")
    sized(forest, cpu="2", memory="8Gi")
    forecast = train_forecast(
        **periods, forecaster=forecaster, seed=seed, alarm_quantile=alarm_quantile
    ).set_display_name("train forecast")
    sized(forecast, cpu="2", memory="8Gi")
    lstm = train_lstm_autoencoder(
        **periods,
        window=lstm_window,
        epochs=lstm_epochs,
        seed=seed,
        device=lstm_device,
        alarm_quantile=alarm_quantile,
    ).set_display_name("train LSTM autoencoder")
    sized(lstm, cpu="4", memory="16Gi")
    on_gpu(lstm)

    ensemble = train_ensemble(
        isolation_forest=forest.outputs["model"],
        forecast=forecast.outputs["model"],
        lstm_autoencoder=lstm.outputs["model"],
        validation=split.outputs["validation"],
        telemetry=telemetry,
        threshold_policy=threshold_policy,
        alarm_quantile=alarm_quantile,
    ).set_display_name("ensemble")
    evaluate = evaluate_detector(
        model=ensemble.outputs["model"], test=split.outputs["test"], telemetry=telemetry
    ).set_display_name("evaluate")
    register = register_model(
        model=ensemble.outputs["model"],
        train=split.outputs["train"],
        test=split.outputs["test"],
        telemetry=telemetry,
        plots=evaluate.outputs["plots"],
        dataset_hash=dataset_hash,
        data_rows=data_rows,
        source=source,
        seed=seed,
        feature_service=feature_service,
        model_name=model_name,
        experiment=experiment,
        tracking_uri=mlflow_tracking_uri,
        primary_metric=primary_metric,
        margin=promotion_margin,
        guards=promotion_guards,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        git_commit=git_commit,
        image=image,
        job=job,
        pipeline_started_at=pipeline_started_at,
        hold_for_canary=hold_for_canary,
    ).set_display_name("register")
    register.set_caching_options(False)
    with_mlflow_credentials(register)
    with_pushgateway(register)
    return register.outputs["version"]


def ingest_validate_features(
    source: str,
    data_path: str,
    prometheus_url: str,
    prometheus_catalog: str,
    end: str,
    seed: int,
    duration: str,
    step: str,
    n_anomalies: int,
    start: str = "",
    concept_drift: str = "",
    drift_start: str = "0min",
):
    """The entry steps both pipelines share (a plain helper: called inside a pipeline body).

    Returns the telemetry artifact, the validate task, the feature-store task (whose
    ``training`` output is the table read back from Feast, point-in-time, that training uses) and
    the run's start time (from the ingest step: KFP's own creation-time placeholder is not
    resolved by the local runner).
    """
    ingest = ingest_telemetry(
        source=source,
        data_path=data_path,
        prometheus_url=prometheus_url,
        catalog=prometheus_catalog,
        end=end,
        seed=seed,
        duration=duration,
        step=step,
        n_anomalies=n_anomalies,
        start=start,
        concept_drift=concept_drift,
        drift_start=drift_start,
    ).set_display_name("ingest")
    # Never from KFP's cache: its key is the parameters alone, and "end" empty means now. A
    # cached ingest would hand a scheduled run the first run's window and start time. The
    # steps after it read its fresh output, so their cache keys change with it.
    ingest.set_caching_options(False)
    with_prometheus_credentials(ingest)
    telemetry = ingest.outputs["telemetry"]
    validate = validate_telemetry(telemetry=telemetry).set_display_name("validate")
    features = build_features(telemetry=telemetry).after(validate).set_display_name("features")
    store = sync_feature_store(features=features.outputs["features"]).set_display_name("feature store")
    with_feast(store)
    return telemetry, validate, store, ingest.outputs["Output"]


def outcome_reporter(job: str, model_name: Any, tracking_uri: Any) -> Any:
    """The exit handler of both pipelines (see ``components.outcome``).

    Create it before the ``dsl.ExitHandler`` block that it guards; the pipeline returns its output.
    """
    outcome = report_outcome(
        job=job, model_name=model_name, tracking_uri=tracking_uri, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
    ).set_display_name("report outcome")
    outcome.set_caching_options(False)
    with_mlflow_credentials(outcome, artifacts=False)  # it only searches the registry
    with_pushgateway(outcome)
    return outcome


def roll_out(
    deploy: Any,
    features: Any,
    version: Any,
    model_name: Any,
    tracking_uri: Any,
    canary_percent: Any,
    mode: Any,
    namespace: Any,
    prometheus_url: Any,
    min_anomaly_rate_ratio: Any,
    deployment_mode: Any = "RawDeployment",
    service_name: Any = "aiops-anomaly-detector",
    analysis_window: Any = "15m",
) -> Any:
    """The canary rollout of a new version when ``deploy`` is set (training and retraining pipelines)."""
    with dsl.If(deploy == True, name="deploy"):  # noqa: E712 - a KFP condition, not Python
        rollout = canary_rollout(
            features=features,
            version=version,
            model_name=model_name,
            tracking_uri=tracking_uri,
            canary_percent=canary_percent,
            mode=mode,
            namespace=namespace,
            prometheus_url=prometheus_url,
            min_anomaly_rate_ratio=min_anomaly_rate_ratio,
            deployment_mode=deployment_mode,
            service_name=service_name,
            analysis_window=analysis_window,
        ).set_display_name("canary rollout")
        rollout.set_caching_options(False)
        with_mlflow_credentials(rollout)
        with_prometheus_credentials(rollout)  # the cluster analysis queries thanos-querier
        with_pushgateway(rollout)
    return rollout


@dsl.pipeline(
    name="aiops-training",
    description="Ingest telemetry, validate, build features, split by time, train Isolation Forest, "
    "forecasting and LSTM-autoencoder detectors in parallel, combine them into a calibrated ensemble, "
    "evaluate on the latest period and register the ensemble in MLflow behind a champion/challenger gate.",
)
def training_pipeline(
    source: str = "synthetic",
    data_path: str = "",
    prometheus_url: str = "",
    prometheus_catalog: str = "",
    end: str = "",
    seed: int = 42,
    duration: str = "4D",
    step: str = "1min",
    n_anomalies: int = 24,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.25,
    n_estimators: int = 200,
    max_samples: int = 4096,
    forecaster: str = "prophet",
    lstm_window: int = 30,
    lstm_epochs: int = 5,
    lstm_device: str = "auto",
    alarm_quantile: float = 0.99,
    threshold_policy: str = "event_f1",
    model_name: str = "aiops-anomaly-detector",
    experiment: str = "aiops-training",
    mlflow_tracking_uri: str = "",
    primary_metric: str = "event_f1",
    promotion_margin: float = 0.0,
    promotion_guards: dict = {"event_precision": 0.05},  # noqa: B006 - KFP literal default
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
    """Training pipeline; returns the model version it registered.

    With ``deploy=True`` the new version then goes through a canary rollout (promoted or rolled
    back on measured evidence; see ``serving.rollout``). Every step runs inside an exit handler
    that reports the run's outcome (``components.outcome``), which is also where the returned
    version comes from.

    ``image`` is only recorded as lineage; the image that runs is fixed at compile time.
    """
    outcome = outcome_reporter("aiops-training", model_name, mlflow_tracking_uri)
    with dsl.ExitHandler(outcome, name="training run"):
        telemetry, validate, store, started_at = ingest_validate_features(
            source, data_path, prometheus_url, prometheus_catalog, end, seed, duration, step, n_anomalies
        )
        trained = train_and_register(
            telemetry=telemetry,
            features=store.outputs["training"],
            dataset_hash=validate.outputs["dataset_hash"],
            data_rows=validate.outputs["rows"],
            source=source,
            feature_service=store.outputs["Output"],
            seed=seed,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            n_estimators=n_estimators,
            max_samples=max_samples,
            forecaster=forecaster,
            lstm_window=lstm_window,
            lstm_epochs=lstm_epochs,
            lstm_device=lstm_device,
            alarm_quantile=alarm_quantile,
            threshold_policy=threshold_policy,
            model_name=model_name,
            experiment=experiment,
            mlflow_tracking_uri=mlflow_tracking_uri,
            primary_metric=primary_metric,
            promotion_margin=promotion_margin,
            promotion_guards=promotion_guards,
            git_commit=git_commit,
            image=image,
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
