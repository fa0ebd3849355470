"""Labelled synthetic anomalies injected into canonical telemetry.

Each anomaly type edits the metric rows of one pod inside a window
``[start, end)`` and appends one label row whose window covers exactly the
edited rows, so :func:`aiops.schema.row_labels` marks exactly what changed.
Types that leave a trace elsewhere in a real cluster (an OOM kill, a crash
loop, a full disk, a degraded network) also append the matching Kubernetes
events and container log lines.

The injections work on simulated or real telemetry: they only touch metric
columns that are present, and a type whose columns are absent is skipped (or,
when asked for explicitly, rejected with a :class:`~aiops.schema.SchemaError`).
Node-level columns (``node_*``) are never edited, because the pod's node
neighbours would then disagree with it.

:func:`inject` places one anomaly where the caller says; :func:`inject_anomalies`
draws types, pods and windows from ``np.random.default_rng(spec.seed)``, keeps
``spec.margin`` away from each pod's first/last row and between injections on
the same pod, and applies them in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aiops.schema import (
    ENTITY_KEYS,
    EVENT_COLUMNS,
    LABEL_COLUMNS,
    LOG_COLUMNS,
    METRIC_SPECS,
    TIMESTAMP,
    SchemaError,
    metric_columns,
)
from aiops.telemetry import Telemetry

ANOMALY_TYPES: tuple[str, ...] = (
    "spike",
    "level_shift",
    "memory_leak",
    "crash_loop",
    "cpu_saturation",
    "network_degradation",
    "disk_fill",
    "contextual",
    "collective",
)

# Metrics each type may pick from. Ratios and CPU are left out of spike and
# level_shift because their bounds (1.0, the CPU limit) would clip the change
# away on rows that are already high.
_SPIKE_METRICS = ("request_rate", "latency_p95_seconds", "network_rx_bytes_per_s", "network_tx_bytes_per_s")
_SHIFT_METRICS = _SPIKE_METRICS
_FLATLINE_METRICS = (
    "request_rate",
    "cpu_usage_cores",
    "memory_working_set_bytes",
    "latency_p95_seconds",
    "network_rx_bytes_per_s",
    "network_tx_bytes_per_s",
)
# Moved together with request_rate by `contextual`, so the pod stays self-consistent.
_CONTEXT_COMPANIONS = (
    "cpu_usage_cores",
    "network_rx_bytes_per_s",
    "network_tx_bytes_per_s",
    "latency_p95_seconds",
)
_CONTEXT_SHIFT = np.int64(pd.Timedelta("12h").value)
_MAX_SPIKE_ROWS = 3
_CONTEXT_CANDIDATES = 16

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class InjectionSpec:
    """What :func:`inject_anomalies` injects.

    Attributes:
        n_anomalies: Number of anomalies (labels) to inject.
        types: Anomaly types to draw from, a subset of :data:`ANOMALY_TYPES`.
        min_duration: Shortest window of a non-point anomaly.
        max_duration: Longest window of a non-point anomaly.
        seed: Seed of the only random generator used.
        margin: Least distance from each pod's first/last row and between two
            injections on the same pod.

    """

    n_anomalies: int = 8
    types: tuple[str, ...] = ANOMALY_TYPES
    min_duration: str = "10min"
    max_duration: str = "60min"
    seed: int = 0
    margin: str = "30min"


@dataclass(frozen=True)
class _Window:
    """The rows of one pod that an injection edits: ``pod_rows[lo:hi]``."""

    keys: Key
    pod_rows: np.ndarray  # positions in the metrics table, time-ordered
    pod_times: np.ndarray  # int64 ns, aligned with pod_rows
    lo: int
    hi: int
    step_ns: int
    container: str

    @property
    def rows(self) -> np.ndarray:
        return self.pod_rows[self.lo : self.hi]

    @property
    def times(self) -> np.ndarray:
        return self.pod_times[self.lo : self.hi]

    @property
    def n(self) -> int:
        return self.hi - self.lo

    def end_ns(self) -> int:
        """Exclusive end that covers the window's rows and not the pod's next row."""
        end = int(self.pod_times[self.hi - 1]) + self.step_ns
        if self.hi < len(self.pod_times):
            end = min(end, int(self.pod_times[self.hi]))
        return end


@dataclass
class _Draft:
    """A working copy of the metric columns plus the rows that injections add."""

    columns: dict[str, np.ndarray]
    labels: list[dict] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    logs: list[tuple] = field(default_factory=list)

    @classmethod
    def of(cls, telemetry: Telemetry) -> _Draft:
        metrics = telemetry.metrics
        return cls({c: metrics[c].to_numpy(dtype=np.float64, copy=True) for c in metric_columns(metrics)})

    def has(self, column: str) -> bool:
        return column in self.columns

    def get(self, w: _Window, column: str) -> np.ndarray:
        return self.columns[column][w.rows].copy()

    def series(self, w: _Window, column: str) -> np.ndarray:
        return self.columns[column][w.pod_rows]

    def put(self, w: _Window, column: str, values: np.ndarray) -> None:
        spec = METRIC_SPECS[column]
        self.columns[column][w.rows] = np.clip(values, spec.lower, spec.upper)

    def event(self, w: _Window, i: int, kind: str, reason: str, message: str) -> None:
        self.events.append((int(w.times[i]), *w.keys, kind, reason, message))

    def log(self, w: _Window, i: int, level: str, message: str) -> None:
        self.logs.append((int(w.times[i]), *w.keys, w.container, level, message))

    def label(self, w: _Window, anomaly_type: str, start_ns: int, end_ns: int) -> None:
        keys = dict(zip(ENTITY_KEYS, w.keys, strict=True))
        self.labels.append(
            {
                **keys,
                "start": start_ns,
                "end": end_ns,
                "anomaly_type": anomaly_type,
                "category": _category(anomaly_type),
            }
        )

    def result(self, telemetry: Telemetry) -> Telemetry:
        metrics = telemetry.metrics.copy()
        for column, values in self.columns.items():
            metrics[column] = values.astype(metrics[column].dtype)  # e.g. keep float32 ingest as float32
        return Telemetry(
            metrics=metrics,
            labels=_append(telemetry.labels, self.labels, LABEL_COLUMNS, ("start", "end"), sort=False),
            events=_append(telemetry.events, self.events, EVENT_COLUMNS, (TIMESTAMP,)),
            logs=_append(telemetry.logs, self.logs, LOG_COLUMNS, (TIMESTAMP,)),
        )


def _append(
    table: pd.DataFrame,
    records: list,
    columns: tuple[str, ...],
    time_columns: tuple[str, ...],
    *,
    sort: bool = True,
) -> pd.DataFrame:
    """Return ``table`` plus ``records`` (times in ns), sorted by time when asked; never mutates ``table``."""
    if not records:
        return table.copy()
    new = pd.DataFrame.from_records(records, columns=list(columns))
    for column in time_columns:
        new[column] = pd.to_datetime(new[column], unit="ns", utc=True)
    for column in new.columns.difference(time_columns):
        new[column] = new[column].astype(object)
    # Concatenating an empty frame is deprecated in pandas, and adds nothing.
    out = pd.concat([table, new], ignore_index=True) if len(table) else new
    for column in time_columns:
        out[column] = out[column].astype("datetime64[ns, UTC]")
    return out.sort_values(time_columns[0], kind="stable", ignore_index=True) if sort else out


# --------------------------------------------------------------------------- effects
#
# Each effect edits every row of the window (so the label covers exactly the
# changed rows), keeps values inside the schema bounds via _Draft.put, and
# draws only from the generator it is given.


def _robust_scale(values: np.ndarray) -> float:
    """1.4826 * MAD, falling back to the std and then to 10% of the level for flat series."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0
    for scale in (1.4826 * np.median(np.abs(finite - np.median(finite))), np.std(finite)):
        if scale > 0:
            return float(scale)
    return max(abs(float(np.median(finite))) * 0.1, 1e-6)


def _present(draft: _Draft, candidates: tuple[str, ...], w: _Window) -> list[str]:
    """The candidates with a finite value inside the window.

    An effect on a column without a value there would change nothing under its label
    (``_place`` only picks windows that hold a value of a column the type needs).
    """
    return [c for c in candidates if draft.has(c) and np.isfinite(draft.get(w, c)).any()]


def _reported_columns(draft: _Draft, pods: list[_Pod]) -> list[set[str]]:
    """Per pod, the metric columns with a finite value in its rows.

    Prometheus pods without HTTP metrics, say, report no request rate.
    """
    return [{c for c, values in draft.columns.items() if np.isfinite(values[p.rows]).any()} for p in pods]


def _ramp(start: float, target: float, n: int) -> np.ndarray:
    """Linear ramp reaching ``target`` at the last of ``n`` rows (the first row already moved)."""
    return start + (target - start) * np.arange(1, n + 1) / n


def _first_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[0]) if finite.size else 0.0


def _spike(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    column = str(rng.choice(_present(draft, _SPIKE_METRICS, w)))
    values = draft.get(w, column)
    # A zero sample has nothing to multiply; start from a tenth of the pod's typical level.
    floor = max(float(np.nanmedian(np.abs(draft.series(w, column)))) * 0.1, 1e-3)
    draft.put(w, column, np.where(values > 0, values, floor) * rng.uniform(4.0, 8.0, w.n))


def _level_shift(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    column = str(rng.choice(_present(draft, _SHIFT_METRICS, w)))
    offset = rng.uniform(3.0, 6.0) * _robust_scale(draft.series(w, column))
    draft.put(w, column, draft.get(w, column) + offset)


def _memory_leak(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    memory = draft.get(w, "memory_working_set_bytes")
    limit = float(np.nanmax(draft.series(w, "memory_limit_bytes")))
    draft.put(w, "memory_working_set_bytes", _ramp(_first_finite(memory), limit, w.n))
    if draft.has("restarts"):
        restarts = np.nan_to_num(draft.get(w, "restarts"))
        restarts[-1] += 1.0  # the kernel kills the container when the ramp meets the limit
        draft.put(w, "restarts", restarts)
    pid = int(rng.integers(1000, 60000))
    draft.event(
        w,
        w.n - 1,
        "Warning",
        "OOMKilling",
        f"Memory cgroup out of memory: Killed process {pid} ({w.container}) "
        f"total-vm:{int(limit * 1.4 / 1024)}kB, anon-rss:{int(limit / 1024)}kB, file-rss:0kB",
    )
    draft.log(w, w.n - 1, "ERROR", "fatal error: runtime: out of memory")


def _crash_times(duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Crash instants (s from the window start) under the kubelet's back-off: 10s doubling to 5 min."""
    times, t, k = [], float(rng.uniform(0.0, 10.0)), 0
    while t < duration_s:
        times.append(t)
        t += rng.uniform(2.0, 15.0) + min(10.0 * 2**k, 300.0)  # run until the crash, then back off
        k += 1
    return np.asarray(times)


def _crash_loop(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    offsets_s = (w.times - w.times[0]) / 1e9
    crashes = _crash_times((w.end_ns() - int(w.times[0])) / 1e9, rng)
    counts = np.bincount(np.searchsorted(offsets_s, crashes, side="right") - 1, minlength=w.n).astype(float)
    draft.put(w, "restarts", np.nan_to_num(draft.get(w, "restarts")) + counts)
    # The container is down between crashes: traffic and CPU fall towards zero.
    up = rng.uniform(0.0, 0.15, w.n)
    for column in _present(draft, ("request_rate", "network_rx_bytes_per_s", "network_tx_bytes_per_s"), w):
        draft.put(w, column, draft.get(w, column) * up)
    if draft.has("cpu_usage_cores"):
        draft.put(w, "cpu_usage_cores", draft.get(w, "cpu_usage_cores") * rng.uniform(0.02, 0.15, w.n))
    if draft.has("error_ratio"):
        draft.put(w, "error_ratio", np.fmax(draft.get(w, "error_ratio"), rng.uniform(0.3, 0.9, w.n)))
    for i in np.flatnonzero(counts).tolist():
        address = f"10.96.{rng.integers(0, 256)}.{rng.integers(1, 255)}:5432"
        draft.log(w, i, "ERROR", f"dial tcp {address}: connect: connection refused")
        draft.log(w, i, "ERROR", "panic: runtime error: invalid memory address or nil pointer dereference")
        message = f"Back-off restarting failed container {w.container} in pod {w.keys[2]}_{w.keys[1]}"
        draft.event(w, i, "Warning", "BackOff", message)


def _cpu_saturation(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    limit = draft.get(w, "cpu_limit_cores")
    draft.put(w, "cpu_usage_cores", limit * rng.uniform(0.95, 1.0, w.n))
    if draft.has("cpu_throttled_ratio"):
        draft.put(w, "cpu_throttled_ratio", rng.uniform(0.3, 0.8, w.n))
    if draft.has("latency_p95_seconds"):
        draft.put(w, "latency_p95_seconds", draft.get(w, "latency_p95_seconds") * rng.uniform(1.5, 3.0, w.n))


def _network_degradation(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    if draft.has("latency_p95_seconds"):
        draft.put(w, "latency_p95_seconds", draft.get(w, "latency_p95_seconds") * rng.uniform(3.0, 6.0, w.n))
    # Additive, so the change shows even on rows whose error/drop rate was 0.
    for column, low, high in (
        ("network_errors_per_s", 0.5, 5.0),
        ("network_drops_per_s", 0.2, 3.0),
        ("error_ratio", 0.02, 0.15),
    ):
        if draft.has(column):
            draft.put(w, column, np.nan_to_num(draft.get(w, column)) + rng.uniform(low, high, w.n))
    noisy = rng.random(w.n) < 0.3
    noisy[0] = True
    for i in np.flatnonzero(noisy).tolist():
        message = (
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        )
        draft.log(w, i, "WARN", message)


def _disk_fill(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    disk = draft.get(w, "disk_usage_ratio")
    draft.put(w, "disk_usage_ratio", _ramp(_first_finite(disk), rng.uniform(0.97, 1.0), w.n))
    wanted = int(rng.integers(2, 10)) * 2**30
    message = (
        "failed to garbage collect required amount of images. "
        + f"Wanted to free {wanted} bytes, but freed 0 bytes"
    )
    draft.event(w, min(int(0.8 * w.n), w.n - 1), "Warning", "FreeDiskSpaceFailed", message)
    draft.event(w, w.n - 1, "Warning", "EvictionThresholdMet", "Attempting to reclaim ephemeral-storage")


def _contextual_source(w: _Window, request_rate: np.ndarray) -> np.ndarray:
    """Pod positions whose values the window takes: 12 h earlier, else 12 h later, else rank-mirrored.

    Shifting by half a day hands night-time rows their daytime values; values
    therefore stay within the pod's own range but are wrong for the time of day.
    Telemetry shorter than that mirrors ranks instead (the lowest values take
    the highest), which also stays within the range.
    """
    for shift in (-_CONTEXT_SHIFT, _CONTEXT_SHIFT):
        target = w.times + shift
        idx = np.searchsorted(w.pod_times, target)
        if (idx < len(w.pod_times)).all() and (
            w.pod_times[np.minimum(idx, len(w.pod_times) - 1)] == target
        ).all():
            return idx
    finite = np.flatnonzero(np.isfinite(request_rate))
    by_value = finite[np.argsort(request_rate[finite], kind="stable")]
    mirrored = np.arange(len(request_rate))
    mirrored[by_value] = by_value[::-1]
    return mirrored[w.lo : w.hi]


def _contextual(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    source = w.pod_rows[_contextual_source(w, draft.series(w, "request_rate"))]
    for column in ("request_rate", *_present(draft, _CONTEXT_COMPANIONS, w)):
        draft.put(w, column, draft.columns[column][source])


def _collective(draft: _Draft, w: _Window, rng: np.random.Generator) -> None:
    """Freeze one metric at its last sample, like a stuck exporter: plausible values, zero variance."""
    column = str(rng.choice(_present(draft, _FLATLINE_METRICS, w)))
    series = draft.series(w, column)
    before = series[w.lo - 1] if w.lo > 0 else np.nan
    frozen = before if np.isfinite(before) else float(np.nanmedian(series[w.lo : w.hi]))
    draft.put(w, column, np.full(w.n, frozen))


@dataclass(frozen=True)
class _Kind:
    """An anomaly type: its label category, the columns it needs, and its effect."""

    category: str
    effect: Callable[[_Draft, _Window, np.random.Generator], None]
    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    def missing(self, columns: set[str]) -> list[str]:
        """Columns this type needs that ``columns`` lacks (empty when feasible)."""
        missing = [c for c in self.required if c not in columns]
        if self.any_of and not columns.intersection(self.any_of):
            missing.append(" or ".join(self.any_of))
        return missing


_KINDS: dict[str, _Kind] = {
    "spike": _Kind("point", _spike, any_of=_SPIKE_METRICS),
    "level_shift": _Kind("collective", _level_shift, any_of=_SHIFT_METRICS),
    "memory_leak": _Kind(
        "collective", _memory_leak, required=("memory_working_set_bytes", "memory_limit_bytes")
    ),
    "crash_loop": _Kind(
        "collective",
        _crash_loop,
        required=("restarts",),
        any_of=("request_rate", "cpu_usage_cores", "network_rx_bytes_per_s", "network_tx_bytes_per_s"),
    ),
    "cpu_saturation": _Kind("collective", _cpu_saturation, required=("cpu_usage_cores", "cpu_limit_cores")),
    "network_degradation": _Kind(
        "collective",
        _network_degradation,
        any_of=("latency_p95_seconds", "network_errors_per_s", "network_drops_per_s", "error_ratio"),
    ),
    "disk_fill": _Kind("collective", _disk_fill, required=("disk_usage_ratio",)),
    "contextual": _Kind("contextual", _contextual, required=("request_rate",)),
    "collective": _Kind("collective", _collective, any_of=_FLATLINE_METRICS),
}


def _category(anomaly_type: str) -> str:
    return _KINDS[anomaly_type].category


def _check_types(types: tuple[str, ...] | list[str]) -> None:
    unknown = [t for t in types if t not in _KINDS]
    if unknown:
        raise ValueError(f"unknown anomaly type(s) {unknown}; expected some of {list(ANOMALY_TYPES)}")


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class _Pod:
    """One entity's rows, time-ordered."""

    keys: Key
    rows: np.ndarray
    times: np.ndarray  # int64 ns
    step_ns: int
    container: str

    @property
    def end_ns(self) -> int:
        return int(self.times[-1]) + self.step_ns

    def window(self, lo: int, hi: int) -> _Window:
        return _Window(self.keys, self.rows, self.times, lo, hi, self.step_ns, self.container)


def _times_ns(metrics: pd.DataFrame) -> np.ndarray:
    return pd.DatetimeIndex(metrics[TIMESTAMP]).tz_convert("UTC").as_unit("ns").asi8


def _typical_step(times: np.ndarray, fallback: int) -> int:
    gaps = np.diff(np.unique(times))
    return int(np.median(gaps)) if gaps.size else fallback


def _containers(logs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Map each logged (namespace, pod) to its container name."""
    if logs.empty or "container" not in logs.columns:
        return {}
    first = logs.drop_duplicates(["namespace", "pod"])
    return dict(zip(zip(first["namespace"], first["pod"], strict=True), first["container"], strict=True))


def _container_of(pod: str, known: dict[tuple[str, str], str], namespace: str) -> str:
    if (namespace, pod) in known:
        return str(known[(namespace, pod)])
    # <deployment>-<replicaset hash>-<suffix>: the deployment names the container.
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) >= 3 else pod


def _pods(telemetry: Telemetry) -> list[_Pod]:
    metrics = telemetry.metrics
    times = _times_ns(metrics)
    global_step = _typical_step(times, fallback=60 * 10**9)
    known = _containers(telemetry.logs)
    pods = []
    for keys, positions in metrics.groupby(list(ENTITY_KEYS), sort=True).indices.items():
        rows = positions[np.argsort(times[positions], kind="stable")]
        pod_times = times[rows]
        cluster, namespace, pod, node = (str(k) for k in keys)
        step = _typical_step(pod_times, fallback=global_step)
        container = _container_of(pod, known, namespace)
        pods.append(_Pod((cluster, namespace, pod, node), rows, pod_times, step, container))
    return pods


# --------------------------------------------------------------------------- public API


def inject(
    telemetry: Telemetry,
    anomaly_type: str,
    *,
    cluster: str,
    namespace: str,
    pod: str,
    node: str,
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    rng: np.random.Generator,
) -> Telemetry:
    """Inject one anomaly on one pod's rows in ``[start, end)``.

    A ``spike`` is a point anomaly: when the window holds more than three rows
    only the first 1–3 (drawn from ``rng``) change, and the label ends right
    after them.

    Args:
        telemetry: Input telemetry; not modified.
        anomaly_type: One of :data:`ANOMALY_TYPES`.
        cluster: Cluster of the pod.
        namespace: Namespace of the pod.
        pod: Pod name.
        node: Node of the pod.
        start: Window start (inclusive); naive times are taken as UTC.
        end: Window end (exclusive).
        rng: Source of every random draw.

    Returns:
        A new :class:`~aiops.telemetry.Telemetry` with the edited metrics, one
        more label row, and any events/logs the anomaly leaves.

    Raises:
        ValueError: When the type is unknown or the pod has no rows in the window.
        SchemaError: When the metrics lack the columns the type needs.

    """
    _check_types([anomaly_type])
    missing = _KINDS[anomaly_type].missing(set(metric_columns(telemetry.metrics)))
    if missing:
        raise SchemaError(f"metrics: anomaly type '{anomaly_type}' needs column(s) {', '.join(missing)}")
    start_ns, end_ns = _utc_ns(start), _utc_ns(end)
    keys = (cluster, namespace, pod, node)
    target = next((p for p in _pods(telemetry) if p.keys == keys), None)
    if target is None:
        raise ValueError(f"no metrics rows for entity {dict(zip(ENTITY_KEYS, keys, strict=True))}")
    lo, hi = np.searchsorted(target.times, [start_ns, end_ns])
    if hi <= lo:
        raise ValueError(
            f"pod '{pod}' has no rows in [{start}, {end}); it has rows from "
            f"{_ts(target.times[0])} to {_ts(target.times[-1])}"
        )
    window = target.window(int(lo), int(hi))
    draft = _Draft.of(telemetry)
    unreported = _KINDS[anomaly_type].missing(_reported_columns(draft, [target])[0])
    if unreported:
        raise SchemaError(
            f"pod '{pod}' reports no value of {', '.join(unreported)}, "
            f"which anomaly type '{anomaly_type}' needs"
        )
    if anomaly_type == "spike" and window.n > _MAX_SPIKE_ROWS:
        window = target.window(int(lo), int(lo) + int(rng.integers(1, _MAX_SPIKE_ROWS + 1)))
        end_ns = window.end_ns()
    _KINDS[anomaly_type].effect(draft, window, rng)
    draft.label(window, anomaly_type, start_ns, end_ns)
    return draft.result(telemetry)


def inject_anomalies(telemetry: Telemetry, spec: InjectionSpec = InjectionSpec()) -> Telemetry:  # noqa: B008
    """Inject ``spec.n_anomalies`` labelled anomalies at seeded places.

    Types cycle through a seeded shuffle of the feasible ``spec.types`` so each
    appears about equally often; a type that fits nowhere is replaced by
    another feasible one. Each anomaly goes on a pod drawn in proportion to its
    free windows, at least ``spec.margin`` inside the pod's lifetime and away
    from other injections on that pod. ``contextual`` windows are picked where
    the swapped-in values differ most from the original ones.

    Args:
        telemetry: Input telemetry; not modified.
        spec: What to inject, and the seed.

    Returns:
        A new :class:`~aiops.telemetry.Telemetry` with ``spec.n_anomalies`` more labels.

    Raises:
        SchemaError: When the metrics lack the columns of every requested type.
        ValueError: When a type is unknown, a duration is invalid, or fewer
            than ``spec.n_anomalies`` windows fit in the telemetry.

    """
    _check_types(spec.types)
    durations = _durations(spec)
    columns = set(metric_columns(telemetry.metrics))
    feasible = [t for t in dict.fromkeys(spec.types) if not _KINDS[t].missing(columns)]
    if not feasible:
        needs = "; ".join(
            f"{t} needs {', '.join(_KINDS[t].missing(columns))}" for t in dict.fromkeys(spec.types)
        )
        raise SchemaError(
            f"metrics: no requested anomaly type is feasible with columns {sorted(columns)}: {needs}"
        )
    rng = np.random.default_rng(spec.seed)
    pods = _pods(telemetry)
    draft = _Draft.of(telemetry)
    reported = _reported_columns(draft, pods)
    taken: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(pods))}
    for placed, anomaly_type in enumerate(_type_sequence(feasible, spec.n_anomalies, rng)):
        alternatives = [anomaly_type, *(str(t) for t in rng.permutation(feasible) if t != anomaly_type)]
        for candidate in alternatives:
            spot = _place(candidate, pods, taken, draft, durations, rng, reported)
            if spot is not None:
                break
        else:
            raise ValueError(_placement_failure(placed, spec, pods))
        index, window = spot
        _KINDS[candidate].effect(draft, window, rng)
        start_ns, end_ns = int(window.times[0]), window.end_ns()
        draft.label(window, candidate, start_ns, end_ns)
        taken[index].append((start_ns, end_ns))
    return draft.result(telemetry)


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class _Durations:
    min_ns: int
    max_ns: int
    margin_ns: int


def _durations(spec: InjectionSpec) -> _Durations:
    low, high, margin = (pd.to_timedelta(v) for v in (spec.min_duration, spec.max_duration, spec.margin))
    if low <= pd.Timedelta(0) or high < low or margin < pd.Timedelta(0):
        raise ValueError(
            f"need 0 < min_duration <= max_duration and margin >= 0; got min_duration={spec.min_duration!r}, "
            f"max_duration={spec.max_duration!r}, margin={spec.margin!r}"
        )
    if spec.n_anomalies < 0:
        raise ValueError(f"n_anomalies must be >= 0, got {spec.n_anomalies}")
    return _Durations(low.value, high.value, margin.value)


def _type_sequence(types: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` types from consecutive seeded shuffles, so every type shows up before any repeats."""
    rounds = -(-n // len(types))
    order = np.concatenate([rng.permutation(len(types)) for _ in range(rounds)]) if n else np.array([], int)
    return [types[i] for i in order[:n]]


def _window_rows(anomaly_type: str, pod: _Pod, durations: _Durations, rng: np.random.Generator) -> int:
    if anomaly_type == "spike":
        return int(rng.integers(1, _MAX_SPIKE_ROWS + 1))
    low = max(1, -(-durations.min_ns // pod.step_ns))
    high = max(low, durations.max_ns // pod.step_ns)
    return int(rng.integers(low, high + 1))


def _free_starts(pod: _Pod, n: int, taken: list[tuple[int, int]], margin_ns: int) -> np.ndarray:
    """Start positions of n-row windows inside the pod's margins and clear of other injections."""
    if n > len(pod.times):
        return np.array([], dtype=int)
    starts = pod.times[: len(pod.times) - n + 1]
    ends = pod.times[n - 1 :] + pod.step_ns
    ends[:-1] = np.minimum(ends[:-1], pod.times[n:])
    ok = (starts >= pod.times[0] + margin_ns) & (ends <= pod.end_ns - margin_ns)
    for a, b in taken:
        ok &= (ends + margin_ns <= a) | (starts >= b + margin_ns)
    return np.flatnonzero(ok)


def _holding_values(kind: _Kind, pod: _Pod, draft: _Draft, starts: np.ndarray, n: int) -> np.ndarray:
    """The starts whose n-row window holds a value of every column the type needs.

    A pod may report a column and still miss it over a whole window (a gap in the scrapes);
    an anomaly placed there would label rows its effect cannot change. On fully populated
    data every start is kept, so the random draws stay as they were.
    """
    if not len(starts):
        return starts

    def holds(column: str) -> np.ndarray:
        if not draft.has(column):
            return np.zeros(len(starts), dtype=bool)
        counts = np.concatenate([[0], np.cumsum(np.isfinite(draft.columns[column][pod.rows]))])
        return counts[starts + n] > counts[starts]

    ok = np.ones(len(starts), dtype=bool)
    for column in kind.required:
        ok &= holds(column)
    if kind.any_of:
        ok &= np.logical_or.reduce([holds(column) for column in kind.any_of])
    return starts[ok]


def _place(
    anomaly_type: str,
    pods: list[_Pod],
    taken: dict[int, list[tuple[int, int]]],
    draft: _Draft,
    durations: _Durations,
    rng: np.random.Generator,
    reported: list[set[str]],
) -> tuple[int, _Window] | None:
    """Draw a pod and a free window for one anomaly, or None when nothing fits.

    Only pods that report the columns the type needs (``reported``) can take it.
    """
    kind = _KINDS[anomaly_type]
    # Prefer a drawn length; fall back to the shortest allowed one before giving up.
    drawn = [_window_rows(anomaly_type, pod, durations, rng) for pod in pods]
    shortest = [1 if anomaly_type == "spike" else max(1, -(-durations.min_ns // p.step_ns)) for p in pods]
    for sizes in (drawn, shortest):
        starts = [
            _holding_values(kind, p, draft, _free_starts(p, n, taken[i], durations.margin_ns), n)
            if not kind.missing(reported[i])
            else np.array([], dtype=int)
            for i, (p, n) in enumerate(zip(pods, sizes, strict=True))
        ]
        counts = np.array([len(s) for s in starts], dtype=float)
        if counts.sum() == 0:
            continue
        index = int(rng.choice(len(pods), p=counts / counts.sum()))
        pod, n = pods[index], sizes[index]
        if anomaly_type == "contextual":
            lo = _best_contextual_start(pod, starts[index], n, taken[index], draft, rng)
            if lo is None:
                continue
        else:
            lo = int(rng.choice(starts[index]))
        return index, pod.window(lo, lo + n)
    return None


def _best_contextual_start(
    pod: _Pod,
    options: np.ndarray,
    n: int,
    taken: list[tuple[int, int]],
    draft: _Draft,
    rng: np.random.Generator,
) -> int | None:
    """Among a few candidate starts, the one whose swapped-in request rate differs most.

    Candidates whose source rows fall in an earlier injection are skipped, so a
    contextual anomaly never copies another anomaly.
    """
    rate = draft.columns["request_rate"][pod.rows]
    scale = _robust_scale(rate)
    best, best_score = None, -np.inf
    for lo in rng.choice(options, size=min(_CONTEXT_CANDIDATES, len(options)), replace=False):
        window = pod.window(int(lo), int(lo) + n)
        source = _contextual_source(window, rate)
        source_times = pod.times[source]
        if any(((source_times >= a) & (source_times < b)).any() for a, b in taken):
            continue
        score = abs(float(np.nanmedian(rate[source]) - np.nanmedian(rate[window.lo : window.hi]))) / scale
        if score > best_score:
            best, best_score = int(lo), score
    return best


def _placement_failure(placed: int, spec: InjectionSpec, pods: list[_Pod]) -> str:
    longest = max((pd.Timedelta(int(p.end_ns - p.times[0]), "ns") for p in pods), default=pd.Timedelta(0))
    return (
        f"could place only {placed} of {spec.n_anomalies} anomalies: no pod has room for another window of "
        f"at least {spec.min_duration} with {spec.margin} margin from its first/last row and from other "
        f"injections on it (longest pod lifetime {longest}); use longer telemetry, fewer anomalies, or a "
        f"smaller margin/min_duration"
    )


def _utc_ns(value: str | pd.Timestamp) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.as_unit("ns").value)


def _ts(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC")
