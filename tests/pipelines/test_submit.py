"""`aiops submit` with the real kfp.Client against a recorded Data Science Pipelines API.

No KFP API server can run on the development machines, so the nearest real substitute is a local
HTTP server on 127.0.0.1 that answers the v2beta1 REST calls kfp.Client makes (experiments, runs,
healthz) with responses in the API's own format, and records every request for inspection.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from aiops.cli import app
from pipelines.runner import submit


class _RecordedKfpApi(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        entry = {
            "method": self.command,
            "path": self.path,
            "auth": self.headers.get("Authorization"),
            "body": body,
        }
        self.requests.append(entry)
        return entry

    def do_GET(self):  # noqa: N802 - http.server naming
        entry = self._record()
        if entry["path"].startswith("/apis/v2beta1/experiments"):
            self._reply(200, {"total_size": 0})
        elif entry["path"].startswith("/apis/v2beta1/healthz"):
            self._reply(200, {"commit_sha": "test", "tag_name": "2.5.0", "multi_user": False})
        else:
            self._reply(404, {"error": "not found", "code": 5, "message": "not found"})

    def do_POST(self):  # noqa: N802
        entry = self._record()
        if entry["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiment_id": "exp-1", "display_name": entry["body"]["display_name"]})
        elif entry["path"] == "/apis/v2beta1/runs":
            self._reply(
                200,
                {
                    "run_id": "run-42",
                    "experiment_id": "exp-1",
                    "state": "PENDING",
                    "display_name": entry["body"]["display_name"],
                },
            )
        else:
            self._reply(404, {"error": "not found", "code": 5, "message": "not found"})


@pytest.fixture
def kfp_api():
    _RecordedKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordedKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _RecordedKfpApi.requests
    server.shutdown()


def test_submit_uploads_the_compiled_training_pipeline(kfp_api):
    host, requests = kfp_api
    run_id = submit(
        "training", host, {"n_anomalies": 12, "git_commit": "abc"}, token="t0k3n", namespace="aiops"
    )
    assert run_id == "run-42"
    assert all(r["auth"] == "Bearer t0k3n" for r in requests)
    [experiment] = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/experiments")]
    assert experiment["body"]["display_name"] == "aiops-training"
    assert experiment["body"]["namespace"] == "aiops"
    [run] = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/runs")]
    spec = run["body"]["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "aiops-training"
    # the kfp-kubernetes settings (secrets) travel with the run
    platform = run["body"]["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert "secretAsEnv" in platform["deploymentSpec"]["executors"]["exec-register-model"]
    assert run["body"]["experiment_id"] == "exp-1"
    assert run["body"]["runtime_config"]["parameters"] == {"n_anomalies": 12, "git_commit": "abc"}


def test_cli_submit_reads_the_token_from_the_environment(kfp_api, monkeypatch):
    host, requests = kfp_api
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    result = CliRunner().invoke(app, ["submit", "training", "--host", host, "--param", "seed=7"])
    assert result.exit_code == 0, result.output
    assert "run run-42" in result.output
    [run] = [r for r in requests if r["path"].endswith("/runs")]
    assert run["auth"] == "Bearer from-env"
    assert run["body"]["runtime_config"]["parameters"]["seed"] == 7


def test_cli_params_take_the_types_the_pipeline_declares(kfp_api):
    """KFP's API server refuses 'true' for a boolean: the CLI sends what the pipeline declares."""
    host, requests = kfp_api
    params = [
        "deploy=true",
        "seed=7",
        "promotion_margin=0.02",
        'promotion_guards={"point_f1": 0.05}',
        "model_name=1",
    ]
    args = ["submit", "training", "--host", host]
    result = CliRunner().invoke(app, [*args, *(a for p in params for a in ("--param", p))])
    assert result.exit_code == 0, result.output
    [run] = [r for r in requests if r["path"].endswith("/runs")]
    sent = run["body"]["runtime_config"]["parameters"]
    assert sent["deploy"] is True and sent["seed"] == 7 and sent["promotion_margin"] == 0.02
    assert sent["promotion_guards"] == {"point_f1": 0.05} and sent["model_name"] == "1"  # a string parameter


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("deploy=maybe", "--param deploy: expects true or false, got 'maybe'"),
        ("seed=7.5", "--param seed: expects an integer"),
        ("promotion_guards=0.1", "--param promotion_guards: expects JSON like"),
        ("sead=7", "pipeline 'training' has no parameter 'sead'; it has:"),
        # a NaN margin would make every gate comparison false: nothing would ever be promoted
        ("promotion_margin=nan", "--param promotion_margin: expects a finite number, got 'nan'"),
        ("source=prometheus", "source 'prometheus' needs prometheus_url"),
        ("source=nezha", "pass its folder as data_path"),
    ],
)
def test_cli_params_of_the_wrong_type_are_refused_by_name(param, message):
    result = CliRunner().invoke(app, ["submit", "training", "--host", "http://127.0.0.1:1", "--param", param])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("pipeline", ["training", "retraining"])
def test_a_prometheus_setting_for_a_synthetic_local_run_stops_before_it_starts(pipeline):
    result = CliRunner().invoke(app, ["run", pipeline, "--param", "prometheus_catalog=/x/queries.yaml"])
    assert result.exit_code == 2, result.output
    assert "catalog='/x/queries.yaml' applies to the prometheus source only" in result.output
    assert "Training pipeline" not in result.output and "Retraining pipeline" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "training", "--n-anomalies", "5", "--param", "n_anomalies=7"],
            "--n-anomalies 5 and --param n_anomalies=7",
        ),
        (["run", "training", "--seed", "1", "--param", "seed=3"], "--seed 1 and --param seed=3"),
        (
            ["run", "training", "--data", "/a", "--param", "data_path=/b"],
            "--data /a and --param data_path=/b",
        ),
        (
            ["run", "retraining", "--duration", "2D", "--param", "duration=3D"],
            "--duration 2D and --param duration=3D",
        ),
    ],
)
def test_a_local_run_refuses_an_option_given_twice_with_different_values(args, message):
    """Before, the run header showed the option's value and the pipeline got the --param's."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "given twice with different values" in result.output and message in result.output
    assert "Training pipeline" not in result.output and "Retraining pipeline" not in result.output


def test_a_path_given_both_ways_is_one_value_however_it_is_written(tmp_path):
    catalog = tmp_path / "queries.yaml"
    args = ["--catalog", str(catalog), "--param", f"prometheus_catalog={tmp_path}/./queries.yaml"]
    result = CliRunner().invoke(app, ["run", "training", *args])
    assert result.exit_code == 2, result.output  # a catalog for synthetic data: refused, not as given twice
    assert "applies to the prometheus source only" in result.output and "given twice" not in result.output


def test_an_empty_path_param_is_not_the_current_folder(tmp_path):
    """``Path("")`` resolves to the current folder: ``--data . --param data_path=`` compared equal."""
    result = CliRunner().invoke(
        app, ["run", "training", "--source", "nezha", "--data", ".", "--param", "data_path="]
    )
    assert result.exit_code == 2 and "given twice with different values" in result.output, result.output


@pytest.mark.parametrize("pipeline", ["training", "retraining"])
def test_a_local_run_on_a_data_folder_that_is_not_there_stops_before_it_starts(pipeline, tmp_path):
    result = CliRunner().invoke(app, ["run", pipeline, "--source", "nezha", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'nope'}: no such folder" in result.output
    assert "Training pipeline" not in result.output and "Retraining pipeline" not in result.output


@pytest.mark.parametrize("pipeline", ["training", "retraining"])
def test_a_params_source_is_checked_as_the_option_would_be(pipeline):
    """--param source=prometheus counts as --source prometheus: its missing URL stops the run
    before it starts (before, the check saw the default source and the pipeline failed later)."""
    same_twice = ["--deploy", "--param", "deploy=true"]  # one value given both ways is fine
    result = CliRunner().invoke(app, ["run", pipeline, *same_twice, "--param", "source=prometheus"])
    assert result.exit_code == 2, result.output
    assert "source 'prometheus' needs prometheus_url" in result.output
    assert "given twice" not in result.output
    assert "Training pipeline" not in result.output and "Retraining pipeline" not in result.output


def test_a_bad_param_of_a_local_run_says_so_once():
    result = CliRunner().invoke(app, ["run", "training", "--param", "sead=7"])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output


@pytest.mark.parametrize(
    ("params", "injected", "policy"),
    [
        ([], 24, "event_f1"),
        (["source=prometheus", "prometheus_url=https://thanos:9091"], 0, "quantile"),
        (["source=prometheus", "prometheus_url=https://thanos:9091", "n_anomalies=6"], 6, "event_f1"),
        (["source=nezha", "data_path=/data/nezha"], 0, "quantile"),
    ],
)
def test_a_submitted_run_gets_the_per_source_defaults_of_a_local_run(kfp_api, params, injected, policy):
    """Real data gets no injected anomalies unless asked, and then no label-based threshold."""
    host, requests = kfp_api
    args = [a for p in params for a in ("--param", p)]
    result = CliRunner().invoke(app, ["submit", "training", "--host", host, *args])
    assert result.exit_code == 0, result.output
    [run] = [r for r in requests if r["path"].endswith("/runs")]
    sent = run["body"]["runtime_config"]["parameters"]
    assert (sent["n_anomalies"], sent["threshold_policy"]) == (injected, policy)


def test_prometheus_without_labels_cannot_pick_a_threshold_from_labels():
    params = ["source=prometheus", "prometheus_url=https://thanos:9091", "threshold_policy=event_f1"]
    args = [a for p in params for a in ("--param", p)]
    result = CliRunner().invoke(app, ["submit", "training", "--host", "http://127.0.0.1:1", *args])
    assert result.exit_code == 2 and "Prometheus data carries no labels" in result.output


#: Every command that talks to Data Science Pipelines (each is given --host).
CLUSTER_COMMANDS = [
    ["submit", "training"],
    ["schedule", "retraining", "--cron", "0 2 * * 0"],
    ["schedule", "list"],
    ["schedule", "delete", "rr-1"],
]


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_an_unreachable_cluster_is_a_clear_error_not_a_traceback(command):
    result = CliRunner().invoke(app, [*command, "--host", "http://127.0.0.1:9"])  # nothing listens on 9
    assert result.exit_code == 2, result.output
    assert "error: cannot reach Data Science Pipelines at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


class _LoginPage(BaseHTTPRequestHandler):
    """A host that answers every call with 200 and an HTML page (a dashboard, an OAuth login)."""

    def log_message(self, *args):
        pass

    def _page(self):
        body = b"<html><body>Log in with OpenShift</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _page  # noqa: N815 - http.server naming


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_a_host_that_answers_html_is_an_error_not_a_success(command):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LoginPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = CliRunner().invoke(app, [*command, "--host", host])
    finally:
        server.shutdown()
    assert result.exit_code == 2, result.output
    assert f"error: {host} answered the pipelines API's health check" in result.output
    assert "text/html, not JSON" in result.output


def test_cli_rejects_unknown_pipeline():
    result = CliRunner().invoke(app, ["submit", "nope", "--host", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "unknown pipeline 'nope'" in result.output


# --------------------------------------------------------------------------- recurring runs


def _recurring_handlers():
    """Extend the recorded API with the v2beta1 recurring-run calls."""
    original_get, original_post = _RecordedKfpApi.do_GET, _RecordedKfpApi.do_POST

    def do_post(self):
        if self.path == "/apis/v2beta1/recurringruns":
            entry = self._record()
            self._reply(
                200,
                {
                    "recurring_run_id": "rr-1",
                    "display_name": entry["body"]["display_name"],
                    "status": "ENABLED",
                },
            )
        else:
            original_post(self)

    def do_get(self):
        if self.path.startswith("/apis/v2beta1/recurringruns"):
            self._record()
            self._reply(
                200,
                {
                    "recurringRuns": [
                        {
                            "recurring_run_id": "rr-1",
                            "display_name": "aiops-retraining-weekly",
                            "status": "ENABLED",
                            "trigger": {"cron_schedule": {"cron": "0 0 2 * * 0"}},
                        }
                    ],
                    "total_size": 1,
                },
            )
        else:
            original_get(self)

    def do_delete(self):
        self._record()
        self._reply(200, {})

    return do_get, do_post, do_delete


def test_schedule_retraining_creates_a_recurring_run(kfp_api, monkeypatch):
    do_get, do_post, do_delete = _recurring_handlers()
    monkeypatch.setattr(_RecordedKfpApi, "do_GET", do_get)
    monkeypatch.setattr(_RecordedKfpApi, "do_POST", do_post)
    monkeypatch.setattr(_RecordedKfpApi, "do_DELETE", do_delete, raising=False)
    monkeypatch.setenv("KFP_TOKEN", "sched-token")
    host, requests = kfp_api
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "schedule",
            "retraining",
            "--cron",
            "0 2 * * 0",
            "--host",
            host,
            "--job-name",
            "aiops-retraining-weekly",
            "--param",
            "max_drift_share=0.4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recurring run rr-1" in result.output
    [created] = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/recurringruns")]
    body = created["body"]
    assert created["auth"] == "Bearer sched-token"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 0", "KFP takes six cron fields"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "aiops-retraining"
    assert body["runtime_config"]["parameters"]["max_drift_share"] == 0.4
    listed = runner.invoke(app, ["schedule", "list", "--host", host])
    assert listed.exit_code == 0 and "rr-1" in listed.output and "0 0 2 * * 0" in listed.output
    deleted = runner.invoke(app, ["schedule", "delete", "rr-1", "--host", host])
    assert deleted.exit_code == 0 and any(
        r["method"] == "DELETE" and r["path"].endswith("/rr-1") for r in requests
    )


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("every sunday", "expected 5"),
        ("@daily", "expected 5"),
        ("not a cron at all", "minute 'not' is not a value or range of 0-59"),
        ("61 25 * * 9", "minute '61' is not a value or range of 0-59"),
        ("0 25 * * *", "hour '25'"),
        ("0 2 * * 7", "day of week '7' is not a value or range of 0-6 or SUN"),
        ("*/0 * * * *", "has step '0'"),
        ("0 5-2 * * *", "runs backwards"),
    ],
)
def test_schedule_rejects_a_bad_cron_before_calling_the_cluster(cron, message):
    result = CliRunner().invoke(
        app, ["schedule", "retraining", "--cron", cron, "--host", "http://127.0.0.1:1"]
    )
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("cron", "six"),
    [
        ("0 2 * * 0", "0 0 2 * * 0"),
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("30 0 1,15 JAN-JUN ?", "0 30 0 1,15 JAN-JUN ?"),
        ("0 0 2 * * sun", "0 0 2 * * sun"),
    ],
)
def test_cron_expressions_kfp_accepts_pass(cron, six):
    from pipelines.runner import kfp_cron

    assert kfp_cron(cron) == six
