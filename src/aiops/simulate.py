"""A seeded simulator of a small Kubernetes cluster's normal operation.

The model, from the top down:

* **Workload.** Each deployment receives a request rate (requests/s, summed
  over its pods) that is the product of a base level, a daily cycle peaking at
  14:00 UTC, a weekly cycle (weekends lower), a slow linear trend and
  multiplicative noise (a smooth component for minute-to-minute drift plus
  white noise). The load balancer splits it evenly over the pods alive at that
  step, with a small fixed skew per pod.
* **Pods come and go.** A deployment keeps ``replicas`` pods. Rollouts arrive
  as a Poisson process; at a rollout a new ReplicaSet (new pod-template hash,
  new pod names) starts and the old pods are deleted 1–3 steps later, the
  surge overlap of a rolling update. Pods are spread over the nodes.
* **Resources follow load.** CPU is an idle cost plus a cost per request, kept
  under a per-deployment limit chosen so that the daily peak sits near half of
  it; throttling is a steep logistic in CPU/limit, so it is ~0 in normal
  operation. Memory is a per-pod baseline plus slow warm-up growth plus a GC
  sawtooth, well below its limit. Network bytes are proportional to requests.
  Disk fills slowly with logs and drops at each log rotation. Latency p95 has a
  queueing term ``u / (1 - u)`` in CPU utilisation ``u``; the error ratio is a
  small base that grows with ``u``. Network errors/drops are rare Poisson
  counts turned into per-second rates.
* **Nodes.** Node CPU and memory utilisation are the sum over the node's pods
  plus a noisy system base load, divided by the node's capacity, and are
  repeated on each pod row of the node as the canonical schema requires.
* **Events and logs** follow each pod's life: Scheduled/Pulling/Pulled/
  Created/Started at its first row, Killing at its last row when a rollout
  deletes it, ScalingReplicaSet (``pod=''``) at each rollout; a startup log
  line, a request summary every ~15 minutes computed from the metrics, rare
  warnings and a SIGTERM line at deletion.

Everything is drawn from one ``np.random.default_rng(spec.seed)``, so a spec
always produces identical tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, EVENT_COLUMNS, LOG_COLUMNS, METRIC_COLUMNS, TIMESTAMP, empty_labels
from aiops.telemetry import Telemetry

# Deployment names are handed out in this order across namespaces, so a
# cluster-wide name is unique; past the end of the list an index is appended.
DEPLOYMENT_NAMES: tuple[str, ...] = (
    "frontend",
    "checkout",
    "cart",
    "catalog",
    "ledger",
    "auth",
    "search",
    "recommender",
    "shipping",
    "notifier",
    "inventory",
    "gateway",
)

# Kubernetes draws pod-name suffixes from an alphabet without vowels and
# look-alike digits (k8s.io/apimachinery/pkg/util/rand).
_POD_SUFFIX_ALPHABET = np.array(list("bcdfghjklmnpqrstvwxz2456789"))

_PEAK_HOUR_UTC = 14.0
_SUMMARY_INTERVAL = pd.Timedelta("15min")
_MIB = 2.0**20
_GIB = 2.0**30


@dataclass(frozen=True)
class ClusterSpec:
    """Shape and randomness of a simulated cluster.

    Attributes:
        cluster: Cluster name, the ``cluster`` entity key.
        n_nodes: Number of worker nodes.
        namespaces: Namespaces, each holding ``deployments_per_namespace``
            deployments.
        deployments_per_namespace: Deployments per namespace.
        replicas: Pods per deployment between rollouts.
        start: First timestamp (UTC).
        duration: Length of the run, a pandas timedelta string.
        step: Sampling step, a pandas timedelta string.
        rollouts_per_day: Mean rate of rollouts per deployment.
        seed: Seed of the only random generator used.

    """

    cluster: str = "sim-cluster"
    n_nodes: int = 3
    namespaces: tuple[str, ...] = ("shop", "payments")
    deployments_per_namespace: int = 2
    replicas: int = 2
    start: str = "2026-01-05T00:00:00Z"
    duration: str = "2D"
    step: str = "1min"
    rollouts_per_day: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class _Deployments:
    """Per-deployment constants, arrays indexed by deployment."""

    namespace: list[str]
    name: list[str]
    base_rps: np.ndarray
    daily_amplitude: np.ndarray
    weekend_factor: np.ndarray
    trend_per_day: np.ndarray
    cpu_idle: np.ndarray
    cpu_per_rps: np.ndarray
    cpu_limit: np.ndarray
    memory_base: np.ndarray
    memory_limit: np.ndarray
    gc_period_s: np.ndarray
    rx_bytes_per_request: np.ndarray
    tx_bytes_per_request: np.ndarray
    latency_base_s: np.ndarray
    error_base: np.ndarray
    disk_fill_per_hour: np.ndarray
    log_rotation_h: np.ndarray


@dataclass(frozen=True)
class _Pods:
    """Every pod of the run, arrays indexed by pod; rows ``[first, end)``."""

    name: list[str]
    deployment: np.ndarray
    generation: np.ndarray
    replicaset: list[str]
    node: np.ndarray
    first: np.ndarray
    end: np.ndarray
    deleted: np.ndarray  # False when the pod lives to the end of the run


@dataclass(frozen=True)
class _Rollout:
    """A new ReplicaSet of a deployment, created at step ``step``."""

    deployment: int
    generation: int
    step: int
    replicaset: str


def simulate_cluster(spec: ClusterSpec = ClusterSpec()) -> Telemetry:  # noqa: B008 - frozen, safe to share
    """Simulate a cluster's metrics, events and logs under normal operation.

    Args:
        spec: Cluster shape, time range and seed.

    Returns:
        A :class:`~aiops.telemetry.Telemetry` with one metrics row per
        ``(timestamp, pod)`` for each step the pod exists, sorted by
        ``(timestamp, namespace, pod)``, no labels, and the matching events
        and logs sorted by timestamp.

    Raises:
        ValueError: When the spec is inconsistent (no nodes, a step that does
            not fit in the duration, ...).

    """
    times, step_s = _time_grid(spec)
    rng = np.random.default_rng(spec.seed)
    deps = _draw_deployments(spec, rng, step_s)
    pods, rollouts = _draw_pods(spec, deps, len(times), step_s, rng)
    dep_rate = _deployment_request_rate(deps, times, rng)
    metrics, rows = _pod_metrics(spec, deps, pods, dep_rate, times, step_s, rng)
    events = _events(spec, deps, pods, rollouts, times)
    logs = _logs(spec, deps, pods, rows, times, step_s, rng)
    return Telemetry(metrics=metrics, labels=empty_labels(), events=events, logs=logs)


def _span(delta: pd.Timedelta) -> str:
    """A duration in the largest unit that states it whole: '2h', '90min', '45s', '1500ms'."""
    nanos = int(delta.value)
    units = (("D", 86_400 * 10**9), ("h", 3_600 * 10**9), ("min", 60 * 10**9), ("s", 10**9))
    for unit, size in (*units, ("ms", 10**6), ("us", 10**3)):
        if nanos % size == 0:
            return f"{nanos // size}{unit}"
    return f"{nanos}ns"


def _time_grid(spec: ClusterSpec) -> tuple[pd.DatetimeIndex, float]:
    if spec.n_nodes < 1 or spec.replicas < 1 or spec.deployments_per_namespace < 1 or not spec.namespaces:
        raise ValueError(
            f"ClusterSpec needs at least one node, namespace, deployment and replica; got n_nodes="
            f"{spec.n_nodes}, namespaces={spec.namespaces}, deployments_per_namespace="
            f"{spec.deployments_per_namespace}, replicas={spec.replicas}"
        )
    if spec.rollouts_per_day < 0:
        raise ValueError(f"rollouts_per_day must be >= 0, got {spec.rollouts_per_day}")
    step = pd.to_timedelta(spec.step)
    duration = pd.to_timedelta(spec.duration)
    if step <= pd.Timedelta(0) or duration < step:
        raise ValueError(f"need 0 < step <= duration, got step={spec.step!r}, duration={spec.duration!r}")
    if duration % step:
        raise ValueError(
            f"duration {spec.duration!r} is not a whole number of steps of {spec.step!r}; "
            f"use {_span(duration // step * step)!r} or {_span((duration // step + 1) * step)!r}"
        )
    start = pd.Timestamp(spec.start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    times = pd.date_range(start.as_unit("ns"), periods=int(duration // step), freq=step)
    return times, step.total_seconds()


def _draw_deployments(spec: ClusterSpec, rng: np.random.Generator, step_s: float) -> _Deployments:
    n_ns, per_ns = len(spec.namespaces), spec.deployments_per_namespace
    n = n_ns * per_ns
    k = len(DEPLOYMENT_NAMES)
    names = [DEPLOYMENT_NAMES[i] if i < k else f"{DEPLOYMENT_NAMES[i % k]}-{i}" for i in range(n)]
    base_rps = rng.uniform(20.0, 200.0, n)
    daily_amplitude = rng.uniform(0.45, 0.7, n)
    cpu_idle = rng.uniform(0.02, 0.06, n)
    cpu_per_rps = rng.uniform(0.002, 0.005, n)
    # Size the limit so the busiest pod at the daily peak uses about half of it,
    # the head-room a capacity planner would leave; rounded like a manifest.
    peak_pod_rps = base_rps * (1.0 + daily_amplitude) * 1.1 / spec.replicas
    cpu_limit = np.ceil((cpu_idle + cpu_per_rps * peak_pod_rps) / 0.5 / 0.25) * 0.25
    memory_base = rng.uniform(128.0, 512.0, n) * _MIB
    memory_limit = np.ceil(memory_base * 2.5 / (64 * _MIB)) * 64 * _MIB
    return _Deployments(
        namespace=[spec.namespaces[i // per_ns] for i in range(n)],
        name=names,
        base_rps=base_rps,
        daily_amplitude=daily_amplitude,
        weekend_factor=rng.uniform(0.55, 0.75, n),
        trend_per_day=rng.uniform(-0.01, 0.03, n),
        cpu_idle=cpu_idle,
        cpu_per_rps=cpu_per_rps,
        cpu_limit=cpu_limit,
        memory_base=memory_base,
        memory_limit=memory_limit,
        gc_period_s=np.maximum(rng.uniform(45.0, 180.0, n) * 60.0, step_s * 3),
        rx_bytes_per_request=rng.uniform(800.0, 4000.0, n),
        tx_bytes_per_request=rng.uniform(2000.0, 20000.0, n),
        latency_base_s=rng.uniform(0.03, 0.25, n),
        error_base=rng.uniform(0.001, 0.004, n),
        disk_fill_per_hour=rng.uniform(0.002, 0.01, n),
        log_rotation_h=rng.choice(np.array([6.0, 12.0, 24.0]), n),
    )


def _random_string(rng: np.random.Generator, alphabet: np.ndarray, length: int) -> str:
    return "".join(rng.choice(alphabet, length))


def _rollout_steps(spec: ClusterSpec, n_steps: int, step_s: float, rng: np.random.Generator) -> list[int]:
    """Poisson rollout times in steps, spaced so every pod outlives its surge."""
    if spec.rollouts_per_day == 0:
        return []
    mean_gap = 86400.0 / step_s / spec.rollouts_per_day
    arrivals = np.cumsum(rng.exponential(mean_gap, int(n_steps / mean_gap * 2) + 10))
    min_gap = 10  # steps; surge is at most 3, so each generation keeps >= 7 own rows
    kept: list[int] = []
    for s in np.floor(arrivals).astype(int):
        if s >= n_steps - 1:
            break
        if s >= min_gap and (not kept or s - kept[-1] >= min_gap):
            kept.append(int(s))
    return kept


def _draw_pods(
    spec: ClusterSpec, deps: _Deployments, n_steps: int, step_s: float, rng: np.random.Generator
) -> tuple[_Pods, list[_Rollout]]:
    names: list[str] = []
    columns: dict[str, list[int]] = {k: [] for k in ("deployment", "generation", "node", "first", "end")}
    replicasets: list[str] = []
    rollouts: list[_Rollout] = []
    used: set[str] = set()
    for d, dep_name in enumerate(deps.name):
        starts = [0, *_rollout_steps(spec, n_steps, step_s, rng)]
        surges = rng.integers(1, 4, len(starts))
        for g, first in enumerate(starts):
            end = starts[g + 1] + int(surges[g + 1]) if g + 1 < len(starts) else n_steps
            rs = f"{dep_name}-{_random_string(rng, _POD_SUFFIX_ALPHABET, 10)}"
            rollouts.append(_Rollout(d, g, first, rs))
            # Spread replicas over nodes the way the default scheduler's
            # topology spreading would, wrapping round when replicas > nodes.
            nodes = rng.permutation(spec.n_nodes)[np.arange(spec.replicas) % spec.n_nodes]
            for node in nodes:
                name = f"{rs}-{_random_string(rng, _POD_SUFFIX_ALPHABET, 5)}"
                while name in used:
                    name = f"{rs}-{_random_string(rng, _POD_SUFFIX_ALPHABET, 5)}"
                used.add(name)
                names.append(name)
                replicasets.append(rs)
                for key, value in zip(columns, (d, g, int(node), first, min(end, n_steps)), strict=True):
                    columns[key].append(value)
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in columns.items()}
    pods = _Pods(name=names, replicaset=replicasets, deleted=arrays["end"] < n_steps, **arrays)
    return pods, rollouts


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], width: int) -> np.ndarray:
    """Zero-mean noise correlated over ~``width`` steps (moving average of white noise)."""
    white = rng.standard_normal((shape[0], shape[1] + width - 1))
    kernel = np.ones(width) / np.sqrt(width)  # keeps unit variance
    return np.stack([np.convolve(row, kernel, mode="valid") for row in white])


def _deployment_request_rate(
    deps: _Deployments, times: pd.DatetimeIndex, rng: np.random.Generator
) -> np.ndarray:
    """Requests/s per deployment and step, shape ``(n_deployments, n_steps)``."""
    hours = (times.hour + times.minute / 60.0 + times.second / 3600.0).to_numpy()
    days = ((times - times[0]) / pd.Timedelta("1D")).to_numpy()
    weekend = np.asarray(times.dayofweek >= 5)
    daily = 1.0 + deps.daily_amplitude[:, None] * np.cos(2 * np.pi * (hours - _PEAK_HOUR_UTC) / 24.0)[None, :]
    weekly = np.where(weekend[None, :], deps.weekend_factor[:, None], 1.0)
    trend = 1.0 + deps.trend_per_day[:, None] * days[None, :]
    shape = (len(deps.name), len(times))
    noise = np.exp(0.06 * _smooth_noise(rng, shape, 30) + 0.04 * rng.standard_normal(shape))
    return deps.base_rps[:, None] * daily * weekly * np.maximum(trend, 0.1) * noise


@dataclass(frozen=True)
class _Rows:
    """Row layout of the metrics table (after sorting)."""

    pod: np.ndarray
    step: np.ndarray
    request_rate: np.ndarray
    latency_s: np.ndarray


def _pod_metrics(
    spec: ClusterSpec,
    deps: _Deployments,
    pods: _Pods,
    dep_rate: np.ndarray,
    times: pd.DatetimeIndex,
    step_s: float,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, _Rows]:
    n_steps = len(times)
    lengths = pods.end - pods.first
    pod = np.repeat(np.arange(len(pods.name)), lengths)
    age = np.arange(len(pod)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    t = pods.first[pod] + age
    d = pods.deployment[pod]
    n = len(pod)
    age_s = age * step_s

    alive = np.zeros((len(deps.name), n_steps + 1))
    np.add.at(alive, (pods.deployment, pods.first), 1.0)
    np.add.at(alive, (pods.deployment, pods.end), -1.0)
    alive = np.cumsum(alive, axis=1)[:, :n_steps]

    skew = rng.normal(1.0, 0.04, len(pods.name))[pod]
    request_rate = np.maximum(dep_rate[d, t] / alive[d, t] * skew * (1 + 0.05 * rng.standard_normal(n)), 0.0)
    limit = deps.cpu_limit[d]
    cpu = deps.cpu_idle[d] + deps.cpu_per_rps[d] * request_rate + 0.01 * limit * rng.standard_normal(n)
    cpu = np.clip(cpu, 0.001, 0.98 * limit)
    util = cpu / limit
    throttled = 1.0 / (1.0 + np.exp(-(util - 0.85) / 0.03))

    memory = _memory(deps, pods, pod, d, age_s, rng)
    latency = deps.latency_base_s[d] * (1.0 + 0.6 * util / (1.0 - util)) * rng.lognormal(0.0, 0.08, n)
    error_ratio = deps.error_base[d] * (1.0 + 2.0 * util**2) * rng.lognormal(0.0, 0.3, n)
    rx = request_rate * deps.rx_bytes_per_request[d] * rng.lognormal(0.0, 0.05, n) + 200.0
    tx = request_rate * deps.tx_bytes_per_request[d] * rng.lognormal(0.0, 0.05, n) + 200.0
    disk_base = rng.uniform(0.05, 0.2, len(pods.name))[pod]
    age_h = age_s / 3600.0
    # Logs fill the disk until rotation truncates them; the rest creeps up slowly.
    logs_h = np.mod(age_h, deps.log_rotation_h[d])
    disk = (
        disk_base
        + deps.disk_fill_per_hour[d] * logs_h
        + 0.002 * age_h / 24.0
        + 0.0005 * rng.standard_normal(n)
    )

    node = pods.node[pod]
    node_cpu, node_memory = _node_utilisation(spec, node, t, cpu, memory, n_steps, rng)
    values = {
        "cpu_usage_cores": cpu,
        "cpu_limit_cores": limit,
        "cpu_throttled_ratio": throttled,
        "memory_working_set_bytes": memory,
        "memory_limit_bytes": deps.memory_limit[d],
        "restarts": np.zeros(n),
        # Rare errors/drops: a Poisson count in the step turned into a rate.
        "network_rx_bytes_per_s": rx,
        "network_tx_bytes_per_s": tx,
        "network_errors_per_s": rng.poisson(0.01, n) / step_s,
        "network_drops_per_s": rng.poisson(0.005, n) / step_s,
        "disk_usage_ratio": disk,
        "request_rate": request_rate,
        "latency_p95_seconds": latency,
        "error_ratio": error_ratio,
        "node_cpu_utilisation": node_cpu,
        "node_memory_utilisation": node_memory,
    }
    return _metrics_frame(spec, deps, pods, pod, t, times, values)


def _memory(
    deps: _Deployments,
    pods: _Pods,
    pod: np.ndarray,
    d: np.ndarray,
    age_s: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Working set: baseline, warm-up growth (caches filling) and a GC sawtooth."""
    n_pods = len(pods.name)
    base = deps.memory_base[d] * rng.normal(1.0, 0.05, n_pods)[pod]
    warmup = 0.15 * deps.memory_base[d] * (1.0 - np.exp(-age_s / (12 * 3600.0)))
    gc_phase = rng.uniform(0.0, 1.0, n_pods)[pod] * deps.gc_period_s[d]
    sawtooth = 0.1 * deps.memory_base[d] * np.mod(age_s + gc_phase, deps.gc_period_s[d]) / deps.gc_period_s[d]
    return base + warmup + sawtooth + 0.005 * deps.memory_base[d] * rng.standard_normal(len(pod))


def _node_utilisation(
    spec: ClusterSpec,
    node: np.ndarray,
    t: np.ndarray,
    cpu: np.ndarray,
    memory: np.ndarray,
    n_steps: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Node utilisation per pod row: its pods' usage plus system load, over capacity."""
    cells = spec.n_nodes * n_steps
    key = node * n_steps + t
    pod_cpu = np.bincount(key, weights=cpu, minlength=cells).reshape(spec.n_nodes, n_steps)
    pod_memory = np.bincount(key, weights=memory, minlength=cells).reshape(spec.n_nodes, n_steps)
    cpu_capacity = rng.choice(np.array([4.0, 8.0]), spec.n_nodes)
    memory_capacity = 16 * _GIB
    system_cpu = rng.uniform(0.2, 0.5, (spec.n_nodes, 1)) * rng.lognormal(0.0, 0.1, (spec.n_nodes, n_steps))
    system_memory = rng.uniform(1.5, 3.0, spec.n_nodes)[:, None] * _GIB
    node_cpu = np.clip((system_cpu + pod_cpu) / cpu_capacity[:, None], 0.0, 1.0)
    node_memory = np.clip((system_memory + pod_memory) / memory_capacity, 0.0, 1.0)
    return node_cpu[node, t], node_memory[node, t]


def _metrics_frame(
    spec: ClusterSpec,
    deps: _Deployments,
    pods: _Pods,
    pod: np.ndarray,
    t: np.ndarray,
    times: pd.DatetimeIndex,
    values: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, _Rows]:
    namespace = np.array([deps.namespace[d] for d in pods.deployment], dtype=object)
    name = np.array(pods.name, dtype=object)
    # Rank pods by (namespace, name) so one integer lexsort gives the schema's
    # (timestamp, namespace, pod) order without sorting strings per row.
    rank = np.empty(len(name), dtype=np.int64)
    rank[sorted(range(len(name)), key=lambda i: (namespace[i], name[i]))] = np.arange(len(name))
    order = np.lexsort((rank[pod], t))
    pod, t = pod[order], t[order]
    node_names = np.array([_node_name(spec, i) for i in range(spec.n_nodes)], dtype=object)
    frame = pd.DataFrame(
        {
            TIMESTAMP: times.take(t),
            "cluster": np.full(len(pod), spec.cluster, dtype=object),
            "namespace": namespace[pod],
            "pod": name[pod],
            "node": node_names[pods.node[pod]],
            **{c: np.clip(values[c][order], 0.0, None).astype(np.float64) for c in METRIC_COLUMNS},
        }
    )
    for ratio in ("cpu_throttled_ratio", "disk_usage_ratio", "error_ratio"):
        frame[ratio] = frame[ratio].clip(upper=1.0)
    rows = _Rows(pod, t, frame["request_rate"].to_numpy(), frame["latency_p95_seconds"].to_numpy())
    return frame, rows


def _node_name(spec: ClusterSpec, node: int) -> str:
    return f"{spec.cluster}-worker-{node + 1}"


def _image(deps: _Deployments, d: int, generation: int) -> str:
    return f"registry.example.com/{deps.namespace[d]}/{deps.name[d]}:v1.{generation}.0"


def _events(
    spec: ClusterSpec, deps: _Deployments, pods: _Pods, rollouts: list[_Rollout], times: pd.DatetimeIndex
) -> pd.DataFrame:
    """Pod lifecycle events at each pod's first/last row and ReplicaSet scaling events."""
    records: list[tuple] = []
    for i, name in enumerate(pods.name):
        d = int(pods.deployment[i])
        ns, dep = deps.namespace[d], deps.name[d]
        node = _node_name(spec, int(pods.node[i]))
        image = _image(deps, d, int(pods.generation[i]))
        born = times[pods.first[i]]
        keys = (spec.cluster, ns, name, node)
        records += [
            (born, *keys, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node}"),
            (born, *keys, "Normal", "Pulling", f'Pulling image "{image}"'),
            (born, *keys, "Normal", "Pulled", f'Successfully pulled image "{image}"'),
            (born, *keys, "Normal", "Created", f"Created container {dep}"),
            (born, *keys, "Normal", "Started", f"Started container {dep}"),
        ]
        if pods.deleted[i]:
            records.append((times[pods.end[i] - 1], *keys, "Normal", "Killing", f"Stopping container {dep}"))
    for r in rollouts:
        keys = (spec.cluster, deps.namespace[r.deployment], "", "")
        message = f"Scaled up replica set {r.replicaset} to {spec.replicas}"
        records.append((times[r.step], *keys, "Normal", "ScalingReplicaSet", message))
    # The old ReplicaSet is scaled down when its pods are killed.
    for i in np.flatnonzero(pods.deleted).tolist():
        if i == 0 or pods.replicaset[i - 1] != pods.replicaset[i]:
            keys = (spec.cluster, deps.namespace[pods.deployment[i]], "", "")
            message = f"Scaled down replica set {pods.replicaset[i]} to 0"
            records.append((times[pods.end[i] - 1], *keys, "Normal", "ScalingReplicaSet", message))
    return _table(records, EVENT_COLUMNS)


def _logs(
    spec: ClusterSpec,
    deps: _Deployments,
    pods: _Pods,
    rows: _Rows,
    times: pd.DatetimeIndex,
    step_s: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Container logs: startup, periodic request summaries from the metrics, rare warnings, SIGTERM."""
    records: list[tuple] = []

    def keys(i: int) -> tuple[str, ...]:
        d = int(pods.deployment[i])
        node = _node_name(spec, int(pods.node[i]))
        return (spec.cluster, deps.namespace[d], pods.name[i], node, deps.name[d])

    for i in range(len(pods.name)):
        message = f"Starting {deps.name[pods.deployment[i]]} server on :8080"
        records.append((times[pods.first[i]], *keys(i), "INFO", message))
        if pods.deleted[i]:
            message = "Received SIGTERM, shutting down gracefully"
            records.append((times[pods.end[i] - 1], *keys(i), "INFO", message))
    records += _summary_lines(pods, rows, times, step_s, rng, keys)
    records += _warning_lines(deps, pods, rows, times, rng, keys)
    return _table(records, LOG_COLUMNS)


def _summary_lines(
    pods: _Pods,
    rows: _Rows,
    times: pd.DatetimeIndex,
    step_s: float,
    rng: np.random.Generator,
    keys: Callable[[int], tuple[str, ...]],
) -> list[tuple]:
    """One request summary per pod every ~15 min, with counts summed from the metrics."""
    every = max(1, round(_SUMMARY_INTERVAL.total_seconds() / step_s))
    window = f"{round(every * step_s / 60)}m"
    phase = rng.integers(0, every, len(pods.name))
    by_pod = np.argsort(rows.pod, kind="stable")  # rows are time-sorted, so each pod's rows stay in order
    pod_sorted = rows.pod[by_pod]
    served = np.concatenate([[0.0], np.cumsum(rows.request_rate[by_pod] * step_s)])
    age = np.arange(len(by_pod)) - np.searchsorted(pod_sorted, pod_sorted)
    # Only full windows, so "in the last 15m" is true of a pod that just started.
    at = np.flatnonzero(((age + phase[pod_sorted]) % every == every - 1) & (age + 1 >= every))
    counts = served[at + 1] - served[at + 1 - every]
    records = []
    for j, count in zip(at, counts, strict=True):
        row = by_pod[j]
        p95_ms = rows.latency_s[row] * 1000
        message = f"served {int(round(count))} requests in the last {window}, p95={p95_ms:.0f}ms"
        records.append((times[rows.step[row]], *keys(int(rows.pod[row])), "INFO", message))
    return records


def _warning_lines(
    deps: _Deployments,
    pods: _Pods,
    rows: _Rows,
    times: pd.DatetimeIndex,
    rng: np.random.Generator,
    keys: Callable[[int], tuple[str, ...]],
) -> list[tuple]:
    """Rare WARN lines (a few per pod per day) about slow requests and retries."""
    records = []
    for row in np.flatnonzero(rng.random(len(rows.pod)) < 0.002):
        i = int(rows.pod[row])
        d = int(pods.deployment[i])
        if rng.random() < 0.5:
            slow_ms = rows.latency_s[row] * 1000 * rng.uniform(1.5, 3.0)
            message = f"slow request: GET /api/v1/{deps.name[d]} took {slow_ms:.0f}ms"
        else:
            peer = deps.name[(d + 1) % len(deps.name)]
            message = f"retrying request to {peer}:8080: context deadline exceeded"
        records.append((times[rows.step[row]], *keys(i), "WARN", message))
    return records


def _table(records: list[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=list(columns))
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
    for key in (*ENTITY_KEYS, *(c for c in columns if c not in (TIMESTAMP, *ENTITY_KEYS))):
        frame[key] = frame[key].astype(object)
    # Stable sort keeps each pod's lifecycle order (Scheduled before Started).
    return frame.sort_values(TIMESTAMP, kind="stable", ignore_index=True)
