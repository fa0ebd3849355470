"""The canonical telemetry schema shared by every source, step and model.

Every ingest path (the simulator, Prometheus, recorded datasets) produces the
same four tables, so everything downstream is written once:

* **metrics** – wide table, one row per ``(timestamp, cluster, namespace, pod,
  node)``. ``timestamp`` is a timezone-aware UTC ``datetime64``; the entity
  keys are strings; every other column is a float metric from
  :data:`METRIC_COLUMNS` (``NaN`` marks a missing sample, never ``0``).
  Node-level metrics (``node_*``) are repeated on each pod row of that node,
  the layout Prometheus joins and Nezha records.
* **labels** – one row per labelled anomaly: entity keys, ``start``
  (inclusive), ``end`` (exclusive), ``anomaly_type`` and ``category``.
* **events** – Kubernetes-style events: ``timestamp``, entity keys, ``type``
  (Normal/Warning), ``reason``, ``message``.
* **logs** – container log lines: ``timestamp``, entity keys, ``container``,
  ``level``, ``message``.

:func:`validate_metrics` and :func:`validate_labels` run at the pipeline's
entry and raise :class:`SchemaError` with a message that says what is wrong
and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1"

TIMESTAMP = "timestamp"
ENTITY_KEYS: tuple[str, ...] = ("cluster", "namespace", "pod", "node")
KEY_COLUMNS: tuple[str, ...] = (TIMESTAMP, *ENTITY_KEYS)


@dataclass(frozen=True)
class MetricSpec:
    """One metric column of the canonical schema.

    Attributes:
        name: Column name.
        unit: Unit of the values.
        description: What the value means, and its Prometheus origin.
        lower: Smallest valid value (``None`` when unbounded).
        upper: Largest valid value (``None`` when unbounded).

    """

    name: str
    unit: str
    description: str
    lower: float | None = 0.0
    upper: float | None = None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("cpu_usage_cores", "cores", "rate(container_cpu_usage_seconds_total)"),
    MetricSpec("cpu_limit_cores", "cores", "CPU limit of the pod (kube-state-metrics)"),
    MetricSpec(
        "cpu_throttled_ratio",
        "ratio",
        "throttled / total CFS periods (container_cpu_cfs_throttled_periods_total)",
        upper=1.0,
    ),
    MetricSpec("memory_working_set_bytes", "bytes", "container_memory_working_set_bytes"),
    MetricSpec("memory_limit_bytes", "bytes", "memory limit of the pod (kube-state-metrics)"),
    MetricSpec("restarts", "count", "container restarts during the step (increase of restarts_total)"),
    MetricSpec("network_rx_bytes_per_s", "bytes/s", "rate(container_network_receive_bytes_total)"),
    MetricSpec("network_tx_bytes_per_s", "bytes/s", "rate(container_network_transmit_bytes_total)"),
    MetricSpec(
        "network_errors_per_s", "1/s", "rate of receive+transmit errors (container_network_*_errors_total)"
    ),
    MetricSpec(
        "network_drops_per_s",
        "1/s",
        "rate of dropped packets (container_network_*_packets_dropped_total)",
    ),
    MetricSpec("disk_usage_ratio", "ratio", "container filesystem usage / capacity", upper=1.0),
    MetricSpec("request_rate", "1/s", "requests served per second"),
    MetricSpec("latency_p95_seconds", "s", "95th percentile request latency"),
    MetricSpec("error_ratio", "ratio", "share of requests answered with an error", upper=1.0),
    MetricSpec("node_cpu_utilisation", "ratio", "node:node_cpu_utilisation:rate5m", upper=1.0),
    MetricSpec("node_memory_utilisation", "ratio", "node:node_memory_utilisation:ratio", upper=1.0),
)
METRIC_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRICS)
METRIC_SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}

LABEL_COLUMNS: tuple[str, ...] = (*ENTITY_KEYS, "start", "end", "anomaly_type", "category")
LABEL_CATEGORIES: tuple[str, ...] = ("point", "collective", "contextual")
EVENT_COLUMNS: tuple[str, ...] = (TIMESTAMP, *ENTITY_KEYS, "type", "reason", "message")
LOG_COLUMNS: tuple[str, ...] = (TIMESTAMP, *ENTITY_KEYS, "container", "level", "message")


class SchemaError(ValueError):
    """Raised when a table does not follow the canonical telemetry schema."""


def _listing(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _require_columns(df: pd.DataFrame, required: Sequence[str], table: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{table}: column(s) {_listing(missing)} missing; expected {_listing(required)} "
            f"(got {_listing(df.columns)})"
        )


def _check_utc(series: pd.Series, column: str, table: str) -> None:
    if not pd.api.types.is_datetime64_any_dtype(series):
        raise SchemaError(
            f"{table}: column '{column}' has dtype {series.dtype}; expected timezone-aware UTC "
            f"datetimes (use pd.to_datetime(..., utc=True))"
        )
    tz = getattr(series.dt, "tz", None)
    if tz is None or str(tz) != "UTC":
        raise SchemaError(
            f"{table}: column '{column}' has time zone {tz}; expected UTC "
            f"(convert with .dt.tz_localize('UTC') or .dt.tz_convert('UTC'))"
        )
    if series.isna().any():
        raise SchemaError(f"{table}: column '{column}' has {int(series.isna().sum())} missing value(s)")


def _check_keys(df: pd.DataFrame, table: str) -> None:
    for key in ENTITY_KEYS:
        col = df[key]
        if col.isna().any():
            raise SchemaError(
                f"{table}: entity key '{key}' has {int(col.isna().sum())} missing value(s); "
                f"use '' for a key that does not apply"
            )
        if not (pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)):
            raise SchemaError(f"{table}: entity key '{key}' must hold strings, got {col.dtype}")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Return the canonical metric columns present in ``df``, in schema order."""
    return [c for c in METRIC_COLUMNS if c in df.columns]


def validate_metrics(
    df: pd.DataFrame, *, require_metrics: Sequence[str] = (), allow_empty_columns: bool = False
) -> pd.DataFrame:
    """Check a metrics table against the canonical schema.

    Args:
        df: The metrics table.
        require_metrics: Metric columns the caller cannot work without.
        allow_empty_columns: Accept a metric column without a single value. In a whole ingest
            that is a broken query or a renamed metric, so it is refused by default; in the rows
            of one entity it is normal (a pod without a CPU limit has no limit series, one that
            serves no HTTP has no request rate), and the online predictor scores such rows.

    Returns:
        ``df`` unchanged, so the call can be chained.

    Raises:
        SchemaError: With a message naming the offending column and the fix.

    """
    table = "metrics"
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"{table}: expected a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise SchemaError(f"{table}: the table is empty; the ingest step produced no rows")
    _require_columns(df, KEY_COLUMNS, table)
    _check_utc(df[TIMESTAMP], TIMESTAMP, table)
    _check_keys(df, table)

    unknown = [c for c in df.columns if c not in KEY_COLUMNS and c not in METRIC_SPECS]
    if unknown:
        raise SchemaError(
            f"{table}: unknown column(s) {_listing(unknown)}; metric columns must be one of "
            f"{_listing(METRIC_COLUMNS)} (rename them in the ingest step)"
        )
    present = metric_columns(df)
    if not present:
        raise SchemaError(f"{table}: no metric columns; expected at least one of {_listing(METRIC_COLUMNS)}")
    missing_required = [c for c in require_metrics if c not in present]
    if missing_required:
        raise SchemaError(f"{table}: required metric column(s) {_listing(missing_required)} missing")

    for name in present:
        col = df[name]
        if not pd.api.types.is_float_dtype(col):
            raise SchemaError(
                f"{table}: metric '{name}' has dtype {col.dtype}; expected float "
                f"(missing samples as NaN, cast with .astype('float64'))"
            )
        values = col.to_numpy()
        finite = values[~np.isnan(values)]
        if finite.size == 0 and not allow_empty_columns:
            raise SchemaError(f"{table}: metric '{name}' is entirely missing (all NaN); drop the column")
        if np.isinf(finite).any():
            raise SchemaError(f"{table}: metric '{name}' holds infinite values; use NaN for missing")
        spec = METRIC_SPECS[name]
        if spec.lower is not None and (finite < spec.lower).any():
            raise SchemaError(
                f"{table}: metric '{name}' has {int((finite < spec.lower).sum())} value(s) below "
                f"{spec.lower} (min {finite.min():.4g} {spec.unit}); counters must be turned into rates"
            )
        if spec.upper is not None and (finite > spec.upper + 1e-9).any():
            raise SchemaError(
                f"{table}: metric '{name}' has {int((finite > spec.upper + 1e-9).sum())} value(s) above "
                f"{spec.upper} (max {finite.max():.4g}); ratios must lie in [0, 1]"
            )

    dupes = df.duplicated(subset=list(KEY_COLUMNS))
    if dupes.any():
        first = df.loc[dupes, list(KEY_COLUMNS)].iloc[0].to_dict()
        raise SchemaError(
            f"{table}: {int(dupes.sum())} duplicate row(s) for the same timestamp and entity, "
            f"e.g. {first}; aggregate them in the ingest step"
        )
    return df


def validate_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Check a label table; an empty table (no anomalies) is valid.

    Raises:
        SchemaError: When a column is missing, a time is not UTC, a window is
            empty or reversed, or a category is unknown.

    """
    table = "labels"
    _require_columns(labels, LABEL_COLUMNS, table)
    if labels.empty:
        return labels
    for col in ("start", "end"):
        _check_utc(labels[col], col, table)
    _check_keys(labels, table)
    bad = labels["end"] <= labels["start"]
    if bad.any():
        row = labels.loc[bad].iloc[0]
        raise SchemaError(
            f"{table}: {int(bad.sum())} window(s) end at or before their start, e.g. "
            f"{row['anomaly_type']} on pod '{row['pod']}' from {row['start']} to {row['end']}"
        )
    unknown = sorted(map(str, set(labels["category"]) - set(LABEL_CATEGORIES)))
    if unknown:
        raise SchemaError(
            f"{table}: unknown category {_listing(unknown)}; expected {_listing(LABEL_CATEGORIES)}"
        )
    return labels


def empty_labels() -> pd.DataFrame:
    """Return a label table with no rows and the canonical dtypes."""
    return pd.DataFrame(
        {
            **{k: pd.Series(dtype="object") for k in ENTITY_KEYS},
            "start": pd.Series(dtype="datetime64[ns, UTC]"),
            "end": pd.Series(dtype="datetime64[ns, UTC]"),
            "anomaly_type": pd.Series(dtype="object"),
            "category": pd.Series(dtype="object"),
        }
    )


def label_masks(metrics: pd.DataFrame, labels: pd.DataFrame) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield each label (as a dict) with the boolean mask of the metrics rows it covers.

    A row is covered when it belongs to the label's entity and
    ``start <= timestamp < end``. A label with ``pod == ''`` is a node-level
    fault and covers every pod of its node.
    """
    if labels.empty or metrics.empty:
        return
    ts = metrics[TIMESTAMP].to_numpy(dtype="datetime64[ns]")  # UTC instants
    cluster, namespace = metrics["cluster"].to_numpy(), metrics["namespace"].to_numpy()
    pod, node = metrics["pod"].to_numpy(), metrics["node"].to_numpy()
    for label in labels.to_dict("records"):
        start, end = pd.Timestamp(label["start"]).to_datetime64(), pd.Timestamp(label["end"]).to_datetime64()
        mask = (ts >= start) & (ts < end)
        mask &= cluster == label["cluster"]
        if label["pod"]:
            mask &= (namespace == label["namespace"]) & (pod == label["pod"])
        else:
            mask &= node == label["node"]
        yield label, mask


def row_labels(metrics: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Mark each metrics row that falls inside a labelled window of its entity.

    Returns:
        Boolean array aligned with ``metrics`` rows (see :func:`label_masks`).

    """
    flags = np.zeros(len(metrics), dtype=bool)
    for _, mask in label_masks(metrics, labels):
        flags |= mask
    return flags


def as_utc(value: Any, what: str) -> pd.Timestamp:
    """``value`` (a datetime, an ISO 8601 string or a Timestamp) in UTC; a time without a zone is UTC.

    Raises:
        ValueError: When ``value`` is not a time; ``what`` names it in the message.
    """
    if isinstance(value, str) and value.strip().lower() == "now":
        return pd.Timestamp.now(tz="UTC")  # pandas reads "now" as the local wall clock, zone-less
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"{what} is not a time: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def window_end(timestamps: pd.Series, step: str) -> pd.Series:
    """The end of the step window ``(t - step, t]`` each time falls in, on an epoch-anchored UTC grid.

    Right-closed windows labelled by their end match a Prometheus sample at ``t`` (a rate over the
    step before ``t``), and keep features causal: the row at ``t`` never counts what happened after
    ``t``. Times in another zone are converted to UTC first (rounding wall-clock time would shift
    them by the zone's offset, and across a DST change).

    Raises:
        SchemaError: For times without a zone.
    """
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        raise SchemaError(
            f"window_end: times must carry a zone (UTC), got {timestamps.dtype}; localize them to UTC first"
        )
    return timestamps.dt.tz_convert("UTC").dt.ceil(pd.to_timedelta(step))
