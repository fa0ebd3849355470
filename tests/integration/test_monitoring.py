"""Run metrics through a real Pushgateway into a real Prometheus; the alerting rules; the dashboard.

The module starts Debian's ``prometheus-pushgateway`` and a ``prometheus`` that scrapes it every
second with ``honor_labels: true`` and evaluates ``serving/monitoring/rules/aiops-alerts.yaml``
every second, both on free ports of 127.0.0.1. Metrics pushed with ``aiops.monitoring`` must
come out of Prometheus with their labels, and must trigger the alerts written for them. The
rules themselves are checked and unit-tested with ``promtool``; every panel query of the Grafana
dashboard must run on that Prometheus.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiops import monitoring
from aiops.localprom import free_port
from aiops.monitoring import (
    CHAMPION_PROMOTED,
    DRIFT_SHARE,
    MODEL_METRIC,
    PIPELINE_DURATION,
    PIPELINE_LAST_RUN,
    PIPELINE_ROWS,
    PIPELINE_SUCCESS,
    PUSHED_METRICS,
    PUSHGATEWAY_URL_ENV,
    SERVING_ERROR_OUTCOME,
    SERVING_HISTOGRAMS,
    SERVING_METRICS,
    PushgatewayError,
    Sample,
    champion_sample,
    load_rule_groups,
    metric_names,
    model_metric_samples,
    prometheus_rule,
    push_run_metrics,
    rule_thresholds,
    run_outcome_samples,
    run_size_samples,
)
from tests.conftest import need_binary

MONITORING = Path(__file__).resolve().parents[2] / "serving" / "monitoring"
RULES = MONITORING / "rules" / "aiops-alerts.yaml"
RULE_TESTS = sorted((MONITORING / "rules" / "tests").glob("*.test.yaml"))
MANIFEST = MONITORING / "prometheus-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
DAY = 86400.0


@dataclass(frozen=True)
class Stack:
    """A Pushgateway and a Prometheus that scrapes it and evaluates the aiops rules."""

    pushgateway: str
    prometheus: str


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _server(args: list[str], url: str, log: Path) -> Iterator[None]:
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = need_binary("prometheus", "prometheus")
    pushgateway = need_binary("prometheus-pushgateway", "prometheus-pushgateway")
    workdir = tmp_path_factory.mktemp("monitoring")
    gateway_address = f"127.0.0.1:{free_port()}"
    prometheus_address = f"127.0.0.1:{free_port()}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,  # keep the pushed job and step, as a ServiceMonitor must
                "static_configs": [{"targets": [gateway_address]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    gateway_args = [
        pushgateway,
        f"--web.listen-address={gateway_address}",
        "--persistence.file=",  # in memory only
    ]
    prometheus_args = [
        prometheus,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={prometheus_address}",
    ]
    gateway_url, prometheus_url = f"http://{gateway_address}", f"http://{prometheus_address}"
    with (
        _server(gateway_args, gateway_url, workdir / "pushgateway.log"),
        _server(prometheus_args, prometheus_url, workdir / "prometheus.log"),
    ):
        yield Stack(gateway_url, prometheus_url)


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The instant-query result of ``expr``; raises with Prometheus' message when it is rejected."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {expr!r}: {body.get('error')}")
    return body["data"]["result"]


def _eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """``check()`` once it returns something truthy (scrapes and rule evaluations run every second)."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {timeout_s}s")
        time.sleep(0.2)
    return result


def _series(prometheus: str, selector: str) -> dict[tuple, float]:
    """``{(name, sorted label items without __name__): value}`` of the series ``selector`` selects."""
    out = {}
    for item in _query(prometheus, selector):
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        out[(name, tuple(sorted(labels.items())))] = float(item["value"][1])
    return out


# --------------------------------------------------------------------------- pushing


@pytest.mark.integration
def test_pushed_run_metrics_reach_prometheus_with_their_labels(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PUSHGATEWAY_URL_ENV, stack.pushgateway)
    finished = 1_760_000_000.25
    run = [*run_outcome_samples(True, finished_at=finished), *run_size_samples(123.5, rows=46124)]
    assert push_run_metrics("t-labels", run, grouping_key={"step": "run"})
    register = [
        *model_metric_samples("det", "7", {"event_f1": 0.6, "event_recall": math.nan}, alias="champion"),
        champion_sample("det", "7", promoted_at=finished - 3600),
    ]
    assert push_run_metrics("t-labels", register, grouping_key={"step": "register"})
    assert push_run_metrics(
        "t-labels", {DRIFT_SHARE: 0.25}, labels={"window": "1D"}, grouping_key={"step": "drift"}
    )

    run_labels = (("job", "t-labels"), ("step", "run"))
    champion = {"job": "t-labels", "step": "register", "model": "det", "version": "7"}
    expected = {
        (PIPELINE_SUCCESS, run_labels): 1.0,
        (PIPELINE_DURATION, run_labels): 123.5,
        (PIPELINE_ROWS, run_labels): 46124.0,
        (PIPELINE_LAST_RUN, run_labels): finished,
        # NaN recall (no events in the window) is left out, not pushed as a number.
        (MODEL_METRIC, tuple(sorted({**champion, "alias": "champion", "metric": "event_f1"}.items()))): 0.6,
        (CHAMPION_PROMOTED, tuple(sorted(champion.items()))): finished - 3600,
        (DRIFT_SHARE, (("job", "t-labels"), ("step", "drift"), ("window", "1D"))): 0.25,
    }
    names = "|".join(PUSHED_METRICS)

    def pushed() -> dict | None:
        found = _series(stack.prometheus, f'{{__name__=~"{names}", job="t-labels"}}')
        return found if len(found) >= len(expected) else None

    got = _eventually(pushed)
    assert got == expected


@pytest.mark.integration
def test_a_push_replaces_its_group_and_only_its_group(stack: Stack) -> None:
    url = stack.pushgateway
    push_run_metrics("t-replace", {DRIFT_SHARE: 0.1}, url=url, grouping_key={"step": "drift"})
    push_run_metrics(
        "t-replace",
        model_metric_samples("det", "1", {"event_f1": 0.5}),
        url=url,
        grouping_key={"step": "register"},
    )
    selector = f'{{__name__=~"{MODEL_METRIC}|{DRIFT_SHARE}", job="t-replace"}}'
    _eventually(lambda: len(_series(stack.prometheus, selector)) == 2)
    push_run_metrics(
        "t-replace",
        model_metric_samples("det", "2", {"event_f1": 0.7}),
        url=url,
        grouping_key={"step": "register"},
    )

    def replaced() -> dict | None:
        found = _series(stack.prometheus, selector)
        return found if {dict(labels).get("version") for _, labels in found} == {None, "2"} else None

    got = _eventually(replaced)
    assert sorted(got.values()) == [0.1, 0.7], "the drift step's group must survive the register step's push"


@pytest.mark.integration
def test_pushed_results_trigger_the_alerts_written_for_them(stack: Stack) -> None:
    """The rules' selectors match what the client pushes (job, step, model labels)."""
    url, now = stack.pushgateway, time.time()
    push_run_metrics(
        "t-alerts",
        run_outcome_samples(False, finished_at=now - 3 * DAY),
        url=url,
        grouping_key={"step": "run"},
    )
    push_run_metrics("t-alerts", {DRIFT_SHARE: 0.8}, url=url, grouping_key={"step": "drift"})
    push_run_metrics(
        "t-alerts",
        [champion_sample("t-alerts-model", "3", now - 20 * DAY)],
        url=url,
        grouping_key={"step": "register"},
    )
    expected = {
        ("AiopsPipelineRunFailed", "pending", "t-alerts", ""),  # `for: 5m`
        ("AiopsPipelineNotRunning", "pending", "t-alerts", ""),
        # No `for`: the pushed value holds until the next drift check.
        ("AiopsDriftShareHigh", "firing", "t-alerts", ""),
        ("AiopsChampionTooOld", "pending", "", "t-alerts-model"),
    }

    def alerts() -> set[tuple[str, str, str, str]] | None:
        found = {
            (a["alertname"], a["alertstate"], a.get("job", ""), a.get("model", ""))
            for a in (item["metric"] for item in _query(stack.prometheus, "ALERTS"))
            if a.get("job") == "t-alerts" or a.get("model") == "t-alerts-model"
        }
        return found if found >= expected else None

    assert _eventually(alerts) == expected


def test_unreachable_pushgateway_is_an_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PushgatewayError, match=rf"Pushgateway at {re.escape(url)} after 2 attempts: .*refused"
    ):
        push_run_metrics("t", {PIPELINE_SUCCESS: 1}, url=url, attempts=2, backoff_s=0.01)


def test_a_peer_that_does_not_speak_http_is_an_error_naming_the_url() -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def ssh_banner() -> None:
        connection, _ = server.accept()
        request = b""
        while b"\r\n\r\n" not in request:  # the whole request, then an answer that is not HTTP
            request += connection.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += connection.recv(65536)
        connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        connection.close()

    threading.Thread(target=ssh_banner, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    with pytest.raises(PushgatewayError, match=rf"at {re.escape(url)}: BadStatusLine"):
        push_run_metrics("t", {PIPELINE_SUCCESS: 1}, url=url, attempts=1)
    server.close()
    with pytest.raises(PushgatewayError, match="InvalidURL"):
        push_run_metrics("t", {PIPELINE_SUCCESS: 1}, url="http://127.0.0.1:notaport", attempts=1)


def test_a_step_whose_pushgateway_fails_logs_it_and_goes_on(monkeypatch, caplog) -> None:
    """Monitoring must not fail a run whose work is done, nor stop a retraining drift asked for."""
    from aiops.monitoring import report_drift_share, report_registration, report_run_failure

    monkeypatch.setenv("AIOPS_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with caplog.at_level(logging.ERROR, logger="aiops.monitoring"):
        assert report_registration("t", "det", "7", {"event_f1": 0.9}, promoted=True, rows=10) is False
        assert report_drift_share("t", 0.8) is False
        assert report_run_failure("t") is False
    said = caplog.text
    for what in ("the success of this t run", "test metrics of det v7", "the promotion time of det v7"):
        assert f"{what} NOT pushed (the step goes on)" in said
    assert "the drift share NOT pushed" in said and "the failure of this t run NOT pushed" in said


def test_a_value_without_a_number_is_left_out_not_pushed_as_zero() -> None:
    from prometheus_client import generate_latest

    from aiops.monitoring import _registry

    registry = _registry([Sample(PIPELINE_SUCCESS, 1.0), Sample(DRIFT_SHARE, float("nan"))], reserved={"job"})
    text = generate_latest(registry).decode()
    assert PIPELINE_SUCCESS in text and DRIFT_SHARE not in text


@pytest.mark.integration
def test_a_url_that_is_not_a_pushgateway_is_refused_without_retries(stack: Stack) -> None:
    url = stack.prometheus  # a classic mix-up
    with pytest.raises(
        PushgatewayError, match=rf"at {re.escape(url)}: HTTP 40[45].*is {re.escape(url)} a Pushgateway"
    ):
        push_run_metrics("t", {PIPELINE_SUCCESS: 1}, url=url, attempts=3, backoff_s=10)


def test_without_a_pushgateway_nothing_is_pushed_and_the_log_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(PUSHGATEWAY_URL_ENV, raising=False)
    monitoring._say_not_configured.cache_clear()
    with caplog.at_level(logging.INFO, logger="aiops.monitoring"):
        assert push_run_metrics("t", {PIPELINE_SUCCESS: 1}) is False
        assert push_run_metrics("t", {DRIFT_SHARE: 0.1}, url="  ") is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{PUSHGATEWAY_URL_ENV} is not set: run metrics are not pushed to a Pushgateway"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"aiops_pipeline_sucess": 1}}, "unknown metric 'aiops_pipeline_sucess'; push one of"),
        (
            {"metrics": {DRIFT_SHARE: 0.1}, "labels": {"job": "x"}},
            "label 'job' .* is part of the grouping key",
        ),
        (
            {"metrics": {DRIFT_SHARE: 0.1}, "labels": {"step": "x"}, "grouping_key": {"step": "drift"}},
            "label 'step' .* is part of the grouping key",
        ),
        ({"metrics": {DRIFT_SHARE: 0.1}, "labels": {"bad-name": "x"}}, "invalid label name 'bad-name'"),
        (
            {
                "metrics": [
                    Sample(MODEL_METRIC, 0.5, {"metric": "f1"}),
                    Sample(MODEL_METRIC, 0.5, {"model": "m"}),
                ]
            },
            "aiops_model_metric pushed with labels .* every sample of a metric needs the same label names",
        ),
        ({"job": "", "metrics": {DRIFT_SHARE: 0.1}}, "job must name the pushing pipeline"),
    ],
)
def test_malformed_metrics_are_rejected_even_without_a_pushgateway(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, message: str
) -> None:
    monkeypatch.delenv(PUSHGATEWAY_URL_ENV, raising=False)
    with pytest.raises(ValueError, match=message):
        push_run_metrics(**{"job": "t", **kwargs})


# --------------------------------------------------------------------------- alerting rules


def _promtool() -> str:
    return need_binary("promtool", "prometheus")


@pytest.mark.integration
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("tests", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests_pass(tests: Path) -> None:
    result = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _alerts(rules: dict) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    rules = load_rule_groups(RULES)
    assert _alerts(rules) == {
        "AiopsServingLatencyHigh",
        "AiopsServingErrorRateHigh",
        "AiopsAnomalyRateOutOfBand",
        "AiopsDriftShareHigh",
        "AiopsChampionTooOld",
        "AiopsPipelineRunFailed",
        "AiopsPipelineNotRunning",
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["group_eval_order"] == [g["name"] for g in rules["groups"]], path.name
        for case in (c for test in spec["tests"] for c in test.get("alert_rule_test", [])):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert _alerts(rules) - firing == set(), "alerts without a firing case"
    assert _alerts(rules) - quiet == set(), "alerts without a not-firing case"


def test_manifest_is_the_rule_file_wrapped_in_a_prometheusrule() -> None:
    rules = load_rule_groups(RULES)
    committed = yaml.safe_load(MANIFEST.read_text())
    regenerate = (
        '.venv/bin/python -c "from aiops.monitoring import write_prometheus_rule; write_prometheus_rule('
        "'serving/monitoring/rules/aiops-alerts.yaml', 'serving/monitoring/prometheus-rules.yaml')\""
    )
    assert committed == prometheus_rule(rules), f"stale manifest; regenerate it with {regenerate}"
    assert committed["apiVersion"] == "monitoring.coreos.com/v1" and committed["kind"] == "PrometheusRule"
    assert committed["spec"]["groups"] == rules["groups"]


@pytest.mark.integration
def test_threshold_overrides_change_only_that_threshold(tmp_path: Path) -> None:
    rules = load_rule_groups(RULES)
    assert rule_thresholds(rules)["champion_max_age_seconds"] == 14 * DAY
    manifest = prometheus_rule(rules, namespace="aiops", thresholds={"champion_max_age_seconds": 7 * DAY})
    assert manifest["metadata"]["namespace"] == "aiops"
    changed = {"groups": manifest["spec"]["groups"]}
    assert rule_thresholds(changed) == {**rule_thresholds(rules), "champion_max_age_seconds": 7 * DAY}
    assert [r for g in changed["groups"] for r in g["rules"] if "vector(" not in str(r["expr"])] == [
        r for g in rules["groups"] for r in g["rules"] if "vector(" not in str(r["expr"])
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(changed))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True
    )
    assert result.returncode == 0, result.stdout
    with pytest.raises(ValueError, match=r"unknown threshold\(s\) \['champion_age'\]; the rules define \["):
        prometheus_rule(rules, thresholds={"champion_age": 1.0})


# --------------------------------------------------------------------------- names and the dashboard


@functools.cache
def _known_names() -> frozenset[str]:
    recorded = {r["record"] for g in load_rule_groups(RULES)["groups"] for r in g["rules"] if "record" in r}
    return frozenset(metric_names() | recorded)


def _aiops_names(expr: str) -> set[str]:
    """Metric and recording-rule names in ``expr`` (string literals removed)."""
    return set(re.findall(r"\baiops[a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', '""', expr)))


def _panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_serving_names_are_what_the_predictor_exposes() -> None:
    """aiops.monitoring repeats the predictor's names (the library does not import serving)."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    import serving.metrics as serving_metrics

    registry = CollectorRegistry()
    model = serving_metrics.ModelMetrics(serving_metrics.serving_metrics(registry), "det", "1")
    model.describe("s3://models/det/1", "1", 0.5, {"iforest": "fast"})
    model.request("v2", SERVING_ERROR_OUTCOME, 0.01)
    model.scored("v2", np.array([1.0, 3.0]), np.array([False, True]))
    model.stages({"score": 0.001})
    exposed: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                exposed.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    expected = {
        name: set(labels)
        for metric, labels in SERVING_METRICS.items()
        for name in (metric_names() & {metric, f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"})
    }
    assert exposed == expected
    assert SERVING_ERROR_OUTCOME in serving_metrics.OUTCOMES


def test_rules_use_only_known_metric_names() -> None:
    exprs = [str(r["expr"]) for g in load_rule_groups(RULES)["groups"] for r in g["rules"]]
    used = set().union(*map(_aiops_names, exprs))
    assert used - _known_names() == set()


def test_dashboard_panels_query_known_metrics_and_cover_model_and_healing_health() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    queries = _panel_queries(dashboard)
    for title, expr in queries:
        names = _aiops_names(expr)
        assert names or expr.startswith("ALERTS"), f"panel '{title}' queries no aiops metric: {expr}"
        assert names <= _known_names(), f"panel '{title}' queries unknown {sorted(names - _known_names())}"
    used = set().union(*(_aiops_names(expr) for _, expr in queries))
    must_show = {
        *(f"{name}_bucket" if name in SERVING_HISTOGRAMS else name for name in SERVING_METRICS),
        DRIFT_SHARE,
        PIPELINE_SUCCESS,
        PIPELINE_DURATION,
        PIPELINE_LAST_RUN,
        CHAMPION_PROMOTED,
        MODEL_METRIC,
        "aiops:serving_anomaly_ratio:rate1h",
    }
    assert must_show - used == set()
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "model_version")
    assert _aiops_names(variable["definition"]) <= _known_names()


@pytest.mark.integration
def test_dashboard_queries_run_on_prometheus(stack: Stack) -> None:
    # What Grafana would substitute for its variables.
    grafana = {"$model_version": ".*", "$__rate_interval": "1m"}
    for title, expr in _panel_queries(json.loads(DASHBOARD.read_text())):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel '{title}' uses a variable the test does not know: {expr}"
        _query(stack.prometheus, expr)  # raises with Prometheus' parse error


@pytest.mark.integration
def test_register_step_outcome_reaches_prometheus(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pipeline's register step pushes, read back from Prometheus scraping the Pushgateway."""
    from aiops.monitoring import report_registration

    monkeypatch.setenv(PUSHGATEWAY_URL_ENV, stack.pushgateway)
    started = "2026-01-01T00:00:00Z"
    metrics = {"event_f1": 0.8, "event_precision": 0.9, "windows": 12.0}  # windows is not pushed
    assert report_registration(
        "t-register", "det", "3", metrics, promoted=True, rows=1234, started_at=started
    )

    def pushed() -> dict | None:
        found = _series(stack.prometheus, '{job="t-register"}')
        names = {name for name, _ in found}
        return found if {PIPELINE_SUCCESS, MODEL_METRIC, CHAMPION_PROMOTED} <= names else None

    found = _eventually(pushed)
    got = {(name, dict(labels).get("metric", "")): value for (name, labels), value in found.items()}
    # the run got through: its outcome goes to the group of the run, where a failure would go
    run = {name: dict(labels)["step"] for (name, labels) in found if name.startswith("aiops_pipeline")}
    outcome = (PIPELINE_SUCCESS, PIPELINE_LAST_RUN, PIPELINE_DURATION, PIPELINE_ROWS)
    assert run == dict.fromkeys(outcome, "run")
    assert got[(PIPELINE_SUCCESS, "")] == 1.0 and got[(PIPELINE_ROWS, "")] == 1234.0
    assert got[(PIPELINE_DURATION, "")] > 0  # seconds since the (cluster-provided) pipeline start
    assert got[(MODEL_METRIC, "event_f1")] == 0.8 and (MODEL_METRIC, "windows") not in got
    assert got[(CHAMPION_PROMOTED, "")] > 1.7e9
    # a later run that keeps the champion replaces the register group, not the champion's time
    assert report_registration("t-register", "det", "5", metrics, promoted=False, rows=10, started_at=started)

    def after_second_run() -> dict | None:
        found = _series(stack.prometheus, '{job="t-register"}')
        versions = {dict(labels).get("version") for (name, labels) in found if name == MODEL_METRIC}
        return found if versions == {"5"} else None

    champion = [dict(labels) for (name, labels) in _eventually(after_second_run) if name == CHAMPION_PROMOTED]
    assert [c["version"] for c in champion] == ["3"]
    # the local runner leaves KFP's creation-time placeholder unresolved: no duration, no crash
    assert report_registration(
        "t-local", "det", "4", metrics, False, 10, "{{$.pipeline_job_create_time_utc}}"
    )


@pytest.mark.slow
@pytest.mark.integration
def test_a_failed_pipeline_run_pushes_its_failure_and_the_alert_goes_pending(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real training DAG on the local runner, failing at ingest: its exit handler still pushes."""
    from aiops.monitoring import report_run_success
    from pipelines.runner import run_local

    monkeypatch.setenv(PUSHGATEWAY_URL_ENV, stack.pushgateway)  # the task subprocesses inherit it
    before = time.time()
    with pytest.raises(RuntimeError, match="ingest-telemetry"):
        run_local(
            "training",
            {"source": "influxdb", "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
            tmp_path / "kfp",
        )
    assert not (tmp_path / "mlflow.db").exists(), "a failed run's exit handler does not touch MLflow"

    def pushed() -> dict | None:
        names = "|".join(PUSHED_METRICS)
        found = _series(stack.prometheus, f'{{__name__=~"{names}", job="aiops-training"}}')
        return found if len(found) >= 2 else None

    run_labels = (("job", "aiops-training"), ("step", "run"))
    got = _eventually(pushed)
    assert set(got) == {(PIPELINE_SUCCESS, run_labels), (PIPELINE_LAST_RUN, run_labels)}
    assert got[(PIPELINE_SUCCESS, run_labels)] == 0.0
    assert before <= got[(PIPELINE_LAST_RUN, run_labels)] <= time.time()

    def pending() -> list | None:
        found = [
            a["metric"]
            for a in _query(stack.prometheus, 'ALERTS{alertname="AiopsPipelineRunFailed"}')
            if a["metric"].get("job") == "aiops-training"
        ]
        return found or None

    assert _eventually(pending)[0]["alertstate"] == "pending"  # `for: 5m`

    # the next run that gets through replaces the 0, and the alert resolves
    assert report_run_success("aiops-training", duration_s=12.0, rows=34)

    def resolved() -> dict | None:
        found = _series(stack.prometheus, f'{PIPELINE_SUCCESS}{{job="aiops-training"}}')
        return found if list(found.values()) == [1.0] else None

    _eventually(resolved)
    _eventually(lambda: not pending())
