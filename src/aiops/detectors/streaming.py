"""Online, unsupervised detectors for univariate streams (NAB's setting).

Each detector scores every row from the rows before it only (causal rolling windows), maps its
test statistic to ``[0, 1]`` through a Gaussian tail probability (``1 - p``) and alarms above a
fixed threshold. All defaults were chosen a priori, not tuned on NAB's labels:

* ``window = 600`` rows: about the probationary period of a 4,000-row NAB file, i.e. the history
  the benchmark itself grants before scoring starts.
* thresholds: ``p < 1e-4`` for the Gaussian baseline; ``p < 1e-5`` for the robust detector, which
  runs two tests (Bonferroni) on heavy-tailed operations data.
* ``refractory = 200`` rows: once an anomaly is reported, the same episode is not reported again
  for a while (operators want one page per incident, not one per sample).

These two are baselines. The default, :class:`~aiops.detectors.nab_detectors.NoveltyDetector`
(``novelty``), scores multi-scale novelty calibrated against each file's own history instead of a
Gaussian; see :mod:`aiops.detectors.nab_detectors`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from aiops.detectors.nab_detectors import NoveltyDetector

# Robust z-scores: an IQR of 1.349 sigma for a Gaussian.
_IQR_TO_SIGMA = 1.349
_erfc = np.frompyfunc(math.erfc, 1, 1)


def tail_probability(z: np.ndarray) -> np.ndarray:
    """Two-sided Gaussian tail probability ``P(|Z| >= |z|)``; NaN maps to 1 (no evidence)."""
    z = np.nan_to_num(np.abs(np.asarray(z, dtype=np.float64)), nan=0.0, posinf=np.inf)
    return np.asarray(_erfc(z / math.sqrt(2.0)), dtype=np.float64)


def _past(values: np.ndarray) -> pd.Series:
    """The series shifted by one row, so a rolling window ending at row i covers rows < i."""
    return pd.Series(values, dtype=np.float64).shift(1)


def _scale_floor(values: np.ndarray) -> float:
    """A tiny scale relative to the series' magnitude: keeps z finite on constant stretches."""
    magnitude = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return 1e-6 * max(magnitude, 1.0)


def _standardise(deviation: np.ndarray, scale: np.ndarray, floor: float) -> np.ndarray:
    """``deviation / scale``, 0 where there is no deviation (a constant series stays quiet)."""
    z = np.abs(deviation) / np.maximum(scale, floor)
    return np.where(np.abs(deviation) > 0, z, 0.0)


def suppress_repeats(scores: np.ndarray, threshold: float, refractory: int) -> np.ndarray:
    """Zero the scores of alarms within ``refractory`` rows after a reported alarm.

    Causal: whether row ``i`` is suppressed depends on the scores of rows ``< i`` only.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    last_reported = -refractory - 1
    for row in np.flatnonzero(out >= threshold):
        if row - last_reported <= refractory:
            out[row] = 0.0
        else:
            last_reported = int(row)
    return out


class WindowedGaussianDetector:
    """Baseline: z-score of each value against the mean and std of the previous ``window`` rows.

    Args:
        window: Rows of history for the rolling mean and standard deviation.
        threshold: Alarm threshold on ``1 - p``.
        min_history: Rows of history needed before a row is scored (earlier rows score 0).

    """

    kind = "windowed_gaussian"

    def __init__(self, window: int = 600, threshold: float = 0.9999, min_history: int = 30) -> None:
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError(
                f"need 2 <= min_history <= window, got window={window}, min_history={min_history}"
            )
        self.window = window
        self.threshold = threshold
        self.min_history = min_history
        self._floor = 1e-6

    def fit(self, values: np.ndarray, timestamps: np.ndarray) -> None:
        """Set the scale floor from the probationary rows (their magnitude only)."""
        self._floor = _scale_floor(np.asarray(values, dtype=np.float64))

    def score(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Score every row from the rows before it; ``1 - p`` of its two-sided z-score."""
        x = np.asarray(values, dtype=np.float64)
        rolling = _past(x).rolling(self.window, min_periods=self.min_history)
        mean, std = rolling.mean().to_numpy(), rolling.std(ddof=1).to_numpy()
        z = _standardise(x - mean, std, self._floor)
        return np.where(np.isnan(mean), 0.0, 1.0 - tail_probability(z))


class RobustChangeDetector:
    """Robust level and change test with alarm suppression.

    Two robust z-scores per row against the previous ``window`` rows: the value against their
    median (a level shift or spike), and the first difference against the median of past
    differences (a sudden change, even inside the usual range). Scales are IQR / 1.349, or the
    standard deviation where the IQR is zero (quantised or mostly-constant metrics). The smaller
    p-value, doubled (Bonferroni), gives the score ``1 - p``; alarms within ``refractory`` rows
    after a reported one are suppressed (score 0).

    Args:
        window: Rows of history for the rolling statistics.
        threshold: Alarm threshold on ``1 - p``.
        refractory: Rows after a reported alarm during which alarms are suppressed.
        min_history: Rows of history needed before a row is scored (earlier rows score 0).

    """

    kind = "robust_change"

    def __init__(
        self, window: int = 600, threshold: float = 0.99999, refractory: int = 200, min_history: int = 30
    ) -> None:
        if window < 2 or min_history < 2 or min_history > window or refractory < 0:
            raise ValueError(
                f"need 2 <= min_history <= window and refractory >= 0, got window={window}, "
                f"min_history={min_history}, refractory={refractory}"
            )
        self.window = window
        self.threshold = threshold
        self.refractory = refractory
        self.min_history = min_history
        self._floor = 1e-6

    def fit(self, values: np.ndarray, timestamps: np.ndarray) -> None:
        """Set the scale floor from the probationary rows (their magnitude only)."""
        self._floor = _scale_floor(np.asarray(values, dtype=np.float64))

    def _robust_z(self, x: np.ndarray) -> np.ndarray:
        rolling = _past(x).rolling(self.window, min_periods=self.min_history)
        median = rolling.median().to_numpy()
        iqr = (rolling.quantile(0.75) - rolling.quantile(0.25)).to_numpy() / _IQR_TO_SIGMA
        scale = np.where(iqr > 0, iqr, rolling.std(ddof=1).to_numpy())
        z = _standardise(x - median, scale, self._floor)
        return np.where(np.isnan(median), np.nan, z)

    def raw_score(self, values: np.ndarray) -> np.ndarray:
        """``1 - p`` per row before alarm suppression."""
        x = np.asarray(values, dtype=np.float64)
        level = self._robust_z(x)
        diff = np.concatenate([[np.nan], np.diff(x)])
        change = self._robust_z(diff)
        p = np.minimum(1.0, 2.0 * np.minimum(tail_probability(level), tail_probability(change)))
        return np.where(np.isnan(level), 0.0, 1.0 - p)

    def score(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Score every row from the rows before it, then suppress repeated alarms."""
        return suppress_repeats(self.raw_score(values), self.threshold, self.refractory)


#: Streaming detectors by name, for ``aiops benchmark nab --detector NAME``.
STREAMING_DETECTORS: dict[str, type] = {
    "novelty": NoveltyDetector,
    "robust_change": RobustChangeDetector,
    "windowed_gaussian": WindowedGaussianDetector,
}
DEFAULT_STREAMING_DETECTOR = "novelty"
