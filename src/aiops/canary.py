"""Canary analysis: is the new model version at least as good as the stable one, in production?

A canary is judged on what the serving metrics say during an analysis window, not on how long
it has been running. Each arm (stable, canary) is summarised as counts from Prometheus:
requests and errors, a latency histogram and an anomaly-score histogram (cumulative buckets,
the Prometheus layout). The verdict:

* **inconclusive** (roll back) when either arm has fewer requests or scored rows than the
  policy's minimum: too little evidence is not a pass;
* **inconclusive** too when evidence is missing: a count that is not a number, or an arm
  without a usable latency or anomaly-score histogram (observations, a ``+Inf`` bucket, every
  count a number). A check that cannot be made is not passed;
* **error rate**: one-sided Fisher exact test (exact at the handful of errors a canary
  usually shows, where a z-test overstates significance); roll back when the canary's error
  rate is significantly higher *and* exceeds the stable one by more than a tolerance. An error
  is any request not answered ``ok``: both arms see the same traffic, so a canary that rejects
  what the stable arm accepts fails like one that crashes;
* **latency**: roll back when the canary's p95 (from the histogram) exceeds the stable p95 by
  more than a ratio;
* **anomaly rate**: roll back when the canary flags significantly more rows than the stable
  arm (one-sided Fisher test), by more than a ratio and an absolute increase. A model that
  suddenly flags far more rows than the one it replaces is suspicious even if it is faster; far
  fewer only when the policy asks (``min_anomaly_rate_ratio``), since a retrained model is
  often meant to be quieter;
* **score distribution**: chi-square test on the score-histogram bucket counts plus the
  Jensen-Shannon distance as effect size, recorded as evidence and named in the reason of an
  anomaly-rate rollback. A shift alone does not roll back: a retrained model's scores are
  expected to move, and what reaches an SRE is the alarms.

Statistics come from scipy; no serving code is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArmStats:
    """What the serving metrics say about one arm over the analysis window.

    Attributes:
        requests: Requests received (answered or not).
        errors: Requests not answered ``ok``: server and client errors, and requests the
            client could not get an answer to.
        rows: Rows scored.
        anomalies: Rows flagged as anomalous.
        latency_buckets: Cumulative latency histogram: upper bound (seconds) -> count.
        score_buckets: Cumulative anomaly-score histogram: upper bound -> count.
    """

    requests: float
    errors: float
    rows: float
    anomalies: float
    latency_buckets: Mapping[float, float] = field(default_factory=dict)
    score_buckets: Mapping[float, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """Share of requests that failed."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def anomaly_rate(self) -> float:
        """Share of scored rows flagged."""
        return self.anomalies / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class CanaryPolicy:
    """Thresholds of the canary analysis.

    Attributes:
        min_requests: Requests each arm must have served.
        min_rows: Rows each arm must have scored.
        alpha: Significance level of the tests.
        max_error_rate_increase: Tolerated absolute error-rate increase.
        max_latency_ratio: Tolerated canary p95 / stable p95.
        min_latency_increase_s: A slower p95 counts only beyond this many seconds: at a few
            milliseconds, the ratio of two p95s on a shared node is noise (and the canary, with
            the smaller share of traffic, meets more cold caches), not a regression.
        max_score_js_distance: Jensen-Shannon distance between the arms' score distributions
            above which the shift is reported as such.
        max_anomaly_rate_ratio: Tolerated canary / stable anomaly rate.
        max_anomaly_rate_increase: Tolerated absolute anomaly-rate increase.
        min_anomaly_rate_ratio: Opt-in floor of the canary / stable anomaly rate (0: off). A
            canary that flags significantly fewer rows than this share of the stable arm's is
            rolled back too: for teams that would rather keep a noisy model than risk a silent
            one (a calibration bug, a feature that went missing) on the way to production.

    Scores are judged by what they do to alarms: a canary is rolled back when it flags
    significantly more rows than the stable arm (beyond both tolerances). A shifted score
    distribution alone is not a fault: a model retrained because the traffic changed is expected
    to score it differently from the stale one, and the promotion gate has already shown on
    labelled data that it detects better. The distance and its chi-square test are recorded as
    evidence either way.
    """

    min_requests: int = 200
    min_rows: int = 200
    alpha: float = 0.01
    max_error_rate_increase: float = 0.005
    max_latency_ratio: float = 1.5
    min_latency_increase_s: float = 0.01
    max_score_js_distance: float = 0.2
    max_anomaly_rate_ratio: float = 1.5
    max_anomaly_rate_increase: float = 0.01
    min_anomaly_rate_ratio: float = 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    """The decision and the evidence behind it."""

    promote: bool
    reasons: tuple[str, ...]
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for logging."""
        return asdict(self)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` on cumulative buckets (linear within a bucket).

    NaN, as in Prometheus, without a ``+Inf`` bucket, with a count that is not a number, or
    with no observation. Counts that decrease from one bound to the next (buckets scraped at
    slightly different moments) are raised to the running maximum, as Prometheus does.
    """
    if not buckets or math.inf not in buckets:
        return float("nan")
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    if not all(math.isfinite(c) for c in counts):
        return float("nan")
    counts = np.maximum.accumulate(counts).tolist()
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the quantile is in the +Inf bucket: report the last finite bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return bounds[-1]


def _observed(buckets: Mapping[float, float]) -> bool:
    """Whether a cumulative histogram holds observations, every count a number, and its +Inf bucket."""
    counts = list(buckets.values())
    return math.inf in buckets and all(math.isfinite(c) for c in counts) and max(counts, default=0.0) > 0


def _bucket_counts(buckets: Mapping[float, float], bounds: Sequence[float]) -> np.ndarray:
    cumulative = np.array([buckets.get(b, 0.0) for b in bounds], dtype=float)
    return np.diff(np.concatenate([[0.0], cumulative])).clip(min=0)


def two_proportion_pvalue(errors_a: float, n_a: float, errors_b: float, n_b: float) -> float:
    """One-sided p-value that proportion b exceeds proportion a (Fisher's exact test).

    Counts from Prometheus' ``increase()`` are extrapolated and need not be whole: they are
    rounded. Exact at any count, so a few errors on a small arm are not overstated.
    """
    from scipy.stats import fisher_exact

    if not n_a > 0 or not n_b > 0:
        return 1.0
    a, b = round(min(max(errors_a, 0.0), n_a)), round(min(max(errors_b, 0.0), n_b))
    table = [[b, round(n_b) - b], [a, round(n_a) - a]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def score_shift(stable: Mapping[float, float], canary: Mapping[float, float]) -> tuple[float, float]:
    """Chi-square p-value and Jensen-Shannon distance between two score histograms."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    bounds = sorted(set(stable) | set(canary))
    a, b = _bucket_counts(stable, bounds), _bucket_counts(canary, bounds)
    keep = (a + b) > 0
    if keep.sum() < 2 or a.sum() == 0 or b.sum() == 0:
        return 1.0, 0.0
    table = np.vstack([a[keep], b[keep]])
    p_value = float(chi2_contingency(table)[1])
    distance = float(jensenshannon(a[keep] / a.sum(), b[keep] / b.sum(), base=2))
    return p_value, distance


def analyse(stable: ArmStats, canary: ArmStats, policy: CanaryPolicy = CanaryPolicy()) -> CanaryVerdict:
    """Compare the canary with the stable arm; promote only when every check passes."""
    evidence: dict[str, Any] = {
        "stable": {
            "requests": stable.requests,
            "error_rate": stable.error_rate,
            "anomaly_rate": stable.anomaly_rate,
        },
        "canary": {
            "requests": canary.requests,
            "error_rate": canary.error_rate,
            "anomaly_rate": canary.anomaly_rate,
        },
        "policy": asdict(policy),
    }
    reasons: list[str] = []
    for name, arm in (("stable", stable), ("canary", canary)):
        counts = (arm.requests, arm.errors, arm.rows, arm.anomalies)
        if not all(math.isfinite(c) for c in counts):
            reasons.append(f"inconclusive: {name}'s counts are not all numbers {counts}")
        elif not (arm.requests >= policy.min_requests and arm.rows >= policy.min_rows):
            reasons.append(
                f"inconclusive: {name} served {arm.requests:.0f} requests / {arm.rows:.0f} rows, "
                f"fewer than the {policy.min_requests} / {policy.min_rows} required"
            )
        else:
            missing = [
                what
                for what, buckets in (("latency", arm.latency_buckets), ("anomaly-score", arm.score_buckets))
                if not _observed(buckets)
            ]
            if missing:
                reasons.append(
                    f"inconclusive: no usable {' or '.join(missing)} histogram for {name} (no observation, "
                    "no +Inf bucket, or a count that is not a number)"
                )
    if reasons:
        return CanaryVerdict(False, tuple(reasons), evidence)

    p_err = two_proportion_pvalue(stable.errors, stable.requests, canary.errors, canary.requests)
    increase = canary.error_rate - stable.error_rate
    evidence["error_rate"] = {"p_value": p_err, "increase": increase}
    if p_err < policy.alpha and increase > policy.max_error_rate_increase:
        reasons.append(
            f"error rate {canary.error_rate:.4f} vs stable {stable.error_rate:.4f} "
            f"(+{increase:.4f}, p={p_err:.2g})"
        )

    p95_stable = histogram_quantile(0.95, stable.latency_buckets)
    p95_canary = histogram_quantile(0.95, canary.latency_buckets)
    # Both p95s are finite: _observed let through only histograms with observations, a +Inf
    # bucket and finite counts. A stable p95 of 0 (everything in a bucket bounded at 0) gives no
    # ratio (NaN): the absolute increase then decides alone.
    ratio = p95_canary / p95_stable if p95_stable > 0 else float("nan")
    evidence["latency"] = {"p95_stable_s": p95_stable, "p95_canary_s": p95_canary, "ratio": ratio}
    slower = math.isnan(ratio) or ratio > policy.max_latency_ratio
    if slower and p95_canary - p95_stable > policy.min_latency_increase_s:
        reasons.append(
            f"p95 latency {p95_canary * 1000:.1f} ms vs stable {p95_stable * 1000:.1f} ms (x{ratio:.2f})"
        )

    p_shift, distance = score_shift(stable.score_buckets, canary.score_buckets)
    shifted = p_shift < policy.alpha and distance > policy.max_score_js_distance
    p_rate = two_proportion_pvalue(stable.anomalies, stable.rows, canary.anomalies, canary.rows)
    rate_ratio = canary.anomaly_rate / max(stable.anomaly_rate, 1.0 / max(stable.rows, 1.0))
    evidence["scores"] = {
        "chi2_p_value": p_shift,
        "js_distance": distance,
        "shifted": shifted,
        "anomaly_rate_p_value": p_rate,
        "anomaly_rate_ratio": rate_ratio,
    }
    if (
        p_rate < policy.alpha
        and rate_ratio > policy.max_anomaly_rate_ratio
        and canary.anomaly_rate - stable.anomaly_rate > policy.max_anomaly_rate_increase
    ):
        shift = (
            f"anomaly-score distribution shifted (JS distance {distance:.3f}, p={p_shift:.2g}); "
            if shifted
            else ""
        )
        reasons.append(
            f"{shift}anomaly rate {canary.anomaly_rate:.4f} vs stable {stable.anomaly_rate:.4f} "
            f"(x{rate_ratio:.2f}, p={p_rate:.2g}): the canary would raise far more alarms"
        )
    if policy.min_anomaly_rate_ratio > 0:
        p_fewer = two_proportion_pvalue(canary.anomalies, canary.rows, stable.anomalies, stable.rows)
        evidence["scores"]["fewer_anomalies_p_value"] = p_fewer
        if p_fewer < policy.alpha and rate_ratio < policy.min_anomaly_rate_ratio:
            reasons.append(
                f"anomaly rate {canary.anomaly_rate:.4f} vs stable {stable.anomaly_rate:.4f} "
                f"(x{rate_ratio:.2f}, p={p_fewer:.2g}): the canary would raise far fewer alarms "
                f"(policy floor x{policy.min_anomaly_rate_ratio:.2f})"
            )
    if reasons:
        return CanaryVerdict(False, tuple(reasons), evidence)
    return CanaryVerdict(
        True,
        (
            f"canary within policy: error rate +{increase:.4f} (p={p_err:.2g}), p95 x{ratio:.2f}, "
            f"score JS distance {distance:.3f}",
        ),
        evidence,
    )
