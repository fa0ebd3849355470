from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    train: Input[Dataset],
    test: Input[Dataset],
    telemetry: Input[Dataset],
    plots: Input[Artifact],
    dataset_hash: str,
    data_rows: int,
    source: str,
    seed: int,
    feature_service: str = "in-pipeline (aiops.features)",
    model_name: str = "aiops-anomaly-detector",
    experiment: str = "aiops-training",
    tracking_uri: str = "",
    primary_metric: str = "event_f1",
    margin: float = 0.0,
    guards: dict = {"event_precision": 0.05},  # noqa: B006 - KFP parameters are declared with literal defaults
    kfp_run_id: str = "local",
    git_commit: str = "unknown",
    image: str = "local",
    job: str = "aiops-training",
    pipeline_started_at: str = "",
    hold_for_canary: bool = False,
) -> NamedTuple(
    "Registered", model_name=str, version=str, aliases=str, promoted=bool, run_id=str, reason=str
):
    """Track the run in MLflow, register the model as `challenger`, promote it past the gate.

    The gate promotes only if ``primary_metric`` beats the champion's by more than ``margin``
    on the same test data and no metric in ``guards`` drops by more than its tolerance.
    Re-running this step for the same KFP run reuses the version it registered.
    ``hold_for_canary``: a canary rollout follows; a passed gate then tags the version
    ``gate.decision=passed`` and leaves ``champion`` to the canary's verdict.

    ``tracking_uri`` empty means ``MLFLOW_TRACKING_URI`` from the environment
    (on a cluster: injected from a Kubernetes secret).
    """
    import os
    from collections import namedtuple

    from aiops.features import load_features
    from aiops.monitoring import report_registration
    from aiops.publish import Lineage, publish_detector
    from aiops.telemetry import Telemetry

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI")
    table, _ = load_features(test.path)
    lineage = Lineage(
        dataset_hash=dataset_hash,
        data_rows=data_rows,
        source=source,
        seed=seed,
        feature_service=feature_service,
        kfp_run_id=kfp_run_id,
        git_commit=git_commit,
        image=image,
    )
    result = publish_detector(
        model.path,
        table,
        Telemetry.load(telemetry.path).labels,
        tracking_uri=uri,
        experiment=experiment,
        model_name=model_name,
        lineage=lineage,
        primary_metric=primary_metric,
        margin=margin,
        guards={k: float(v) for k, v in guards.items()},
        artifacts_dir=plots.path,
        reference=load_features(train.path)[0],
        move_champion=not hold_for_canary,
    )
    reg = result.registration
    # Run metrics for the Pushgateway (when AIOPS_PUSHGATEWAY_URL is set; otherwise a no-op).
    report_registration(
        job,
        reg.name,
        reg.version,
        reg.challenger_metrics,
        "champion" in reg.aliases,
        data_rows,
        pipeline_started_at,
    )
    out = namedtuple("Registered", ["model_name", "version", "aliases", "promoted", "run_id", "reason"])
    return out(
        reg.name,
        reg.version,
        ",".join(reg.aliases),
        "champion" in reg.aliases,
        result.run_id,
        reg.decision.reason,
    )
