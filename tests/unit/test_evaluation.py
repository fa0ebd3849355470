import numpy as np
import pandas as pd
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


def test_windows_outside_the_frame_are_not_counted(tmp_path):
    frame, labels = _frame_and_labels()
    late = labels_frame(make_label("api-1", "2026-01-06T00:00Z", "2026-01-06T00:10Z"))
    m = evaluate(frame, np.zeros(len(frame), dtype=bool), late).metrics
    assert m["windows"] == 0 and m["event_recall"] == 0.0
    # windows.csv keeps its header when no window lies in the period (a Nezha test period, say)
    write_report(frame, np.zeros(len(frame)), 0.9, late, tmp_path)
    written = pd.read_csv(tmp_path / "windows.csv")
    assert written.empty and {"pod", "start", "detected", "delay_s", "first_scored"} <= set(written.columns)


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


def test_a_report_without_alarms_writes_valid_json_and_no_nan(tmp_path):
    """No alarm: no delay. metrics.json holds null (NaN is not JSON), the page a dash; a score
    without a value does not break the histogram."""
    import json

    frame, labels = _frame_and_labels()
    scores = np.zeros(len(frame))
    scores[:3] = np.nan
    result, page = write_report(frame, scores, 0.9, labels, tmp_path)
    assert np.isnan(result.metrics["median_delay_s"])
    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert written["median_delay_s"] is None
    assert "<td>median_delay_s</td><td>–</td>" in page and ">nan<" not in page


def test_delay_runs_from_the_earliest_alarm_in_time_not_in_row_order():
    # A node-level window (pod '') on node-0 covers api-1 and api-3.
    frame = make_metrics(n_steps=20, pods=("api-1", "api-2", "api-3"))
    frame = frame.sort_values(["pod", "timestamp"]).reset_index(drop=True)  # entity, then time
    node = labels_frame(make_label("", "2026-01-05T00:05Z", "2026-01-05T00:10Z", node="node-0"))
    # api-1 (earlier rows) alarms at 00:09, api-3 (later rows) at 00:06.
    alarms = _alarm(frame, "api-1", [9]) | _alarm(frame, "api-3", [6])
    result = evaluate(frame, alarms, node)
    assert result.metrics["windows_detected"] == 1
    assert result.metrics["mean_delay_s"] == pytest.approx(60.0)


def test_a_hole_in_an_entitys_data_ends_an_alarm_event():
    frame, labels = _frame_and_labels()
    # api-1 loses minutes 10-14 (a scrape gap); its alarms at 9 and 15 are neighbours by row only.
    gap = frame[~((frame["pod"] == "api-1") & frame["timestamp"].dt.minute.between(10, 14))]
    gap = gap.reset_index(drop=True)
    alarms = _alarm(gap, "api-1", [9, 15])
    result = evaluate(gap, alarms, labels)
    # 00:09 lies in the first window (00:05-00:10), 00:15 in the second (00:15-00:18).
    assert result.metrics["alarm_events"] == 2 and result.metrics["false_alarm_events"] == 0
    assert len(alarm_events(gap, alarms, merge_gap=4)) == 2  # 5 missing rows: still apart
    assert len(alarm_events(gap, alarms, merge_gap=5)) == 1
    # The threshold search's fast scorer cuts events the same way.
    from aiops.training import EventF1Scorer

    scores = alarms.astype(float)
    assert EventF1Scorer.of(gap, labels).f1(scores, 0.5) == pytest.approx(result.metrics["event_f1"])


def test_a_merged_event_is_true_only_through_its_alarm_rows():
    frame, labels = _frame_and_labels()
    # Alarms at 00:03 and 00:11, both outside the window 00:05-00:10, merged over the quiet rows
    # between them (which lie inside it).
    alarms = _alarm(frame, "api-1", [3, 11])
    result = evaluate(frame, alarms, labels, merge_gap=8)
    assert result.metrics["alarm_events"] == 1
    assert result.metrics["false_alarm_events"] == 1 and result.metrics["event_precision"] == 0.0
    assert result.metrics["windows_detected"] == 0


def test_alarm_events_take_positions_whatever_the_frames_index():
    frame, _ = _frame_and_labels()
    alarms = _alarm(frame, "api-1", [1, 2, 9])
    shifted = frame.set_axis(frame.index + 1000)
    expected = alarm_events(frame, alarms)
    got = alarm_events(shifted, alarms)
    assert len(got) == len(expected) == 2
    for a, b in zip(got["rows"], expected["rows"], strict=True):
        assert list(a) == list(b)
    assert list(got["start"]) == list(expected["start"])


def test_the_model_card_shows_a_missing_number_as_a_dash_not_nan():
    from aiops.model_card import _fmt

    assert [_fmt(v) for v in (None, float("nan"), 0.12345, 3)] == ["–", "–", "0.1235", "3"]
    # counts and long delays in full: 4 significant digits would disagree with the logged metric
    assert [_fmt(v) for v in (12345.0, 14465.5, 9999.0)] == ["12,345", "14,465.5", "9999"]


def test_the_timeline_shades_each_window_where_evaluate_counts_it():
    """Same cluster and pod, or every pod of the node for a node-level fault: label_masks' rule."""
    from aiops.evaluation import plot_timelines

    times = pd.date_range("2026-01-05T00:00Z", periods=60, freq="1min")
    frame = pd.concat(
        [
            pd.DataFrame({"timestamp": times, "cluster": c, "namespace": "shop", "pod": p, "node": n})
            for c in ("c1", "c2")
            for p, n in (("api-1", "node-0"), ("api-2", "node-1"))
        ],
        ignore_index=True,
    )
    pod_fault = {**make_label("api-1", str(times[10]), str(times[20]), "pod_fault"), "cluster": "c2"}
    node_fault = {
        **make_label("", str(times[30]), str(times[40]), "node_fault", node="node-1"),
        "namespace": "",
    }
    fig = plot_timelines(
        frame, np.zeros(len(frame)), 1.0, labels_frame(pod_fault, node_fault), max_entities=4
    )
    shaded = {ax.get_title(loc="left"): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert shaded == {
        "c2/shop/api-1": ["pod_fault"],
        "c1/shop/api-2": ["node_fault"],  # the node-level fault, on the pod of that node
        "c1/shop/api-1": [],  # same pod name, other cluster: not its window
        "c2/shop/api-2": [],
    }
    assert list(shaded)[:2] == ["c2/shop/api-1", "c1/shop/api-2"]  # entities with windows first


@pytest.mark.parametrize("minutes", [[0, 1, 3], [0, 5]], ids=["one row missing", "four rows missing"])
def test_a_hole_ends_an_alarm_event_of_a_short_lived_pod_too(minutes):
    """A pod's own median spacing misread a pod of a few rows: at 00:00, 00:01 and 00:03 it is
    1.5 min, and the rows either side of the hole became neighbours (one event instead of two).
    The grid is the frame's: the spacing of every entity's consecutive rows."""
    steady = make_metrics(n_steps=30, pods=("api-1",))
    short = steady.iloc[minutes].assign(pod="job-7")
    frame = pd.concat([steady, short], ignore_index=True)
    alarms = np.zeros(len(frame), dtype=bool)
    alarms[-2:] = True  # the short pod's rows either side of its hole
    assert len(alarm_events(frame, alarms, merge_gap=0)) == 2


def test_a_report_on_no_rows_says_so(tmp_path):
    empty = make_metrics(n_steps=3).iloc[:0]
    with pytest.raises(ValueError, match="no rows to report on"):
        write_report(empty, np.zeros(0), 0.5, labels_frame(), tmp_path)
