"""Ensemble: calibrate each member's scores on validation data, combine with weights.

Raw scores of different detectors live on different scales (isolation depth, forecast
z-scores, reconstruction errors), so each member's score is first mapped through the
empirical distribution of its own validation scores to a *surprise*,
``-log10(P[score >= s])``: 1 means "rarer than 90% of validation rows", 3 means "rarer than
99.9%". The ensemble score is the weighted mean of the members' surprises. All members
score causally, so the ensemble does too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

_MAX_REFERENCE = 20000  # validation scores kept per member (evenly spaced order statistics)


def surprise(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``-log10`` of the empirical tail probability of ``scores`` among sorted ``reference``."""
    n = len(reference)
    above = n - np.searchsorted(reference, np.nan_to_num(scores, nan=-np.inf), side="left")
    return -np.log10((above + 1.0) / (n + 1.0))


@dataclass
class EnsembleDetector:
    """Weighted mean of calibrated member scores.

    Attributes:
        members: Fitted detectors by name (each with ``score(frame)``).
        weights: Weight per member (normalised when scoring).
        reference: Sorted validation scores per member (the calibration).
        member_thresholds: Each member's own alarm threshold (for per-member reports).
    """

    members: dict[str, Any]
    weights: dict[str, float] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    member_thresholds: dict[str, float] = field(default_factory=dict)
    combine: str = "mean"
    kind: str = "ensemble"

    def calibrate(self, validation: pd.DataFrame) -> EnsembleDetector:
        """Record each member's validation score distribution (no labels involved)."""
        for name, detector in self.members.items():
            scores = np.sort(np.asarray(detector.score(validation), dtype=float))
            if len(scores) > _MAX_REFERENCE:
                scores = scores[np.linspace(0, len(scores) - 1, _MAX_REFERENCE).round().astype(int)]
            self.reference[name] = scores
        if not self.weights:
            self.weights = {name: 1.0 for name in self.members}
        unknown = set(self.weights) - set(self.members)
        if unknown:
            raise ValueError(
                f"weights given for unknown member(s) {sorted(unknown)}; members: {sorted(self.members)}"
            )
        return self

    def member_surprise(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Calibrated score of every member for each row."""
        if not self.reference:
            raise RuntimeError("calibrate the ensemble on validation data first")
        return {name: surprise(self.reference[name], det.score(frame)) for name, det in self.members.items()}

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Weighted mean of the members' surprises."""
        parts = self.member_surprise(frame)
        total = sum(self.weights.get(name, 0.0) for name in parts)
        if total <= 0:
            raise ValueError("ensemble weights sum to zero")
        weighted = np.stack([self.weights.get(name, 0.0) * value for name, value in parts.items()])
        if self.combine == "max":
            # The strongest weighted evidence wins: a fault only one member can see still alarms.
            return weighted.max(axis=0) * len(parts) / total
        return weighted.sum(axis=0) / total
