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


def test_cli_rejects_unknown_pipeline():
    result = CliRunner().invoke(app, ["submit", "nope", "--host", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "unknown pipeline 'nope'" in result.output
