from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest_telemetry(
    source: str,
    telemetry: Output[Dataset],
    seed: int = 42,
    duration: str = "4D",
    step: str = "1min",
    n_anomalies: int = 24,
    data_path: str = "",
):
    """Produce canonical telemetry (metrics, labels, events, logs) from an explicit source.

    ``source='synthetic'`` simulates a cluster and injects labelled anomalies (seeded; the
    other settings apply to it only). ``source='nezha'`` reads the recorded Nezha fault
    injections under ``data_path``. An unknown source fails here: nothing falls back to
    synthetic data.
    """
    from aiops.ingest import SyntheticSource, load_telemetry

    settings = SyntheticSource(seed=seed, duration=duration, step=step, n_anomalies=n_anomalies)
    bundle = load_telemetry(source, data_path, settings)
    bundle.save(telemetry.path)
    telemetry.metadata.update({"source": source, "rows": len(bundle.metrics), "labels": len(bundle.labels)})
