"""Data drift between a champion's training reference and a recent window (Evidently)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.drift import current_rows, drift_report, same_hours_of_day


def _frame(rng: np.random.Generator, n: int = 400, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {name: rng.normal(shift, 1.0, n) for name in ("cpu", "memory", "requests", "latency")}
    )


def test_a_signal_that_went_silent_is_drift_not_left_out():
    rng = np.random.default_rng(0)
    reference, current = _frame(rng), _frame(rng)
    same = drift_report(reference, current, list(reference.columns))
    assert same.drift_share == 0.0
    current[["memory", "requests", "latency"]] = np.nan  # three of four signals stopped arriving
    result = drift_report(reference, current, list(reference.columns))
    silent = result.columns[result.columns["method"].str.startswith("no values")]
    assert set(silent["column"]) == {"memory", "requests", "latency"} and silent["drifted"].all()
    assert result.drift_share == pytest.approx(0.75)


def test_a_sparse_column_the_sampling_missed_is_not_called_silent():
    from aiops.drift import MAX_ROWS

    rng = np.random.default_rng(2)
    reference = _frame(rng)
    current = _frame(rng, n=3 * MAX_ROWS)
    kept = current.sample(MAX_ROWS, random_state=0).index  # the rows drift_report's sample keeps
    sparse = pd.Series(np.nan, index=current.index)
    sparse[current.index.difference(kept)[:3]] = rng.normal(size=3)
    current["latency"] = sparse  # three values in 60,000 rows, none of them in the sample
    result = drift_report(reference, current, list(reference.columns), seed=0)
    row = result.columns.set_index("column").loc["latency"]
    assert row["method"].startswith("not compared") and "3 in the current window" in row["method"]
    assert not row["drifted"]
    assert result.drift_share == 0.0  # over the three columns compared, none drifted


def test_columns_the_sampling_left_empty_are_named_when_nothing_is_left_to_compare():
    from aiops.drift import MAX_ROWS

    rng = np.random.default_rng(3)
    reference = _frame(rng)[["cpu"]]
    current = _frame(rng, n=3 * MAX_ROWS)[["cpu"]]
    kept = current.sample(MAX_ROWS, random_state=0).index
    current["cpu"] = np.nan
    current.loc[current.index.difference(kept)[:3], "cpu"] = 1.0
    with pytest.raises(ValueError, match=r"too few values to keep in a 20,000-row sample: \['cpu'\]"):
        drift_report(reference, current, ["cpu"], seed=0)


def test_no_column_with_values_in_both_windows_is_a_clear_error():
    rng = np.random.default_rng(1)
    reference, current = _frame(rng), _frame(rng)
    current[:] = np.nan
    with pytest.raises(ValueError, match="no column to compare: empty in the current window"):
        drift_report(reference, current, list(reference.columns))


def _times(start: str, periods: int, freq: str = "1min") -> pd.Series:
    return pd.Series(pd.date_range(start, periods=periods, freq=freq, tz="UTC"))


def test_the_current_window_leaves_out_what_the_champion_trained_on():
    times = _times("2026-01-05", 3 * 24 * 60)
    end = pd.Timestamp("2026-01-07T06:00:00Z")
    rows, notes = current_rows(times, "1D", end)
    kept = times[rows]
    assert kept.min() == end + pd.Timedelta("1min") and kept.max() == times.max()
    assert "361 rows up to 2026-01-07 06:00:00+00:00 were training data" in notes[0]
    # after the training period: the whole window, nothing said
    rows, notes = current_rows(times, "1D", pd.Timestamp("2026-01-06T00:00:00Z"))
    assert rows.sum() == 24 * 60 and notes == []
    with pytest.raises(ValueError, match="lies within the champion's training period"):
        current_rows(times, "1D", times.max())


def test_a_window_shorter_than_a_day_meets_the_same_hours_of_the_reference():
    reference = _times("2026-01-05", 3 * 24 * 12, "5min")
    keep, note = same_hours_of_day(reference, _times("2026-01-09T22:00:00Z", 6 * 60))  # 22:00-03:59
    hours = reference[keep].dt.hour
    assert (
        set(hours) == {22, 23, 0, 1, 2, 3} and keep.sum() == 3 * 6 * 12
    )  # three nights, the first and last split by the edges
    assert "22:00-03:59 UTC" in note
    keep, note = same_hours_of_day(reference, _times("2026-01-09T00:00:00Z", 24 * 60))
    assert keep.all() and note == ""
    with pytest.raises(ValueError, match="widen the window"):
        same_hours_of_day(reference, _times("2026-01-09T22:00:00Z", 30))


def test_a_short_night_window_of_an_unchanged_daily_pattern_is_no_drift():
    """Nights against whole days read as drift; against the reference's nights they do not."""
    rng = np.random.default_rng(3)

    def daily(times: pd.Series) -> pd.DataFrame:
        hour = times.dt.hour + times.dt.minute / 60
        level = 50 + 40 * np.sin(2 * np.pi * (hour - 8) / 24)
        return pd.DataFrame({"timestamp": times, "cpu": level + rng.normal(0, 3, len(times))})

    reference = daily(_times("2026-01-05", 3 * 24 * 12, "5min"))
    night = daily(_times("2026-01-09T00:00:00Z", 6 * 60))
    whole = drift_report(reference, night, ["cpu"])
    keep, _ = same_hours_of_day(reference["timestamp"], night["timestamp"])
    matched = drift_report(reference[keep], night, ["cpu"])
    assert whole.drift_share == 1.0 and matched.drift_share == 0.0
