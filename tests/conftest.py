"""Shared fixtures: tiny, seeded telemetry built in memory."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def need_binary(name: str, package: str) -> str:
    """Path of a server binary; skip when absent on a laptop, fail when absent in CI (AIOPS_CI=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (Debian package '{package}')"
        if os.environ.get("AIOPS_CI"):
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(f"{message}; CI installs it")
    return path


def shared_absent(present: bool) -> bool:
    """Skip condition for tests on ``../shared`` data: absent on a laptop skips; in CI (AIOPS_CI=1)
    the test runs and fails on the missing files, as a missing server binary fails there."""
    return not present and not os.environ.get("AIOPS_CI")


def make_metrics(
    n_steps: int = 20,
    pods: tuple[str, ...] = ("api-1", "api-2"),
    start: str = "2026-01-05T00:00:00Z",
    step: str = "1min",
    seed: int = 0,
) -> pd.DataFrame:
    """A small, valid metrics table with two metrics per pod."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n_steps, freq=step)
    frames = []
    for i, pod in enumerate(pods):
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": times,
                    "cluster": "c1",
                    "namespace": "shop",
                    "pod": pod,
                    "node": f"node-{i % 2}",
                    "cpu_usage_cores": 0.5 + 0.05 * rng.standard_normal(n_steps),
                    "request_rate": 100.0 + 5 * rng.standard_normal(n_steps),
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["timestamp", "pod"]).reset_index(drop=True)


def make_label(pod: str, start: str, end: str, anomaly_type: str = "spike", node: str = "node-0") -> dict:
    return {
        "cluster": "c1",
        "namespace": "shop",
        "pod": pod,
        "node": node,
        "start": pd.Timestamp(start),
        "end": pd.Timestamp(end),
        "anomaly_type": anomaly_type,
        "category": "collective",
    }


def labels_frame(*rows: dict) -> pd.DataFrame:
    from aiops.schema import empty_labels

    if not rows:
        return empty_labels()
    return pd.DataFrame(list(rows))


@pytest.fixture
def metrics() -> pd.DataFrame:
    return make_metrics()


@pytest.fixture(scope="session")
def small_telemetry():
    """One simulated day of a small cluster with injected anomalies (session-wide: read only)."""
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    return synthetic_telemetry(
        SyntheticSource(seed=7, duration="1D", n_anomalies=6, deployments_per_namespace=1)
    )


def retimed(line: str, time: str) -> str:
    """A CSV row whose first cell (a Nezha file's ``Time``) is replaced by ``time``."""
    return time + line[line.index(",") :]
