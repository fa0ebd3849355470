"""How the served model does in production, once incident outcomes supply labels.

Served predictions (what the model said, row by row) are joined with labels that arrive later
(incidents confirmed or dismissed by SREs, in the canonical label table) and scored per period
with the same point- and event-wise metrics as offline evaluation. Each period becomes a step
of an MLflow run in experiment ``aiops-model-performance``, so the UI draws precision and
recall over time for every model version that served.

How a period is scored:

* Each model version is evaluated over all the rows it served, then its labelled windows and
  alarm events are counted once: an event in the period where it begins, a window in the
  period of the first row of it the version scored (the version's first day, or the day it
  resumed after an outage). An incident across midnight is one incident, detected or not, not
  a hit one day and a miss the next.
* A ratio without a denominator is missing (NaN, not logged), not 0: a quiet day with no
  incident and no alarm has no recall to report.
* Steps count periods since the Unix epoch, so a period without predictions leaves a gap.
  Scoring the same periods again (labels arrive late) replaces their values: each version's run
  is rebuilt with the earlier periods it held and the periods scored now.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.evaluation import _f1, evaluate, point_metrics
from aiops.schema import ENTITY_KEYS, TIMESTAMP, SchemaError, validate_labels

PERFORMANCE_EXPERIMENT = "aiops-model-performance"
PREDICTION_COLUMNS = (TIMESTAMP, *ENTITY_KEYS, "model_version", "anomaly_score", "is_anomaly")
_REPORTED = ("point_precision", "point_recall", "event_precision", "event_recall", "event_f1", "alarm_rate")


def check_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Validate a served-predictions table; return it with its times in UTC and versions as text.

    Raises:
        SchemaError: Naming the missing column, the bad type, missing values or repeated rows.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise SchemaError(f"predictions: column(s) {missing} missing; expected {list(PREDICTION_COLUMNS)}")
    if predictions.empty:
        raise SchemaError("predictions: no rows; there is nothing to score")
    stamps = predictions[TIMESTAMP]
    if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
        raise SchemaError(f"predictions: timestamps must be timezone-aware (UTC), got {stamps.dtype}")
    flags = predictions["is_anomaly"]
    if not pd.api.types.is_bool_dtype(flags) or flags.isna().any():
        raise SchemaError(f"predictions: 'is_anomaly' must be true or false on every row, got {flags.dtype}")
    for column in (TIMESTAMP, "model_version"):
        absent = int(predictions[column].isna().sum())
        if absent:
            raise SchemaError(f"predictions: {absent} row(s) without a {column}; every prediction needs one")
    out = predictions.assign(
        **{TIMESTAMP: stamps.dt.tz_convert("UTC"), "model_version": predictions["model_version"].astype(str)}
    )
    keys = [TIMESTAMP, *ENTITY_KEYS, "model_version"]
    repeated = int(out.duplicated(keys).sum())
    if repeated:
        raise SchemaError(
            f"predictions: {repeated} row(s) repeat a (timestamp, entity, model_version) of another; "
            "a prediction counted twice would count its alarm twice: drop the copies"
        )
    return out.astype({"is_anomaly": bool})


def period_length(period: str) -> pd.Timedelta:
    """A fixed period length (``1D``, ``6h``, ``7D``); calendar periods (a month) are refused.

    Raises:
        SchemaError: For a period that is not a fixed, positive length.
    """
    try:
        length = pd.to_timedelta(period)
    except ValueError:
        length = pd.NaT
    if pd.isna(length) or length <= pd.Timedelta(0):
        raise SchemaError(f"period {period!r} is not a fixed length of time; use e.g. 1D, 6h or 7D")
    return length


@dataclass(frozen=True)
class PeriodScore:
    """Metrics of one model version over one period (NaN: nothing to measure)."""

    model_version: str
    period_start: pd.Timestamp
    rows: int
    metrics: dict[str, float]


def _ratio(num: float, den: float) -> float:
    """``num / den``, missing (NaN) without a denominator; evaluation's ``_f1`` carries a NaN on."""
    return num / den if den else float("nan")


def _by_period(
    starts: pd.Series, hits: pd.Series, length: pd.Timedelta
) -> dict[pd.Timestamp, tuple[int, int]]:
    """Per period of ``starts``: how many of the items began there were hits, and how many began."""
    if starts.empty:
        return {}
    return {
        period: (int(h.sum()), len(h)) for period, h in hits.astype(bool).groupby(starts.dt.floor(length))
    }


def score_periods(predictions: pd.DataFrame, labels: pd.DataFrame, period: str = "1D") -> list[PeriodScore]:
    """Score served predictions against outcome labels, per model version and period."""
    predictions = check_predictions(predictions)
    validate_labels(labels)
    length = period_length(period)
    out = []
    for version, part in predictions.groupby("model_version", sort=True):
        part = part.reset_index(drop=True)
        alarms = part["is_anomaly"].to_numpy(dtype=bool)
        result = evaluate(part, alarms, labels)  # over all its rows: windows and events once each
        periods = part[TIMESTAMP].dt.floor(length)
        # A window counts in the period where the version first scored a row of it: one that opened
        # before the version served, or while it served nothing (an outage), counts where it resumed.
        windows = result.windows
        detections = _by_period(windows["first_scored"], windows["detected"], length) if len(windows) else {}
        true_events = _by_period(result.events["start"], result.events["true"], length)
        for start in sorted(periods.unique()):
            rows = (periods == start).to_numpy()
            truth, flagged = result.row_truth[rows], alarms[rows]
            point = point_metrics(truth, flagged)
            precision = _ratio(*true_events.get(start, (0, 0)))
            recall = _ratio(*detections.get(start, (0, 0)))
            metrics = {
                "point_precision": point["precision"] if flagged.any() else float("nan"),
                "point_recall": point["recall"] if truth.any() else float("nan"),
                "event_precision": precision,
                "event_recall": recall,
                "event_f1": _f1(precision, recall),
                "alarm_rate": float(flagged.mean()),
            }
            out.append(PeriodScore(str(version), pd.Timestamp(start), int(rows.sum()), metrics))
    return out


def period_step(start: pd.Timestamp, length: pd.Timedelta) -> int:
    """The MLflow step of a period: whole periods since the Unix epoch (gaps stay gaps)."""
    return int((start - pd.Timestamp(0, tz="UTC")) // length)


def log_performance(
    scores: list[PeriodScore], model_name: str, tracking_uri: str, period: str = "1D"
) -> dict[str, str]:
    """One MLflow run per model version; each period is a step, so the UI plots it over time.

    A version that already has a run (an earlier call) gets a new one holding the earlier
    periods and those scored now (which win); the old run is deleted, so each period has one
    value.

    Returns:
        Model version -> run id.
    """
    import mlflow

    from aiops.registry import configure, ensure_experiment, mlflow_client

    configure(tracking_uri)
    client = mlflow_client(tracking_uri)
    experiment_id = ensure_experiment(PERFORMANCE_EXPERIMENT, tracking_uri)
    length = period_length(period)
    runs: dict[str, str] = {}
    for version in sorted({s.model_version for s in scores}):
        points: dict[str, dict[int, tuple[int, float]]] = {}  # metric -> step -> (time ms, value)
        query = " and ".join(
            f"tags.{tag} = '{value}'"
            for tag, value in (("model_name", model_name), ("model_version", version), ("period", period))
        )
        earlier = client.search_runs([experiment_id], query)
        for run in earlier:
            for name in run.data.metrics:
                for m in client.get_metric_history(run.info.run_id, name):
                    points.setdefault(name, {})[m.step] = (m.timestamp, m.value)
        for score in (s for s in scores if s.model_version == version):
            step = period_step(score.period_start, length)
            timestamp = int(score.period_start.timestamp() * 1000)
            for name, value in {**score.metrics, "rows": float(score.rows)}.items():
                points.setdefault(name, {}).pop(step, None)  # a missing value now replaces an old one
                if np.isfinite(value):
                    points[name][step] = (timestamp, float(value))
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{model_name} v{version} in production"
        ) as run:
            mlflow.set_tags({"model_name": model_name, "model_version": version, "period": period})
            for name, by_step in points.items():
                for step, (timestamp, value) in sorted(by_step.items()):
                    mlflow.log_metric(name, value, step=step, timestamp=timestamp)
            runs[version] = str(run.info.run_id)
        for old in earlier:
            client.delete_run(old.info.run_id)
    return runs
