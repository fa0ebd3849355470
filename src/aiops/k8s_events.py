"""Kubernetes events into the canonical events table, a reason taxonomy, per-window counts and workloads.

Events are read with ``CoreV1Api.list_event_for_all_namespaces`` (core/v1
``Event``), not with ``EventsV1Api`` (``events.k8s.io/v1``). Both APIs serve
the same stored objects, but

* the kubelet and most controllers still record events through the legacy
  recorder, which leaves ``eventTime`` empty, and the ``kubernetes`` client's
  ``EventsV1Event`` model refuses to deserialise an event without
  ``eventTime`` (client-side validation), so a plain list through
  ``EventsV1Api`` fails on an ordinary cluster;
* core/v1 carries ``source.host`` (the node of kubelet events) and ``count``
  directly, and still exposes what new-style events set: ``eventTime``,
  ``series``, ``reportingComponent``.

An event's time is its latest observation: ``series.lastObservedTime``, else
``lastTimestamp``, else ``eventTime``, else ``firstTimestamp``, else
``metadata.creationTimestamp``. Its occurrences are ``series.count``, else
``count``, else 1. The API server keeps events for ``--event-ttl`` (1 hour by
default), so only a recent window can be read back; older ones need an event
exporter.

Each event is mapped to a class of :data:`EVENT_CLASSES` by its reason (and,
for the kubelet's ambiguous ``BackOff`` and ``Failed``, its message), and its
involved object to the workload that owns it, by following controller
``ownerReferences`` through the API (:class:`OwnerResolver`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from aiops.k8s_api import KubeClient, KubernetesError
from aiops.schema import (
    ENTITY_KEYS,
    EVENT_COLUMNS,
    KEY_COLUMNS,
    TIMESTAMP,
    SchemaError,
    as_utc,
    window_end,
)

_LOG = logging.getLogger(__name__)

EVENT_CLASSES: tuple[str, ...] = (
    "backoff",
    "oom",
    "failed_scheduling",
    "unhealthy",
    "killing",
    "failed_mount",
    "evicted",
    "node_not_ready",
    "node_pressure",
    "sandbox",
    "image_pull",
    "lifecycle",
    "other",
)
"""Taxonomy of event reasons; ``other`` takes every reason not listed in :data:`REASON_CLASSES`."""

REASON_CLASSES: dict[str, str] = {
    # Restart back-off of a crashing container (CrashLoopBackOff); see _MESSAGE_CLASSES for image pulls.
    "BackOff": "backoff",
    "CrashLoopBackOff": "backoff",
    "OOMKilling": "oom",  # node-problem-detector's kernel monitor
    "OOMKilled": "oom",
    "SystemOOM": "oom",  # kubelet, on the node
    "FailedScheduling": "failed_scheduling",
    "NotTriggerScaleUp": "failed_scheduling",  # cluster-autoscaler could not help either
    "Unhealthy": "unhealthy",  # liveness/readiness/startup probe failed
    "ProbeWarning": "unhealthy",
    "Killing": "killing",
    "FailedKillPod": "killing",
    "FailedMount": "failed_mount",
    "FailedAttachVolume": "failed_mount",
    "FailedMapVolume": "failed_mount",
    "Evicted": "evicted",
    "Preempted": "evicted",
    "TaintManagerEviction": "evicted",
    "NodeNotReady": "node_not_ready",
    "Rebooted": "node_not_ready",
    "NodeHasDiskPressure": "node_pressure",
    "NodeHasInsufficientMemory": "node_pressure",
    "NodeHasInsufficientPID": "node_pressure",
    "EvictionThresholdMet": "node_pressure",
    "FreeDiskSpaceFailed": "node_pressure",
    "ImageGCFailed": "node_pressure",
    "ContainerGCFailed": "node_pressure",
    "FailedCreatePodSandBox": "sandbox",
    "SandboxChanged": "sandbox",
    "ErrImagePull": "image_pull",
    "ImagePullBackOff": "image_pull",
    "ErrImageNeverPull": "image_pull",
    "InspectFailed": "image_pull",
    "Scheduled": "lifecycle",
    "Pulling": "lifecycle",
    "Pulled": "lifecycle",
    "Created": "lifecycle",
    "Started": "lifecycle",
    "SuccessfulCreate": "lifecycle",
    "SuccessfulDelete": "lifecycle",
    "ScalingReplicaSet": "lifecycle",
    "Completed": "lifecycle",
    "SawCompletedJob": "lifecycle",
    "SuccessfulAttachVolume": "lifecycle",
}
"""Event reason -> class of :data:`EVENT_CLASSES`."""

# The kubelet reuses "BackOff" for image pulls ("Back-off pulling image ...") and reports pull
# failures as "Failed" with "Error: ErrImagePull" / "Error: ImagePullBackOff" / "Failed to pull image".
_IMAGE_PULL_MESSAGE = re.compile(r"pull(?:ing)? image|ErrImagePull|ImagePullBackOff", re.IGNORECASE)
_MESSAGE_REFINED = frozenset({"BackOff", "Failed"})

EVENT_FEATURES: tuple[str, ...] = (*(f"events_{c}" for c in EVENT_CLASSES), "events_warning")
"""Columns of :func:`event_features`, in order: one count per class, plus Warning events of any class."""

EVENT_EXTRA_COLUMNS: tuple[str, ...] = ("event_class", "count", "workload_kind", "workload")
"""Columns :func:`list_events` adds after :data:`aiops.schema.EVENT_COLUMNS`."""

# Kinds whose controller owner is looked up through the API; any other kind is the workload itself.
# Deployment, StatefulSet, DaemonSet and CronJob are where a chain stops even when an operator owns
# them, because they are what people scale, roll out and page about.
_FOLLOWED_KINDS = ("Pod", "ReplicaSet", "Job", "ReplicationController")
_MAX_OWNER_DEPTH = 5


def classify_event(reason: str, message: str = "") -> str:
    """Map an event to a class of :data:`EVENT_CLASSES`.

    Args:
        reason: The event's ``reason``, e.g. ``BackOff``.
        message: The event's ``message``; it decides between a crash-loop back-off and an image
            pull back-off, and what a ``Failed`` event is about.

    Returns:
        The class; ``other`` for a reason the taxonomy does not know.

    """
    if reason in _MESSAGE_REFINED and _IMAGE_PULL_MESSAGE.search(message or ""):
        return "image_pull"
    return REASON_CLASSES.get(reason, "other")


def classify_events(events: pd.DataFrame) -> pd.Series:
    """Vectorised :func:`classify_event` over an events table (``reason`` and ``message`` columns)."""
    for column in ("reason", "message"):
        if column not in events.columns:
            raise SchemaError(f"events: column '{column}' missing; expected {list(EVENT_COLUMNS)}")
    reasons = events["reason"].fillna("").astype(str)
    classes = reasons.map(REASON_CLASSES).fillna("other").astype(object)
    refined = reasons.isin(_MESSAGE_REFINED) & events["message"].fillna("").astype(str).str.contains(
        _IMAGE_PULL_MESSAGE
    )
    classes[refined] = "image_pull"
    return classes.rename("event_class")


# --------------------------------------------------------------------------- owners


@dataclass(frozen=True)
class Workload:
    """The controller at the top of an object's ownership chain.

    Attributes:
        kind: ``Deployment``, ``StatefulSet``, ``DaemonSet``, ``CronJob``, ``Job``,
            ``ReplicaSet`` (whose Deployment, if any, is gone), ``Pod`` (a bare pod), a custom
            kind, or ``''`` for a pod that no longer exists and for cluster-scoped objects (nodes).
        name: Its name (``''`` with an empty kind).

    """

    kind: str
    name: str


_UNKNOWN = Workload("", "")


def _controller_ref(obj: Any) -> Any | None:
    refs = getattr(obj.metadata, "owner_references", None) or []
    for ref in refs:
        if ref.controller:
            return ref
    return refs[0] if refs else None


class OwnerResolver:
    """Resolve objects to their owning workload through ``ownerReferences``, reading each object once.

    Pod -> ReplicaSet -> Deployment, Pod -> StatefulSet, Pod -> DaemonSet, Pod -> Job -> CronJob,
    and OpenShift's Pod -> ReplicationController -> DeploymentConfig. Each object read is cached
    for the resolver's lifetime (one ingest), as is each answer; an object that is gone (HTTP 404)
    resolves to what is known of it.
    """

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._objects: dict[tuple[str, str, str], Any | None] = {}
        self._workloads: dict[tuple[str, str, str], Workload] = {}
        self.reads = 0
        """API reads made so far (cache misses)."""

    def _reader(self, kind: str) -> Callable[..., Any]:
        return {
            "Pod": self._client.core.read_namespaced_pod,
            "ReplicationController": self._client.core.read_namespaced_replication_controller,
            "ReplicaSet": self._client.apps.read_namespaced_replica_set,
            "Job": self._client.batch.read_namespaced_job,
        }[kind]

    def read(self, kind: str, namespace: str, name: str) -> Any | None:
        """The object as the API serves it (a ``kubernetes`` model), or ``None`` when it is gone.

        Raises:
            KubernetesError: On any error but 404 (e.g. 403 when RBAC does not allow ``get``).

        """
        key = (kind, namespace, name)
        if key not in self._objects:
            self.reads += 1
            try:
                self._objects[key] = self._client.call(self._reader(kind), name, namespace)
            except KubernetesError as exc:
                if exc.status != 404:
                    raise
                _LOG.debug("%s %s/%s is gone; its owner stays unknown", kind, namespace, name)
                self._objects[key] = None
        return self._objects[key]

    def workload(self, kind: str, namespace: str, name: str) -> Workload:
        """The workload that owns an object (itself when nothing owns it).

        Args:
            kind: The object's kind, e.g. ``Pod``.
            namespace: Its namespace.
            name: Its name.

        Returns:
            The owning workload; ``Workload('', '')`` for a pod that no longer exists and for a
            cluster-scoped object such as a node.

        """
        key = (kind, namespace, name)
        if key not in self._workloads:
            self._workloads[key] = self._resolve(kind, namespace, name)
        return self._workloads[key]

    def _resolve(self, kind: str, namespace: str, name: str) -> Workload:
        if not namespace:
            return _UNKNOWN  # a node or another cluster-scoped object belongs to no workload
        for _ in range(_MAX_OWNER_DEPTH):
            if kind not in _FOLLOWED_KINDS:
                return Workload(kind, name)
            obj = self.read(kind, namespace, name)
            if obj is None:
                return _UNKNOWN if kind == "Pod" else Workload(kind, name)
            ref = _controller_ref(obj)
            if ref is None:
                return Workload(kind, name)
            kind, name = str(ref.kind), str(ref.name)
        return Workload(kind, name)

    def pod_node(self, namespace: str, pod: str) -> str:
        """The node a pod is (or was) scheduled to, from the cached read; ``''`` when unknown."""
        obj = self.read("Pod", namespace, pod)
        spec = getattr(obj, "spec", None)
        return str(getattr(spec, "node_name", None) or "")


# --------------------------------------------------------------------------- events


def event_timestamp(event: Any) -> datetime | None:
    """An event's latest observation (see the module docstring); ``None`` when it has no time at all."""
    series = getattr(event, "series", None)
    candidates = (
        getattr(series, "last_observed_time", None) if series is not None else None,
        event.last_timestamp,
        event.event_time,
        event.first_timestamp,
        getattr(event.metadata, "creation_timestamp", None) if event.metadata is not None else None,
    )
    return next((c for c in candidates if c is not None), None)


def event_occurrences(event: Any) -> int:
    """How often the event was observed: ``series.count``, else ``count``, else 1."""
    series = getattr(event, "series", None)
    count = getattr(series, "count", None) if series is not None else None
    return int(count or event.count or 1)


def _record(event: Any, stamp: datetime, cluster: str) -> dict[str, Any]:
    involved = event.involved_object
    kind = str(getattr(involved, "kind", None) or "")
    name = str(getattr(involved, "name", None) or "")
    source_host = getattr(event.source, "host", None) if event.source is not None else None
    node = name if kind == "Node" else str(source_host or "")
    return {
        TIMESTAMP: stamp,
        "cluster": cluster,
        # Cluster-scoped objects (nodes) have no namespace even though their events live in 'default'.
        "namespace": str(getattr(involved, "namespace", None) or ""),
        "pod": name if kind == "Pod" else "",
        "node": node,
        "type": str(event.type or ""),
        "reason": str(event.reason or ""),
        "message": str(event.message or "").strip(),
        "count": event_occurrences(event),
        "involved_kind": kind,
        "involved_name": name,
    }


def empty_event_table() -> pd.DataFrame:
    """The table :func:`list_events` returns, with no rows."""
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in (*EVENT_COLUMNS, *EVENT_EXTRA_COLUMNS)})
    frame[TIMESTAMP] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["count"] = pd.Series(dtype=np.int64)
    return frame


def list_events(
    client: KubeClient,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    *,
    cluster: str = "",
    limit: int = 500,
    field_selector: str = "",
    resolve_owners: bool = True,
) -> pd.DataFrame:
    """Read the events of every namespace observed in ``(start, end]`` into the canonical events table.

    The window is closed on the right, as the step windows of :func:`event_features` are: an
    event at ``t`` counts in the row at ``window_end(t)``, which lies in ``(start, end]`` when
    ``start`` and ``end`` are on the step grid. So consecutive ingests ``(a, b]``, ``(b, c]``,
    each with the metric rows stamped in its window, count every event once.

    Args:
        client: The API client.
        start: Instant before the window (naive times are UTC), exclusive.
        end: Last instant, inclusive.
        cluster: Value of the ``cluster`` entity key on every row.
        limit: Events per page; the listing follows ``metadata.continue`` until it is exhausted.
        field_selector: Server-side filter, e.g. ``type=Warning`` or ``involvedObject.kind=Pod``.
        resolve_owners: Look up the workload owning each involved object (``get`` on pods,
            replicasets and jobs), and fill ``node`` of pod events that lack ``source.host``
            (scheduler events) from the pod's ``spec.nodeName``.

    Returns:
        :data:`aiops.schema.EVENT_COLUMNS` followed by :data:`EVENT_EXTRA_COLUMNS`: ``event_class``
        (:func:`classify_event`), ``count`` (occurrences) and ``workload_kind``/``workload``
        (``''`` when not resolved), one row per event object, sorted by time. Select
        ``list(EVENT_COLUMNS)`` for the canonical table alone.

    Raises:
        KubernetesError: When the API server is unreachable, refuses the credentials or the
            permission, or the listing cannot be completed; the message names the server and the call.
        ValueError: When ``end`` is not after ``start``.

    """
    lo, hi = as_utc(start, "start"), as_utc(end, "end")
    if hi <= lo:
        raise ValueError(f"end {end!r} must be after start {start!r}")
    kwargs: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
    items = client.list_all(client.core.list_event_for_all_namespaces, limit=limit, **kwargs)
    records = []
    for event in items:
        stamp = event_timestamp(event)
        if stamp is None:
            _LOG.debug("event %s has no time at all; skipped", event.metadata.name)
            continue
        when = as_utc(stamp, "event time")
        if lo < when <= hi:
            records.append(_record(event, when, cluster))
    _LOG.info("%d of %d event(s) from %s fall in (%s, %s]", len(records), len(items), client.host, lo, hi)
    if not records:
        return empty_event_table()
    frame = pd.DataFrame.from_records(records)
    resolver = OwnerResolver(client) if resolve_owners else None
    kinds, names = [], []
    node_column = frame.columns.get_loc("node")
    for i, row in enumerate(frame.itertuples(index=False)):
        workload = _UNKNOWN
        if resolver is not None and row.involved_kind and row.involved_name:
            workload = resolver.workload(row.involved_kind, row.namespace, row.involved_name)
            if row.involved_kind == "Pod" and not row.node:
                frame.iat[i, node_column] = resolver.pod_node(row.namespace, row.involved_name)
        kinds.append(workload.kind)
        names.append(workload.name)
    frame["workload_kind"], frame["workload"] = kinds, names
    frame["event_class"] = classify_events(frame)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
    frame["count"] = frame["count"].astype(np.int64)
    out = frame[[*EVENT_COLUMNS, *EVENT_EXTRA_COLUMNS]]
    return out.sort_values([TIMESTAMP, "namespace", "pod"], kind="stable", ignore_index=True)


# --------------------------------------------------------------------------- features


def event_features(
    events: pd.DataFrame,
    step: str = "1min",
    *,
    weight: Literal["events", "occurrences"] = "events",
) -> pd.DataFrame:
    """Count events per entity and step window, one column per class (:data:`EVENT_FEATURES`).

    Works on any canonical events table (the simulator's, or :func:`list_events`'); classes are
    computed when the table has no ``event_class`` column.

    Args:
        events: Events table with at least :data:`aiops.schema.EVENT_COLUMNS`.
        step: Window length, a pandas timedelta string; use the metrics' step.
        weight: ``events`` counts event objects; ``occurrences`` weighs each by its ``count``
            (all of them at its latest observation, as the API keeps no per-occurrence times).

    Returns:
        ``timestamp`` (window end, see :func:`window_end`), the entity keys and the float64
        :data:`EVENT_FEATURES`, one row per window and entity with at least one event. Node events
        have ``pod == ''``, namespace-level ones (a Deployment's) ``pod == node == ''``.

    Raises:
        SchemaError: When a canonical column is missing.

    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise SchemaError(f"events: column(s) {missing} missing; expected {list(EVENT_COLUMNS)}")
    if weight not in ("events", "occurrences"):
        raise ValueError(f"weight must be 'events' or 'occurrences', got {weight!r}")
    if events.empty:
        return _empty_features()
    classes = events["event_class"] if "event_class" in events.columns else classify_events(events)
    if weight == "occurrences" and "count" in events.columns:
        weights = events["count"].fillna(1).to_numpy(dtype=np.float64)
    else:
        weights = np.ones(len(events))
    counts = pd.DataFrame(
        {f"events_{c}": np.where(classes.to_numpy() == c, weights, 0.0) for c in EVENT_CLASSES}
    )
    counts["events_warning"] = np.where(events["type"].to_numpy() == "Warning", weights, 0.0)
    counts[TIMESTAMP] = window_end(events[TIMESTAMP], step).to_numpy()
    for key in ENTITY_KEYS:
        counts[key] = events[key].fillna("").astype(str).to_numpy()
    grouped = counts.groupby(list(KEY_COLUMNS), sort=True, as_index=False)[list(EVENT_FEATURES)].sum()
    grouped[TIMESTAMP] = grouped[TIMESTAMP].astype("datetime64[ns, UTC]")
    return grouped[[*KEY_COLUMNS, *EVENT_FEATURES]].astype(dict.fromkeys(EVENT_FEATURES, np.float64))


def _empty_features() -> pd.DataFrame:
    frame = pd.DataFrame({k: pd.Series(dtype=object) for k in ENTITY_KEYS})
    frame.insert(0, TIMESTAMP, pd.Series(dtype="datetime64[ns, UTC]"))
    for column in EVENT_FEATURES:
        frame[column] = pd.Series(dtype=np.float64)
    return frame


def join_window_features(metrics: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Add per-window count features (:func:`event_features`, log features) to the metrics rows.

    Pod rows of ``features`` join on ``(timestamp, cluster, namespace, pod)`` (not ``node``: an
    event may not know it); node rows (``pod == ''``, ``node != ''``) are added to every pod row
    of that node, the way node metrics are repeated on pod rows. Namespace-level rows are dropped.
    Steps without a row count 0.

    Args:
        metrics: Canonical metrics table on the same step grid as ``features``.
        features: Wide count table: key columns plus float feature columns.

    Returns:
        ``metrics`` with the feature columns appended (float64), row order unchanged.

    """
    columns = [c for c in features.columns if c not in KEY_COLUMNS]
    out = metrics.copy()
    pod_keys = [TIMESTAMP, "cluster", "namespace", "pod"]
    node_keys = [TIMESTAMP, "cluster", "node"]
    pod_rows = features[features["pod"] != ""].groupby(pod_keys, as_index=False)[columns].sum()
    node_rows = features[(features["pod"] == "") & (features["node"] != "")]
    node_rows = node_rows.groupby(node_keys, as_index=False)[columns].sum()
    by_pod = out[pod_keys].merge(pod_rows, on=pod_keys, how="left")[columns].fillna(0.0)
    by_node = out[node_keys].merge(node_rows, on=node_keys, how="left")[columns].fillna(0.0)
    for column in columns:
        out[column] = by_pod[column].to_numpy(dtype=np.float64) + by_node[column].to_numpy(dtype=np.float64)
    return out
