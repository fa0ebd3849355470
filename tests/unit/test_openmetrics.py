"""The OpenMetrics export that backfills a local Prometheus: what it refuses and how it reads the step."""

from __future__ import annotations

import re

import numpy as np
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


def _samples(text: str, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``{series: [(timestamp, value), ...]}`` of the families starting with ``prefix``, in file order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            series, value, stamp = line.rsplit(" ", 2)
            out.setdefault(series, []).append((float(stamp), float(value)))
    return out


def _one_pod(**columns: list[float]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-05T00:00:00Z", periods=n, freq="1min"),
            "cluster": "c1",
            "namespace": "shop",
            "pod": "api-7d9f8c-x1z2q",
            "node": "node-1",
            "cpu_usage_cores": 1.0,
            **columns,
        }
    )


def test_a_counter_never_falls_where_its_rate_drops_to_zero():
    """The running sums rounded the sample after a zero increment one unit in the last place below
    the one before; Prometheus read that as a counter reset and gave a rate of the whole count."""
    errors = [4.112330787912359, 0.865952659560213, 4.2574295731482605, 0.0, 0.0]
    text = to_openmetrics(Telemetry(_one_pod(network_errors_per_s=errors)), scrape_interval="30s")
    series = _samples(text, "container_network_receive_errors_total")
    assert series
    for samples in series.values():
        values = [value for _, value in samples]
        assert all(b >= a for a, b in zip(values, values[1:], strict=False)), values


def test_an_idle_minute_is_no_missed_scrape_of_the_request_counters():
    """No requests: the error ratio is 0/0 (NaN, as the ingest records it), but the counters stand
    still at every scrape rather than skipping it (which halved the next minute's rate)."""
    rate = [26.0, 0.0, 0.0, 0.0, 26.0]
    idle = to_openmetrics(
        Telemetry(_one_pod(request_rate=rate, error_ratio=[0.1, np.nan, np.nan, np.nan, 0.1]))
    )
    known = to_openmetrics(Telemetry(_one_pod(request_rate=rate, error_ratio=[0.1, 0.0, 0.0, 0.0, 0.1])))
    assert _samples(idle, "istio_requests_total") == _samples(known, "istio_requests_total")


def test_node_series_are_written_in_time_order_whatever_the_rows_order():
    """promtool silently drops a sample older than its series' latest: pod by pod, a short-lived
    pod listed first put its node's later minutes before the earlier ones."""
    long = make_metrics(n_steps=6, pods=("a",)).assign(node="node-1")
    short = long.iloc[3:].assign(pod="b")  # a pod that starts later on the same node
    rows = pd.concat([short, long], ignore_index=True)  # pod by pod, the later one first
    rows["node_cpu_utilisation"] = 0.1 + 0.01 * rows["timestamp"].dt.minute
    text = to_openmetrics(Telemetry(rows.assign(cpu_usage_cores=1.0)))
    (samples,) = _samples(text, "instance:node_cpu_utilisation:rate5m").values()
    stamps = [stamp for stamp, _ in samples]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_two_clusters_sharing_a_node_name_need_the_cluster_label():
    """Their node series would be one series written twice, with different values."""
    one = make_metrics(n_steps=4, pods=("api-1",)).assign(node="worker-0", node_cpu_utilisation=0.2)
    other = one.assign(cluster="c2", pod="web-1", node_cpu_utilisation=0.7)
    both = Telemetry(pd.concat([one, other], ignore_index=True).assign(cpu_usage_cores=1.0))
    assert "# EOF" in to_openmetrics(both)
    with pytest.raises(ValueError, match=r"node 'worker-0' appears in several clusters \(c1, c2\)"):
        to_openmetrics(both, cluster_label=False)
    # Without node values in one of them, nothing of it is written as a node series: no collision.
    silent = other.assign(node_cpu_utilisation=np.nan)
    alone = Telemetry(pd.concat([one, silent], ignore_index=True).assign(cpu_usage_cores=1.0))
    assert "# EOF" in to_openmetrics(alone, cluster_label=False)
