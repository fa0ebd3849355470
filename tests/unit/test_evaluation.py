import numpy as np
import pytest

from aiops.evaluation import alarm_events, evaluate, point_metrics, write_report
from tests.conftest import labels_frame, make_label, make_metrics


def test_point_metrics_hand_computed():
    truth = np.array([0, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    m = point_metrics(truth, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 2)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)


def test_silent_detector_scores_zero_not_nan():
    m = point_metrics(np.array([1, 0], dtype=bool), np.zeros(2, dtype=bool))
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}


def test_shape_mismatch():
    with pytest.raises(ValueError):
        point_metrics(np.zeros(2), np.zeros(3))


def _frame_and_labels():
    # 20 minutes, pods api-1 (node-0) and api-2 (node-1); two labelled windows on api-1
    frame = make_metrics(n_steps=20)
    labels = labels_frame(
        make_label("api-1", "2026-01-05T00:05Z", "2026-01-05T00:10Z", "spike"),
        make_label("api-1", "2026-01-05T00:15Z", "2026-01-05T00:18Z", "level_shift"),
    )
    return frame, labels


def _alarm(frame, pod, minutes):
    return ((frame["pod"] == pod) & frame["timestamp"].dt.minute.isin(minutes)).to_numpy()


def test_event_metrics_hand_computed():
    frame, labels = _frame_and_labels()
    # alarms: api-1 at 7,8 (inside window 1, delay 2 min), api-1 at 12 (false), api-2 at 3 (false)
    alarms = _alarm(frame, "api-1", [7, 8, 12]) | _alarm(frame, "api-2", [3])
    result = evaluate(frame, alarms, labels)
    m = result.metrics
    assert m["windows"] == 2 and m["windows_detected"] == 1
    assert m["event_recall"] == pytest.approx(0.5)
    assert m["alarm_events"] == 3 and m["false_alarm_events"] == 2
    assert m["event_precision"] == pytest.approx(1 / 3)
    assert m["event_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["mean_delay_s"] == pytest.approx(120.0)
    # point-wise: 8 labelled rows (5 + 3), 2 of them alarmed, 2 false alarm rows
    assert (m["point_tp"], m["point_fp"], m["point_fn"]) == (2, 2, 6)
    assert list(result.windows["detected"]) == [True, False]


def test_alarm_runs_merge_across_small_gaps():
    frame, _ = _frame_and_labels()
    alarms = _alarm(frame, "api-1", [1, 2, 4, 9])
    assert len(alarm_events(frame, alarms, merge_gap=0)) == 3
    assert len(alarm_events(frame, alarms, merge_gap=1)) == 2
    assert len(alarm_events(frame, alarms, merge_gap=4)) == 1


def test_windows_outside_the_frame_are_not_counted():
    frame, labels = _frame_and_labels()
    late = labels_frame(make_label("api-1", "2026-01-06T00:00Z", "2026-01-06T00:10Z"))
    m = evaluate(frame, np.zeros(len(frame), dtype=bool), late).metrics
    assert m["windows"] == 0 and m["event_recall"] == 0.0


def test_report_files(tmp_path):
    frame, labels = _frame_and_labels()
    scores = np.linspace(0, 1, len(frame))
    result, page = write_report(frame, scores, 0.9, labels, tmp_path)
    for name in (
        "timelines.png",
        "score_distribution.png",
        "recall_by_type.png",
        "metrics.json",
        "report.html",
    ):
        assert (tmp_path / name).stat().st_size > 0
    assert "event_f1" in page and "data:image/png;base64" in page
    assert result.metrics["alarm_rate"] == pytest.approx(np.mean(scores >= 0.9))
