"""``aiops benchmark serving`` on a small model: two real KServe servers, every number measured."""

from __future__ import annotations

import json
import math

import pytest

from aiops.schema import KEY_COLUMNS
from aiops.serving_bench import ServingBenchmark, format_summary, run_serving_benchmark
from tests.serving.conftest import Trained

pytestmark = pytest.mark.integration

TINY = ServingBenchmark(
    requests=40, rounds=2, warmup=5, batch_sizes=(1, 8), rows_per_round=64, distinct_rows=16, cold_requests=2
)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_report_has_the_documented_keys_and_measured_values(trained: Trained, tmp_path):
    rows = trained.split.test.loc[:, [*KEY_COLUMNS, *trained.bundle.contract.feature_names]].tail(64)
    report = run_serving_benchmark(str(trained.bundle_dir), settings=TINY, rows=rows, workdir=tmp_path)

    assert {"p50_ms", "p99_ms", "baseline_p99_ms", "rows_per_s"} <= set(report)
    assert report["p50_ms"] <= report["p99_ms"] and _positive(report["baseline_p99_ms"])
    assert set(report["rows_per_s"]) == {"1", "8"} and all(map(_positive, report["rows_per_s"].values()))
    for protocol in ("v1", "v1-vectors", "v2", "v2-binary"):
        detail = report["protocols"][protocol]
        # one p99 per round for each server (the medians are over rounds)
        assert len(detail["rounds_p99_ms"]) == len(detail["baseline_rounds_p99_ms"]) == TINY.rounds
        assert all(map(_positive, detail["baseline_rows_per_s"].values()))
        stages = report["stages_ms"][f"{protocol}.single_row"]
        request = stages["request." + protocol[:2]]
        assert _positive(stages["score.isolation_forest"]) and stages["score.isolation_forest"] < request
        assert set(report["targets"][protocol]) == {
            "p99_under_20_ms",
            "p99_within_3x_baseline",
            "p99_over_baseline",
            "rows_per_s_at_256_over_5000",
        }
    assert report["members"] == {"isolation_forest": "fast", "forecast": "fast"}
    assert _positive(report["cold_forecast_ms"])
    json.dumps(report)  # the CLI writes it as JSON
    assert "v2-binary" in format_summary(report)
    assert (tmp_path / "predictor.log").exists() and (tmp_path / "baseline.log").exists()
