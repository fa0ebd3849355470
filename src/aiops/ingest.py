"""Telemetry sources. The source is always an explicit choice: no silent fallbacks."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import pandas as pd

from aiops.schema import as_utc
from aiops.telemetry import Telemetry

SOURCES = ("synthetic", "nezha", "prometheus")
#: Sources that read recorded data and need a data path.
_FILE_SOURCES = frozenset({"nezha"})
PROMETHEUS_TOKEN_ENV = "PROMETHEUS_TOKEN"
PROMETHEUS_CA_BUNDLE_ENV = "PROMETHEUS_CA_BUNDLE"
#: Where a cluster run mounts OpenShift's service CA, which signs thanos-querier's certificate
#: (``pipelines.cluster.with_prometheus_credentials``).
SERVICE_CA_BUNDLE = "/etc/pki/aiops-service-ca/service-ca.crt"


def prometheus_credentials() -> tuple[str | None, str | None]:
    """The bearer token and CA bundle to reach Prometheus with, from the environment.

    The token is ``PROMETHEUS_TOKEN``. The CA bundle is ``PROMETHEUS_CA_BUNDLE`` when set, else the
    service CA where a cluster run mounted it, else ``None`` (the system's CAs).
    """
    token = os.environ.get(PROMETHEUS_TOKEN_ENV) or None
    ca_bundle = os.environ.get(PROMETHEUS_CA_BUNDLE_ENV) or None
    if ca_bundle is None and os.path.isfile(SERVICE_CA_BUNDLE):
        ca_bundle = SERVICE_CA_BUNDLE
    return token, ca_bundle


@dataclass(frozen=True)
class SyntheticSource:
    """Settings of the built-in simulated cluster with injected, labelled anomalies.

    Attributes:
        seed: Seed of both the simulator and the injector.
        duration: Simulated time span (pandas timedelta string).
        step: Sampling step.
        n_nodes: Nodes in the cluster.
        deployments_per_namespace: Deployments in each of the two namespaces.
        replicas: Pods per deployment.
        n_anomalies: Anomalies to inject.
        start: First simulated instant (ISO 8601 UTC); empty for the simulator's default.
        concept_drift: Gradual drift to apply (:data:`aiops.concept_drift.DRIFT_KINDS`), or ''.
        drift_start: Offset from ``start`` at which the drift begins.
    """

    seed: int = 42
    duration: str = "4D"
    step: str = "1min"
    n_nodes: int = 3
    deployments_per_namespace: int = 2
    replicas: int = 2
    n_anomalies: int = 24
    start: str = ""
    concept_drift: str = ""
    drift_start: str = "0min"


@dataclass(frozen=True)
class PrometheusRange:
    """Where and what to read from Prometheus (the bearer token comes from the environment).

    Attributes:
        url: Prometheus or thanos-querier URL.
        end: End of the range (ISO 8601, UTC); empty means now.
        duration: Length of the range before ``end``.
        step: Grid step.
        catalog: Extra query catalog YAML (extends/overrides the built-in one); empty for none.
        cluster: Value of the ``cluster`` key on every row.
    """

    url: str
    end: str = ""
    duration: str = "4D"
    step: str = "1min"
    catalog: str = ""
    cluster: str = ""

    def bounds(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Return ``(start, end)`` as UTC timestamps on the step grid."""
        end = as_utc(self.end, "end") if self.end else pd.Timestamp.now(tz="UTC")
        # to_timedelta reads "1m" as a minute (PromQL's sense); as a frequency it is a month end
        step = pd.to_timedelta(self.step)
        end = end.floor(step)
        return end - pd.Timedelta(self.duration), end


def synthetic_telemetry(settings: SyntheticSource = SyntheticSource()) -> Telemetry:
    """Simulate a cluster and inject labelled anomalies into it."""
    from aiops.simulate import ClusterSpec, simulate_cluster

    spec = ClusterSpec(
        n_nodes=settings.n_nodes,
        deployments_per_namespace=settings.deployments_per_namespace,
        replicas=settings.replicas,
        duration=settings.duration,
        step=settings.step,
        seed=settings.seed,
    )
    if settings.start:
        spec = replace(spec, start=settings.start)
    telemetry = simulate_cluster(spec)
    if settings.concept_drift:
        from aiops.concept_drift import ConceptDrift, apply_concept_drift

        telemetry = apply_concept_drift(
            telemetry, ConceptDrift(settings.concept_drift, start=settings.drift_start)
        )
    return _inject(telemetry, settings.n_anomalies, settings.seed + 1)


def _inject(telemetry: Telemetry, n_anomalies: int, seed: int) -> Telemetry:
    from aiops.synth import InjectionSpec, inject_anomalies

    if n_anomalies <= 0:
        return telemetry
    return inject_anomalies(telemetry, InjectionSpec(n_anomalies=n_anomalies, seed=seed))


def prometheus_telemetry(settings: PrometheusRange, n_anomalies: int = 0, seed: int = 42) -> Telemetry:
    """Read a time range from Prometheus; optionally inject labelled synthetic anomalies into it.

    Real metrics carry no labels. Injected anomalies (``n_anomalies > 0``, an explicit choice)
    give the evaluation and the promotion gate something to measure on this cluster's data.
    The bearer token and CA bundle come from ``PROMETHEUS_TOKEN`` and ``PROMETHEUS_CA_BUNDLE``.
    """
    from aiops.prometheus import ingest_prometheus

    start, end = settings.bounds()
    token, ca_bundle = prometheus_credentials()
    telemetry = ingest_prometheus(
        settings.url,
        start,
        end,
        step=settings.step,
        catalog=settings.catalog or None,
        cluster=settings.cluster,
        token=token,
        ca_bundle=ca_bundle,
    )
    return _inject(telemetry, n_anomalies, seed)


def check_source(
    source: str, data_path: str = "", prometheus_url: str = "", *, end: str = "", catalog: str = ""
) -> None:
    """Raise ``ValueError`` when ``source`` is unknown, lacks what it needs, or is given what it ignores.

    ``end`` and ``catalog`` (the range's end, an extra query catalog) are Prometheus settings.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown telemetry source '{source}'; supported: {', '.join(SOURCES)}")
    if source in _FILE_SOURCES and not data_path:
        raise ValueError(f"source '{source}' reads recorded data: pass its folder as data_path (--data)")
    if source not in _FILE_SOURCES and data_path:
        raise ValueError(f"source '{source}' takes no data_path (got '{data_path}')")
    if source == "prometheus" and not prometheus_url:
        raise ValueError("source 'prometheus' needs prometheus_url (--prometheus-url)")
    if source != "prometheus" and prometheus_url:
        raise ValueError(f"source '{source}' takes no prometheus_url (got '{prometheus_url}')")
    ignored = {k: v for k, v in (("end", end), ("catalog", catalog)) if v}
    if source != "prometheus" and ignored:
        shown = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
        raise ValueError(f"{shown} applies to the prometheus source only; source '{source}' would ignore it")


def load_telemetry(
    source: str,
    data_path: str = "",
    synthetic: SyntheticSource = SyntheticSource(),
    prometheus: PrometheusRange | None = None,
) -> Telemetry:
    """Load telemetry from the named source; there is no default and no fallback.

    Args:
        source: One of :data:`SOURCES`.
        data_path: Folder of recorded data (``nezha``).
        synthetic: Settings of the ``synthetic`` source; its ``n_anomalies`` and ``seed`` also
            drive injection into ``prometheus`` data.
        prometheus: Range of the ``prometheus`` source.
    """
    check_source(source, data_path, prometheus.url if prometheus else "")
    if source != "synthetic":
        only_synthetic = {"start": synthetic.start, "concept_drift": synthetic.concept_drift}
        given = {k: v for k, v in only_synthetic.items() if v}
        if given:
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} applies to the synthetic source only; "
                f"source '{source}' would ignore it"
            )
    if source == "nezha":
        from aiops.nezha import load_nezha

        return load_nezha(data_path)
    if source == "prometheus":
        assert prometheus is not None  # checked above
        return prometheus_telemetry(prometheus, synthetic.n_anomalies, synthetic.seed + 1)
    return synthetic_telemetry(synthetic)
