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
    """Score the held-out test period; return event-wise F1 and publish metrics and plots.

    An ensemble's members are evaluated side by side; forecasts report MAPE/sMAPE.
    """
    import json
    import math
    import shutil

    from aiops.features import load_features
    from aiops.model import DetectorBundle
    from aiops.report import report_bundle
    from aiops.telemetry import Telemetry

    table, _ = load_features(test.path)
    result = report_bundle(
        DetectorBundle.load(model.path), table, Telemetry.load(telemetry.path).labels, plots.path
    )
    shutil.copyfile(f"{plots.path}/report.html", report.path)
    with open(f"{plots.path}/metrics.json") as fh:
        for name, value in json.load(fh).items():
            if value is not None and math.isfinite(value):  # null: no value (e.g. no event detected)
                metrics.log_metric(name, value)
    return result.metrics["event_f1"]
