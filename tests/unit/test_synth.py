"""Unit tests for labelled anomaly injection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.schema import (
    KEY_COLUMNS,
    METRIC_COLUMNS,
    TIMESTAMP,
    SchemaError,
    label_masks,
    row_labels,
    validate_labels,
)
from aiops.simulate import ClusterSpec, simulate_cluster
from aiops.synth import ANOMALY_TYPES, InjectionSpec, inject, inject_anomalies
from aiops.telemetry import Telemetry, content_hash

CATEGORY = {"spike": "point", "contextual": "contextual"}
# A night-time window: 12 h later is the daily peak, which `contextual` borrows.
START, END = pd.Timestamp("2026-01-05T03:00:00Z"), pd.Timestamp("2026-01-05T03:40:00Z")


@pytest.fixture(scope="module")
def base() -> Telemetry:
    # No rollouts: every pod lives the whole day, so any window fits.
    return simulate_cluster(ClusterSpec(duration="1D", rollouts_per_day=0.0, seed=3))


@pytest.fixture(scope="module")
def rolling() -> Telemetry:
    return simulate_cluster(ClusterSpec(duration="2D", rollouts_per_day=1.0, seed=3))


def _target(telemetry: Telemetry, index: int = 0) -> dict[str, str]:
    keys = telemetry.metrics[["cluster", "namespace", "pod", "node"]].drop_duplicates()
    return keys.iloc[index].to_dict()


def _changed(before: pd.DataFrame, after: pd.DataFrame) -> np.ndarray:
    """Rows where any metric column differs (NaN == NaN)."""
    columns = [c for c in METRIC_COLUMNS if c in before.columns]
    a, b = before[columns].to_numpy(), after[columns].to_numpy()
    return ((a != b) & ~(np.isnan(a) & np.isnan(b))).any(axis=1)


def _hashes(telemetry: Telemetry) -> list[str]:
    return [content_hash(getattr(telemetry, t)) for t in ("metrics", "labels", "events", "logs")]


def _inject(telemetry: Telemetry, anomaly_type: str, seed: int = 0, **where: object) -> Telemetry:
    place = {**_target(telemetry), "start": START, "end": END, **where}
    return inject(telemetry, anomaly_type, rng=np.random.default_rng(seed), **place)


def _window(out: Telemetry) -> np.ndarray:
    return row_labels(out.metrics, out.labels)


@pytest.mark.parametrize("anomaly_type", ANOMALY_TYPES)
def test_inject_changes_exactly_the_labelled_rows(base: Telemetry, anomaly_type: str) -> None:
    before = _hashes(base)
    out = _inject(base, anomaly_type)
    assert _hashes(base) == before, "input must not be mutated"

    out.validate()
    validate_labels(out.labels)
    label = out.labels.iloc[0]
    assert len(out.labels) == 1
    assert label["anomaly_type"] == anomaly_type
    assert label["category"] == CATEGORY.get(anomaly_type, "collective")
    assert {k: label[k] for k in ("cluster", "namespace", "pod", "node")} == _target(base)

    flags = _window(out)
    np.testing.assert_array_equal(flags, _changed(base.metrics, out.metrics))
    expected_rows = (END - START) // pd.Timedelta("1min")
    if anomaly_type == "spike":
        assert 1 <= flags.sum() <= 3
    else:
        assert flags.sum() == expected_rows
    pd.testing.assert_frame_equal(out.metrics[list(KEY_COLUMNS)], base.metrics[list(KEY_COLUMNS)])
    assert (out.metrics.dtypes == base.metrics.dtypes).all()
    assert out.events[TIMESTAMP].is_monotonic_increasing
    assert out.logs[TIMESTAMP].is_monotonic_increasing


def test_spike_is_a_short_multiplicative_jump(base: Telemetry) -> None:
    out = _inject(base, "spike")
    flags = _window(out)
    label = out.labels.iloc[0]
    changed_times = out.metrics.loc[flags, TIMESTAMP]
    assert label["start"] == START
    assert label["end"] == changed_times.max() + pd.Timedelta("1min")
    before, after = base.metrics.loc[flags], out.metrics.loc[flags]
    ratio = (after[list(METRIC_COLUMNS)] / before[list(METRIC_COLUMNS)]).max(axis=None)
    assert 4.0 <= ratio <= 8.0


def test_memory_leak_ramps_to_the_limit_and_is_oom_killed(base: Telemetry) -> None:
    out = _inject(base, "memory_leak")
    rows = out.metrics[_window(out)]
    memory = rows["memory_working_set_bytes"].to_numpy()
    assert (np.diff(memory) > 0).all()
    assert memory[-1] == rows["memory_limit_bytes"].iloc[-1]
    assert rows["restarts"].tolist() == [0.0] * (len(rows) - 1) + [1.0]
    oom = out.events[out.events["reason"] == "OOMKilling"]
    assert len(oom) == 1
    assert oom["type"].iloc[0] == "Warning"
    assert oom[TIMESTAMP].iloc[0] == rows[TIMESTAMP].iloc[-1]
    assert oom["node"].iloc[0] == rows["node"].iloc[0]
    assert (out.logs["message"] == "fatal error: runtime: out of memory").sum() == 1


def test_crash_loop_restarts_with_back_off(base: Telemetry) -> None:
    out = _inject(base, "crash_loop")
    flags = _window(out)
    rows, normal = out.metrics[flags], base.metrics[flags]
    restart_rows = np.flatnonzero(rows["restarts"].to_numpy() > 0)
    assert len(restart_rows) >= 4
    gaps = np.diff(restart_rows)
    assert gaps[-1] >= gaps[0], "back-off spaces the restarts out"
    assert (rows["request_rate"] < 0.2 * normal["request_rate"]).all()
    assert (rows["error_ratio"] >= 0.3).all()
    backoff = out.events[out.events["reason"] == "BackOff"]
    assert len(backoff) == len(restart_rows)
    assert (backoff["type"] == "Warning").all()
    assert backoff["message"].str.startswith("Back-off restarting failed container").all()
    errors = out.logs[out.logs["level"] == "ERROR"]["message"]
    assert errors.str.startswith("panic: ").sum() == len(restart_rows)
    assert errors.str.contains("connection refused").sum() == len(restart_rows)


def test_cpu_saturation_pins_cpu_at_the_limit(base: Telemetry) -> None:
    out = _inject(base, "cpu_saturation")
    flags = _window(out)
    rows = out.metrics[flags]
    assert (rows["cpu_usage_cores"] >= 0.95 * rows["cpu_limit_cores"]).all()
    assert rows["cpu_throttled_ratio"].between(0.3, 0.8).all()
    assert (rows["latency_p95_seconds"] > base.metrics.loc[flags, "latency_p95_seconds"]).all()


def test_network_degradation_raises_latency_and_errors(base: Telemetry) -> None:
    out = _inject(base, "network_degradation")
    flags = _window(out)
    rows, normal = out.metrics[flags], base.metrics[flags]
    assert (rows["latency_p95_seconds"] >= 3 * normal["latency_p95_seconds"]).all()
    assert (rows["network_errors_per_s"] > normal["network_errors_per_s"]).all()
    assert (rows["error_ratio"] > normal["error_ratio"]).all()
    assert out.logs["message"].str.startswith("upstream connect error").any()


def test_disk_fill_ramps_towards_full_with_eviction_warnings(base: Telemetry) -> None:
    out = _inject(base, "disk_fill")
    disk = out.metrics.loc[_window(out), "disk_usage_ratio"].to_numpy()
    assert (np.diff(disk) > 0).all()
    assert 0.97 <= disk[-1] <= 1.0
    warnings = set(out.events.loc[out.events["type"] == "Warning", "reason"])
    assert {"FreeDiskSpaceFailed", "EvictionThresholdMet"} <= warnings


def test_contextual_values_are_in_range_but_wrong_for_the_time(base: Telemetry) -> None:
    target = _target(base)
    out = _inject(base, "contextual")
    flags = _window(out)
    pod = (base.metrics["pod"] == target["pod"]).to_numpy()
    for column in ("request_rate", "cpu_usage_cores", "network_rx_bytes_per_s", "latency_p95_seconds"):
        series = base.metrics.loc[pod, column]
        window = out.metrics.loc[flags, column]
        assert window.between(series.min(), series.max()).all(), column
    # The night window now carries daytime load.
    night = base.metrics.loc[flags, "request_rate"].mean()
    assert out.metrics.loc[flags, "request_rate"].mean() > 1.5 * night


def test_collective_flatlines_one_metric(base: Telemetry) -> None:
    out = _inject(base, "collective")
    flags = _window(out)
    frozen = out.metrics.loc[flags, list(METRIC_COLUMNS)].std() == 0
    moving = base.metrics.loc[flags, list(METRIC_COLUMNS)].std() > 0
    assert (frozen & moving).sum() == 1


def test_level_shift_is_sustained(base: Telemetry) -> None:
    out = _inject(base, "level_shift")
    flags = _window(out)
    delta = out.metrics.loc[flags, list(METRIC_COLUMNS)] - base.metrics.loc[flags, list(METRIC_COLUMNS)]
    shifted = delta.columns[(delta != 0).all()]
    assert len(shifted) == 1
    assert np.allclose(delta[shifted[0]], delta[shifted[0]].iloc[0])
    assert delta[shifted[0]].iloc[0] > 0


def test_inject_rejects_unknown_type_empty_window_and_missing_columns(base: Telemetry) -> None:
    with pytest.raises(ValueError, match="unknown anomaly type"):
        _inject(base, "meteor_strike")
    with pytest.raises(ValueError, match="no rows"):
        _inject(base, "spike", start="2030-01-01T00:00:00Z", end="2030-01-01T01:00:00Z")
    slim = Telemetry(base.metrics[[*KEY_COLUMNS, "request_rate"]])
    with pytest.raises(SchemaError, match="memory_working_set_bytes"):
        _inject(slim, "memory_leak")


def test_pods_that_report_no_http_metrics_get_no_anomaly_that_needs_them(rolling: Telemetry) -> None:
    """Prometheus data: some pods never report request rate or latency (no HTTP metrics). An
    anomaly there would label rows it cannot change, which no detector could find."""
    metrics = rolling.metrics.copy()
    silent = metrics["pod"].isin(metrics["pod"].drop_duplicates().iloc[::3])
    metrics.loc[silent, ["request_rate", "latency_p95_seconds"]] = np.nan
    quiet = Telemetry(metrics, rolling.labels, rolling.events, rolling.logs)
    for seed in range(3):
        out = inject_anomalies(quiet, InjectionSpec(n_anomalies=30, seed=seed))
        np.testing.assert_array_equal(row_labels(out.metrics, out.labels), _changed(metrics, out.metrics))
    target = {**_target(quiet), "pod": metrics.loc[silent, "pod"].iloc[0]}
    target["node"] = metrics.loc[metrics["pod"] == target["pod"], "node"].iloc[0]
    with pytest.raises(SchemaError, match="reports no value of request_rate"):
        _inject(quiet, "contextual", **target)


def test_an_anomaly_is_not_placed_where_its_columns_have_no_value(base: Telemetry) -> None:
    """A pod may report a column and still miss it for a while (a gap in the scrapes): a spike
    or a level shift there would label rows it cannot change."""
    metrics = base.metrics.copy()
    hour = metrics["timestamp"].dt.hour
    gaps = (hour % 2 == 1).to_numpy()  # every other hour, no traffic, latency or network samples
    columns = ["request_rate", "latency_p95_seconds", "network_rx_bytes_per_s", "network_tx_bytes_per_s"]
    metrics.loc[gaps, columns] = np.nan
    gappy = Telemetry(metrics, base.labels, base.events, base.logs)
    for seed in range(3):
        out = inject_anomalies(
            gappy, InjectionSpec(n_anomalies=20, seed=seed, types=("spike", "level_shift"))
        )
        changed = _changed(metrics, out.metrics)
        for label, mask in label_masks(out.metrics, out.labels):
            assert changed[mask].any(), (
                f"seed {seed}: {label['anomaly_type']} at {label['start']} changed nothing"
            )


def test_inject_anomalies_is_reproducible(rolling: Telemetry) -> None:
    spec = InjectionSpec(n_anomalies=9, seed=7)
    first, second = inject_anomalies(rolling, spec), inject_anomalies(rolling, spec)
    for table in ("metrics", "labels", "events", "logs"):
        pd.testing.assert_frame_equal(getattr(first, table), getattr(second, table))
    other = inject_anomalies(rolling, InjectionSpec(n_anomalies=9, seed=8))
    assert not first.labels.equals(other.labels)


def test_inject_anomalies_labels_every_type_and_only_the_changed_rows(rolling: Telemetry) -> None:
    before = _hashes(rolling)
    out = inject_anomalies(rolling, InjectionSpec(n_anomalies=9, seed=1))
    assert _hashes(rolling) == before
    out.validate()
    assert len(out.labels) == 9
    assert set(out.labels["anomaly_type"]) == set(ANOMALY_TYPES)
    np.testing.assert_array_equal(row_labels(out.metrics, out.labels), _changed(rolling.metrics, out.metrics))


def test_inject_anomalies_uses_only_the_requested_types(rolling: Telemetry) -> None:
    types = ("spike", "memory_leak", "disk_fill")
    out = inject_anomalies(rolling, InjectionSpec(n_anomalies=6, types=types, seed=2))
    assert out.labels["anomaly_type"].value_counts().to_dict() == dict.fromkeys(types, 2)


def test_injections_keep_their_margin(rolling: Telemetry) -> None:
    margin = pd.Timedelta("30min")
    out = inject_anomalies(rolling, InjectionSpec(n_anomalies=12, margin="30min", seed=4))
    life = rolling.metrics.groupby("pod")[TIMESTAMP].agg(["min", "max"])
    for pod, labels in out.labels.sort_values("start").groupby("pod"):
        assert labels["start"].min() >= life.loc[pod, "min"] + margin
        assert labels["end"].max() <= life.loc[pod, "max"] + pd.Timedelta("1min") - margin
        gaps = labels["start"].shift(-1) - labels["end"]
        assert (gaps.dropna() >= margin).all()
    windows = out.labels[out.labels["anomaly_type"] != "spike"]
    assert (windows["end"] - windows["start"]).between(pd.Timedelta("10min"), pd.Timedelta("60min")).all()


def _first(telemetry: Telemetry, duration: str) -> Telemetry:
    metrics = telemetry.metrics
    return Telemetry(metrics[metrics[TIMESTAMP] < metrics[TIMESTAMP].min() + pd.Timedelta(duration)])


def test_too_many_anomalies_for_the_telemetry_raise(base: Telemetry) -> None:
    short = _first(base, "2h")
    with pytest.raises(ValueError, match=r"could place only \d+ of 40 anomalies"):
        inject_anomalies(short, InjectionSpec(n_anomalies=40))
    tiny = _first(base, "50min")
    with pytest.raises(ValueError, match="could place only 0 of 1"):
        inject_anomalies(tiny, InjectionSpec(n_anomalies=1))


def test_missing_columns_restrict_the_feasible_types(base: Telemetry) -> None:
    slim = Telemetry(base.metrics[[*KEY_COLUMNS, "request_rate"]])
    out = inject_anomalies(slim, InjectionSpec(n_anomalies=8, seed=3))
    out.validate()
    assert list(out.metrics.columns) == [*KEY_COLUMNS, "request_rate"]
    assert set(out.labels["anomaly_type"]) == {"spike", "level_shift", "contextual", "collective"}
    np.testing.assert_array_equal(row_labels(out.metrics, out.labels), _changed(slim.metrics, out.metrics))


def test_no_feasible_type_raises_schema_error(base: Telemetry) -> None:
    disk_only = Telemetry(base.metrics[[*KEY_COLUMNS, "disk_usage_ratio"]])
    with pytest.raises(SchemaError, match="memory_working_set_bytes"):
        inject_anomalies(disk_only, InjectionSpec(types=("memory_leak", "cpu_saturation")))


def test_unknown_type_in_spec_raises(base: Telemetry) -> None:
    with pytest.raises(ValueError, match="unknown anomaly type"):
        inject_anomalies(base, InjectionSpec(types=("spike", "gremlins")))
