import math

import numpy as np
import pytest

from aiops.canary import (
    ArmStats,
    CanaryPolicy,
    analyse,
    histogram_quantile,
    score_shift,
    two_proportion_pvalue,
)

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, math.inf)
SCORE_BOUNDS = (0.5, 1.0, 2.0, 3.0, 4.0, math.inf)


def cumulative(bounds, counts):
    return dict(zip(bounds, np.cumsum(counts).tolist(), strict=True))


def arm(
    requests=1000, errors=1, anomalies=10, latency=(600, 300, 80, 15, 5, 0), scores=(500, 300, 150, 40, 8, 2)
):
    return ArmStats(
        requests=requests,
        errors=errors,
        rows=requests,
        anomalies=anomalies,
        latency_buckets=cumulative(LATENCY_BOUNDS, latency),
        score_buckets=cumulative(SCORE_BOUNDS, scores),
    )


def test_histogram_quantile_matches_prometheus_interpolation():
    buckets = {0.1: 50, 0.2: 100, math.inf: 100}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 10, math.inf: 100}) == pytest.approx(0.1)  # in +Inf: last bound
    assert math.isnan(histogram_quantile(0.5, {}))
    # as Prometheus: no +Inf bucket or a count that is not a number gives NaN; a count below the
    # one before it (buckets scraped a moment apart) is raised to it
    assert math.isnan(histogram_quantile(0.5, {0.1: 50, 0.2: 100}))
    assert math.isnan(histogram_quantile(0.5, {0.1: float("nan"), 0.2: 100, math.inf: 100}))
    # ranked 60th of 100: in the third bucket, from the second's count raised to 50 (0.2333 unraised)
    assert histogram_quantile(0.6, {0.1: 50, 0.2: 40, 0.3: 100, math.inf: 100}) == pytest.approx(0.22)


def test_two_proportion_test_is_one_sided():
    assert two_proportion_pvalue(5, 1000, 50, 1000) < 1e-6
    assert two_proportion_pvalue(50, 1000, 5, 1000) > 0.99
    assert two_proportion_pvalue(0, 100, 0, 100) == 1.0


def test_equal_arms_promote():
    verdict = analyse(arm(), arm(errors=2))
    assert verdict.promote and "within policy" in verdict.reasons[0]
    assert verdict.evidence["scores"]["js_distance"] == pytest.approx(0.0)


def test_error_regression_rolls_back():
    verdict = analyse(arm(errors=1), arm(errors=40))
    assert not verdict.promote and "error rate" in verdict.reasons[0]


def test_small_error_increase_within_tolerance_promotes():
    assert analyse(arm(requests=20000, errors=20), arm(requests=20000, errors=60)).promote


def test_latency_regression_rolls_back():
    slow = arm(latency=(100, 200, 300, 250, 150, 0))
    verdict = analyse(arm(), slow)
    assert not verdict.promote and "p95 latency" in " ".join(verdict.reasons)


def test_a_few_milliseconds_slower_is_not_a_regression():
    fast = arm(latency=(1000, 0, 0, 0, 0, 0))  # every request under 5 ms
    slower = arm(latency=(500, 500, 0, 0, 0, 0))  # p95 between 5 and 10 ms: x1.9, +4.5 ms
    verdict = analyse(fast, slower)
    assert verdict.promote, verdict.reasons
    assert verdict.evidence["latency"]["ratio"] > 1.5


def test_score_distribution_shift_rolls_back():
    jumpy = arm(scores=(100, 100, 200, 250, 250, 100), anomalies=350)
    verdict = analyse(arm(), jumpy)
    assert not verdict.promote and "distribution shifted" in " ".join(verdict.reasons)
    p, distance = score_shift(arm().score_buckets, jumpy.score_buckets)
    assert p < 1e-6 and distance > 0.2


def test_a_shifted_distribution_with_the_usual_alarm_rate_promotes():
    """A model retrained on changed traffic scores differently; what matters is how often it alarms."""
    reshaped = arm(scores=(100, 100, 200, 250, 250, 100), anomalies=12)
    verdict = analyse(arm(), reshaped)
    assert verdict.promote, verdict.reasons
    assert verdict.evidence["scores"]["shifted"] and verdict.evidence["scores"]["js_distance"] > 0.2


def test_a_silent_canary_rolls_back_only_when_the_policy_sets_a_floor():
    silent = arm(anomalies=0)
    assert analyse(arm(anomalies=40), silent).promote  # default: a quieter model may be intended
    verdict = analyse(arm(anomalies=40), silent, CanaryPolicy(min_anomaly_rate_ratio=0.25))
    assert not verdict.promote and "far fewer alarms" in verdict.reasons[0]
    assert verdict.evidence["scores"]["fewer_anomalies_p_value"] < 0.01
    # a little quieter, or too few alarms on either arm to tell: no evidence of a fault
    assert analyse(arm(anomalies=40), arm(anomalies=30), CanaryPolicy(min_anomaly_rate_ratio=0.25)).promote
    assert analyse(arm(anomalies=2), silent, CanaryPolicy(min_anomaly_rate_ratio=0.25)).promote


def test_too_little_traffic_is_inconclusive():
    verdict = analyse(arm(), arm(requests=50), CanaryPolicy(min_requests=200))
    assert not verdict.promote and verdict.reasons[0].startswith("inconclusive: canary")


def test_a_few_errors_on_a_small_arm_are_judged_exactly():
    # 0/1000 against 2/200: a pooled z-test gives p = 0.0008; Fisher's exact test 0.028.
    assert two_proportion_pvalue(0, 1000, 2, 200) == pytest.approx(0.0278, abs=5e-4)
    assert two_proportion_pvalue(0, 1000, 2, 200) > CanaryPolicy().alpha
    # Extrapolated counts from increase() are not whole: they are rounded, not rejected.
    assert two_proportion_pvalue(0.4, 999.6, 40.2, 1000.3) < 1e-6


@pytest.mark.parametrize(
    ("canary", "missing"),
    [
        (ArmStats(1000, 1, 1000, 10, {}, cumulative(SCORE_BOUNDS, (500, 300, 150, 40, 8, 2))), "latency"),
        (
            ArmStats(1000, 1, 1000, 10, cumulative(LATENCY_BOUNDS, (600, 300, 80, 15, 5, 0)), {}),
            "anomaly-score",
        ),
        (ArmStats(1000, 1, 1000, 10, cumulative(LATENCY_BOUNDS, (0,) * 6), {}), "latency or anomaly-score"),
    ],
)
def test_a_missing_histogram_is_inconclusive_not_a_pass(canary, missing):
    verdict = analyse(arm(), canary)
    assert not verdict.promote
    assert verdict.reasons[0].startswith(f"inconclusive: no usable {missing} histogram for canary (")


@pytest.mark.parametrize("broken", ["interior", "inf"])
@pytest.mark.parametrize("side", ["stable", "canary"])
def test_a_latency_histogram_with_a_nan_bucket_is_inconclusive_not_a_pass(side, broken):
    buckets = dict(arm().latency_buckets)
    buckets[0.01 if broken == "interior" else math.inf] = float("nan")
    bad = ArmStats(1000, 1, 1000, 10, buckets, arm().score_buckets)
    slow = arm(latency=(0, 0, 0, 0, 0, 1000))  # every request over 100 ms: far slower
    verdict = analyse(bad, slow) if side == "stable" else analyse(arm(), bad)
    assert not verdict.promote
    assert verdict.reasons[0].startswith(f"inconclusive: no usable latency histogram for {side}")


def test_a_stable_p95_of_zero_leaves_the_absolute_increase_to_decide():
    zero = (0.0, *LATENCY_BOUNDS)
    stable = ArmStats(1000, 1, 1000, 10, cumulative(zero, (1000, 0, 0, 0, 0, 0, 0)), arm().score_buckets)
    slower = ArmStats(1000, 1, 1000, 10, cumulative(zero, (0, 0, 0, 0, 0, 1000, 0)), arm().score_buckets)
    verdict = analyse(stable, slower)
    assert not verdict.promote and "p95 latency" in verdict.reasons[0]
    assert math.isnan(verdict.evidence["latency"]["ratio"])
    assert analyse(stable, stable).promote


def test_counts_that_are_not_numbers_are_inconclusive():
    nan = float("nan")
    broken = ArmStats(nan, nan, nan, nan, arm().latency_buckets, arm().score_buckets)
    verdict = analyse(arm(), broken)
    assert not verdict.promote and verdict.reasons[0].startswith("inconclusive: canary's counts")
    verdict = analyse(broken, arm())
    assert not verdict.promote and verdict.reasons[0].startswith("inconclusive: stable's counts")
