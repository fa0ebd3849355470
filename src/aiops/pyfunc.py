"""The MLflow pyfunc wrapper that makes a :class:`~aiops.model.DetectorBundle` deployable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

BUNDLE_ARTIFACT = "bundle"


def to_model_input(features: pd.DataFrame) -> pd.DataFrame:
    """Prepare feature rows for the MLflow model: timestamps as naive UTC.

    MLflow's schema enforcement only accepts timezone-naive datetimes, so the UTC instants
    cross the model boundary without their zone and get it back inside :meth:`predict`.
    """
    out = features.copy()
    if "timestamp" in out and getattr(out["timestamp"].dt, "tz", None) is not None:
        out["timestamp"] = out["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return out


def _from_model_input(frame: pd.DataFrame) -> pd.DataFrame:
    if "timestamp" in frame and getattr(frame["timestamp"].dt, "tz", None) is None:
        frame = frame.assign(timestamp=pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC"))
    return frame


class DetectorPyfunc(PythonModel):
    """Loads the bundle from the model's artifacts; predicts on feature rows.

    Input: feature-table rows: the key columns (timestamp as naive UTC, see
    :func:`to_model_input`; cluster, namespace, pod, node) and the contract's feature columns.
    Output: ``anomaly_score`` (float) and ``is_anomaly`` (bool) per row.
    """

    def load_context(self, context: Any) -> None:
        """Load the bundle once per process."""
        from aiops.model import DetectorBundle

        self.bundle = DetectorBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score feature rows; raises SchemaError on a contract violation."""
        return self.bundle.predict(_from_model_input(model_input))


def bundle_dir(model_dir: str | Path) -> Path:
    """The DetectorBundle folder inside a downloaded MLflow model folder (read off its ``MLmodel``).

    MLflow stores a pyfunc artifact under the source folder's name, not under its key, so
    the path has to come from the ``MLmodel`` file.

    Raises:
        FileNotFoundError: When the folder is not an MLflow model of this project.
    """
    import yaml

    root = Path(model_dir)
    mlmodel = root / "MLmodel"
    if not mlmodel.exists():
        raise FileNotFoundError(f"{root} is not an MLflow model folder (no MLmodel file)")
    flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
    path = ((flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}).get("path")
    if not path:
        raise FileNotFoundError(
            f"{mlmodel} declares no '{BUNDLE_ARTIFACT}' artifact: not an aiops detector model"
        )
    return root / path
