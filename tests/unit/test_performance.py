import numpy as np
import pytest
from typer.testing import CliRunner

from aiops.cli import app
from aiops.performance import PERFORMANCE_EXPERIMENT, log_performance, score_periods
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
    with pytest.raises(SchemaError, match="boolean"):
        score_periods(predictions().assign(is_anomaly=1), labels_frame())


def test_logged_over_time_and_from_the_command_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    labels = labels_frame(make_label("api-1", "2026-01-05T10:00Z", "2026-01-05T10:10Z"))
    runs = log_performance(score_periods(predictions(), labels), "m", uri)
    client = mlflow_client(uri)
    history = client.get_metric_history(runs["1"], "event_recall")
    assert [h.step for h in history] == [0] and history[0].value == 1.0
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
