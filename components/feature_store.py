from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def sync_feature_store(
    features: Input[Dataset],
    repo: Output[Artifact],
    training: Output[Dataset],
    feature_service: str = "",
    materialize: bool = True,
) -> str:
    """Publish the feature table through Feast and read the training set back from it.

    Copies the Feast repository (``feature_repo/``) into this run's artifact, writes the table
    as a content-hashed dataset version, applies the repo, builds the training set with a
    point-in-time join on the entity keys and timestamps, and materialises the latest values
    to the online store. ``feature_service`` empty means the current transform's service
    (``anomaly_detector_v<FEATURE_VERSION>``). Returns ``<service>@<version>`` for lineage.
    """
    import shutil

    from aiops import feature_store as fs
    from aiops.features import load_features, save_features

    table, config = load_features(features.path)
    shutil.copytree(fs.default_repo_path(), repo.path, ignore=shutil.ignore_patterns("data", "__pycache__"))
    version = fs.write_dataset(table, repo.path, config=config)
    fs.apply_repo(repo.path)
    service = feature_service or fs.ANOMALY_DETECTOR_SERVICE
    result = fs.training_frame(repo.path, fs.entity_frame(table), feature_service=service)
    save_features(result.frame, config, training.path)
    if materialize:
        try:
            fs.materialize(repo.path, version.start, version.end)
        except fs.OlderWindowError as exc:
            # A run on a past window (a backfill, an experiment) trains as usual; the online
            # store keeps the newer values it holds.
            print(f"online store not updated: {exc}")
    tags = {**version.as_tags(), **result.as_tags()}
    repo.metadata.update(tags)
    training.metadata.update({"rows": len(result.frame), "feature_service": service})
    return f"{tags['feast.feature_service']}@{tags['feast.feature_service_version']}"
