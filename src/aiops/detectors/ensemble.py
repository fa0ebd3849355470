"""Ensemble: calibrate each member's scores on validation data, combine with weights.

Raw scores of different detectors live on different scales (isolation depth, forecast
z-scores, reconstruction errors), so each member's score is first mapped through the
empirical distribution of its own validation scores to a *surprise*,
``-log10(P[score >= s])``: 1 means "rarer than 90% of validation rows", 3 means "rarer than
99.9%". The ensemble score combines the members' weighted surprises: their weighted mean
(``combine="mean"``: members must agree) or their maximum (``combine="max"``: one member
that sees a fault is enough, which suits members that specialise in different faults).
``combine="any"`` is the maximum too, but of each member's surprise *relative to the surprise of
its own alarm threshold* (:attr:`EnsembleDetector.member_thresholds`, chosen on validation): 1
means "this member alarms", so with the ensemble threshold at 1 the ensemble alarms when any of
the included members does, each at its own operating point. Members whose useful alarm levels
lie at very different tail probabilities (a forecast residual that is rare at 1 in 100, an
isolation depth only at 1 in 10,000) cannot share one surprise threshold; this rule lets each
keep its own. Its weights only include (> 0) or leave out (0) a member.
All members score causally, so the ensemble does too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

_MAX_REFERENCE = 20000  # validation scores kept per member (evenly spaced order statistics)
COMBINE_RULES = ("mean", "max", "any")
#: Smallest alarm level of a member under ``combine="any"`` (a threshold below every validation score).
_MIN_ALARM_SURPRISE = 1e-6


_FLOAT_MAX = float(np.finfo(np.float64).max)
#: The largest ratio a member below its own threshold can have under ``combine="any"``.
_BELOW_ONE = float(np.nextafter(1.0, 0.0))


def nan_to_num(values: np.ndarray, nan: float = 0.0) -> np.ndarray:
    """``np.nan_to_num(values, nan=nan)`` of float values (±inf to ±max float), in a few microseconds.

    numpy's own function spends about 10 µs per call in Python checks, which a served request
    pays for every member; the arithmetic on one row costs less than that.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), nan, np.minimum(np.maximum(values, -_FLOAT_MAX), _FLOAT_MAX))


def finite(value: float, nan: float = 0.0) -> float:
    """:func:`nan_to_num` of one float: NaN to ``nan``, ±inf to ±max float (a served row's scalars)."""
    if math.isnan(value):
        return nan
    return min(max(value, -_FLOAT_MAX), _FLOAT_MAX)


def surprise(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``-log10`` of the empirical tail probability of ``scores`` among sorted ``reference``.

    A NaN score counts as -inf (no evidence), ±inf as the largest finite float.
    """
    n = len(reference)
    above = n - np.searchsorted(reference, nan_to_num(scores, nan=-np.inf), side="left")
    return -np.log10((above + 1.0) / (n + 1.0))


@dataclass
class EnsembleDetector:
    """Weighted combination of calibrated member scores.

    Attributes:
        members: Fitted detectors by name (each with ``score(frame)``).
        weights: Weight per member (normalised when scoring).
        reference: Sorted validation scores per member (the calibration).
        member_thresholds: Each member's own alarm threshold (for per-member reports).
        combine: ``mean`` or ``max`` of the weighted surprises, or ``any`` (see the module
            docstring and :data:`COMBINE_RULES`).
    """

    members: dict[str, Any]
    weights: dict[str, float] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    member_thresholds: dict[str, float] = field(default_factory=dict)
    combine: str = "mean"
    kind: str = "ensemble"

    def calibrate(
        self, validation: pd.DataFrame, scores: Mapping[str, np.ndarray] | None = None
    ) -> EnsembleDetector:
        """Record each member's validation score distribution (no labels involved).

        Args:
            validation: Feature table of the validation period.
            scores: Members' scores of ``validation`` when already computed (saves scoring it
                again); members missing from it are scored here.
        """
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"unknown combine rule '{self.combine}'; choose one of {COMBINE_RULES}")
        known = scores or {}
        for name, detector in self.members.items():
            raw = known[name] if name in known else detector.score(validation)
            if len(raw) != len(validation):
                raise ValueError(
                    f"{len(raw)} validation scores given for member {name}, {len(validation)} rows"
                )
            scores_sorted = np.sort(np.asarray(raw, dtype=float))
            if len(scores_sorted) > _MAX_REFERENCE:
                keep = np.linspace(0, len(scores_sorted) - 1, _MAX_REFERENCE).round().astype(int)
                scores_sorted = scores_sorted[keep]
            self.reference[name] = scores_sorted
        if not self.weights:
            self.weights = {name: 1.0 for name in self.members}
        unknown = set(self.weights) - set(self.members)
        if unknown:
            raise ValueError(
                f"weights given for unknown member(s) {sorted(unknown)}; members: {sorted(self.members)}"
            )
        return self

    def member_surprise(
        self, frame: pd.DataFrame, scores: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Calibrated score of every member for each row (``scores``: raw member scores, if known)."""
        if not self.reference:
            raise RuntimeError("calibrate the ensemble on validation data first")
        known = scores or {}
        return {
            name: surprise(self.reference[name], known[name] if name in known else det.score(frame))
            for name, det in self.members.items()
        }

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Combined weighted surprise of the members (see the module docstring)."""
        raws = {name: detector.score(frame) for name, detector in self.members.items()}
        return self.combine_surprises(self.member_surprise(frame, raws), raws=raws)

    def combine_surprises(
        self,
        parts: Mapping[str, np.ndarray],
        levels: Mapping[str, float] | None = None,
        raws: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The ensemble score from the members' surprises, by :attr:`combine` and :attr:`weights`.

        ``levels``: :meth:`alarm_levels` when the caller holds them already (``any`` only; the
        predictor computes them once at load instead of once per request). ``raws``: the
        members' raw scores behind ``parts``; ``any`` needs them (see :meth:`_below_threshold`).
        """
        total = sum(self.weights.get(name, 0.0) for name in parts)
        if total <= 0:
            raise ValueError("ensemble weights sum to zero")
        if self.combine == "any":
            if raws is None:
                raise ValueError("combine='any' needs the members' raw scores (raws=...)")
            # Each included member's surprise in units of the surprise at its own threshold.
            included = [name for name in parts if self.weights.get(name, 0.0) > 0]
            levels = self.alarm_levels() if levels is None else levels
            return np.stack(
                [self._below_threshold(name, raws[name], parts[name] / levels[name]) for name in included]
            ).max(axis=0)
        weighted = np.stack([self.weights.get(name, 0.0) * value for name, value in parts.items()])
        if self.combine == "max":
            # The strongest weighted evidence wins: a fault only one member can see still alarms.
            return weighted.max(axis=0) * len(parts) / total
        return weighted.sum(axis=0) / total

    def combine_row(
        self, parts: Mapping[str, float], levels: Mapping[str, float], values: Mapping[str, float]
    ) -> float:
        """:meth:`combine_surprises` of one row, on Python floats (the predictor's single rows).

        The same rule with the same operations in the same order, so the same bits; keep the two
        in step (the predictor checks them against each other when it loads a model).
        ``values``: the members' raw scores as ``nan_to_num(raw, nan=-inf)``; ``levels`` as for
        :meth:`combine_surprises` (needed for ``any``).
        """
        total = sum(self.weights.get(name, 0.0) for name in parts)
        if total <= 0:
            raise ValueError("ensemble weights sum to zero")
        if self.combine == "any":
            ratios = []
            for name, part in parts.items():
                if self.weights.get(name, 0.0) > 0:
                    ratio = part / levels[name]
                    below = values[name] < self.member_thresholds[name]
                    ratios.append(min(ratio, _BELOW_ONE) if below else ratio)
            return max(ratios)
        weighted = [self.weights.get(name, 0.0) * part for name, part in parts.items()]
        if self.combine == "max":
            return max(weighted) * len(parts) / total
        return sum(weighted) / total

    def _below_threshold(self, name: str, raw: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Keep ``ratio`` under 1 where the member's raw score is under its own threshold.

        The surprise is a step function of the raw score (the empirical tail among the reference
        scores), so a threshold between two reference scores shares its surprise with every score
        just below it: without this, such a score would read 1, "this member alarms", and alarm
        at the ensemble threshold of 1 while the member itself does not.
        """
        below = nan_to_num(np.asarray(raw, dtype=np.float64), nan=-np.inf) < self.member_thresholds[name]
        return np.where(below, np.minimum(ratio, _BELOW_ONE), ratio)

    def alarm_levels(self) -> dict[str, float]:
        """Each member's surprise at its own alarm threshold (the unit of ``combine="any"``)."""
        missing = set(self.reference) - set(self.member_thresholds)
        if missing:
            raise ValueError(f"combine='any' needs member thresholds; none for {sorted(missing)}")
        return {
            name: max(
                float(surprise(reference, np.array([self.member_thresholds[name]]))[0]),
                _MIN_ALARM_SURPRISE,
            )
            for name, reference in self.reference.items()
        }
