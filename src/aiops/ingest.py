"""Telemetry sources. The source is always an explicit choice: no silent fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

from aiops.telemetry import Telemetry

SOURCES = ("synthetic", "nezha")
#: Sources that read recorded data and need a data path.
_FILE_SOURCES = frozenset({"nezha"})


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

    """

    seed: int = 42
    duration: str = "4D"
    step: str = "1min"
    n_nodes: int = 3
    deployments_per_namespace: int = 2
    replicas: int = 2
    n_anomalies: int = 24


def synthetic_telemetry(settings: SyntheticSource = SyntheticSource()) -> Telemetry:
    """Simulate a cluster and inject labelled anomalies into it."""
    from aiops.simulate import ClusterSpec, simulate_cluster
    from aiops.synth import InjectionSpec, inject_anomalies

    spec = ClusterSpec(
        n_nodes=settings.n_nodes,
        deployments_per_namespace=settings.deployments_per_namespace,
        replicas=settings.replicas,
        duration=settings.duration,
        step=settings.step,
        seed=settings.seed,
    )
    clean = simulate_cluster(spec)
    return inject_anomalies(clean, InjectionSpec(n_anomalies=settings.n_anomalies, seed=settings.seed + 1))


def check_source(source: str, data_path: str = "") -> None:
    """Raise ``ValueError`` when ``source`` is unknown or lacks the data path it needs."""
    if source not in SOURCES:
        raise ValueError(f"unknown telemetry source '{source}'; supported: {', '.join(SOURCES)}")
    if source in _FILE_SOURCES and not data_path:
        raise ValueError(f"source '{source}' reads recorded data: pass its folder as data_path (--data)")
    if source not in _FILE_SOURCES and data_path:
        raise ValueError(f"source '{source}' takes no data_path (got '{data_path}')")


def load_telemetry(
    source: str, data_path: str = "", synthetic: SyntheticSource = SyntheticSource()
) -> Telemetry:
    """Load telemetry from the named source; there is no default and no fallback.

    Args:
        source: One of :data:`SOURCES`.
        data_path: Folder of recorded data (``nezha``).
        synthetic: Settings of the ``synthetic`` source.
    """
    check_source(source, data_path)
    if source == "nezha":
        from aiops.nezha import load_nezha

        return load_nezha(data_path)
    return synthetic_telemetry(synthetic)
