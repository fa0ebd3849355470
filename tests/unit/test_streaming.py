"""Streaming detectors: causality, calibration, behaviour on injected anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.detectors.streaming import (
    RobustChangeDetector,
    WindowedGaussianDetector,
    suppress_repeats,
    tail_probability,
)

DETECTORS = [WindowedGaussianDetector, RobustChangeDetector]


def series(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    daily = 3.0 * np.sin(np.arange(n) * 2 * np.pi / 288)
    stamps = pd.date_range("2020-01-01", periods=n, freq="5min").to_numpy(dtype="datetime64[ns]")
    return 50.0 + daily + rng.normal(0.0, 1.0, n), stamps


def run(detector_cls: type, values: np.ndarray, stamps: np.ndarray, probation: int = 225) -> np.ndarray:
    detector = detector_cls()
    detector.fit(values[:probation], stamps[:probation])
    return detector.score(values, stamps)


@pytest.mark.parametrize("detector_cls", DETECTORS)
def test_scores_are_causal(detector_cls: type) -> None:
    values, stamps = series()
    before = run(detector_cls, values, stamps)
    changed = values.copy()
    cut = 900
    changed[cut + 1 :] = np.random.default_rng(5).normal(500.0, 50.0, len(values) - cut - 1)
    after = run(detector_cls, changed, stamps)
    np.testing.assert_array_equal(before[: cut + 1], after[: cut + 1])
    assert not np.array_equal(before[cut + 1 :], after[cut + 1 :])


@pytest.mark.parametrize("detector_cls", DETECTORS)
def test_scores_are_calibrated_to_unit_interval(detector_cls: type) -> None:
    values, stamps = series()
    scores = run(detector_cls, values, stamps)
    assert scores.shape == values.shape
    assert np.isfinite(scores).all()
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # Too little history: no evidence yet.
    assert (scores[:30] == 0.0).all()


@pytest.mark.parametrize("detector_cls", DETECTORS)
def test_injected_spike_scores_higher_than_normal_rows(detector_cls: type) -> None:
    values, stamps = series()
    values[1000] += 15.0
    scores = run(detector_cls, values, stamps)
    detector = detector_cls()
    assert scores[1000] >= detector.threshold
    assert scores[1000] > np.quantile(scores[300:1000], 0.999)


def test_robust_detector_flags_a_level_shift_once() -> None:
    values, stamps = series()
    values[1000:] += 12.0
    scores = run(RobustChangeDetector, values, stamps)
    alarms = np.flatnonzero(scores >= RobustChangeDetector().threshold)
    assert alarms[0] == 1000
    # Repeated alarms of the same episode are suppressed for `refractory` rows.
    assert not ((alarms > 1000) & (alarms <= 1200)).any()


@pytest.mark.parametrize("detector_cls", DETECTORS)
def test_constant_series_stays_quiet(detector_cls: type) -> None:
    values = np.full(800, 7.0)
    stamps = pd.date_range("2020-01-01", periods=800, freq="5min").to_numpy(dtype="datetime64[ns]")
    assert (run(detector_cls, values, stamps) == 0.0).all()


@pytest.mark.parametrize("detector_cls", DETECTORS)
def test_scores_do_not_depend_on_units(detector_cls: type) -> None:
    values, stamps = series()
    values[1000] += 6.0
    np.testing.assert_allclose(
        run(detector_cls, values, stamps), run(detector_cls, 1000.0 * values - 3.0, stamps), atol=1e-9
    )


def test_tail_probability() -> None:
    np.testing.assert_allclose(
        tail_probability(np.array([0.0, 1.959964, np.nan, np.inf])), [1.0, 0.05, 1.0, 0.0]
    )


def test_suppress_repeats_is_measured_from_the_last_reported_alarm() -> None:
    scores = np.zeros(20)
    scores[[2, 3, 5, 6, 9]] = 1.0
    out = suppress_repeats(scores, 0.5, refractory=3)
    assert list(np.flatnonzero(out)) == [2, 6]


@pytest.mark.parametrize(
    "kwargs", [{"window": 1}, {"min_history": 1}, {"window": 10, "min_history": 20}, {"refractory": -1}]
)
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="min_history"):
        RobustChangeDetector(**kwargs)
