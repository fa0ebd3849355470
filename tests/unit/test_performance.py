import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aiops.cli import app
from aiops.performance import PERFORMANCE_EXPERIMENT, log_performance, period_step, score_periods
from aiops.registry import mlflow_client
from aiops.schema import SchemaError
from tests.conftest import labels_frame, make_label, make_metrics


def predictions(n_steps=60 * 24 * 2):
    frame = make_metrics(n_steps=n_steps, pods=("api-1",))[
        ["timestamp", "cluster", "namespace", "pod", "node"]
    ]
    frame["model_version"] = np.where(frame["timestamp"] < frame["timestamp"].iloc[n_steps // 2], "1", "2")
    frame["anomaly_score"] = 0.0
    minute = frame["timestamp"].dt.hour * 60 + frame["timestamp"].dt.minute
    frame["is_anomaly"] = (minute >= 600) & (minute < 605)  # alarms 10:00-10:05 every day
    return frame


def test_scores_per_version_and_day():
    # one incident each day at 10:00-10:10 (detected), plus one undetected on day 2 at 20:00
    labels = labels_frame(
        make_label("api-1", "2026-01-05T10:00Z", "2026-01-05T10:10Z"),
        make_label("api-1", "2026-01-06T10:00Z", "2026-01-06T10:10Z"),
        make_label("api-1", "2026-01-06T20:00Z", "2026-01-06T20:10Z"),
    )
    scores = score_periods(predictions(), labels, "1D")
    assert [(s.model_version, s.period_start.day) for s in scores] == [("1", 5), ("2", 6)]
    assert scores[0].metrics["event_recall"] == 1.0 and scores[1].metrics["event_recall"] == pytest.approx(
        0.5
    )
    assert scores[0].metrics["event_precision"] == 1.0


def test_bad_predictions_are_rejected():
    with pytest.raises(SchemaError, match="model_version"):
        score_periods(predictions().drop(columns=["model_version"]), labels_frame())
    with pytest.raises(SchemaError, match="'is_anomaly' must be true or false"):
        score_periods(predictions().assign(is_anomaly=1), labels_frame())
    with pytest.raises(SchemaError, match="repeat a \\(timestamp, entity, model_version\\)"):
        frame = predictions()
        score_periods(pd.concat([frame, frame[frame["is_anomaly"]]]), labels_frame())
    with pytest.raises(SchemaError, match="without a model_version"):
        score_periods(predictions().assign(model_version=None), labels_frame())
    with pytest.raises(SchemaError, match="no rows"):
        score_periods(predictions().iloc[:0], labels_frame())
    with pytest.raises(SchemaError, match="not a fixed length"):
        score_periods(predictions(), labels_frame(), "1M")


def test_a_quiet_period_has_no_recall_rather_than_a_recall_of_zero():
    quiet = predictions().assign(is_anomaly=False)
    [day] = [s for s in score_periods(quiet, labels_frame()) if s.model_version == "1"]
    assert np.isnan(day.metrics["event_recall"]) and np.isnan(day.metrics["event_precision"])
    assert np.isnan(day.metrics["point_recall"]) and day.metrics["alarm_rate"] == 0.0


def test_an_incident_across_midnight_counts_once_in_the_period_it_began():
    frame = predictions()
    minute = frame["timestamp"].dt.hour * 60 + frame["timestamp"].dt.minute
    frame["model_version"] = "1"
    frame["is_anomaly"] = (frame["timestamp"].dt.day == 5) & (minute == 23 * 60 + 52)  # 23:52
    labels = labels_frame(make_label("api-1", "2026-01-05T23:50Z", "2026-01-06T00:10Z"))
    first, second = score_periods(frame, labels)
    assert first.metrics["event_recall"] == 1.0 and np.isnan(second.metrics["event_recall"])


def test_an_incident_that_began_during_an_outage_counts_where_serving_resumed():
    frame = predictions(n_steps=60 * 24 * 3).assign(model_version="1")
    frame = frame[frame["timestamp"].dt.day != 6]  # nothing served on day 2
    minute = frame["timestamp"].dt.hour * 60 + frame["timestamp"].dt.minute
    frame["is_anomaly"] = (frame["timestamp"].dt.day == 7) & (minute == 60)  # 01:00 on day 3
    labels = labels_frame(make_label("api-1", "2026-01-06T22:00Z", "2026-01-07T02:00Z"))
    first, third = score_periods(frame, labels)
    assert third.period_start.day == 7 and third.metrics["event_recall"] == 1.0
    assert np.isnan(first.metrics["event_recall"])


def test_times_in_another_zone_are_periods_of_utc_days():
    berlin = predictions().assign(timestamp=lambda f: f["timestamp"].dt.tz_convert("Europe/Berlin"))
    assert [s.period_start for s in score_periods(berlin, labels_frame())] == [
        pd.Timestamp("2026-01-05", tz="UTC"),
        pd.Timestamp("2026-01-06", tz="UTC"),
    ]


def test_scoring_again_replaces_the_periods_instead_of_adding_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first_label = labels_frame(make_label("api-1", "2026-01-05T10:00Z", "2026-01-05T10:10Z"))
    log_performance(score_periods(predictions(), labels_frame()), "m", uri)  # before the labels came
    runs = log_performance(score_periods(predictions(), first_label), "m", uri)
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(PERFORMANCE_EXPERIMENT).experiment_id
    assert len(client.search_runs([experiment])) == 2  # one per version, not one per call
    history = client.get_metric_history(runs["1"], "event_recall")
    assert [h.value for h in history] == [1.0]  # the late label's value, once


def test_logged_over_time_and_from_the_command_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    labels = labels_frame(make_label("api-1", "2026-01-05T10:00Z", "2026-01-05T10:10Z"))
    runs = log_performance(score_periods(predictions(), labels), "m", uri)
    client = mlflow_client(uri)
    history = client.get_metric_history(runs["1"], "event_recall")
    day = period_step(pd.Timestamp("2026-01-05", tz="UTC"), pd.Timedelta("1D"))
    assert [h.step for h in history] == [day] and history[0].value == 1.0
    pred_path, label_path = tmp_path / "p.parquet", tmp_path / "l.parquet"
    predictions().to_parquet(pred_path)
    labels.to_parquet(label_path)
    result = CliRunner().invoke(
        app,
        [
            "models",
            "performance",
            "m",
            "--predictions",
            str(pred_path),
            "--labels",
            str(label_path),
            "--tracking-uri",
            uri,
        ],
    )
    assert result.exit_code == 0, result.output
    assert PERFORMANCE_EXPERIMENT in result.output
    missing = CliRunner().invoke(
        app,
        [
            "models",
            "performance",
            "m",
            "--predictions",
            str(tmp_path / "x.parquet"),
            "--labels",
            str(label_path),
            "--tracking-uri",
            uri,
        ],
    )
    assert missing.exit_code == 2
