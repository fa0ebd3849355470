"""The OpenMetrics export that backfills a local Prometheus: what it refuses and how it reads the step."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from aiops.openmetrics import to_openmetrics
from aiops.telemetry import Telemetry
from tests.conftest import make_metrics


def _restarts(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.assign(restarts=0.0, cpu_usage_cores=1.0)


def test_a_pod_on_two_nodes_is_refused_not_written_as_one_series_twice():
    metrics = _restarts(make_metrics(n_steps=4, pods=("db-0",)))
    moved = metrics.assign(
        node="node-9", timestamp=metrics["timestamp"] + pd.Timedelta("10min")
    )  # a StatefulSet pod rescheduled under the same name
    with pytest.raises(ValueError, match=r"pod 'shop/db-0' appears on several entities .*node-9"):
        to_openmetrics(Telemetry(pd.concat([metrics, moved], ignore_index=True)))


def test_two_clusters_need_the_cluster_label_when_their_pods_share_names():
    metrics = _restarts(make_metrics(n_steps=4, pods=("api-1",)))
    other = metrics.assign(cluster="c2")
    both = Telemetry(pd.concat([metrics, other], ignore_index=True))
    assert "# EOF" in to_openmetrics(both)
    with pytest.raises(ValueError, match="cluster_label=True"):
        to_openmetrics(both, cluster_label=False)


def test_the_step_is_each_pods_own_spacing_not_the_gap_between_pods():
    """Two pods sampled every minute, 30 s apart: a rate is per minute, not per 30 s."""
    a = make_metrics(n_steps=5, pods=("a",))
    b = make_metrics(n_steps=5, pods=("b",), start="2026-01-05T00:00:30Z")
    text = to_openmetrics(Telemetry(pd.concat([a, b], ignore_index=True).assign(cpu_usage_cores=1.0)))
    series = [
        line
        for line in text.splitlines()
        if line.startswith("container_cpu_usage_seconds_total") and 'container="a"' in line
    ]
    values = [float(re.split(r"\s+", line)[-2]) for line in series]
    # one core for a minute is 60 CPU-seconds per sample
    assert [round(b - a) for a, b in zip(values, values[1:], strict=False)] == [60] * (len(values) - 1)
