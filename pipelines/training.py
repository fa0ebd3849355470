from kfp import dsl

from components.evaluate import evaluate_detector
from components.features import build_features
from components.image import PIPELINE_IMAGE
from components.ingest import ingest_telemetry
from components.register import register_model
from components.split import split_by_time
from components.train_isolation_forest import train_isolation_forest
from components.validate import validate_telemetry
from pipelines.cluster import sized, with_mlflow_credentials, with_prometheus_credentials


@dsl.pipeline(
    name="aiops-training",
    description="Ingest telemetry, validate, build features, split by time, train an Isolation Forest, "
    "evaluate on the latest period and register it in MLflow behind a champion/challenger gate.",
)
def training_pipeline(
    source: str = "synthetic",
    data_path: str = "",
    prometheus_url: str = "",
    end: str = "",
    seed: int = 42,
    duration: str = "4D",
    step: str = "1min",
    n_anomalies: int = 24,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.25,
    n_estimators: int = 200,
    max_samples: int = 512,
    alarm_quantile: float = 0.99,
    model_name: str = "aiops-isolation-forest",
    experiment: str = "aiops-training",
    mlflow_tracking_uri: str = "",
    primary_metric: str = "event_f1",
    promotion_margin: float = 0.0,
    git_commit: str = "unknown",
    image: str = PIPELINE_IMAGE,
) -> str:
    """Training pipeline v1; returns the registered model version.

    ``image`` is only recorded as lineage; the image that runs is fixed at compile time.
    """
    ingest = ingest_telemetry(
        source=source,
        data_path=data_path,
        prometheus_url=prometheus_url,
        end=end,
        seed=seed,
        duration=duration,
        step=step,
        n_anomalies=n_anomalies,
    ).set_display_name("ingest")
    with_prometheus_credentials(ingest)
    validate = validate_telemetry(telemetry=ingest.outputs["telemetry"]).set_display_name("validate")
    features = (
        build_features(telemetry=ingest.outputs["telemetry"]).after(validate).set_display_name("features")
    )
    split = split_by_time(
        features=features.outputs["features"],
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    ).set_display_name("time split")
    train = train_isolation_forest(
        train=split.outputs["train"],
        validation=split.outputs["validation"],
        n_estimators=n_estimators,
        max_samples=max_samples,
        seed=seed,
        alarm_quantile=alarm_quantile,
    ).set_display_name("train isolation forest")
    sized(train, cpu="2", memory="8Gi")
    evaluate = evaluate_detector(
        model=train.outputs["model"], test=split.outputs["test"], telemetry=ingest.outputs["telemetry"]
    ).set_display_name("evaluate")
    register = register_model(
        model=train.outputs["model"],
        test=split.outputs["test"],
        telemetry=ingest.outputs["telemetry"],
        plots=evaluate.outputs["plots"],
        dataset_hash=validate.outputs["dataset_hash"],
        data_rows=validate.outputs["rows"],
        source=source,
        seed=seed,
        model_name=model_name,
        experiment=experiment,
        tracking_uri=mlflow_tracking_uri,
        primary_metric=primary_metric,
        margin=promotion_margin,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        git_commit=git_commit,
        image=image,
    ).set_display_name("register")
    register.set_caching_options(False)
    with_mlflow_credentials(register)
    return register.outputs["version"]
