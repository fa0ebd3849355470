from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def check_drift(
    features: Input[Dataset],
    report: Output[HTML],
    decision: Output[Markdown],
    metrics: Output[Metrics],
    model_name: str = "aiops-anomaly-detector",
    tracking_uri: str = "",
    window: str = "1D",
    max_drift_share: float = 0.5,
    force: bool = False,
    job: str = "aiops-retraining",
    pipeline_started_at: str = "",
) -> bool:
    """Compare the latest window with the champion's training reference (Evidently); True = retrain.

    The decision, its reason, the drift share and Evidently's report also go to MLflow
    (experiment ``aiops-drift-checks``). A single boolean output keeps the condition that
    follows evaluable by the local runner as well as on the cluster.

    When it keeps the champion the run's work ends here, so this step also pushes that the run
    succeeded, with its duration and rows (the register step does when a retraining follows;
    a failure is pushed by the pipeline's exit handler).
    """
    import os

    from aiops.drift import check_against_champion, log_drift_check
    from aiops.features import load_features
    from aiops.monitoring import report_drift_share, report_run_success, seconds_since

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI")
    table, _ = load_features(features.path)
    result = check_against_champion(
        table, model_name, uri, window=window, max_drift_share=max_drift_share, force=force
    )
    if result.result is not None:
        result.result.save_html(report.path)
        metrics.log_metric("drift_share", result.result.drift_share)
        for name, value in result.result.prediction.items():
            metrics.log_metric(name, value)
    else:
        with open(report.path, "w") as fh:
            fh.write(f"<html><body><p>{result.reason}</p></body></html>")
    with open(decision.path, "w") as fh:
        fh.write(
            f"## Drift check\n\n**{'retrain' if result.retrain else 'keep the champion'}**: {result.reason}\n"
        )
    log_drift_check(result, uri, model_name, window, max_drift_share, report_html=report.path)
    # Pushed when AIOPS_PUSHGATEWAY_URL is set.
    if result.result is not None:
        report_drift_share(job, result.result.drift_share)
    if not result.retrain:
        report_run_success(job, seconds_since(pipeline_started_at), len(table))
    return result.retrain
