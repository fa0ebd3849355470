from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate_detector(
    model: Input[Model],
    test: Input[Dataset],
    telemetry: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    plots: Output[Artifact],
) -> float:
    """Score the held-out test period; return event-wise F1 and publish metrics and plots."""
    import math
    import shutil

    from aiops.evaluation import write_report
    from aiops.features import load_features
    from aiops.model import DetectorBundle
    from aiops.telemetry import Telemetry

    bundle = DetectorBundle.load(model.path)
    table, _ = load_features(test.path)
    labels = Telemetry.load(telemetry.path).labels
    result, _ = write_report(table, bundle.score(table), bundle.threshold, labels, plots.path)
    shutil.copyfile(f"{plots.path}/report.html", report.path)
    for name, value in result.metrics.items():
        if math.isfinite(value):
            metrics.log_metric(name, value)
    return result.metrics["event_f1"]
