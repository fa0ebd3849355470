"""Data drift between a champion's training reference and a recent window (Evidently)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.drift import drift_report


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


def test_no_column_with_values_in_both_windows_is_a_clear_error():
    rng = np.random.default_rng(1)
    reference, current = _frame(rng), _frame(rng)
    current[:] = np.nan
    with pytest.raises(ValueError, match="no column has values in both windows"):
        drift_report(reference, current, list(reference.columns))
