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
    max_samples: int = 4096,
    seed: int = 42,
    alarm_quantile: float = 0.99,
):
    """Fit an Isolation Forest on the training period; its threshold is a validation quantile.

    No labels reach this step: the detector is unsupervised.
    """
    from aiops.detectors.isolation_forest import IsolationForestConfig
    from aiops.training import step_metrics, train_from_folders

    config = IsolationForestConfig(n_estimators=n_estimators, max_samples=max_samples, seed=seed)
    bundle = train_from_folders("isolation_forest", config, train.path, validation.path, alarm_quantile)
    bundle.save(model.path)
    model.metadata.update({"detector": "isolation_forest", "threshold": bundle.threshold})
    for name, value in step_metrics(bundle).items():
        metrics.log_metric(name, value)
