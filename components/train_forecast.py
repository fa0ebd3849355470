from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_forecast(
    train: Input[Dataset],
    validation: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    forecaster: str = "prophet",
    seed: int = 42,
    alarm_quantile: float = 0.99,
):
    """Fit per-workload forecasters (Prophet or ARIMA) on the training period.

    Anomaly score: distance of each row from its workload's forecast interval. No labels
    reach this step.
    """
    from aiops.detectors.forecast import ForecastConfig
    from aiops.training import step_metrics, train_from_folders

    config = ForecastConfig(forecaster=forecaster, seed=seed)
    bundle = train_from_folders("forecast", config, train.path, validation.path, alarm_quantile)
    bundle.save(model.path)
    model.metadata.update({"detector": "forecast", "forecaster": forecaster, "threshold": bundle.threshold})
    for name, value in step_metrics(bundle).items():
        metrics.log_metric(name, value)
