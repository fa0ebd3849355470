import numpy as np
import pandas as pd
import pytest

from aiops.schema import SchemaError, label_masks, row_labels, validate_labels, validate_metrics
from tests.conftest import labels_frame, make_label, make_metrics


def test_valid_metrics_pass(metrics):
    assert validate_metrics(metrics) is metrics


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["pod"]), "column(s) 'pod' missing"),
        (lambda df: df.assign(timestamp=df["timestamp"].dt.tz_localize(None)), "expected UTC"),
        (lambda df: df.assign(timestamp=df["timestamp"].astype(str)), "timezone-aware UTC"),
        (lambda df: df.assign(cpu=1.0), "unknown column(s) 'cpu'"),
        (lambda df: df.drop(columns=["cpu_usage_cores", "request_rate"]), "no metric columns"),
        (lambda df: df.assign(request_rate=df["request_rate"].astype(str)), "expected float"),
        (lambda df: df.assign(request_rate=np.nan), "entirely missing"),
        (lambda df: df.assign(request_rate=-df["request_rate"]), "below 0.0"),
        (lambda df: df.assign(error_ratio=1.5), "ratios must lie in [0, 1]"),
        (lambda df: df.assign(request_rate=np.inf), "infinite"),
        (lambda df: pd.concat([df, df.head(1)]), "duplicate row"),
        (lambda df: df.assign(pod=None), "use '' for a key"),
        (lambda df: df.iloc[0:0], "empty"),
    ],
)
def test_bad_metrics_give_clear_errors(metrics, mutate, message):
    with pytest.raises(SchemaError) as err:
        validate_metrics(mutate(metrics))
    assert message in str(err.value)


def test_missing_samples_as_nan_are_valid(metrics):
    metrics.loc[3, "cpu_usage_cores"] = np.nan
    validate_metrics(metrics)


def test_required_metric_missing(metrics):
    with pytest.raises(SchemaError, match="required metric column.*memory_working_set_bytes"):
        validate_metrics(metrics, require_metrics=["memory_working_set_bytes"])


def test_labels_validate_and_reject_reversed_windows():
    good = labels_frame(make_label("api-1", "2026-01-05T00:02Z", "2026-01-05T00:05Z"))
    validate_labels(good)
    validate_labels(labels_frame())
    bad = labels_frame(make_label("api-1", "2026-01-05T00:05Z", "2026-01-05T00:02Z"))
    with pytest.raises(SchemaError, match="end at or before their start"):
        validate_labels(bad)
    with pytest.raises(SchemaError, match="unknown category"):
        validate_labels(good.assign(category="weird"))
    with pytest.raises(SchemaError, match="'anomaly_type' missing"):
        validate_labels(good.drop(columns=["anomaly_type"]))


def test_row_labels_cover_start_inclusive_end_exclusive(metrics):
    labels = labels_frame(make_label("api-1", "2026-01-05T00:02Z", "2026-01-05T00:05Z"))
    flags = row_labels(metrics, labels)
    hit = metrics[flags]
    assert set(hit["pod"]) == {"api-1"}
    assert list(hit["timestamp"].dt.minute) == [2, 3, 4]


def test_node_level_label_covers_every_pod_on_the_node():
    metrics = make_metrics(pods=("a", "b", "c"))  # a,c on node-0; b on node-1
    labels = labels_frame(make_label("", "2026-01-05T00:00Z", "2026-01-05T00:01Z", node="node-0"))
    [(_, mask)] = list(label_masks(metrics, labels))
    assert set(metrics.loc[mask, "pod"]) == {"a", "c"}


def test_window_end_counts_on_the_utc_grid_whatever_the_zone():
    from aiops.schema import window_end

    utc = pd.Series(pd.to_datetime(["2026-01-05T10:10:00Z", "2026-01-05T11:00:00Z"]))
    expected = [pd.Timestamp("2026-01-05T11:00:00Z")] * 2  # right-closed: 11:00 ends its own window
    assert window_end(utc, "1h").tolist() == expected
    # the same instants in +05:30: rounding wall-clock time would give 10:30Z
    assert window_end(utc.dt.tz_convert("Asia/Kolkata"), "1h").tolist() == expected
    # across the end of summer time in Berlin (00:30Z is 02:30 CEST)
    berlin = pd.Series(pd.to_datetime(["2025-10-26T00:30:00Z"])).dt.tz_convert("Europe/Berlin")
    assert window_end(berlin, "1h").tolist() == [pd.Timestamp("2025-10-26T01:00:00Z")]
    with pytest.raises(SchemaError, match="must carry a zone"):
        window_end(utc.dt.tz_localize(None), "1min")


def test_a_category_list_with_a_null_is_named_not_a_type_error():
    good = labels_frame(make_label("api-1", "2026-01-05T00:02Z", "2026-01-05T00:05Z"))
    mixed = pd.concat([good.assign(category=None), good.assign(category="bogus")], ignore_index=True)
    with pytest.raises(SchemaError, match="unknown category 'None', 'bogus'"):
        validate_labels(mixed)


def test_now_is_the_utc_clock_whatever_the_local_zone(monkeypatch):
    import time

    from aiops.schema import as_utc

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        gap = abs(as_utc("now", "end") - pd.Timestamp.now(tz="UTC"))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert gap < pd.Timedelta("1min")


def test_telemetry_refuses_a_label_that_covers_no_row_and_hashes_for_lineage(metrics):
    from aiops.telemetry import Telemetry

    start = metrics["timestamp"].min() + pd.Timedelta("2min")
    label = make_label("api-1", str(start), str(start + pd.Timedelta("3min")))
    good = Telemetry(
        metrics, labels_frame({**label, "node": metrics.loc[metrics["pod"] == "api-1", "node"].iloc[0]})
    )
    good.validate()
    with pytest.raises(SchemaError, match="covers no metrics row"):
        Telemetry(metrics, labels_frame({**label, "pod": "ghost"})).validate()
    with pytest.raises(SchemaError, match="covers no metrics row"):
        Telemetry(
            metrics, labels_frame(make_label("api-1", "1999-01-01T00:00Z", "1999-01-01T01:00Z"))
        ).validate()
    # lineage: the same rows in another order hash alike; a change in the labels alone does not
    shuffled = Telemetry(metrics.sample(frac=1, random_state=3), good.labels)
    assert shuffled.lineage_hash() == good.lineage_hash()
    assert Telemetry(metrics).lineage_hash() != good.lineage_hash()
