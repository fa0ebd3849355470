"""Export canonical telemetry as the raw Prometheus series that the query catalog reads.

:func:`to_openmetrics` turns a metrics table (simulated or recorded) back into
what cAdvisor, kube-state-metrics, Istio sidecars and the node-exporter
recording rules would have exposed, as OpenMetrics text that
``promtool tsdb create-blocks-from openmetrics FILE DIR`` backfills into a
Prometheus TSDB. Querying that Prometheus with the catalog
(:mod:`aiops.prometheus`) gives the canonical metrics back, which is how the
Prometheus ingest is tested against a real server.

How each canonical column becomes raw series:

* **rates become cumulative counters**: the counter of a pod starts one step
  before its first row (at ten of its largest steps, as a pod seen mid-life
  would) and, within each step ``(t - step, t]``, grows linearly at the row's
  rate. ``rate()`` over the catalog's window (one step plus one scrape, less
  1 ms: :func:`aiops.prometheus.rate_window_ms`) at ``t`` is then exactly the
  row's value, on Prometheus 2 (window closed on the left) and 3 (open on the
  left) alike, when the ingest is told the scrape interval written here;
* **gauges** are sampled at every scrape inside ``(t - step, t]``;
* ``cpu_throttled_ratio`` becomes CFS period counters (10 periods/s, the
  kernel's 100 ms period) with the throttled share of them;
  ``disk_usage_ratio`` a usage gauge over a fixed capacity; ``error_ratio``
  splits ``istio_requests_total`` into ``200`` and ``503`` codes;
* ``latency_p95_seconds`` becomes Istio's millisecond histogram, with each
  step's requests spread over the buckets so that ``histogram_quantile(0.95,
  ...)``'s linear interpolation lands exactly on the value;
* node columns become the ``instance:node_*`` recording-rule series, and every
  row a ``kube_pod_info`` sample naming the pod's node.

A row with a missing value (``NaN``) is a missed scrape: no sample is written,
and a counter does not advance over it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, TIMESTAMP, validate_metrics
from aiops.telemetry import Telemetry

ISTIO_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip
"""Istio's default bucket bounds of ``istio_request_duration_milliseconds`` (ms)."""

CFS_PERIODS_PER_S = 10.0  # the kernel's default CFS period is 100 ms
FS_CAPACITY_BYTES = 2.0**33  # a power of two: usage/capacity gives the ratio back bit for bit
_QUANTILE = 0.95
_NS_PER_MS = 1_000_000


@dataclass
class _Family:
    """One metric family: its ``# TYPE``/``# HELP`` header and its sample lines, series by series."""

    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)

    def text(self) -> Iterable[str]:
        yield f"# TYPE {self.name} {self.kind}"
        yield f"# HELP {self.name} {self.help}"
        yield from self.lines


def _families() -> dict[str, _Family]:
    specs = (
        ("container_cpu_usage_seconds", "counter", "Cumulative cpu time consumed in seconds."),
        ("container_cpu_cfs_periods", "counter", "Number of elapsed enforcement period intervals."),
        ("container_cpu_cfs_throttled_periods", "counter", "Number of throttled period intervals."),
        ("container_memory_working_set_bytes", "gauge", "Current working set in bytes."),
        ("container_network_receive_bytes", "counter", "Cumulative count of bytes received."),
        ("container_network_transmit_bytes", "counter", "Cumulative count of bytes transmitted."),
        ("container_network_receive_errors", "counter", "Cumulative count of errors while receiving."),
        ("container_network_transmit_errors", "counter", "Cumulative count of errors while transmitting."),
        (
            "container_network_receive_packets_dropped",
            "counter",
            "Cumulative count of packets dropped on receive.",
        ),
        (
            "container_network_transmit_packets_dropped",
            "counter",
            "Cumulative count of packets dropped on send.",
        ),
        (
            "container_fs_usage_bytes",
            "gauge",
            "Number of bytes consumed by the container on this filesystem.",
        ),
        (
            "container_fs_limit_bytes",
            "gauge",
            "Number of bytes the container can consume on this filesystem.",
        ),
        ("kube_pod_info", "gauge", "Information about pod."),
        (
            "kube_pod_container_resource_limits",
            "gauge",
            "The number of requested limit resource by a container.",
        ),
        ("kube_pod_container_status_restarts", "counter", "The number of container restarts per container."),
        ("istio_requests", "counter", "Requests served, by response code."),
        ("istio_request_duration_milliseconds", "histogram", "Request duration in milliseconds."),
        ("instance:node_cpu_utilisation:rate5m", "gauge", "Node CPU utilisation (recording rule)."),
        ("instance:node_memory_utilisation:ratio", "gauge", "Node memory utilisation (recording rule)."),
    )
    return {name: _Family(name, kind, text) for name, kind, text in specs}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _seconds(times_ms: np.ndarray) -> np.ndarray:
    """OpenMetrics timestamps (seconds, exact to the millisecond) as strings."""
    return np.array(
        [str(t // 1000) if t % 1000 == 0 else f"{t // 1000}.{t % 1000:03d}" for t in times_ms.tolist()],
        dtype=object,
    )


def _container(pod: str) -> str:
    """Container name of a Deployment pod, ``<deployment>-<replicaset hash>-<suffix>``."""
    parts = pod.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else pod


@dataclass(frozen=True)
class _Scrapes:
    """Scrape instants of one series' rows: ``per_step`` scrapes in each ``(t - step, t]``."""

    times: np.ndarray  # seconds as strings, shape (rows * per_step,)
    row: np.ndarray  # row of each scrape
    frac: np.ndarray  # how far into its step each scrape lies, in (0, 1]
    start: str  # one step before the first row: where counters start from 0

    @classmethod
    def of(cls, row_ns: np.ndarray, step_ns: int, scrape_ns: int) -> _Scrapes:
        per_step = step_ns // scrape_ns
        j = np.arange(1, per_step + 1)
        times_ns = (row_ns[:, None] - step_ns + j[None, :] * scrape_ns).ravel()
        return cls(
            times=_seconds(times_ns // _NS_PER_MS),
            row=np.repeat(np.arange(len(row_ns)), per_step),
            frac=np.tile(j / per_step, len(row_ns)),
            start=_seconds(np.array([(row_ns[0] - step_ns) // _NS_PER_MS]))[0],
        )


def _lines(sample: str, labels: dict[str, str], times: Sequence[str], values: Sequence[float]) -> list[str]:
    prefix = sample + _labels(labels)
    return [f"{prefix} {v!r} {t}" for v, t in zip(values, times, strict=True)]


def _gauge(scrapes: _Scrapes, values: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """A gauge holds the row's value at every scrape of the row's step; NaN rows are missed scrapes."""
    keep = ~np.isnan(values[scrapes.row])
    return scrapes.times[keep], values[scrapes.row][keep].tolist()


def _counter_base(increments: np.ndarray) -> float:
    """Where a pod's counter stands one step before its first row: ten of its largest steps.

    A pod observed mid-life has counted for a while. Starting at 0 would put every window of the
    first row (and of a counter that stays at 0 until, say, the first error) under Prometheus'
    rule that extrapolation stops where the counter would cross zero, which a real counter
    reads as the start of its life. A power of two keeps the sums exact.
    """
    largest = float(np.nanmax(increments, initial=0.0))
    return 2.0 ** math.ceil(math.log2(10.0 * largest)) if largest > 0 else 1.0


def _counter(
    scrapes: _Scrapes, increments: np.ndarray, base: float | None = None
) -> tuple[list[str], list[float]]:
    """A counter from ``base`` (one step before the first row) rising linearly by each row's increment."""
    missing = np.isnan(increments)
    inc = np.where(missing, 0.0, increments)
    start = _counter_base(increments) if base is None else base
    before = start + np.cumsum(inc) - inc
    keep = ~missing[scrapes.row]
    values = before[scrapes.row] + inc[scrapes.row] * scrapes.frac
    # The running sums can round a step after a zero increment one unit in the last place below
    # the step before it, and Prometheus reads any fall of a counter as a reset (a rate of about
    # the whole count). A counter never falls: hold each value at least at the one before.
    series = np.maximum.accumulate(np.concatenate([[start], values[keep]]))
    return [scrapes.start, *scrapes.times[keep].tolist()], series.tolist()


def _bucket_counts(latency_ms: np.ndarray, requests: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Cumulative requests per bucket (last column +Inf) whose 95th percentile is ``latency_ms``.

    ``histogram_quantile`` interpolates linearly inside the bucket ``(lo, hi]`` holding the
    rank ``0.95 n``: ``q = lo + (hi - lo) (0.95 n - F(lo)) / (F(hi) - F(lo))``. With
    ``f = (q - lo) / (hi - lo)`` we pick ``F(hi) = n`` and ``F(lo) = n (0.95 - f) / (1 - f)``,
    or, for ``f > 0.95`` (or the first bucket, which has nothing below it),
    ``F(lo) = 0`` and ``F(hi) = 0.95 n / f``.
    """
    j = np.searchsorted(bounds, latency_ms, side="left")
    inside = j < len(bounds)  # beyond the last bound the quantile is that bound anyway
    jj = np.minimum(j, len(bounds) - 1)
    lo = np.where(jj > 0, bounds[np.maximum(jj - 1, 0)], 0.0)
    f = np.clip((latency_ms - lo) / (bounds[jj] - lo), 1e-9, 1.0)
    low_side = (f <= _QUANTILE) & (jj > 0)
    below = np.where(low_side, requests * (_QUANTILE - f) / (1.0 - f), 0.0)
    at = np.where(low_side, requests, np.minimum(requests, _QUANTILE * requests / f))
    k = np.arange(len(bounds))[None, :]
    cumulative = np.where(
        k < jj[:, None], below[:, None], np.where(k == jj[:, None], at[:, None], requests[:, None])
    )
    cumulative = np.where(inside[:, None], cumulative, 0.0)
    return np.concatenate([cumulative, requests[:, None]], axis=1)


@dataclass
class _PodExport:
    """Writes the series of one pod (one entity) into the families."""

    families: dict[str, _Family]
    rows: pd.DataFrame
    scrapes: _Scrapes
    step_s: float
    base: dict[str, str]  # cluster (optional), namespace, pod

    def has(self, column: str) -> bool:
        return column in self.rows.columns and bool(self.rows[column].notna().any())

    def col(self, column: str) -> np.ndarray:
        return self.rows[column].to_numpy(dtype=np.float64)

    def gauge(self, family: str, labels: dict[str, str], values: np.ndarray) -> None:
        times, vals = _gauge(self.scrapes, values)
        self.families[family].lines += _lines(family, {**self.base, **labels}, times.tolist(), vals)

    def counter(self, family: str, labels: dict[str, str], per_second: np.ndarray) -> None:
        times, vals = _counter(self.scrapes, per_second * self.step_s)
        self.families[family].lines += _lines(f"{family}_total", {**self.base, **labels}, times, vals)

    def histogram(self, family: str, labels: dict[str, str], latency_s: np.ndarray, rate: np.ndarray) -> None:
        bounds = np.asarray(ISTIO_BUCKETS_MS, dtype=np.float64)
        requests = rate * self.step_s
        missing = np.isnan(latency_s) | np.isnan(requests)
        latency_ms = np.where(missing, 0.0, latency_s * 1000.0)
        buckets = _bucket_counts(latency_ms, np.where(missing, 0.0, requests), bounds)
        per_bucket = np.diff(buckets, axis=1, prepend=0.0)
        midpoints = np.append((np.append(0.0, bounds[:-1]) + bounds) / 2, bounds[-1])
        totals = np.column_stack([buckets, buckets[:, -1], per_bucket @ midpoints])  # buckets, count, sum
        totals[missing] = np.nan
        names = [
            *(f"{family}_bucket{_labels({**self.base, **labels, 'le': repr(float(b))})}" for b in bounds),
            f"{family}_bucket{_labels({**self.base, **labels, 'le': '+Inf'})}",
            f"{family}_count{_labels({**self.base, **labels})}",
            f"{family}_sum{_labels({**self.base, **labels})}",
        ]
        # One base for every bucket and the count keeps the buckets cumulative (sum: its own).
        base = _counter_base(totals[:, -2])
        series = [
            _counter(self.scrapes, totals[:, i], base if i < totals.shape[1] - 1 else None)
            for i in range(totals.shape[1])
        ]
        # OpenMetrics keeps a histogram point together: all buckets, count and sum of one instant.
        lines = self.families[family].lines
        for point in range(len(series[0][0])):
            lines += [
                f"{name} {vals[point]!r} {times[point]}"
                for name, (times, vals) in zip(names, series, strict=True)
            ]

    def write(self, node: str) -> None:
        container = _container(self.base["pod"])
        ctr = {"container": container, "node": node}
        pod_cgroup = {"container": "", "node": node}  # cAdvisor's pod-level series: catalog must skip it
        ones = np.ones(len(self.rows))
        self.gauge("kube_pod_info", {"node": node}, ones)
        if self.has("cpu_usage_cores"):
            for labels in (ctr, pod_cgroup):
                self.counter("container_cpu_usage_seconds", labels, self.col("cpu_usage_cores"))
        if self.has("cpu_throttled_ratio"):
            self.counter("container_cpu_cfs_periods", ctr, ones * CFS_PERIODS_PER_S)
            self.counter(
                "container_cpu_cfs_throttled_periods",
                ctr,
                self.col("cpu_throttled_ratio") * CFS_PERIODS_PER_S,
            )
        if self.has("memory_working_set_bytes"):
            for labels in (ctr, pod_cgroup):
                self.gauge("container_memory_working_set_bytes", labels, self.col("memory_working_set_bytes"))
        self._network(node)
        if self.has("disk_usage_ratio"):
            fs = {**ctr, "device": "/dev/nvme0n1p4"}
            self.gauge("container_fs_usage_bytes", fs, self.col("disk_usage_ratio") * FS_CAPACITY_BYTES)
            self.gauge(
                "container_fs_limit_bytes",
                fs,
                np.where(self.rows["disk_usage_ratio"].isna(), np.nan, FS_CAPACITY_BYTES),
            )
        for column, resource, unit in (
            ("cpu_limit_cores", "cpu", "core"),
            ("memory_limit_bytes", "memory", "byte"),
        ):
            if self.has(column):
                labels = {**ctr, "resource": resource, "unit": unit}
                self.gauge("kube_pod_container_resource_limits", labels, self.col(column))
        if self.has("restarts"):
            self.counter(
                "kube_pod_container_status_restarts",
                {"container": container},
                self.col("restarts") / self.step_s,
            )
        self._requests()

    def _network(self, node: str) -> None:
        labels = {"interface": "eth0", "node": node}
        for column, family in (
            ("network_rx_bytes_per_s", "container_network_receive_bytes"),
            ("network_tx_bytes_per_s", "container_network_transmit_bytes"),
        ):
            if self.has(column):
                self.counter(family, labels, self.col(column))
        # Canonical errors/drops are receive + transmit; half each way sums back to the value.
        for column, kind in (("network_errors_per_s", "errors"), ("network_drops_per_s", "packets_dropped")):
            if self.has(column):
                for direction in ("receive", "transmit"):
                    self.counter(f"container_network_{direction}_{kind}", labels, self.col(column) / 2)

    def _requests(self) -> None:
        if not self.has("request_rate"):
            return
        rate = self.col("request_rate")
        errors = self.col("error_ratio") if self.has("error_ratio") else np.zeros(len(rate))
        # Without requests the error ratio is 0/0 (NaN, as the ingest records it), but both
        # counters stand still: an idle minute is no missed scrape.
        errors = np.where((rate == 0) & np.isnan(errors), 0.0, errors)
        istio = {"reporter": "destination"}
        self.counter("istio_requests", {**istio, "response_code": "200"}, rate * (1.0 - errors))
        self.counter("istio_requests", {**istio, "response_code": "503"}, rate * errors)
        if self.has("latency_p95_seconds"):
            self.histogram(
                "istio_request_duration_milliseconds", istio, self.col("latency_p95_seconds"), rate
            )


def _write_nodes(
    families: dict[str, _Family],
    metrics: pd.DataFrame,
    step_ns: int,
    scrape_ns: int,
    base: Callable[[str], dict],
) -> None:
    """Node recording-rule series: one per node, from the value repeated on its pods' rows."""
    for column, family in (
        ("node_cpu_utilisation", "instance:node_cpu_utilisation:rate5m"),
        ("node_memory_utilisation", "instance:node_memory_utilisation:ratio"),
    ):
        if column not in metrics.columns:
            continue
        # In time order whatever the table's order: promtool drops samples older than the
        # series' latest without a word.
        values = (
            metrics.dropna(subset=[column])
            .sort_values(TIMESTAMP, kind="stable")
            .drop_duplicates(["cluster", "node", TIMESTAMP])
        )
        for (cluster, node), rows in values.groupby(["cluster", "node"], sort=True):
            if not node:
                continue
            row_ns = rows[TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64)
            times, vals = _gauge(_Scrapes.of(row_ns, step_ns, scrape_ns), rows[column].to_numpy(np.float64))
            labels = {**base(str(cluster)), "instance": str(node), "job": "node-exporter"}
            families[family].lines += _lines(family, labels, times.tolist(), vals)


def _step_ns(metrics: pd.DataFrame, step: str | None) -> int:
    """The given step, or the smallest gap between an entity's own consecutive rows.

    Per entity: two pods sampled every minute, 30 s apart, have a one-minute step, not 30 s.
    """
    if step is not None:
        return int(pd.to_timedelta(step).value)
    gaps = metrics.sort_values(TIMESTAMP).groupby(list(ENTITY_KEYS), sort=False)[TIMESTAMP].diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        raise ValueError("cannot infer the step: no entity has two timestamps; pass step=")
    return int(gaps.min().value)


def _check_series_unique(metrics: pd.DataFrame, cluster_label: bool) -> None:
    """Refuse entities whose pod-level (or node) series would carry the same labels.

    Pod-level series are labelled by namespace and pod (and cluster when ``cluster_label``), not
    by node: a pod name on two nodes (a StatefulSet pod rescheduled), or two clusters without
    the cluster label, would write one series twice, and its counters would jump between them.
    """
    series = ["namespace", "pod", *(["cluster"] if cluster_label else [])]
    entities = metrics[list(ENTITY_KEYS)].drop_duplicates()
    shared = entities[entities.duplicated(subset=series, keep=False)]
    if not shared.empty:
        first = shared.iloc[0]
        where = ", ".join(
            sorted(f"{r.cluster}/{r.node}" for r in shared[shared["pod"] == first["pod"]].itertuples())
        )
        hint = "" if cluster_label else " (or pass cluster_label=True for several clusters)"
        raise ValueError(
            f"pod '{first['namespace']}/{first['pod']}' appears on several entities ({where}); its "
            f"series carry no node label, so they would collide: rename one of them{hint}"
        )
    # Node series are labelled by node (instance) and, with the cluster label, cluster.
    node_columns = [c for c in ("node_cpu_utilisation", "node_memory_utilisation") if c in metrics.columns]
    if not cluster_label and node_columns:
        # Only rows that write a node sample can collide.
        written = (metrics["node"].astype(str) != "") & metrics[node_columns].notna().any(axis=1)
        nodes = metrics.loc[written, ["cluster", "node"]].drop_duplicates()
        clusters = nodes.groupby("node")["cluster"].nunique()
        if (clusters > 1).any():
            node = clusters[clusters > 1].index[0]
            names = ", ".join(sorted(map(str, nodes.loc[nodes["node"] == node, "cluster"])))
            raise ValueError(
                f"node '{node}' appears in several clusters ({names}); without the cluster label its "
                "node series would collide: pass cluster_label=True"
            )


def to_openmetrics(
    telemetry: Telemetry,
    cluster_label: bool = True,
    *,
    scrape_interval: str | None = None,
    step: str | None = None,
) -> str:
    """Render telemetry's metrics as OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    Args:
        telemetry: Telemetry whose metrics table follows the canonical schema.
        cluster_label: Add a ``cluster`` label (the row's cluster key) to every series, as a
            multi-cluster Thanos setup would.
        scrape_interval: Spacing of the samples; must divide the step (default: the step). Use
            at most half the step, so a ``rate()`` window of one step holds two samples on
            Prometheus 3, whose range selectors leave out the window's left edge.
        step: Row spacing of the metrics (default: the smallest gap between an entity's rows).

    Returns:
        The exposition: families one after another, series within a family one after another,
        samples in time order, closed by ``# EOF``.

    Raises:
        SchemaError: When the metrics table does not follow the canonical schema.
        ValueError: When the scrape interval does not divide the step, or two entities would
            write the same series (a pod on two nodes).

    """
    metrics = validate_metrics(telemetry.metrics)
    _check_series_unique(metrics, cluster_label)
    step_ns = _step_ns(metrics, step)
    scrape_ns = int(pd.to_timedelta(scrape_interval).value) if scrape_interval else step_ns
    if scrape_ns <= 0 or step_ns % scrape_ns or scrape_ns % _NS_PER_MS:
        raise ValueError(
            f"scrape_interval {scrape_interval!r} must be whole milliseconds and divide the step "
            f"({pd.Timedelta(step_ns)})"
        )

    def base(cluster: str) -> dict[str, str]:
        return {"cluster": cluster} if cluster_label and cluster else {}

    families = _families()
    ordered = metrics.sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable")
    for (cluster, namespace, pod, node), rows in ordered.groupby(list(ENTITY_KEYS), sort=False):
        row_ns = rows[TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        export = _PodExport(
            families=families,
            rows=rows,
            scrapes=_Scrapes.of(row_ns, step_ns, scrape_ns),
            step_s=step_ns / 1e9,
            base={**base(str(cluster)), "namespace": str(namespace), "pod": str(pod)},
        )
        export.write(str(node))
    _write_nodes(families, metrics, step_ns, scrape_ns, base)
    body = [line for family in families.values() if family.lines for line in family.text()]
    return "\n".join([*body, "# EOF"]) + "\n"


def write_openmetrics(telemetry: Telemetry, path: str | Path, **kwargs: object) -> Path:
    """Write :func:`to_openmetrics` output to ``path`` and return it (keyword arguments pass through)."""
    out = Path(path)
    out.write_text(to_openmetrics(telemetry, **kwargs), encoding="utf-8")  # type: ignore[arg-type]
    return out
