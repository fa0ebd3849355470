from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_isolation_forest(
    train: Input[Dataset],
    validation: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    n_estimators: int = 200,
    max_samples: int = 512,
    seed: int = 42,
    alarm_quantile: float = 0.99,
):
    """Fit an Isolation Forest on the training period; set the threshold on validation.

    No labels reach this step: the detector is unsupervised.
    """
    from aiops.detectors.isolation_forest import IsolationForestConfig
    from aiops.features import load_features
    from aiops.training import train_isolation_forest

    train_table, config = load_features(train.path)
    validation_table, _ = load_features(validation.path)
    bundle = train_isolation_forest(
        train_table,
        validation_table,
        IsolationForestConfig(n_estimators=n_estimators, max_samples=max_samples, seed=seed),
        feature_config=config,
        alarm_quantile=alarm_quantile,
    )
    bundle.save(model.path)
    model.metadata.update({"detector": "isolation_forest", "threshold": bundle.threshold})
    metrics.log_metric("threshold", bundle.threshold)
    metrics.log_metric("fit_seconds", bundle.meta["fit_seconds"])
    metrics.log_metric("train_rows", bundle.meta["train_rows"])
