"""Streaming detectors: causality, calibration, behaviour on injected anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.detectors.nab_detectors import (
    NoveltyDetector,
    detect_period,
    nearest_past_distance,
    online_tail_probability,
    seasonal_distance,
    suppress_within_fraction,
)
from aiops.detectors.streaming import (
    DEFAULT_STREAMING_DETECTOR,
    STREAMING_DETECTORS,
    RobustChangeDetector,
    WindowedGaussianDetector,
    suppress_repeats,
    tail_probability,
)

DETECTORS = [WindowedGaussianDetector, RobustChangeDetector, NoveltyDetector]


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


# --------------------------------------------------------------------------- novelty detector


def test_novelty_is_the_registered_default() -> None:
    assert STREAMING_DETECTORS[DEFAULT_STREAMING_DETECTOR] is NoveltyDetector
    assert NoveltyDetector.kind == DEFAULT_STREAMING_DETECTOR


def test_nearest_past_distance_uses_only_rows_outside_the_exclusion_zone() -> None:
    stat = np.array([0.0, 1.0, 5.0, 1.5, np.nan, 10.0, 5.0])
    np.testing.assert_allclose(
        nearest_past_distance(stat, exclusion=1, min_history=1), [np.nan, 1.0, 4.0, 0.5, np.nan, 5.0, 0.0]
    )
    # exclusion=2: row 3 is compared with rows 0..1 only, row 6 with rows 0..4 (5.0 at row 2).
    np.testing.assert_allclose(
        nearest_past_distance(stat, exclusion=2, min_history=2),
        [np.nan, np.nan, np.nan, 0.5, np.nan, 5.0, 0.0],
    )
    with pytest.raises(ValueError, match="exclusion"):
        nearest_past_distance(stat, exclusion=0)


def test_seasonal_distance_compares_the_same_phase_of_earlier_cycles() -> None:
    cycle = np.array([0.0, 0.0, 10.0, 0.0])
    values = np.tile(cycle, 4)
    values[14] = 0.0  # the peak of the last cycle does not come
    d = seasonal_distance(values, period=4, tolerance=0)
    assert np.isnan(d[:4]).all()
    assert np.nanmax(np.delete(d, 14)) == 0.0
    assert d[14] == 10.0
    with pytest.raises(ValueError, match="tolerance"):
        seasonal_distance(values, period=4, tolerance=4)


def test_detect_period_finds_a_clear_cycle_only() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(600)
    assert detect_period(np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.2, t.size)) == 48
    assert detect_period(rng.normal(0, 1, t.size)) is None
    assert detect_period(np.cumsum(rng.normal(0, 1, t.size))) is None  # a random walk decays slowly
    assert detect_period(np.full(600, 3.0)) is None
    assert detect_period(np.arange(10.0)) is None  # too short to see two cycles


def test_online_tail_probability_is_causal_and_extends_beyond_the_largest_value() -> None:
    rng = np.random.default_rng(2)
    stat = rng.exponential(1.0, 400)
    stat[300] = 50.0
    stat[310] = np.nan
    p, n = online_tail_probability(stat, refit_every=25, min_history=50)
    assert (p[:50] == 1.0).all() and (n[:50] == 0).all()
    assert n[300] == 300 and p[310] == 1.0
    # Far beyond everything seen: rarer than a new record (1 / (n + 1)).
    assert p[300] < 1e-6
    changed = stat.copy()
    changed[301:] = 1e6
    p_changed, _ = online_tail_probability(changed, refit_every=25, min_history=50)
    np.testing.assert_array_equal(p[:301], p_changed[:301])
    assert ((p > 0) & (p <= 1)).all()


def test_suppress_within_fraction_grows_with_the_elapsed_rows() -> None:
    scores = np.zeros(400)
    scores[[100, 104, 106, 300, 314, 316]] = 1.0
    out = suppress_within_fraction(scores, 0.5, fraction=0.05)
    # 100 suppresses up to row 105; 300 up to row 315.
    assert list(np.flatnonzero(out)) == [100, 106, 300, 316]
    assert list(np.flatnonzero(suppress_within_fraction(scores, 0.5, 0.0))) == [100, 104, 106, 300, 314, 316]


def test_novelty_threshold_is_fixed_whatever_the_data() -> None:
    a, b = NoveltyDetector(), NoveltyDetector()
    a.fit(np.zeros(300), np.zeros(300))
    b.fit(np.random.default_rng(3).normal(1e6, 1e3, 700), np.zeros(700))
    assert a.threshold == b.threshold == NoveltyDetector().threshold == 0.5


def test_novelty_flags_a_level_shift_once() -> None:
    values, stamps = series(2500)
    values[1500:] += 8.0
    scores = run(NoveltyDetector, values, stamps)
    alarms = np.flatnonzero(scores >= NoveltyDetector().threshold)
    assert 1500 in alarms
    # The new level is novel only while it is new: no alarm stream after the shift.
    assert len(alarms[alarms > 1500]) <= 2


def test_novelty_flags_a_missing_daily_peak() -> None:
    n, period = 288 * 10, 288
    rng = np.random.default_rng(4)
    phase = np.arange(n) % period
    values = np.where((phase > 100) & (phase < 180), 80.0, 20.0) + rng.normal(0, 1.0, n)
    stamps = pd.date_range("2020-01-01", periods=n, freq="5min").to_numpy(dtype="datetime64[ns]")
    day = 7 * period
    values[day + 101 : day + 180] = 20.0 + rng.normal(0, 1.0, 79)  # the peak of day 8 does not come
    detector = NoveltyDetector()
    detector.fit(values[:600], stamps[:600])
    assert detector.period == period
    alarms = np.flatnonzero(detector.score(values, stamps) >= detector.threshold)
    alarms = alarms[alarms >= 600]
    assert ((alarms > day + 100) & (alarms < day + 140)).any()
    assert len(alarms) <= 3


def test_novelty_stays_quiet_on_stationary_noise() -> None:
    alarms = []
    for seed in range(5):
        values, stamps = series(3000, seed=seed)
        scores = run(NoveltyDetector, values, stamps, probation=450)
        alarms.append(int(np.sum(scores[450:] >= NoveltyDetector().threshold)))
    # A handful of new records over 12,750 scored rows of pure noise, not a stream of alarms.
    assert sum(alarms) <= 10


def test_novelty_scores_are_invariant_to_affine_rescaling_and_sign() -> None:
    values, stamps = series()
    values[1000] += 6.0
    base = run(NoveltyDetector, values, stamps)
    np.testing.assert_allclose(base, run(NoveltyDetector, -250.0 * values + 1e4, stamps), atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scales": ()}, "scales"),
        ({"scales": (1, 1)}, "scales"),
        ({"scales": (0, 4)}, "scales"),
        ({"expected_exceedances": 0.0}, "expected_exceedances"),
        ({"threshold": 1.0}, "threshold"),
        ({"refractory_fraction": -0.1}, "refractory_fraction"),
        ({"tail_fraction": 1.0}, "tail_fraction"),
    ],
)
def test_novelty_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoveltyDetector(**kwargs)
