"""The predictor's internal batch: numpy arrays in the model's contract order.

Requests arrive as JSON rows or v2 tensors and are decoded once into a :class:`Batch`, so
every member scorer works on plain arrays instead of building a DataFrame per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP


@dataclass(frozen=True)
class Batch:
    """Feature rows of one request.

    Attributes:
        timestamps: UTC instants as int64 nanoseconds since the epoch, shape ``(n,)``.
        entities: One object array of strings per entity key (cluster, namespace, pod, node).
        features: float64 matrix ``(n, n_features)`` in the contract's order; NaN = missing.
        targets: Indices of the rows to score and report. Other rows are history only: the
            LSTM member reads them to fill its window.
    """

    timestamps: np.ndarray
    entities: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    features: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def n_targets(self) -> int:
        """Number of rows scored and reported."""
        return len(self.targets)

    def to_frame(self, feature_names: tuple[str, ...]) -> pd.DataFrame:
        """All rows as a feature table (key columns first), the layout the detectors' own ``score`` takes."""
        frame = pd.DataFrame(self.features, columns=list(feature_names))
        keys = {TIMESTAMP: pd.to_datetime(self.timestamps, utc=True)}
        keys.update({key: values for key, values in zip(ENTITY_KEYS, self.entities, strict=True)})
        return pd.concat([pd.DataFrame(keys), frame], axis=1)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, feature_names: tuple[str, ...], targets: np.ndarray | None = None
    ) -> Batch:
        """Build a batch from a feature table with the key columns (every row a target by default)."""
        missing = [c for c in (*KEY_COLUMNS, *feature_names) if c not in frame.columns]
        if missing:
            raise KeyError(f"columns missing from the feature table: {missing[:5]}")
        ts = pd.to_datetime(frame[TIMESTAMP], utc=True)
        cluster, namespace, pod, node = (frame[key].astype(str).to_numpy(dtype=object) for key in ENTITY_KEYS)
        entities = (cluster, namespace, pod, node)
        return cls(
            timestamps=ts.to_numpy(dtype="datetime64[ns]").view(np.int64),
            entities=entities,
            features=frame.loc[:, list(feature_names)].to_numpy(dtype=np.float64),
            targets=np.arange(len(frame)) if targets is None else np.asarray(targets, dtype=np.int64),
        )
