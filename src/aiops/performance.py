"""How the served model does in production, once incident outcomes supply labels.

Served predictions (what the model said, row by row) are joined with labels that arrive later
(incidents confirmed or dismissed by SREs, in the canonical label table) and scored per period
with the same point- and event-wise metrics as offline evaluation. Each period becomes a step
of an MLflow run in experiment ``aiops-model-performance``, so the UI draws precision and
recall over time for every model version that served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.evaluation import evaluate
from aiops.schema import ENTITY_KEYS, TIMESTAMP, SchemaError, validate_labels

PERFORMANCE_EXPERIMENT = "aiops-model-performance"
PREDICTION_COLUMNS = (TIMESTAMP, *ENTITY_KEYS, "model_version", "anomaly_score", "is_anomaly")
_REPORTED = ("point_precision", "point_recall", "event_precision", "event_recall", "event_f1", "alarm_rate")


def check_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Validate a served-predictions table.

    Raises:
        SchemaError: Naming the missing column or the bad type.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise SchemaError(f"predictions: column(s) {missing} missing; expected {list(PREDICTION_COLUMNS)}")
    if getattr(predictions[TIMESTAMP].dt, "tz", None) is None:
        raise SchemaError("predictions: timestamps must be timezone-aware UTC")
    if not pd.api.types.is_bool_dtype(predictions["is_anomaly"]):
        raise SchemaError(f"predictions: 'is_anomaly' must be boolean, got {predictions['is_anomaly'].dtype}")
    return predictions


@dataclass(frozen=True)
class PeriodScore:
    """Metrics of one model version over one period."""

    model_version: str
    period_start: pd.Timestamp
    rows: int
    metrics: dict[str, float]


def score_periods(predictions: pd.DataFrame, labels: pd.DataFrame, period: str = "1D") -> list[PeriodScore]:
    """Score served predictions against outcome labels, per model version and period."""
    check_predictions(predictions)
    validate_labels(labels)
    out = []
    frame = predictions.assign(_period=predictions[TIMESTAMP].dt.floor(period))
    for (version, start), part in frame.groupby(["model_version", "_period"], sort=True):
        part = part.reset_index(drop=True)
        metrics = evaluate(part, part["is_anomaly"].to_numpy(dtype=bool), labels).metrics
        out.append(
            PeriodScore(
                str(version), pd.Timestamp(start), len(part), {k: float(metrics[k]) for k in _REPORTED}
            )
        )
    return out


def log_performance(
    scores: list[PeriodScore], model_name: str, tracking_uri: str, period: str = "1D"
) -> dict[str, str]:
    """One MLflow run per model version; each period is a step, so the UI plots it over time.

    Returns:
        Model version -> run id.
    """
    import mlflow

    from aiops.registry import configure, ensure_experiment

    configure(tracking_uri)
    experiment_id = ensure_experiment(PERFORMANCE_EXPERIMENT, tracking_uri)
    runs: dict[str, str] = {}
    for version in sorted({s.model_version for s in scores}):
        own = [s for s in scores if s.model_version == version]
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{model_name} v{version} in production"
        ) as run:
            mlflow.set_tags({"model_name": model_name, "model_version": version, "period": period})
            for step, score in enumerate(own):
                timestamp = int(score.period_start.timestamp() * 1000)
                for name, value in {**score.metrics, "rows": float(score.rows)}.items():
                    if np.isfinite(value):
                        mlflow.log_metric(name, value, step=step, timestamp=timestamp)
            runs[version] = str(run.info.run_id)
    return runs
