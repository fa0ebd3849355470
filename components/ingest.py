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
    prometheus_url: str = "",
    end: str = "",
    catalog: str = "",
    start: str = "",
    concept_drift: str = "",
    drift_start: str = "0min",
) -> str:
    """Produce canonical telemetry (metrics, labels, events, logs) from an explicit source.

    - ``synthetic``: simulates a cluster from ``start`` (optional) and injects ``n_anomalies``
      labelled anomalies (seeded); ``concept_drift`` makes it drift gradually from ``drift_start``.
    - ``nezha``: reads the recorded Nezha fault injections under ``data_path`` (real labels).
    - ``prometheus``: reads ``duration`` up to ``end`` (default now) from ``prometheus_url``
      with the query catalog (plus ``catalog``, an extra YAML); the bearer token comes from
      ``PROMETHEUS_TOKEN``. ``n_anomalies > 0`` injects labelled anomalies into the real data
      so the run can be evaluated.

    An unknown source, or one that cannot be read, fails here: nothing falls back to synthetic data.
    Returns the UTC time the run started reading (later steps report the run's duration from it).
    """
    from datetime import UTC, datetime

    started_at = datetime.now(UTC).isoformat()
    from aiops.ingest import PrometheusRange, SyntheticSource, check_source, load_telemetry

    check_source(source, data_path, prometheus_url, end=end, catalog=catalog)

    settings = SyntheticSource(
        seed=seed,
        duration=duration,
        step=step,
        n_anomalies=n_anomalies,
        start=start,
        concept_drift=concept_drift,
        drift_start=drift_start,
    )
    prometheus = (
        PrometheusRange(url=prometheus_url, end=end, duration=duration, step=step, catalog=catalog)
        if prometheus_url
        else None
    )
    bundle = load_telemetry(source, data_path, settings, prometheus)
    bundle.save(telemetry.path)
    telemetry.metadata.update({"source": source, "rows": len(bundle.metrics), "labels": len(bundle.labels)})
    return started_at
