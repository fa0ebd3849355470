"""Prometheus metrics of the predictor, exposed on KServe's ``/metrics`` (the default registry).

Every series carries ``model_name`` and ``model_version``, so a canary and the stable model
can be compared side by side. The anomaly rate is a ratio of two counters::

    sum by (model_version) (rate(aiops_serving_anomalies_total[5m]))
      / sum by (model_version) (rate(aiops_serving_rows_total[5m]))
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LABELS = ("model_name", "model_version")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Ensemble scores are mean surprises, -log10 of a tail probability: 1 = rarer than 90%.
_SCORE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)

OUTCOMES = ("ok", "client_error", "not_configured", "server_error")


class ServingMetrics:
    """The predictor's metric families, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "aiops_serving_requests",
            "Prediction requests by protocol and outcome (ok, client_error, not_configured, server_error).",
            [*_LABELS, "protocol", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "aiops_serving_request_seconds",
            "Time in the predictor per request (decode, features, score, encode), by protocol.",
            [*_LABELS, "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "aiops_serving_batch_rows",
            "Rows scored per request, by protocol.",
            [*_LABELS, "protocol"],
            buckets=_ROW_BUCKETS,
            registry=registry,
        )
        self.rows = Counter("aiops_serving_rows", "Rows scored.", _LABELS, registry=registry)
        self.anomalies = Counter(
            "aiops_serving_anomalies",
            "Rows flagged as anomalous (score >= threshold).",
            _LABELS,
            registry=registry,
        )
        self.scores = Histogram(
            "aiops_serving_anomaly_score",
            "Ensemble anomaly score of each scored row.",
            _LABELS,
            buckets=_SCORE_BUCKETS,
            registry=registry,
        )
        self.stages = Histogram(
            "aiops_serving_stage_seconds",
            "Time per stage of a request: decode, features (telemetry input), score.<member>, combine, "
            "explain, encode.",
            [*_LABELS, "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.info = Gauge(
            "aiops_serving_model_info",
            "The served model (value 1): its source, threshold, members and which scorer runs each.",
            [*_LABELS, "source", "transform_version", "threshold", "members"],
            registry=registry,
        )


#: Keyed by the registry itself, weakly: an ``id()`` is reused once a registry is collected, and
#: would hand a new registry the families of a dead one.
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, ServingMetrics] = weakref.WeakKeyDictionary()


def serving_metrics(registry: CollectorRegistry | None = None) -> ServingMetrics:
    """The metric families of ``registry`` (the process-wide default one when ``None``), created once."""
    registry = registry if registry is not None else REGISTRY
    if registry not in _BY_REGISTRY:
        _BY_REGISTRY[registry] = ServingMetrics(registry)
    return _BY_REGISTRY[registry]


class ModelMetrics:
    """The series of one served model: label values bound once, cheap to update per request."""

    def __init__(self, families: ServingMetrics, model_name: str, model_version: str) -> None:
        self.families = families
        self.labels = (model_name, model_version)
        self.rows = families.rows.labels(*self.labels)
        self.anomalies = families.anomalies.labels(*self.labels)
        self.scores = families.scores.labels(*self.labels)
        self._latency = {p: families.latency.labels(*self.labels, p) for p in ("v1", "v2")}
        self._batch = {p: families.batch_rows.labels(*self.labels, p) for p in ("v1", "v2")}
        self._requests = {
            (p, o): families.requests.labels(*self.labels, p, o) for p in ("v1", "v2") for o in OUTCOMES
        }
        self._stages: dict[str, Histogram] = {}

    def describe(
        self, source: str, transform_version: str, threshold: float, members: Mapping[str, str]
    ) -> None:
        """Publish ``aiops_serving_model_info``; ``members`` maps member name to scorer (fast/generic)."""
        shown = ",".join(f"{name}:{kind}" for name, kind in members.items())
        self.families.info.labels(*self.labels, source, transform_version, f"{threshold:.6g}", shown).set(1)

    def request(self, protocol: str, outcome: str, seconds: float) -> None:
        """Count one request and its latency."""
        self._requests[(protocol, outcome)].inc()
        self._latency[protocol].observe(seconds)

    def scored(self, protocol: str, score: np.ndarray, is_anomaly: np.ndarray) -> None:
        """Record the rows of one successful request."""
        self._batch[protocol].observe(len(score))
        self.rows.inc(len(score))
        if len(score) == 1:
            # A single row: one observe() beats the bucket counting of observe_many.
            value = float(score[0])
            if bool(is_anomaly[0]):
                self.anomalies.inc()
            if math.isfinite(value):
                self.scores.observe(value)
            return
        self.anomalies.inc(int(is_anomaly.sum()))
        observe_many(self.scores, score[np.isfinite(score)])

    def stages(self, timings: Mapping[str, float]) -> None:
        """Record the time of each stage of one request."""
        for stage, seconds in timings.items():
            child = self._stages.get(stage)
            if child is None:
                child = self._stages[stage] = self.families.stages.labels(*self.labels, stage)
            child.observe(seconds)


def observe_many(child: Histogram, values: np.ndarray) -> None:
    """``child.observe(v)`` for every value of ``values``, counted in one pass.

    A 256-row batch made 256 ``observe`` calls (1.5 ms); this counts the bucket of each
    value with ``searchsorted`` (a value goes to the first bound it is ``<=``, as ``observe``
    decides) and adds each bucket's count and the sum once. It works on the histogram child's
    buckets (``_upper_bounds``, ``_buckets``, ``_sum``, prometheus_client 0.24, pinned); a
    test compares the exposition with per-value ``observe``.
    """
    if not len(values):
        return
    child._raise_if_not_observable()
    bounds = np.asarray(child._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(child._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    child._sum.inc(float(np.sum(values)))
