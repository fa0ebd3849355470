"""Isolation Forest over the shared feature vector."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from aiops.features import FeatureContract


@dataclass(frozen=True)
class IsolationForestConfig:
    """Hyper-parameters; defaults suit a few thousand to a million rows.

    Attributes:
        n_estimators: Trees in the forest.
        max_samples: Rows drawn per tree (Isolation Forest works best on small samples).
        max_features: Share of features drawn per tree.
        seed: Random seed.

    """

    n_estimators: int = 200
    max_samples: int = 512
    max_features: float = 1.0
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """Return the settings as a flat dict for tracking."""
        return {f"if_{k}": v for k, v in asdict(self).items()}


class IsolationForestDetector:
    """Unsupervised detector: isolation depth of each feature vector.

    Missing features (warm-up rows, gaps) are imputed with the training median,
    learnt at fit time so scoring never looks at the rows it scores.
    """

    kind = "isolation_forest"

    def __init__(self, config: IsolationForestConfig = IsolationForestConfig()) -> None:
        self.config = config
        self.contract: FeatureContract | None = None
        self._pipeline: Pipeline | None = None

    def fit(self, train: pd.DataFrame, contract: FeatureContract) -> IsolationForestDetector:
        """Fit on training rows only (no labels: the detector is unsupervised)."""
        self.contract = contract
        x = contract.matrix(train)
        if len(x) < 2:
            raise ValueError(f"need at least 2 training rows, got {len(x)}")
        cfg = self.config
        self._pipeline = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                (
                    "forest",
                    IsolationForest(
                        n_estimators=cfg.n_estimators,
                        max_samples=min(cfg.max_samples, len(x)),
                        max_features=cfg.max_features,
                        random_state=cfg.seed,
                        n_jobs=1,
                    ),
                ),
            ]
        )
        self._pipeline.fit(x)
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row of a feature table: higher means more anomalous."""
        if self._pipeline is None or self.contract is None:
            raise RuntimeError("the detector is not fitted; call fit() first")
        return -self._pipeline.score_samples(self.contract.matrix(frame))
