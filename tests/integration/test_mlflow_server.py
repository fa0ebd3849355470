"""The register step against a real `mlflow server` (SQLite backend, proxied artifact store on disk).

This is the cluster path: the step gets MLFLOW_TRACKING_URI from its environment (a Kubernetes
secret there) and talks HTTP to the tracking server, which stores artifacts itself.
What a user would see in the UI is checked through the server's REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import dsl

from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.features import FeatureConfig, build_features, save_features
from aiops.localprom import free_port
from aiops.split import time_split
from aiops.training import train_isolation_forest
from components.register import register_model

pytestmark = pytest.mark.integration
MODEL = "served-detector"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            url.rsplit(":", 1)[1],
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("mlflow server did not become healthy in 90 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def artifacts(small_telemetry, tmp_path_factory):
    """The register step's inputs, as the pipeline would hand them over."""
    root = tmp_path_factory.mktemp("inputs")
    config = FeatureConfig()
    feats = build_features(small_telemetry.metrics, config)
    parts = time_split(feats, 0.2, 0.3)
    bundle = train_isolation_forest(parts.train, parts.validation, IsolationForestConfig(n_estimators=20))
    bundle.save(root / "model")
    save_features(parts.train, config, root / "train")
    save_features(parts.test, config, root / "test")
    small_telemetry.save(root / "telemetry")
    (root / "plots").mkdir()
    return {
        "model": dsl.Model(name="model", uri=str(root / "model"), metadata={}),
        "train": dsl.Dataset(name="train", uri=str(root / "train"), metadata={}),
        "test": dsl.Dataset(name="test", uri=str(root / "test"), metadata={}),
        "telemetry": dsl.Dataset(name="telemetry", uri=str(root / "telemetry"), metadata={}),
        "plots": dsl.Artifact(name="plots", uri=str(root / "plots"), metadata={}),
    }


def _get(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        return json.loads(response.read())


def _register(artifacts, kfp_run_id: str):
    return register_model.python_func(
        **artifacts,
        dataset_hash="f" * 64,
        data_rows=1234,
        source="synthetic",
        seed=7,
        model_name=MODEL,
        experiment="server-test",
        kfp_run_id=kfp_run_id,
        git_commit="abc123",
        image="quay.io/example/aiops@sha256:" + "0" * 64,
    )


def test_register_step_against_a_tracking_server(server, artifacts, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # as injected from the aiops-mlflow secret
    first = _register(artifacts, "kfp-run-1")
    assert first.version == "1" and first.promoted
    again = _register(artifacts, "kfp-run-1")  # the step retried by KFP
    assert again.version == "1", "a retried step must not register a second version"
    second = _register(artifacts, "kfp-run-2")
    assert second.version == "2" and not second.promoted

    model = _get(server, "/api/2.0/mlflow/registered-models/get", name=MODEL)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases == {"champion": "1", "challenger": "2"}
    champion = _get(server, "/api/2.0/mlflow/registered-models/alias", name=MODEL, alias="champion")
    tags = {t["key"]: t["value"] for t in champion["model_version"]["tags"]}
    assert tags["lineage.kfp_run_id"] == "kfp-run-1" and tags["lineage.git_commit"] == "abc123"
    assert tags["lineage.dataset_hash"] == "f" * 64 and tags["lineage.image"].endswith("0" * 64)
    assert tags["gate.decision"] == "promoted"
    run = _get(server, "/api/2.0/mlflow/runs/get", run_id=first.run_id)["run"]
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run_tags["lineage.seed"] == "7" and run_tags["gate.decision"] == "promoted"
    assert "test_event_f1" in {m["key"] for m in run["data"]["metrics"]}
    listed = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=first.run_id)
    assert {"gate_decision.json", "model_card.md"} <= {f["path"] for f in listed["files"]}


def test_champion_loads_from_the_server(server, artifacts, monkeypatch):
    import mlflow.pyfunc

    from aiops.features import load_features
    from aiops.pyfunc import to_model_input

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    mlflow.set_tracking_uri(server)
    mlflow.set_registry_uri(server)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    test, _ = load_features(Path(artifacts["test"].path))
    out = model.predict(to_model_input(test.head(50)))
    assert list(out.columns) == ["anomaly_score", "is_anomaly"] and len(out) == 50
