"""The synthetic benchmark runs the pipeline's training on a small simulated cluster and reports it."""

from __future__ import annotations

import pandas as pd
import pytest

from aiops.synthetic_bench import SyntheticBenchmark, run_synthetic_benchmark


def test_small_run_reports_every_detector_on_the_latest_period():
    settings = SyntheticBenchmark(
        seed=5,
        duration="4D",
        n_anomalies=30,
        if_estimators=20,
        lstm_epochs=1,
        lstm_max_windows=300,
    )
    report = run_synthetic_benchmark(settings)

    assert set(report["detectors"]) == {"isolation_forest", "forecast", "lstm_autoencoder", "ensemble"}
    assert report["nan_free"]
    assert pd.Timestamp(report["data"]["test_start"]) > pd.Timestamp(report["data"]["train_end"])
    ensemble = report["ensemble"]
    assert ensemble["combine"] == "any" and ensemble["threshold_policy"] == "event_f1"
    # too few validation windows to choose on: every member counts, and the report says why
    assert ensemble["weights"] == {"isolation_forest": 1.0, "forecast": 1.0, "lstm_autoencoder": 1.0}
    assert 0 < ensemble["selection_skipped_windows"] < 20
    windows = report["detectors"]["ensemble"]["windows"]
    assert 0 < windows < report["data"]["labelled_windows"]
    assert all(m["windows"] == windows for m in report["detectors"].values())
    headroom = report["headroom"]["ensemble_at_test_optimal_weights"]
    assert 0.0 <= headroom["event_f1"] <= 1.0 and headroom["combine"] in ("mean", "max", "any")


def test_the_command_needs_a_seed_and_chooses_weights_only_under_event_f1(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import aiops.synthetic_bench as bench
    from aiops.cli import app

    out = tmp_path / "s.json"
    missing = CliRunner().invoke(app, ["benchmark", "synthetic", "--output", str(out)])
    assert missing.exit_code == 2 and "--seed" in missing.output
    seen: list[SyntheticBenchmark] = []

    def fake(settings):
        seen.append(settings)
        raise SystemExit(0)  # the settings are what this test is about

    monkeypatch.setattr(bench, "run_synthetic_benchmark", fake)
    for policy in ("quantile", "event_f1"):
        args = ["benchmark", "synthetic", "--seed", "8", "--output", str(out), "--threshold-policy", policy]
        CliRunner().invoke(app, args)
    assert [(s.threshold_policy, s.select_weights) for s in seen] == [("quantile", False), ("event_f1", True)]
    # the library refuses the pair before any training
    with pytest.raises(ValueError, match="needs threshold_policy='event_f1'"):
        SyntheticBenchmark(threshold_policy="quantile")
