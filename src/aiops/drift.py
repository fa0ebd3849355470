"""Data and prediction drift between the champion's training reference and a recent window.

Evidently 0.7's ``DataDriftPreset`` picks a test per column (Kolmogorov-Smirnov p-values for
small samples, normed Wasserstein distances for large ones) and reports, per column, the
statistic, the method and its threshold. The drift share is the share of columns that drifted.
Prediction drift compares the model's own anomaly scores and alarm rate on both windows.

What the two windows hold (:func:`check_against_champion`):

* the current window is the latest ``window`` of the new data *after* the champion's training
  period: rows the champion trained on are no drift evidence, so an overlap is cut off and said;
* a window shorter than a day is compared with the reference rows from the same hours of the
  day (most signals follow the day, so 02:00-08:00 against whole days reads as drift);
* the champion scores the current window in its context (the rows before it, which the
  sequence members need), as it scored the reference over the whole training period.

Columns compared are the model's *signals* (the metric values and derived utilisations the
features are built from): interpretable for an SRE, and what actually changes when a
workload's traffic doubles or its daily pattern moves. Evidently is imported inside the
functions (its import takes seconds).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Rows per side kept for the report; larger windows are sampled (seeded) to bound its cost.
MAX_ROWS = 20000
_METRIC = re.compile(
    r"ValueDrift\(column=(?P<column>.+?),method=(?P<method>.+?),threshold=(?P<threshold>[^)]+)\)"
)


@dataclass
class DriftResult:
    """What drifted, by how much, and the report that shows it."""

    drift_share: float
    columns: pd.DataFrame = field(repr=False)
    prediction: dict[str, float] = field(default_factory=dict)
    snapshot: Any = field(default=None, repr=False)

    def drifted(self, max_drift_share: float) -> bool:
        """True when the share of drifted columns exceeds ``max_drift_share``."""
        return self.drift_share > max_drift_share

    def save_html(self, path: str | Path) -> Path:
        """Write Evidently's HTML report (what the dashboard and MLflow show)."""
        if self.snapshot is None:
            raise RuntimeError("no Evidently snapshot to render")
        self.snapshot.save_html(str(path))
        return Path(path)


def _sample(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame.sample(MAX_ROWS, random_state=seed) if len(frame) > MAX_ROWS else frame


def _column_results(snapshot_dict: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        match = _METRIC.match(metric.get("metric_name", ""))
        method = config.get("method") or (match.group("method") if match else "")
        threshold = float(config.get("threshold", match.group("threshold") if match else "nan"))
        value = float(metric["value"])
        # p-value tests drift when *small*; distances when *large*.
        is_p_value = "p_value" in method.lower() or "test" in method.lower()
        drifted = value < threshold if is_p_value else value >= threshold
        rows.append(
            {
                "column": config.get("column"),
                "method": method,
                "score": value,
                "threshold": threshold,
                "drifted": drifted,
            }
        )
    return pd.DataFrame(rows, columns=["column", "method", "score", "threshold", "drifted"])


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
    threshold: float | None = None,
    seed: int = 0,
) -> DriftResult:
    """Compare ``current`` with ``reference`` column by column, and the model's scores.

    Args:
        reference: The champion's training reference (e.g. a sample of its training rows).
        current: The recent window.
        columns: Columns to compare (both frames must hold them).
        reference_scores: The model's anomaly scores on ``reference`` (prediction drift).
        current_scores: The model's anomaly scores on ``current``.
        threshold: The model's alarm threshold, for the alarm rates.
        seed: Seed of the row sampling.

    Raises:
        ValueError: When a column is missing or a window is empty.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"drift: the {name} window lacks column(s) {missing}")
        if frame.empty:
            raise ValueError(f"drift: the {name} window is empty")
    ref = _sample(reference.loc[:, list(columns)], seed).astype("float64")
    cur = _sample(current.loc[:, list(columns)], seed).astype("float64")
    prediction: dict[str, float] = {}
    if reference_scores is not None and current_scores is not None:
        ref = ref.assign(anomaly_score=pd.Series(reference_scores, index=reference.index).reindex(ref.index))
        cur = cur.assign(anomaly_score=pd.Series(current_scores, index=current.index).reindex(cur.index))
        if threshold is not None:
            prediction["reference_alarm_rate"] = float(np.mean(np.asarray(reference_scores) >= threshold))
            prediction["current_alarm_rate"] = float(np.mean(np.asarray(current_scores) >= threshold))
    # A column empty in both windows carries no distribution to compare. One that has values in
    # one window only has changed as much as a column can: a signal that went silent (or one
    # that appeared) is drift, and the table says so.
    # Whether a column has values is read off the whole windows, not the samples: a sparse
    # column whose few values the sampling missed has not gone silent.
    has_ref, has_cur = ref.notna().any(), cur.notna().any()
    has_ref[list(columns)] = reference.loc[:, list(columns)].notna().any()
    has_cur[list(columns)] = current.loc[:, list(columns)].notna().any()
    in_samples = ref.notna().any() & cur.notna().any()
    usable = [c for c in ref.columns if in_samples[c]]
    changed = [c for c in ref.columns if has_ref[c] != has_cur[c]]
    # Values in both windows, but none left in one of the samples: too few to compare.
    sampled_out = [c for c in ref.columns if has_ref[c] and has_cur[c] and not in_samples[c]]
    if not usable:
        silent = [c for c in changed if has_ref[c]]
        raise ValueError(
            "drift: no column to compare: "
            + (f"empty in the current window: {silent}; " if silent else "")
            + (f"too few values to keep in a {MAX_ROWS:,}-row sample: {sampled_out}; " if sampled_out else "")
            + "is the recent telemetry arriving?"
        )
    snapshot = Report([DataDriftPreset()]).run(reference_data=ref[usable], current_data=cur[usable])
    table = _column_results(snapshot.dict())
    if changed:
        gone = pd.DataFrame(
            {
                "column": changed,
                "method": [
                    "no values in the " + ("current" if has_ref[c] else "reference") + " window"
                    for c in changed
                ],
                "score": np.nan,
                "threshold": np.nan,
                "drifted": True,
            }
        )
        table = pd.concat([table, gone], ignore_index=True)
    if sampled_out:
        few = pd.DataFrame(
            {
                "column": sampled_out,
                "method": [
                    f"not compared: {MAX_ROWS:,} sampled rows kept none of its values "
                    f"({int(reference[c].notna().sum())} in the reference, {int(current[c].notna().sum())} "
                    "in the current window)"
                    for c in sampled_out
                ],
                "score": np.nan,
                "threshold": np.nan,
                "drifted": False,
            }
        )
        table = pd.concat([table, few], ignore_index=True)
    if "anomaly_score" in set(table["column"]):
        row = table.set_index("column").loc["anomaly_score"]
        prediction.update({"score_drift": float(row["score"]), "score_drifted": float(bool(row["drifted"]))})
    # The share is over the columns compared (or gone silent): a column not compared is no evidence.
    judged = (table["column"] != "anomaly_score") & ~table["method"].str.startswith("not compared")
    share = float(table.loc[judged, "drifted"].mean()) if judged.any() else 0.0
    return DriftResult(drift_share=share, columns=table, prediction=prediction, snapshot=snapshot)


@dataclass
class DriftDecision:
    """Whether to retrain, why, and the evidence."""

    retrain: bool
    reason: str
    champion_version: str | None
    result: DriftResult | None = None


def check_against_champion(
    features: pd.DataFrame,
    model_name: str,
    tracking_uri: str,
    *,
    alias: str = "champion",
    window: str = "1D",
    max_drift_share: float = 0.5,
    force: bool = False,
) -> DriftDecision:
    """Compare the latest ``window`` of ``features`` with the champion's training reference.

    The reference is the sample of training rows stored with the champion
    (``reference_sample.parquet`` on its model run); the champion itself scores both windows
    for the prediction-drift part.

    Raises:
        FileNotFoundError: When the champion has no stored reference (registered before drift
            checks existed) and ``force`` is off: retrain with ``force=True`` to give it one.
        ValueError: When the windows cannot be compared (no row after the training period, too
            few reference rows from the window's hours, no signal with values in both); with
            ``force=True`` the decision is to retrain instead, and the reason says why.
    """
    import mlflow

    from aiops.model import DetectorBundle
    from aiops.publish import REFERENCE_ARTIFACT
    from aiops.pyfunc import bundle_dir
    from aiops.registry import alias_version, configure, mlflow_client

    configure(tracking_uri)
    version = alias_version(model_name, alias, tracking_uri)
    if version is None:
        return DriftDecision(True, f"no {alias} for {model_name} yet: train one", None)
    client = mlflow_client(tracking_uri)
    model_run = client.get_model_version(model_name, version).tags.get("model_run_id", "")
    names = {a.path for a in client.list_artifacts(model_run)} if model_run else set()
    if REFERENCE_ARTIFACT not in names:
        if force:
            return DriftDecision(
                True,
                f"retraining forced; {model_name} v{version} stores no {REFERENCE_ARTIFACT} to compare "
                "with (the new version will)",
                version,
            )
        raise FileNotFoundError(
            f"{model_name} v{version} stores no {REFERENCE_ARTIFACT}; retrain with force=True to give the "
            f"champion a drift reference"
        )
    with tempfile.TemporaryDirectory(prefix="aiops-drift-") as scratch:  # read whole, then removed
        reference = pd.read_parquet(client.download_artifacts(model_run, REFERENCE_ARTIFACT, scratch))
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{model_name}/{version}", dst_path=f"{scratch}/model"
            )
        )
        bundle = DetectorBundle.load(bundle_dir(local))
    training_end = _training_end(client.get_run(model_run).data.tags, reference, f"{model_name} v{version}")
    try:
        result, notes = _compare(features, reference, bundle, window, training_end, model_name, version)
    except ValueError as exc:
        if not force:
            raise
        return DriftDecision(True, f"retraining forced; the drift check could not run: {exc}", version)
    drifted = result.drifted(max_drift_share)
    reason = (
        f"drift share {result.drift_share:.2f} {'>' if drifted else '<='} {max_drift_share:.2f} over the "
        f"last {window} vs {model_name} v{version}'s training reference"
    )
    if notes:
        reason += f" ({'; '.join(notes)})"
    silent = result.columns.loc[result.columns["method"].str.startswith("no values"), "column"].tolist()
    if silent:
        reason += f"; without values in one window: {', '.join(silent)}"
    if force and not drifted:
        reason += "; retraining forced"
    return DriftDecision(force or drifted, reason, version, result)


def _compare(
    features: pd.DataFrame,
    reference: pd.DataFrame,
    bundle: Any,
    window: str,
    training_end: pd.Timestamp,
    model_name: str,
    version: str,
) -> tuple[DriftResult, list[str]]:
    """The drift report of the latest ``window`` against the reference, and notes on what was compared."""
    from aiops.publish import REFERENCE_SCORE

    features = features.reset_index(drop=True)
    in_window, notes = current_rows(features["timestamp"], window, training_end)
    with np.errstate(all="ignore"):
        if REFERENCE_SCORE in reference.columns:  # scored in context when the model was registered
            reference_scores = reference.pop(REFERENCE_SCORE).to_numpy(dtype=float)
        else:
            log.warning(
                "%s v%s's reference sample was stored without its scores (registered before they were "
                "kept): scoring the sample now, out of its time context, so the prediction-drift "
                "figures are approximate for sequence members",
                model_name,
                version,
            )
            reference_scores = bundle.score(reference)
        current = features[in_window].reset_index(drop=True)
        same_hours, hours_note = same_hours_of_day(reference["timestamp"], current["timestamp"])
        if hours_note:
            notes.append(hours_note)
        reference, reference_scores = (
            reference[same_hours].reset_index(drop=True),
            reference_scores[same_hours],
        )
        # Scored with the rows before the window (features holds them), then cut to the window.
        current_scores = bundle.score(features)[in_window]
        result = drift_report(
            reference,
            current,
            bundle.contract.signals,
            reference_scores=reference_scores,
            current_scores=current_scores,
            threshold=bundle.threshold,
        )
    return result, notes


#: Tag on the champion's model run: the last instant of its training period (ISO 8601, UTC).
TRAINING_END_TAG = "drift.training_end"
#: Fewest reference rows a drift check compares with (after matching the hours of the day).
MIN_REFERENCE_ROWS = 200
_DAY = pd.Timedelta("1D")


def _training_end(tags: dict[str, str], reference: pd.DataFrame, model: str) -> pd.Timestamp:
    """The champion's last training instant: its tag, else (older models) the reference sample's last row."""
    if TRAINING_END_TAG in tags:
        return pd.Timestamp(tags[TRAINING_END_TAG])
    log.warning(
        "%s stores no %s tag (registered before it was kept): taking the last row of its reference "
        "sample as the end of its training period, which may be a few steps early",
        model,
        TRAINING_END_TAG,
    )
    return pd.Timestamp(reference["timestamp"].max())


def current_rows(
    timestamps: pd.Series, window: str, training_end: pd.Timestamp
) -> tuple[np.ndarray, list[str]]:
    """Rows of the latest ``window`` that come after the training period, and what was cut.

    Raises:
        ValueError: When the whole window lies within the training period (nothing new to compare).
    """
    latest = timestamps.max()
    in_window = (timestamps > latest - pd.Timedelta(window)).to_numpy()
    after = (timestamps > training_end).to_numpy()
    if not (in_window & after).any():
        raise ValueError(
            f"drift: the last {window} of the data (up to {latest}) lies within the champion's training "
            f"period (up to {training_end}); there is nothing new to compare: read data after {training_end}"
        )
    notes = []
    overlap = in_window & ~after
    if overlap.any():
        kept = timestamps[in_window & after]
        notes.append(
            f"{int(overlap.sum())} rows up to {training_end} were training data and are left out: "
            f"compared {kept.min()} to {kept.max()}"
        )
    return in_window & after, notes


def same_hours_of_day(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, str]:
    """Reference rows from the hours of the day that ``current`` covers, and a note (empty: all).

    A window of a day or more sees every hour, so the whole reference is kept.

    Raises:
        ValueError: When fewer than :data:`MIN_REFERENCE_ROWS` reference rows are left.
    """
    start, span = current.min(), current.max() - current.min()
    if span >= _DAY - pd.Timedelta("1h"):
        return np.ones(len(reference), dtype=bool), ""
    # A row's offset into the day, counted from the window's own start time of day (mod 24 h).
    offset = (reference - start) % _DAY
    keep = (offset <= span).to_numpy()
    if keep.sum() < MIN_REFERENCE_ROWS:
        raise ValueError(
            f"drift: the current window spans {span}; the reference holds {int(keep.sum())} rows from the "
            f"same hours of the day, fewer than {MIN_REFERENCE_ROWS}: widen the window"
        )
    end = start + span
    note = (
        f"the window is shorter than a day: compared with the reference rows from "
        f"{start:%H:%M}-{end:%H:%M} UTC ({int(keep.sum())} of {len(keep)})"
    )
    return keep, note


DRIFT_EXPERIMENT = "aiops-drift-checks"


def log_drift_check(
    decision: DriftDecision,
    tracking_uri: str,
    model_name: str,
    window: str,
    max_drift_share: float,
    report_html: str | Path | None = None,
) -> str:
    """Record a drift check in MLflow (one run per check); return the run id."""
    import mlflow

    from aiops.registry import configure, ensure_experiment

    configure(tracking_uri)
    experiment_id = ensure_experiment(DRIFT_EXPERIMENT, tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift {model_name}") as run:
        mlflow.log_params(
            {
                "model_name": model_name,
                "champion_version": decision.champion_version or "none",
                "window": window,
                "max_drift_share": max_drift_share,
            }
        )
        mlflow.set_tags({"decision": "retrain" if decision.retrain else "keep", "reason": decision.reason})
        if decision.result is not None:
            mlflow.log_metric("drift_share", decision.result.drift_share)
            mlflow.log_metrics({k: float(v) for k, v in decision.result.prediction.items()})
            mlflow.log_text(decision.result.columns.to_csv(index=False), "drift_columns.csv")
        if report_html is not None and Path(report_html).exists():
            mlflow.log_artifact(str(report_html), artifact_path="report")
    return str(run.info.run_id)
