"""Isolation Forest over a view of the shared feature vector (by default: the pod's health)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from aiops.features import HEALTH_SIGNALS, FeatureContract

#: Feature views (see :class:`IsolationForestDetector`).
FEATURE_VIEWS = ("health", "all")
#: A signal repeating its previous value in more training rows than this is discrete or
#: quantised (a counter at 0, a clipped ratio); repeats are no stall evidence for it.
MAX_REPEAT_SHARE = 0.01
STALL = "stall"
#: Shortest run of exact repeats counted as a stall, whatever training saw.
MIN_STALL_RUN = 2


@dataclass(frozen=True)
class IsolationForestConfig:
    """Hyper-parameters; defaults suit a few thousand to a million rows.

    Attributes:
        n_estimators: Trees in the forest.
        max_samples: Rows drawn per tree. Large enough that a tree's sample holds some of the
            rare extreme rows of training: a tree that saw none splits its range between 0 and
            2 network errors a minute, and isolates a single, normal, error as fast as a fault.
        max_features: Share of features drawn per tree.
        features: Feature view, ``health`` or ``all`` (see
            :class:`IsolationForestDetector`).
        stall_weight: Score added per unit of ``log1p`` of a stall longer than any in training
            (``health`` view; 0 turns the stall rule off).
        seed: Random seed.

    """

    n_estimators: int = 200
    max_samples: int = 4096
    max_features: float = 1.0
    features: str = "health"
    stall_weight: float = 0.25
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """Return the settings as a flat dict for tracking."""
        return {f"if_{k}": v for k, v in asdict(self).items()}


def _repeat_share(runs: np.ndarray) -> float:
    """Share of the rows *with a value* whose signal repeated the previous one; NaN without any.

    A signal never seen in training has no share (NaN compares False below, so it is no stall
    signal): counting its missing rows as "did not repeat" would make a signal that normally
    sits at 0 look like one that moves, and its first normal day like a stall.
    """
    finite = runs[np.isfinite(runs)]
    return float(np.mean(finite >= 1)) if finite.size else float("nan")


class IsolationForestDetector:
    """Unsupervised detector: isolation depth of each row's feature vector.

    A forest picks a random feature at every split and stops at a depth of about
    ``log2(max_samples)``, so a fault that shows in one feature out of two hundred is hardly
    ever split on: the forest needs few features, each carrying evidence. The views:

    * ``health`` (default): the pod's :data:`~aiops.features.HEALTH_SIGNALS` as they are (a
      forest trained on last week's traffic would flag every new peak of a growing workload;
      the forecasting detector judges traffic against its daily and weekly cycle), plus ``stall``, the
      longest run of exactly repeated values (``<signal>__run``) over the signals that never
      repeat in training (a stuck exporter). No change-based features (z-scores, slopes):
      they fire again when a fault *ends*, which doubles every alarm. A forest cannot split
      on an input that never varied in training, and a stall rarely happens there, so a
      stall longer than any seen in training (at least :data:`MIN_STALL_RUN` rows) also adds
      ``stall_weight * log1p(excess rows)`` to the score: an explicit rule, on top of the forest.
    * ``all``: the whole contract.

    Missing features (warm-up rows, gaps) are imputed with the training median,
    learnt at fit time so scoring never looks at the rows it scores.
    """

    kind = "isolation_forest"

    def __init__(self, config: IsolationForestConfig = IsolationForestConfig()) -> None:
        self.config = config
        self.contract: FeatureContract | None = None
        self.columns: tuple[str, ...] = ()
        self.stall_signals: tuple[str, ...] = ()
        self.stall_ceiling = float(MIN_STALL_RUN)
        self._pipeline: Pipeline | None = None

    def fit(self, train: pd.DataFrame, contract: FeatureContract) -> IsolationForestDetector:
        """Fit on training rows only (no labels: the detector is unsupervised)."""
        cfg = self.config
        if cfg.features not in FEATURE_VIEWS:
            raise ValueError(f"unknown feature view '{cfg.features}'; choose one of {FEATURE_VIEWS}")
        self.contract = contract
        names = contract.feature_names
        if cfg.features == "health":
            self.columns = tuple(s for s in HEALTH_SIGNALS if s in names)
            self.stall_signals = tuple(
                s
                for s in contract.signals
                if not s.startswith("node_")
                and f"{s}__run" in names
                and _repeat_share(train[f"{s}__run"].to_numpy(dtype=np.float64)) < MAX_REPEAT_SHARE
            )
            if not self.columns and not self.stall_signals:
                raise ValueError(
                    f"the 'health' view needs some of {HEALTH_SIGNALS} or <signal>__run features; "
                    "use features='all' for these metrics"
                )
        else:
            self.columns = tuple(names)
        x = self._matrix(train)
        if len(x) < 2:
            raise ValueError(f"need at least 2 training rows, got {len(x)}")
        if self.stall_signals:
            longest = float(np.expm1(np.max(x[:, -1])))
            self.stall_ceiling = max(float(MIN_STALL_RUN), round(longest))
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

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the forest's input columns, in order."""
        return (*self.columns, STALL) if self.stall_signals else self.columns

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        assert self.contract is not None
        self.contract.check(frame)
        x = frame.loc[:, list(self.columns)].to_numpy(dtype=np.float64)
        if not self.stall_signals:
            return x
        runs = frame.loc[:, [f"{s}__run" for s in self.stall_signals]].to_numpy(dtype=np.float64)
        stall = np.log1p(np.max(np.nan_to_num(runs, nan=0.0), axis=1))
        return np.column_stack([x, stall])

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row of a feature table: higher means more anomalous."""
        if self._pipeline is None or self.contract is None:
            raise RuntimeError("the detector is not fitted; call fit() first")
        x = self._matrix(frame)
        return -self._pipeline.score_samples(x) + self.stall_bonus(x[:, -1] if self.stall_signals else None)

    def stall_bonus(self, stall: np.ndarray | None) -> np.ndarray | float:
        """The stall rule's share of the score for the ``stall`` input (``log1p`` of the run)."""
        if stall is None or not self.config.stall_weight:
            return 0.0
        excess = np.maximum(np.expm1(stall) - self.stall_ceiling, 0.0)
        return self.config.stall_weight * np.log1p(excess)
