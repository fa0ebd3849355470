"""The MLflow pyfunc wrapper that makes a :class:`~aiops.model.DetectorBundle` deployable."""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

BUNDLE_ARTIFACT = "bundle"


class DetectorPyfunc(PythonModel):
    """Loads the bundle from the model's artifacts; predicts on feature rows.

    Input: a frame holding (at least) the contract's feature columns.
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
        return self.bundle.predict(model_input)
