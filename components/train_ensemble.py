from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_ensemble(
    isolation_forest: Input[Model],
    forecast: Input[Model],
    lstm_autoencoder: Input[Model],
    validation: Input[Dataset],
    telemetry: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    threshold_policy: str = "event_f1",
    alarm_quantile: float = 0.99,
    weight_isolation_forest: float = 1.0,
    weight_forecast: float = 1.0,
    weight_lstm_autoencoder: float = 1.0,
    select_weights: bool = True,
):
    """Calibrate the members on validation, combine them with weights, pick one threshold.

    ``threshold_policy='event_f1'`` uses the labelled windows of the validation period only
    (never the test period); ``quantile`` uses no labels at all. With ``event_f1`` and
    ``select_weights`` (the default) the combine rule and the member weights are also chosen by
    validation event F1, and the ``weight_*`` parameters are ignored.
    """
    from aiops.features import load_features
    from aiops.model import DetectorBundle
    from aiops.telemetry import Telemetry
    from aiops.training import train_ensemble

    members = {
        "isolation_forest": DetectorBundle.load(isolation_forest.path),
        "forecast": DetectorBundle.load(forecast.path),
        "lstm_autoencoder": DetectorBundle.load(lstm_autoencoder.path),
    }
    weights = {
        "isolation_forest": weight_isolation_forest,
        "forecast": weight_forecast,
        "lstm_autoencoder": weight_lstm_autoencoder,
    }
    table, _ = load_features(validation.path)
    labels = Telemetry.load(telemetry.path).labels
    if select_weights and threshold_policy == "event_f1":
        bundle = train_ensemble(
            members, table, labels, threshold_policy=threshold_policy, select_weights=True
        )
    else:
        bundle = train_ensemble(members, table, labels, weights, threshold_policy, alarm_quantile)
    bundle.save(model.path)
    model.metadata.update({"detector": "ensemble", "threshold": bundle.threshold, "policy": threshold_policy})
    metrics.log_metric("threshold", bundle.threshold)
    if "validation_event_f1" in bundle.meta:
        metrics.log_metric("validation_event_f1", bundle.meta["validation_event_f1"])
