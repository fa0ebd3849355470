from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def split_by_time(
    features: Input[Dataset],
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
    validation_fraction: float = 0.2,
    test_fraction: float = 0.25,
):
    """Cut the feature table into consecutive train / validation / test periods."""
    from aiops.features import load_features, save_features
    from aiops.split import time_split

    table, config = load_features(features.path)
    parts = time_split(table, validation_fraction, test_fraction, min_rows=10)
    for artifact, frame in ((train, parts.train), (validation, parts.validation), (test, parts.test)):
        save_features(frame, config, artifact.path)
        artifact.metadata.update(
            {"rows": len(frame), "from": str(frame["timestamp"].min()), "to": str(frame["timestamp"].max())}
        )
