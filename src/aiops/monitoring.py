"""Run metrics for a Prometheus Pushgateway, the metric names, and the alerting rules' manifest.

Batch steps (a training run, a drift check, the registry gate) live for minutes, too briefly
for Prometheus to scrape them, so they push their results to a Pushgateway, which Prometheus
scrapes with ``honor_labels: true``: the pushed ``job`` (the pipeline) and grouping labels
(``step``) stay on the series. The serving metrics are not pushed: the predictor exposes them
and Prometheus scrapes it; their names are here so that the predictor, the alerting rules
(``serving/monitoring/rules/aiops-alerts.yaml``) and the Grafana dashboard agree.

Semantics of the pushed metrics:

* Every pushed metric is a **gauge holding the latest run's value**. A push replaces the whole
  group (``job`` + grouping key, HTTP PUT), so a group holds exactly what its last push said,
  and a metric a run did not compute disappears rather than showing an older run's value.
  Each step that pushes uses its own group (``grouping_key={"step": ...}``) so that steps do
  not erase each other's metrics.
* **Failures are a gauge, not a counter**: a run cannot know how many runs failed before it
  (the Pushgateway keeps no history, and a pushed counter would read 1 forever). How the last
  run ended lives in one group per pipeline (``step="run"``): the step where a run's work ends
  (registration, or the drift check that keeps the champion) pushes ``aiops_pipeline_success``
  1 with the time, and the pipelines' exit handler (a ``dsl.ExitHandler`` task, which runs
  whether the steps succeeded or not) pushes 0 when KFP reports the run failed. A 0 holds until
  a run succeeds, and the alert fires after it has held for a few minutes. A run that dies
  before its exit handler can push (a cancelled run, a lost node) is caught by
  ``aiops_pipeline_last_run_timestamp_seconds`` growing old.
* Timestamps are Unix seconds, so ``time() - metric`` is an age.

The Pushgateway's address comes from ``AIOPS_PUSHGATEWAY_URL``. Unset means "not configured":
nothing is pushed and the log says so once. Set but unreachable: :func:`push_run_metrics`
raises an error naming the URL, since whoever set it expects the metrics to arrive; the
``report_*`` helpers the pipeline steps call log that error and let the step finish (its work
is done; a monitoring outage must not fail the run or block a retraining).
"""

from __future__ import annotations

import functools
import http.client
import logging
import math
import os
import re
import time
import urllib.error
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PUSHGATEWAY_URL_ENV = "AIOPS_PUSHGATEWAY_URL"

# --------------------------------------------------------------------------- pushed by the pipelines

PIPELINE_DURATION = "aiops_pipeline_duration_seconds"
PIPELINE_ROWS = "aiops_pipeline_rows"
PIPELINE_SUCCESS = "aiops_pipeline_success"
PIPELINE_LAST_RUN = "aiops_pipeline_last_run_timestamp_seconds"
DRIFT_SHARE = "aiops_drift_share"
MODEL_METRIC = "aiops_model_metric"
CHAMPION_PROMOTED = "aiops_champion_promoted_timestamp_seconds"

#: Every metric :func:`push_run_metrics` accepts, with its HELP text.
PUSHED_METRICS: dict[str, str] = {
    PIPELINE_DURATION: "Seconds from the start of the pipeline's last run to the step that pushed it.",
    PIPELINE_ROWS: "Telemetry rows the pipeline's last run processed.",
    PIPELINE_SUCCESS: "1 when the pipeline's last run succeeded, 0 when it failed.",
    PIPELINE_LAST_RUN: "Unix time the pipeline's last run finished, succeeded or not.",
    DRIFT_SHARE: "Share of the model's input signals that drifted in the last drift check.",
    MODEL_METRIC: "A model version's evaluation metric on held-out data (label metric: its name).",
    CHAMPION_PROMOTED: "Unix time the model's current champion version was promoted.",
}

# --------------------------------------------------------------------------- exposed by the predictor

# The predictor (serving/metrics.py) defines these families; the library does not import
# serving, so the names the rules and the dashboard read are repeated here.
SERVING_REQUESTS = "aiops_serving_requests_total"
SERVING_REQUEST_SECONDS = "aiops_serving_request_seconds"
SERVING_BATCH_ROWS = "aiops_serving_batch_rows"
SERVING_ROWS = "aiops_serving_rows_total"
SERVING_ANOMALIES = "aiops_serving_anomalies_total"
SERVING_ANOMALY_SCORE = "aiops_serving_anomaly_score"
SERVING_STAGE_SECONDS = "aiops_serving_stage_seconds"
SERVING_MODEL_INFO = "aiops_serving_model_info"
#: The ``outcome`` of ``aiops_serving_requests_total`` that counts as an error of the service.
SERVING_ERROR_OUTCOME = "server_error"

#: The predictor's series and their labels; histograms also have ``_bucket{le}``, ``_sum``, ``_count``.
SERVING_METRICS: dict[str, tuple[str, ...]] = {
    SERVING_REQUESTS: ("model_name", "model_version", "protocol", "outcome"),
    SERVING_REQUEST_SECONDS: ("model_name", "model_version", "protocol"),
    SERVING_BATCH_ROWS: ("model_name", "model_version", "protocol"),
    SERVING_ROWS: ("model_name", "model_version"),
    SERVING_ANOMALIES: ("model_name", "model_version"),
    SERVING_ANOMALY_SCORE: ("model_name", "model_version"),
    SERVING_STAGE_SECONDS: ("model_name", "model_version", "stage"),
    SERVING_MODEL_INFO: (
        "model_name",
        "model_version",
        "source",
        "transform_version",
        "threshold",
        "members",
    ),
}
SERVING_HISTOGRAMS = frozenset(
    {SERVING_REQUEST_SECONDS, SERVING_BATCH_ROWS, SERVING_ANOMALY_SCORE, SERVING_STAGE_SECONDS}
)


def metric_names() -> set[str]:
    """Every series name the project's metrics produce (pushed, and the predictor's incl. histogram parts)."""
    serving = {
        f"{name}{suffix}"
        for name in SERVING_METRICS
        for suffix in (("_bucket", "_sum", "_count") if name in SERVING_HISTOGRAMS else ("",))
    }
    return set(PUSHED_METRICS) | serving


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class PushgatewayError(RuntimeError):
    """The Pushgateway at the configured URL could not be reached or refused the push."""


@dataclass(frozen=True)
class Sample:
    """One value of one pushed metric, with its labels."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def run_outcome_samples(succeeded: bool, finished_at: float | None = None) -> list[Sample]:
    """How a pipeline run ended: pushed by the pipeline's exit handler, whatever happened inside.

    Args:
        succeeded: Whether the run succeeded.
        finished_at: Unix time it finished; now by default.
    """
    return [
        Sample(PIPELINE_SUCCESS, 1.0 if succeeded else 0.0),
        Sample(PIPELINE_LAST_RUN, time.time() if finished_at is None else float(finished_at)),
    ]


def run_size_samples(duration_s: float, rows: int | None = None) -> list[Sample]:
    """How long a run took to reach the step that pushes this, and how many telemetry rows it read."""
    samples = [Sample(PIPELINE_DURATION, float(duration_s))]
    if rows is not None:
        samples.append(Sample(PIPELINE_ROWS, float(rows)))
    return samples


def model_metric_samples(
    model: str, version: str, metrics: Mapping[str, float], alias: str = ""
) -> list[Sample]:
    """``aiops_model_metric{model, version, alias, metric}`` samples, one per metric."""
    labels = {"model": model, "version": str(version), "alias": alias}
    return [Sample(MODEL_METRIC, value, {**labels, "metric": name}) for name, value in metrics.items()]


def champion_sample(model: str, version: str, promoted_at: float) -> Sample:
    """``aiops_champion_promoted_timestamp_seconds{model, version}``: when the champion was promoted."""
    return Sample(CHAMPION_PROMOTED, float(promoted_at), {"model": model, "version": str(version)})


def pushgateway_url(url: str | None = None) -> str | None:
    """``url`` if given, else ``AIOPS_PUSHGATEWAY_URL``; ``None`` when neither is set."""
    resolved = (url if url is not None else os.environ.get(PUSHGATEWAY_URL_ENV, "")).strip()
    return resolved or None


@functools.cache
def _say_not_configured() -> None:
    logger.info("%s is not set: run metrics are not pushed to a Pushgateway", PUSHGATEWAY_URL_ENV)


def _samples(metrics: Mapping[str, float] | Iterable[Sample], labels: Mapping[str, str]) -> list[Sample]:
    items = (
        [Sample(name, value) for name, value in metrics.items()]
        if isinstance(metrics, Mapping)
        else list(metrics)
    )
    return [Sample(s.name, s.value, {**labels, **s.labels}) for s in items]


def _registry(samples: list[Sample], reserved: set[str]) -> Any:
    """A registry of gauges holding ``samples``; rejects what Prometheus or the dashboards cannot use."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges: dict[str, Any] = {}
    label_names: dict[str, tuple[str, ...]] = {}
    skipped = []
    for sample in samples:
        if sample.name not in PUSHED_METRICS:
            raise ValueError(
                f"unknown metric '{sample.name}'; push one of {sorted(PUSHED_METRICS)} "
                f"(add new ones to aiops.monitoring.PUSHED_METRICS, so rules and dashboards can rely on them)"
            )
        names = tuple(sorted(sample.labels))
        for label in names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name '{label}' on {sample.name}")
            if label in reserved:
                raise ValueError(
                    f"label '{label}' on {sample.name} is part of the grouping key {sorted(reserved)}; "
                    f"the Pushgateway sets it from the key"
                )
        expected = label_names.setdefault(sample.name, names)
        if names != expected:
            raise ValueError(
                f"{sample.name} pushed with labels {list(names)} and {list(expected)}; "
                f"every sample of a metric needs the same label names"
            )
        value = float(sample.value)
        if not math.isfinite(value):
            # NaN F1 on a window without events: no value, not a fake one. Checked before the
            # gauge exists: a gauge without labels would be pushed with its default, 0.
            skipped.append(sample.name)
            continue
        if sample.name not in gauges:
            gauges[sample.name] = Gauge(sample.name, PUSHED_METRICS[sample.name], names, registry=registry)
        gauge = gauges[sample.name]
        (gauge.labels(**sample.labels) if names else gauge).set(value)
    if skipped:
        logger.info("not pushing non-finite values of %s", ", ".join(sorted(set(skipped))))
    return registry


def push_run_metrics(
    job: str,
    metrics: Mapping[str, float] | Iterable[Sample],
    labels: Mapping[str, str] | None = None,
    url: str | None = None,
    grouping_key: Mapping[str, str] | None = None,
    *,
    timeout: float = 10.0,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> bool:
    """Push one run's metrics to the Pushgateway, replacing the group's previous values.

    Args:
        job: The pushing pipeline, e.g. ``aiops-training``; the series' ``job`` label.
        metrics: Metric name -> value (names from :data:`PUSHED_METRICS`), or :class:`Sample`
            objects when a metric needs its own labels (see :func:`model_metric_samples`).
        labels: Labels added to every sample.
        url: The Pushgateway; ``AIOPS_PUSHGATEWAY_URL`` by default.
        grouping_key: Labels beside ``job`` that name the group this push replaces; give each
            pushing step its own, e.g. ``{"step": "register"}``.
        timeout: Seconds per HTTP request.
        attempts: Tries on connection errors, timeouts and 5xx answers (not on 4xx).
        backoff_s: Wait before the second try, doubled for each further one.

    Returns:
        True when pushed; False when no Pushgateway is configured.

    Raises:
        ValueError: An unknown metric, an invalid label, or labels that differ between samples
            of one metric.
        PushgatewayError: The Pushgateway could not be reached or refused the push.
    """
    from prometheus_client import push_to_gateway

    if not job:
        raise ValueError("job must name the pushing pipeline, e.g. 'aiops-training'")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    key = {str(k): str(v) for k, v in (grouping_key or {}).items()}
    registry = _registry(_samples(metrics, labels or {}), reserved={"job", *key})
    target = pushgateway_url(url)
    if target is None:
        _say_not_configured()
        return False
    reason, attempt = "", 0
    for attempt in range(1, attempts + 1):
        try:
            push_to_gateway(target, job, registry, grouping_key=key, timeout=timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace").strip()[:500]
            reason = f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")
            if exc.code in (404, 405):
                reason += f" (is {target} a Pushgateway? it should accept PUT /metrics/job/<job>)"
            if exc.code < 500:
                break
        except OSError as exc:  # refused, unresolvable, timed out
            reason = str(getattr(exc, "reason", exc))
        except (http.client.HTTPException, ValueError) as exc:  # not an HTTP server, a malformed URL
            reason = f"{type(exc).__name__}: {exc}"
            break
        else:
            logger.debug("pushed run metrics of job %s (group %s) to %s", job, key, target)
            return True
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    tries = f" after {attempt} attempts" if attempt > 1 else ""
    raise PushgatewayError(
        f"could not push run metrics of job '{job}' to the Pushgateway at {target}{tries}: {reason}; "
        f"check the URL ({PUSHGATEWAY_URL_ENV}), or unset it to not push"
    )


# --------------------------------------------------------------------------- alerting rules

THRESHOLD_PREFIX = "aiops:threshold:"
_VECTOR = re.compile(r"^\s*vector\(\s*([-+0-9.eE]+)\s*\)\s*$")


def load_rule_groups(path: str | Path) -> dict[str, Any]:
    """A Prometheus rule file (``groups: [...]``) as a dict.

    Raises:
        ValueError: When the file is not a rule file.
    """
    import yaml

    content = yaml.safe_load(Path(path).read_text())
    if not isinstance(content, dict) or not isinstance(content.get("groups"), list):
        raise ValueError(f"{path} is not a Prometheus rule file: expected a top-level 'groups:' list")
    return content


def rule_thresholds(rules: Mapping[str, Any]) -> dict[str, float]:
    """The thresholds the rules define: ``aiops:threshold:<name>`` recorded as ``vector(<number>)``."""
    out = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record", "")
            if name.startswith(THRESHOLD_PREFIX):
                match = _VECTOR.match(str(rule["expr"]))
                if match is None:
                    raise ValueError(
                        f"threshold {name} must be recorded as vector(<number>), got {rule['expr']!r}"
                    )
                out[name.removeprefix(THRESHOLD_PREFIX)] = float(match.group(1))
    return out


def prometheus_rule(
    rules: Mapping[str, Any],
    name: str = "aiops-selfheal",
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PrometheusRule holding the rule file's groups.

    Args:
        rules: The rule file's content (:func:`load_rule_groups`).
        name: The object's name.
        namespace: Its namespace; omitted by default (``oc apply -n ...`` decides).
        labels: Extra labels, e.g. what the platform's ``ruleSelector`` matches.
        thresholds: Overrides of the rules' thresholds by name (``champion_max_age_seconds``,
            see :func:`rule_thresholds`).

    Raises:
        ValueError: When a threshold override names no threshold of the rules.
    """
    import copy

    unknown = sorted(set(thresholds or {}) - set(rule_thresholds(rules)))
    if unknown:
        raise ValueError(f"unknown threshold(s) {unknown}; the rules define {sorted(rule_thresholds(rules))}")
    overrides = {THRESHOLD_PREFIX + k: float(v) for k, v in (thresholds or {}).items()}
    groups = copy.deepcopy(list(rules["groups"]))
    for group in groups:
        for rule in group["rules"]:
            if rule.get("record") in overrides:
                rule["expr"] = f"vector({overrides[rule['record']]!r})"
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "aiops-selfheal", "app.kubernetes.io/component": "monitoring"}
        | dict(labels or {}),
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": groups},
    }


def render_prometheus_rule(manifest: Mapping[str, Any], source: str = "") -> str:
    """``manifest`` as YAML, multi-line expressions as literal blocks, with a generated-from header."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    header = (
        f"# Generated from {source} by aiops.monitoring.prometheus_rule; do not edit.\n" if source else ""
    )
    return header + yaml.dump(dict(manifest), Dumper=_Dumper, sort_keys=False, width=110)


def write_prometheus_rule(rules_path: str | Path, out_path: str | Path, **kwargs: Any) -> Path:
    """Build the PrometheusRule from the rule file at ``rules_path`` and write it to ``out_path``.

    ``kwargs`` go to :func:`prometheus_rule`.
    """
    rules_path, out_path = Path(rules_path), Path(out_path)
    manifest = prometheus_rule(load_rule_groups(rules_path), **kwargs)
    try:
        source = str(rules_path.resolve().relative_to(out_path.resolve().parent))
    except ValueError:
        source = rules_path.name
    out_path.write_text(render_prometheus_rule(manifest, source=source))
    return out_path


# --------------------------------------------------------------------------- what the pipeline steps push

_PUSHED_MODEL_METRICS = ("event_f1", "event_precision", "event_recall", "point_f1", "point_precision")


def seconds_since(started_at: str) -> float:
    """Seconds since an ISO 8601 instant; NaN (left out of the push) when it cannot be parsed.

    The pipelines pass the time their ingest step started; anything unparseable means no
    duration is pushed rather than a wrong one.
    """
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return float("nan")
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return time.time() - started.timestamp()


#: The Pushgateway group (``step`` label) that holds how each pipeline's last run ended.
RUN_GROUP = "run"


def _push_from_step(job: str, what: str, samples: Iterable[Sample], step: str) -> bool:
    """Push for a pipeline step; a Pushgateway that fails is logged as an error, not raised.

    The step's work is done when it reports: a monitoring outage must not fail a run whose
    model was registered, nor stop a retraining the drift check asked for. What was not pushed
    is named in the log, and the alert on runs gone missing fires if pushes keep failing.
    """
    try:
        return push_run_metrics(job, samples, grouping_key={"step": step})
    except PushgatewayError as exc:
        logger.error("%s NOT pushed (the step goes on): %s", what, exc)
        return False


def report_registration(
    job: str,
    model: str,
    version: str,
    metrics: Mapping[str, float],
    promoted: bool,
    rows: int,
    started_at: str = "",
) -> bool:
    """Push what the register step knows about its run.

    That is: the run got through (:func:`report_run_success`: registration is where a training
    run's work ends, a canary aside), the new version's test metrics, and the promotion time
    when the gate promoted it (the champion-age alert reads it). The promotion time goes to a
    group of its own (:func:`report_champion`): a push replaces its whole group, so a run that
    keeps the champion would otherwise erase the time the alert needs.
    """
    pushed = report_run_success(job, seconds_since(started_at), rows)
    samples = model_metric_samples(
        model,
        version,
        {k: float(v) for k, v in metrics.items() if k in _PUSHED_MODEL_METRICS},
        alias="challenger",
    )
    pushed = _push_from_step(job, f"test metrics of {model} v{version}", samples, "register") and pushed
    if promoted:
        pushed = report_champion(job, model, version) and pushed
    return pushed


def report_run_success(job: str, duration_s: float, rows: int | None = None) -> bool:
    """Push that a run got through its work: success 1, the time, its duration and rows.

    Called by the step where a run's work ends (registration, or the drift check that keeps
    the champion). It replaces the ``step="run"`` group, so a failure pushed by an earlier
    run's exit handler (:func:`report_run_failure`) resolves.
    """
    samples = [*run_outcome_samples(True), *run_size_samples(duration_s, rows)]
    return _push_from_step(job, f"the success of this {job} run", samples, RUN_GROUP)


def report_run_failure(job: str) -> bool:
    """Push that a run failed (success 0 and the time), from the pipelines' exit handler.

    The 0 replaces the ``step="run"`` group and holds until a run succeeds;
    ``AiopsPipelineRunFailed`` fires on it.
    """
    return _push_from_step(job, f"the failure of this {job} run", run_outcome_samples(False), RUN_GROUP)


def report_champion(job: str, model: str, version: str, step: str = "champion") -> bool:
    """Push that ``version`` became the champion of ``model`` now, in its own group.

    Only a new champion replaces the group, so the time stays until the champion changes again.
    """
    sample = champion_sample(model, version, time.time())
    return _push_from_step(job, f"the promotion time of {model} v{version}", [sample], step)


def report_drift_share(job: str, share: float) -> bool:
    """Push the drift check's drift share (its own group, ``step="check-drift"``)."""
    return _push_from_step(job, "the drift share", [Sample(DRIFT_SHARE, float(share))], "check-drift")
