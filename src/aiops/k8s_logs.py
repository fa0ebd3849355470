"""Container logs of a time window, read through the Kubernetes API into the canonical logs table.

For each pod (listed page by page) and each of its containers,
``CoreV1Api.read_namespaced_pod_log`` is asked for the lines since the start of
the window (``since_seconds``, counted back from now, plus a margin for clock
skew) with ``timestamps=True``, so every line carries the container runtime's
RFC 3339 time and the window is cut exactly on this side. A container that has
restarted, whose previous instance ended inside the window (a crash loop, an
OOM kill), is read a second time with ``previous=True``: the kubelet keeps the
log of exactly one previous instance, and it holds the lines that explain the
crash.

Logs are read raw (``_preload_content=False``): the client would otherwise try
to parse a body that happens to be JSON and hand back a Python ``repr``.

Only pods that still exist can be read; the kubelet keeps a container's log
while the pod exists and rotates it by size. Older windows need the
cluster's log store (OpenShift Logging, Loki).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from aiops.k8s_api import KubeClient, KubernetesError
from aiops.log_templates import parse_level
from aiops.schema import ENTITY_KEYS, LOG_COLUMNS, TIMESTAMP, as_utc

_LOG = logging.getLogger(__name__)

DEFAULT_LIMIT_BYTES = 16 * 2**20
"""Most bytes read from one container instance's log (the kubelet stops there)."""

_SINCE_MARGIN_S = 60  # covers clock skew between here and the node; lines are cut exactly afterwards
# 400: the container is waiting to start or has no previous instance; 404: the pod is gone.
_SKIPPED_STATUS = frozenset({400, 404})


def parse_timestamped_log(text: str) -> pd.DataFrame:
    r"""Split ``timestamps=True`` log text into ``timestamp`` (UTC) and ``message``.

    Each line reads ``2026-01-05T10:00:00.123456789Z message``. Lines without a valid time
    (none are expected from the kubelet) are dropped with a warning. The kubelet ends lines
    with ``\n`` only: a bare ``\r`` (a progress bar), a form feed or U+2028 inside a message
    belongs to it (``str.splitlines`` would cut the message there); a ``\r\n`` ending loses
    its ``\r``.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return pd.DataFrame(
            {TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]"), "message": pd.Series(dtype=object)}
        )
    parts = pd.Series(lines, dtype=object).str.split(" ", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = ""
    stamps = pd.to_datetime(parts[0], format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        first = lines[int(np.flatnonzero(bad)[0])]
        _LOG.warning("%d log line(s) without a leading RFC 3339 time dropped, e.g. %.200r", bad.sum(), first)
    frame = pd.DataFrame(
        {
            TIMESTAMP: stamps.astype("datetime64[ns, UTC]"),
            "message": parts[1].fillna("").astype(str).str.rstrip("\r").astype(object),
        }
    )
    return frame.loc[~bad].reset_index(drop=True)


def read_container_log(
    client: KubeClient,
    namespace: str,
    pod: str,
    container: str,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    *,
    previous: bool = False,
    now: datetime | None = None,
    limit_bytes: int | None = DEFAULT_LIMIT_BYTES,
) -> pd.DataFrame:
    """Read one container instance's lines in ``(start, end]`` (see :func:`read_pod_logs`).

    Args:
        client: The API client.
        namespace: Pod namespace.
        pod: Pod name.
        container: Container name.
        start: Instant before the window (naive times are UTC), exclusive.
        end: Last instant, inclusive.
        previous: Read the previous (terminated) instance of the container instead.
        now: The current time, from which ``since_seconds`` is counted (default: the clock).
        limit_bytes: Most bytes to read (``None``: no limit); a truncated read is logged.

    Returns:
        ``timestamp`` and ``message`` columns, in log order.

    Raises:
        KubernetesError: As :meth:`KubeClient.call`; a 400 (container not started, no previous
            instance) or 404 (pod gone) too, which :func:`read_pod_logs` skips.

    """
    lo, hi = as_utc(start, "start"), as_utc(end, "end")
    clock = as_utc(now if now is not None else datetime.now(UTC), "now")
    since = max(1, math.ceil((clock - lo).total_seconds()) + _SINCE_MARGIN_S)
    options: dict[str, Any] = {"container": container, "timestamps": True, "since_seconds": since}
    if previous:
        options["previous"] = True
    if limit_bytes is not None:
        options["limit_bytes"] = limit_bytes
    response = client.call(
        client.core.read_namespaced_pod_log, pod, namespace, _preload_content=False, **options
    )
    try:
        body = response.data
    finally:
        response.release_conn()
    if limit_bytes is not None and len(body) >= limit_bytes:
        _LOG.warning(
            "log of %s/%s container %s%s truncated at %d bytes; later lines are missing (raise limit_bytes)",
            namespace,
            pod,
            container,
            " (previous)" if previous else "",
            limit_bytes,
        )
    lines = parse_timestamped_log(body.decode("utf-8", errors="replace"))
    inside = (lines[TIMESTAMP] > lo) & (lines[TIMESTAMP] <= hi)
    return lines.loc[inside].reset_index(drop=True)


def _ended_in_window(status: Any, lo: pd.Timestamp) -> bool:
    """Whether a container status shows a previous instance that ended at or after ``lo``."""
    if not status.restart_count:
        return False
    terminated = getattr(status.last_state, "terminated", None) if status.last_state else None
    if terminated is None:
        return False
    finished = terminated.finished_at
    return finished is None or as_utc(finished, "finishedAt") >= lo


def _list_pods(
    client: KubeClient, namespaces: Sequence[str], label_selector: str, field_selector: str, limit: int
) -> list[Any]:
    selectors: dict[str, Any] = {}
    if label_selector:
        selectors["label_selector"] = label_selector
    if field_selector:
        selectors["field_selector"] = field_selector
    if not namespaces:
        return client.list_all(client.core.list_pod_for_all_namespaces, limit=limit, **selectors)
    pods: list[Any] = []
    for namespace in namespaces:
        pods += client.list_all(
            client.core.list_namespaced_pod, limit=limit, namespace=namespace, **selectors
        )
    return pods


def read_pod_logs(
    client: KubeClient,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    *,
    cluster: str = "",
    namespaces: Sequence[str] = (),
    label_selector: str = "",
    field_selector: str = "",
    limit: int = 500,
    previous: bool = True,
    init_containers: bool = False,
    now: datetime | None = None,
    limit_bytes: int | None = DEFAULT_LIMIT_BYTES,
) -> pd.DataFrame:
    """Read the container logs of every pod for ``(start, end]`` into the canonical logs table.

    The window is closed on the right, as the step windows of the log features are (a line at
    ``t`` counts in the row at the end of its step window), so consecutive ingests ``(a, b]``,
    ``(b, c]`` count every line once.

    Args:
        client: The API client.
        start: Instant before the window (naive times are UTC), exclusive.
        end: Last instant, inclusive.
        cluster: Value of the ``cluster`` entity key on every row.
        namespaces: Namespaces to read (default: all, with one cluster-wide pod list).
        label_selector: Pod label selector, e.g. ``app.kubernetes.io/part-of=shop``.
        field_selector: Pod field selector, e.g. ``status.phase=Running``.
        limit: Pods per page of the pod list.
        previous: Also read the previous instance of each restarted container whose previous
            instance ended inside the window (crash loops, OOM kills).
        init_containers: Also read init containers.
        now: The current time, from which ``since_seconds`` is counted (default: the clock).
        limit_bytes: Most bytes read per container instance.

    Returns:
        :data:`aiops.schema.LOG_COLUMNS`: one row per line, ``level`` from
        :func:`aiops.log_templates.parse_level`, ``node`` from the pod's ``spec.nodeName``,
        sorted by time (lines of one container keep their order).

    Raises:
        KubernetesError: When the API server is unreachable, refuses the credentials or the
            permission (``list`` pods, ``get`` pods/log); containers that have not started and
            pods deleted while reading are skipped.
        ValueError: When ``end`` is not after ``start``.

    """
    lo, hi = as_utc(start, "start"), as_utc(end, "end")
    if hi <= lo:
        raise ValueError(f"end {end!r} must be after start {start!r}")
    clock = now if now is not None else datetime.now(UTC)
    pods = _list_pods(client, namespaces, label_selector, field_selector, limit)
    frames: list[pd.DataFrame] = []
    reads = 0
    for pod in pods:
        namespace, name = str(pod.metadata.namespace), str(pod.metadata.name)
        node = str(pod.spec.node_name or "")
        started = pod.status.start_time if pod.status is not None else None
        if not node or (started is not None and as_utc(started, "startTime") >= hi):
            continue  # never scheduled, or born after the window: nothing to read
        specs = list(pod.spec.containers or [])
        statuses = list((pod.status.container_statuses if pod.status else None) or [])
        if init_containers:
            specs = list(pod.spec.init_containers or []) + specs
            statuses += list((pod.status.init_container_statuses if pod.status else None) or [])
        by_name = {s.name: s for s in statuses}
        for spec in specs:
            status = by_name.get(spec.name)
            instances = [False]
            if previous and status is not None and _ended_in_window(status, lo):
                instances.insert(0, True)
            for prev in instances:
                reads += 1
                try:
                    lines = read_container_log(
                        client,
                        namespace,
                        name,
                        spec.name,
                        lo,
                        hi,
                        previous=prev,
                        now=clock,
                        limit_bytes=limit_bytes,
                    )
                except KubernetesError as exc:
                    if exc.status not in _SKIPPED_STATUS:
                        raise
                    _LOG.debug(
                        "no log for %s/%s container %s (previous=%s): %s",
                        namespace,
                        name,
                        spec.name,
                        prev,
                        exc,
                    )
                    continue
                if lines.empty:
                    continue
                lines["cluster"], lines["namespace"], lines["pod"] = cluster, namespace, name
                lines["node"], lines["container"] = node, spec.name
                frames.append(lines)
    _LOG.info("read %d container log(s) of %d pod(s) from %s", reads, len(pods), client.host)
    if not frames:
        return _empty_logs()
    logs = pd.concat(frames, ignore_index=True)
    logs["level"] = logs["message"].map(parse_level).astype(object)
    for key in (*ENTITY_KEYS, "container"):
        logs[key] = logs[key].astype(object)
    logs = logs[list(LOG_COLUMNS)]
    return logs.sort_values(TIMESTAMP, kind="stable", ignore_index=True)


def _empty_logs() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in LOG_COLUMNS})
    frame[TIMESTAMP] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame.astype({c: object for c in LOG_COLUMNS if c != TIMESTAMP})
