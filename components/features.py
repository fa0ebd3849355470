from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_features(
    telemetry: Input[Dataset],
    features: Output[Dataset],
    windows: list = [5, 30],  # noqa: B006 - KFP parameters are declared with literal defaults
    lags: list = [1],  # noqa: B006
):
    """Turn metrics into the shared, causal feature table (aiops.features)."""
    from aiops.features import FeatureConfig, build_features, infer_step_seconds, save_features
    from aiops.telemetry import Telemetry

    metrics = Telemetry.load(telemetry.path).metrics
    config = FeatureConfig(
        windows=tuple(int(w) for w in windows),
        lags=tuple(int(k) for k in lags),
        step_seconds=infer_step_seconds(metrics),
    )
    table = build_features(metrics, config)
    save_features(table, config, features.path)
    features.metadata.update({"rows": len(table), "columns": table.shape[1]})
