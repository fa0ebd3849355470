"""A deployable detector: fitted model + feature contract + threshold, in one folder.

The folder is what the pipeline passes between steps, what MLflow stores and
what the predictor loads, so all three agree on inputs and alarm policy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from aiops import package_version
from aiops.features import FeatureContract

_DETECTOR_FILE = "detector.joblib"
_CONTRACT_FILE = "feature_contract.json"
_META_FILE = "meta.json"

#: Layout of a saved bundle: the files above and the detector classes pickled in
#: ``detector.joblib``. Raise it whenever a change to a detector's attributes or to this layout
#: means that bundles written before can no longer be scored by this code.
BUNDLE_FORMAT = 1

log = logging.getLogger(__name__)


class BundleFormatError(ValueError):
    """A bundle written in a layout this code does not read (see :data:`BUNDLE_FORMAT`)."""


@dataclass
class DetectorBundle:
    """A fitted detector with the contract of its input and its alarm threshold.

    Attributes:
        detector: Fitted object with ``score(features: pd.DataFrame) -> np.ndarray``.
        contract: The feature contract the detector was trained on.
        threshold: Alarm when the score is at or above it.
        meta: Training parameters and statistics (tracked as params/metrics).

    """

    detector: Any
    contract: FeatureContract
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Score rows of a feature table (enforces the contract); no rows, no scores."""
        self.contract.check(features)
        if features.empty:  # the members' libraries (sklearn, pandas) would fail in their own words
            return np.zeros(0)
        return np.asarray(self.detector.score(features), dtype=float)

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Return ``anomaly_score`` and ``is_anomaly`` per row."""
        scores = self.score(features)
        return pd.DataFrame({"anomaly_score": scores, "is_anomaly": scores >= self.threshold})

    def save(self, folder: str | Path) -> Path:
        """Write the bundle into ``folder`` (created if needed)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.detector, out / _DETECTOR_FILE)
        (out / _CONTRACT_FILE).write_text(self.contract.to_json())
        meta = {
            **self.meta,
            "threshold": self.threshold,
            "detector": getattr(self.detector, "kind", ""),
            # Which code can read it back: the layout's number, and the package that wrote it.
            "bundle_format": BUNDLE_FORMAT,
            "aiops_version": package_version(),
        }
        (out / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> DetectorBundle:
        """Read a folder written by :meth:`save`.

        The format is checked before the detector is unpickled: a bundle of another format
        would load, then fail (or, worse, score differently) when it is first used. A bundle
        that records no format predates the check; it is read, with a warning.

        Raises:
            FileNotFoundError: When a part of the bundle is missing.
            BundleFormatError: When the bundle records a format other than :data:`BUNDLE_FORMAT`.

        """
        root = Path(folder)
        for name in (_DETECTOR_FILE, _CONTRACT_FILE, _META_FILE):
            if not (root / name).exists():
                raise FileNotFoundError(f"{root} is not a detector bundle: {name} missing")
        meta = json.loads((root / _META_FILE).read_text())
        fmt = meta.pop("bundle_format", None)
        written_by = meta.pop("aiops_version", None)
        if fmt is None:
            log.warning(
                "%s records no bundle format (written before aiops recorded one); reading it as "
                "format %d. If scoring it fails, retrain the model.",
                root,
                BUNDLE_FORMAT,
            )
        elif fmt != BUNDLE_FORMAT:
            raise BundleFormatError(
                f"{root} is a detector bundle of format {fmt!r}, written by aiops {written_by or 'unknown'}; "
                f"this aiops ({package_version()}) reads format {BUNDLE_FORMAT}. Retrain and register the "
                "model with this version, or serve it with the version that wrote it."
            )
        return cls(
            detector=joblib.load(root / _DETECTOR_FILE),
            contract=FeatureContract.from_json((root / _CONTRACT_FILE).read_text()),
            threshold=float(meta.pop("threshold")),
            meta=meta,
        )
