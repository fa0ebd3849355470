"""Unit tests for the seeded cluster simulator."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from aiops.schema import EVENT_COLUMNS, KEY_COLUMNS, LOG_COLUMNS, METRIC_COLUMNS, METRIC_SPECS, TIMESTAMP
from aiops.simulate import ClusterSpec, simulate_cluster
from aiops.telemetry import Telemetry

SPEC = ClusterSpec(duration="2D", rollouts_per_day=2.0, seed=1)
POD_NAME = re.compile(
    r"^(?P<deployment>[a-z][a-z0-9-]*)-(?P<hash>[bcdfghjklmnpqrstvwxz2456789]{10})-[bcdfghjklmnpqrstvwxz2456789]{5}$"
)


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    return simulate_cluster(SPEC)


def _assert_same(a: Telemetry, b: Telemetry) -> None:
    for table in ("metrics", "labels", "events", "logs"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table))


def test_same_seed_gives_identical_tables(telemetry: Telemetry) -> None:
    _assert_same(telemetry, simulate_cluster(SPEC))


def test_different_seed_gives_different_data(telemetry: Telemetry) -> None:
    other = simulate_cluster(ClusterSpec(duration="2D", rollouts_per_day=2.0, seed=2))
    assert set(other.metrics["pod"]) != set(telemetry.metrics["pod"])
    n = min(len(other.metrics), len(telemetry.metrics))
    assert not np.allclose(other.metrics["request_rate"][:n], telemetry.metrics["request_rate"][:n])


def test_output_validates_with_canonical_columns_and_dtypes(telemetry: Telemetry) -> None:
    telemetry.validate()
    metrics = telemetry.metrics
    assert list(metrics.columns) == [*KEY_COLUMNS, *METRIC_COLUMNS]
    assert str(metrics[TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert all(metrics[c].dtype == np.float64 for c in METRIC_COLUMNS)
    for key in ("cluster", "namespace", "pod", "node"):
        assert metrics[key].map(type).eq(str).all(), key
    assert telemetry.labels.empty
    assert list(telemetry.events.columns) == list(EVENT_COLUMNS)
    assert list(telemetry.logs.columns) == list(LOG_COLUMNS)
    assert telemetry.events[TIMESTAMP].is_monotonic_increasing
    assert telemetry.logs[TIMESTAMP].is_monotonic_increasing


def test_rows_sorted_by_timestamp_namespace_pod(telemetry: Telemetry) -> None:
    metrics = telemetry.metrics
    expected = metrics.sort_values([TIMESTAMP, "namespace", "pod"], ignore_index=True)
    pd.testing.assert_frame_equal(metrics, expected)
    assert metrics.index.equals(pd.RangeIndex(len(metrics)))


@pytest.mark.parametrize("step", ["1min", "5min"])
def test_each_pod_is_sampled_every_step(step: str) -> None:
    tel = simulate_cluster(ClusterSpec(duration="1D", step=step, seed=4))
    start, end = pd.Timestamp(SPEC.start), pd.Timestamp(SPEC.start) + pd.Timedelta("1D")
    assert tel.metrics[TIMESTAMP].min() == start
    assert tel.metrics[TIMESTAMP].max() == end - pd.Timedelta(step)
    for _, rows in tel.metrics.groupby("pod"):
        assert (rows[TIMESTAMP].diff().dropna() == pd.Timedelta(step)).all()


def test_values_within_schema_bounds_and_limits(telemetry: Telemetry) -> None:
    m = telemetry.metrics
    for name in METRIC_COLUMNS:
        spec = METRIC_SPECS[name]
        assert (m[name] >= 0).all(), name
        if spec.upper is not None:
            assert (m[name] <= spec.upper).all(), name
    assert (m["cpu_usage_cores"] < m["cpu_limit_cores"]).all()
    assert (m["memory_working_set_bytes"] < 0.8 * m["memory_limit_bytes"]).all()
    assert (m["restarts"] == 0).all()
    assert m["cpu_throttled_ratio"].quantile(0.99) < 0.01
    # A small error rate on every row: a simulator without errors (0) or with many must fail here.
    assert 0.001 < m["error_ratio"].median() < 0.008 and (m["error_ratio"] > 0).mean() > 0.95
    # Errors and drops are rare: mostly zero, never absent.
    assert (m["network_errors_per_s"] == 0).mean() > 0.9
    assert m["network_errors_per_s"].max() > 0


def test_limits_are_constant_per_deployment(telemetry: Telemetry) -> None:
    m = telemetry.metrics.assign(deployment=telemetry.metrics["pod"].str.extract(POD_NAME)["deployment"])
    assert (m.groupby("deployment")[["cpu_limit_cores", "memory_limit_bytes"]].nunique() == 1).all().all()


def test_node_metrics_repeat_on_every_pod_of_the_node(telemetry: Telemetry) -> None:
    node_columns = ["node_cpu_utilisation", "node_memory_utilisation"]
    per_node = telemetry.metrics.groupby([TIMESTAMP, "node"])[node_columns]
    assert (per_node.nunique() == 1).all().all()


def test_daily_seasonality_daytime_busier_than_night(telemetry: Telemetry) -> None:
    m = telemetry.metrics
    total = m.groupby(TIMESTAMP)["request_rate"].sum()
    hours = total.index.hour
    day, night = total[(hours >= 11) & (hours < 17)].mean(), total[hours < 5].mean()
    assert day > 2.0 * night
    # CPU and network follow the requests.
    cpu = m.groupby(TIMESTAMP)["cpu_usage_cores"].sum()
    assert cpu[(hours >= 11) & (hours < 17)].mean() > cpu[hours < 5].mean()


def test_weekends_are_quieter_than_weekdays() -> None:
    tel = simulate_cluster(ClusterSpec(duration="7D", step="5min", seed=5))
    total = tel.metrics.groupby(TIMESTAMP)["request_rate"].sum()
    weekend = total.index.dayofweek >= 5
    assert total[weekend].mean() < 0.85 * total[~weekend].mean()


def test_pod_names_look_like_kubernetes_and_hash_changes_per_rollout(telemetry: Telemetry) -> None:
    parts = telemetry.metrics["pod"].drop_duplicates().str.extract(POD_NAME)
    assert parts.notna().all().all(), "every pod name is <deployment>-<10-char pod-template hash>-<5 chars>"
    hashes = parts.groupby("deployment")["hash"].nunique()
    assert (hashes > 1).any()
    assert len(hashes) == len(SPEC.namespaces) * SPEC.deployments_per_namespace


def test_pods_come_and_go_with_a_short_surge(telemetry: Telemetry) -> None:
    m = telemetry.metrics
    n_deployments = len(SPEC.namespaces) * SPEC.deployments_per_namespace
    assert m["pod"].nunique() > SPEC.replicas * n_deployments
    deployment = m["pod"].str.extract(POD_NAME)["deployment"]
    alive = m.groupby([m[TIMESTAMP], deployment])["pod"].nunique()
    assert alive.min() == SPEC.replicas
    assert alive.max() == 2 * SPEC.replicas
    # The surge lasts 1-3 steps per rollout, so overlap rows are rare.
    assert (alive > SPEC.replicas).mean() < 0.05


def test_no_rollouts_keeps_the_same_pods() -> None:
    tel = simulate_cluster(ClusterSpec(duration="1D", rollouts_per_day=0.0, seed=3))
    assert tel.metrics["pod"].nunique() == 2 * 2 * 2
    assert "Killing" not in set(tel.events["reason"])


def test_lifecycle_events_match_each_pods_rows(telemetry: Telemetry) -> None:
    m, events = telemetry.metrics, telemetry.events
    last_time = m[TIMESTAMP].max()
    by_pod = events[events["pod"] != ""].groupby(["pod", "reason"])[TIMESTAMP]
    first_event = by_pod.min()
    for (namespace, pod, node), rows in m.groupby(["namespace", "pod", "node"]):
        born, gone = rows[TIMESTAMP].min(), rows[TIMESTAMP].max()
        for reason in ("Scheduled", "Pulling", "Pulled", "Created", "Started"):
            assert first_event[(pod, reason)] == born, (pod, reason)
        scheduled = events[(events["pod"] == pod) & (events["reason"] == "Scheduled")]
        assert scheduled["message"].iloc[0] == f"Successfully assigned {namespace}/{pod} to {node}"
        if gone < last_time:
            assert first_event[(pod, "Killing")] == gone, pod
        else:
            assert (pod, "Killing") not in first_event.index
    rollouts = events[events["reason"] == "ScalingReplicaSet"]
    assert (rollouts["pod"] == "").all()
    assert rollouts["message"].str.contains("Scaled up replica set").sum() == len(
        m["pod"].str.extract(POD_NAME)[["deployment", "hash"]].drop_duplicates()
    )


def test_logs_follow_each_pods_life(telemetry: Telemetry) -> None:
    m, logs = telemetry.metrics, telemetry.logs
    last_time = m[TIMESTAMP].max()
    assert set(logs["level"]) <= {"INFO", "WARN", "ERROR"}
    assert len(logs) < 0.2 * len(m), "log volume stays modest"
    for pod, rows in m.groupby("pod"):
        pod_logs = logs[logs["pod"] == pod]
        deployment = POD_NAME.match(pod)["deployment"]
        assert (pod_logs["container"] == deployment).all()
        startup = pod_logs[pod_logs["message"] == f"Starting {deployment} server on :8080"]
        assert list(startup[TIMESTAMP]) == [rows[TIMESTAMP].min()]
        sigterm = pod_logs[pod_logs["message"].str.startswith("Received SIGTERM")]
        expected = [rows[TIMESTAMP].max()] if rows[TIMESTAMP].max() < last_time else []
        assert list(sigterm[TIMESTAMP]) == expected
        if len(rows) >= 30:
            assert pod_logs["message"].str.startswith("served ").sum() >= len(rows) // 15 - 1


def test_request_summary_numbers_come_from_the_metrics(telemetry: Telemetry) -> None:
    logs, m = telemetry.logs, telemetry.metrics
    line = logs[logs["message"].str.startswith("served ")].iloc[5]
    served, p95_ms = re.match(r"served (\d+) requests in the last 15m, p95=(\d+)ms", line["message"]).groups()
    rows = m[(m["pod"] == line["pod"]) & (m[TIMESTAMP] <= line[TIMESTAMP])].tail(15)
    assert int(served) == round((rows["request_rate"] * 60).sum())
    assert int(p95_ms) == round(rows["latency_p95_seconds"].iloc[-1] * 1000)


@pytest.mark.parametrize(
    "bad",
    [
        {"n_nodes": 0},
        {"replicas": 0},
        {"namespaces": ()},
        {"step": "2D", "duration": "1D"},
        {"rollouts_per_day": -1.0},
    ],
)
def test_inconsistent_spec_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        simulate_cluster(ClusterSpec(**bad))


def test_a_duration_that_is_not_a_whole_number_of_steps_is_refused_not_cut() -> None:
    with pytest.raises(ValueError, match="'90min' is not a whole number of steps of '1h'; use '1h' or '2h'"):
        simulate_cluster(ClusterSpec(duration="90min", step="1h"))


def test_a_concept_drift_that_starts_after_the_data_is_refused_not_ignored() -> None:
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    settings = SyntheticSource(
        duration="1D", concept_drift="workload_doubles", drift_start="2D", n_anomalies=2
    )
    with pytest.raises(ValueError, match="would start 2D after the first row, at or after the last one"):
        synthetic_telemetry(settings)


def test_seven_days_at_one_minute_hold_every_minute() -> None:
    # How long it takes is measured in benchmarks/training_steps.py ("simulate+inject"), not here:
    # a wall-clock limit on a shared machine fails for reasons that are not the code's.
    tel = simulate_cluster(ClusterSpec(duration="7D", n_nodes=3, replicas=2))
    assert tel.metrics[TIMESTAMP].nunique() == 7 * 24 * 60


def test_workload_drift_caps_usage_at_limits_and_leaves_unlimited_pods_uncapped():
    from aiops.concept_drift import ConceptDrift, apply_concept_drift
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    telemetry = synthetic_telemetry(SyntheticSource(seed=1, duration="6h"))
    metrics = telemetry.metrics.copy()
    pod = metrics["pod"].iloc[0]
    unlimited = (metrics["pod"] == pod).to_numpy()
    metrics.loc[unlimited, "cpu_limit_cores"] = np.nan  # no limit set
    metrics.loc[unlimited, "memory_limit_bytes"] = 0.0  # 0 reads as "no limit" too
    drifted = apply_concept_drift(
        Telemetry(metrics=metrics, labels=telemetry.labels, events=telemetry.events, logs=telemetry.logs),
        ConceptDrift("workload_doubles", ramp="1h", factor=3.0),
    ).metrics
    late = unlimited & (metrics[TIMESTAMP] >= metrics[TIMESTAMP].min() + pd.Timedelta("1h")).to_numpy()
    np.testing.assert_allclose(
        drifted.loc[late, "cpu_usage_cores"], 3.0 * metrics.loc[late, "cpu_usage_cores"]
    )
    assert drifted.loc[unlimited, "memory_working_set_bytes"].notna().all()
    limited = ~unlimited
    assert (drifted.loc[limited, "cpu_usage_cores"] <= metrics.loc[limited, "cpu_limit_cores"] + 1e-12).all()


def test_workload_drift_leaves_the_rows_it_does_not_scale_alone():
    """Pods outside the prefix, and rows before the drift starts, keep even values above the cap."""
    from aiops.concept_drift import ConceptDrift, apply_concept_drift
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    telemetry = synthetic_telemetry(SyntheticSource(seed=1, duration="6h"))
    metrics = telemetry.metrics.copy()
    metrics["cpu_usage_cores"] = 1.2 * metrics["cpu_limit_cores"]  # above the limit everywhere
    metrics["memory_working_set_bytes"] = 0.99 * metrics["memory_limit_bytes"]  # above 95% of it
    chosen = metrics["pod"].iloc[0]
    prefix = chosen[: len(chosen) - 1]
    assert not metrics["pod"].str.startswith(prefix).all()
    drifted = apply_concept_drift(
        Telemetry(metrics=metrics, labels=telemetry.labels, events=telemetry.events, logs=telemetry.logs),
        ConceptDrift("workload_doubles", start="3h", ramp="1h", pod_prefix=prefix),
    ).metrics
    start = metrics[TIMESTAMP].min() + pd.Timedelta("3h")
    untouched = ~metrics["pod"].str.startswith(prefix) | (metrics[TIMESTAMP] <= start)
    for column in ("cpu_usage_cores", "memory_working_set_bytes"):
        pd.testing.assert_series_equal(drifted.loc[untouched, column], metrics.loc[untouched, column])
    scaled = ~untouched
    assert (drifted.loc[scaled, "cpu_usage_cores"] <= metrics.loc[scaled, "cpu_limit_cores"] + 1e-12).all()


def test_workload_drift_below_one_scales_cpu_down_with_the_traffic():
    from aiops.concept_drift import ConceptDrift, apply_concept_drift
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    telemetry = synthetic_telemetry(SyntheticSource(seed=1, duration="6h"))
    drifted = apply_concept_drift(telemetry, ConceptDrift("workload_doubles", ramp="1h", factor=0.5)).metrics
    late = (
        telemetry.metrics[TIMESTAMP] >= telemetry.metrics[TIMESTAMP].min() + pd.Timedelta("1h")
    ).to_numpy()
    for column in ("request_rate", "cpu_usage_cores"):
        np.testing.assert_allclose(drifted.loc[late, column], 0.5 * telemetry.metrics.loc[late, column])
