"""Track a trained detector in MLflow and register it through the promotion gate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops import package_version, registry
from aiops.drift import TRAINING_END_TAG
from aiops.evaluation import evaluate
from aiops.model import DetectorBundle
from aiops.model_card import render_model_card
from aiops.pyfunc import to_model_input
from aiops.training import MEASURED_META


@dataclass(frozen=True)
class Lineage:
    """Where a model came from; recorded as tags on its run and its version."""

    dataset_hash: str
    data_rows: int
    source: str
    seed: int
    kfp_run_id: str = "local"
    #: The aiops release whose pipeline ran (default: the installed package's version).
    pipeline_version: str = ""
    git_commit: str = "unknown"
    image: str = "local"
    feature_service: str = "in-pipeline (aiops.features)"
    extra: Mapping[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Flat string tags under the ``lineage.`` prefix."""
        base = {
            "dataset_hash": self.dataset_hash,
            "data_rows": str(self.data_rows),
            "source": self.source,
            "seed": str(self.seed),
            "kfp_run_id": self.kfp_run_id,
            "pipeline_version": self.pipeline_version or package_version(),
            "git_commit": self.git_commit,
            "image": self.image,
            "feature_service": self.feature_service,
            **self.extra,
        }
        return {f"lineage.{k}": v for k, v in base.items()}


def score_model_uri(model_uri: str, test: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Load any registered detector and evaluate its own alarms on ``test``."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    output = model.predict(to_model_input(test))
    return evaluate(test, output["is_anomaly"].to_numpy(dtype=bool), labels).metrics


@dataclass(frozen=True)
class PublishResult:
    """Summary of a tracked and registered training run."""

    run_id: str
    experiment_id: str
    registration: registry.Registration


def _split_meta(meta: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, float]]:
    """Split training metadata into settings (params) and measurements (metrics)."""
    params, measured = {}, {}
    for key, value in meta.items():
        if prefix and not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.rsplit(".", 1)[-1] in MEASURED_META:
            measured[name] = float(value)
        elif prefix or "." not in key:  # the parent keeps its own keys; members get theirs
            params[name] = value
    return params, measured


def _log_member_runs(bundle: DetectorBundle, report: dict[str, float], tags: dict[str, str]) -> None:
    """One nested run per ensemble member, so the compare view lines the detectors up."""
    import mlflow

    members = getattr(bundle.detector, "members", None) or {}
    for name, detector in members.items():
        with mlflow.start_run(run_name=name, nested=True):
            mlflow.set_tags({**tags, "detector": name, "role": "ensemble member"})
            params, measured = _split_meta(bundle.meta, f"{name}.")
            mlflow.log_params({**params, "threshold": bundle.detector.member_thresholds.get(name)})
            mlflow.log_metrics({f"train_{k}": v for k, v in measured.items()})
            mlflow.log_metrics(
                {f"test_{k[len(name) + 1 :]}": v for k, v in report.items() if k.startswith(f"{name}.")}
            )
            for step, loss in enumerate(getattr(detector, "history", []) or [], start=1):
                mlflow.log_metric("train_loss", float(loss), step=step)  # the training curve


def _read_report(artifacts_dir: str | Path | None) -> dict[str, float]:
    path = Path(artifacts_dir or "", "metrics.json")
    if artifacts_dir is None or not path.exists():
        return {}
    # null is a metric without a value (written for NaN, which JSON cannot hold)
    return {k: float("nan") if v is None else float(v) for k, v in json.loads(path.read_text()).items()}


def publish_detector(
    bundle_dir: str | Path,
    test: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    lineage: Lineage,
    primary_metric: str = "event_f1",
    margin: float = 0.0,
    guards: Mapping[str, float] | None = None,
    artifacts_dir: str | Path | None = None,
    run_name: str | None = None,
    reference: pd.DataFrame | None = None,
    move_champion: bool = True,
) -> PublishResult:
    """Track a training run in MLflow, register its model and run the promotion gate.

    Layout in MLflow: a parent run per pipeline run (lineage tags, the evaluation report,
    gate decision, model card), a nested run per ensemble member (its params, training curve,
    test metrics) and a nested run for the deployable model itself, which is registered.
    Re-running the step for the same KFP run reuses the version registered the first time.

    Args:
        bundle_dir: The trained :class:`~aiops.model.DetectorBundle` folder.
        test: Held-out feature rows (the latest period) both models are judged on.
        labels: Label table for ``test``.
        tracking_uri: MLflow tracking/registry URI.
        experiment: Experiment name (one per pipeline).
        model_name: Registered model name.
        lineage: Dataset hash, run ids, commit and image.
        primary_metric: Gate metric, higher is better.
        margin: Required gain over the champion.
        guards: Metrics that may not regress (metric -> tolerated drop).
        artifacts_dir: The evaluation step's report folder (plots, metrics.json).
        run_name: MLflow run name of the parent run.
        reference: Training-period feature rows; a sample is stored with the model
            (``reference_sample.parquet``) as the baseline of later drift checks.
        move_champion: Let a passed gate move ``champion`` (``False``: a canary decides later).

    """
    import mlflow

    registry.configure(tracking_uri)
    experiment_id = registry.ensure_experiment(experiment, tracking_uri)
    bundle = DetectorBundle.load(bundle_dir)
    report = _read_report(artifacts_dir)
    tags = {**lineage.tags(), "lineage.feature_transform_version": bundle.contract.transform_version}
    guards = dict(guards or {})

    def evaluate_uri(uri: str) -> dict[str, float]:
        return score_model_uri(uri, test, labels)

    client = registry.mlflow_client(tracking_uri)

    def record(registration: registry.Registration, parent_id: str, model_run_id: str) -> None:
        _record_outcome(
            client, registration, report, parent_id, model_run_id,
            bundle=bundle, tags=tags, test=test, model_name=model_name,
        )  # fmt: skip

    existing = registry.find_version(model_name, "lineage.kfp_run_id", lineage.kfp_run_id, tracking_uri)
    if existing is not None and lineage.kfp_run_id != "local":
        # A retried step of the same pipeline run: no second version; (re)run the gate, and finish
        # what the failed attempt may have left undone (test metrics, model card, decision).
        version_tags = client.get_model_version(model_name, existing).tags
        parent_id = version_tags.get("pipeline_run_id", "")
        registration = registry.register_and_gate(
            model_name,
            None,
            evaluate_uri,
            primary_metric=primary_metric,
            margin=margin,
            guards=guards,
            run_id=parent_id or None,
            tracking_uri=tracking_uri,
            existing_version=existing,
            move_champion=move_champion,
        )
        if parent_id:
            record(registration, parent_id, version_tags.get("model_run_id", ""))
            if client.get_run(parent_id).info.status != "FINISHED":
                client.set_terminated(parent_id, "FINISHED")  # the retry completed its work
        return PublishResult(parent_id, experiment_id, registration)

    mlflow.set_experiment(experiment_id=experiment_id)  # nested runs land in the active experiment
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as parent:
        mlflow.set_tags({**tags, "detector": str(bundle.meta.get("detector", "")), "role": "pipeline run"})
        mlflow.log_params(
            {"primary_metric": primary_metric, "gate_margin": margin, "gate_guards": json.dumps(guards)}
        )
        if artifacts_dir is not None and Path(artifacts_dir).exists():
            mlflow.log_artifacts(str(artifacts_dir), artifact_path="evaluation")
        _log_member_runs(bundle, report, tags)
        params, measured = _split_meta(bundle.meta)
        with mlflow.start_run(run_name=str(bundle.meta.get("detector", "model")), nested=True) as model_run:
            mlflow.set_tags(
                {**tags, "detector": str(bundle.meta.get("detector", "")), "role": "deployable model"}
            )
            mlflow.log_params({**params, "threshold": bundle.threshold})
            mlflow.log_metrics({f"train_{k}": v for k, v in measured.items()})
            mlflow.log_text(bundle.contract.to_json(), "feature_contract.json")
            if reference is not None:
                _log_reference(reference, bundle)
            info = registry.log_detector(
                bundle_dir, test.dropna().head(20) if test.dropna().size else test.head(20)
            )
        registration = registry.register_and_gate(
            model_name,
            info.model_uri,
            evaluate_uri,
            primary_metric=primary_metric,
            margin=margin,
            guards=guards,
            run_id=parent.info.run_id,
            version_tags={
                **tags,
                "pipeline_run_id": parent.info.run_id,
                "model_run_id": model_run.info.run_id,
            },
            tracking_uri=tracking_uri,
            move_champion=move_champion,
        )
        record(registration, parent.info.run_id, model_run.info.run_id)
    return PublishResult(parent.info.run_id, experiment_id, registration)


def _record_outcome(
    client: Any,
    registration: registry.Registration,
    report: dict[str, float],
    parent_id: str,
    model_run_id: str,
    *,
    bundle: DetectorBundle,
    tags: dict[str, str],
    test: pd.DataFrame,
    model_name: str,
) -> None:
    """Log what the gate decided on the pipeline run: test metrics, model card, decision.

    Through the client, not the active run, so a retried step can complete the run an earlier
    attempt left unfinished.
    """
    # The gate's numbers (scored through the registry) are authoritative; the report adds per-member ones.
    measured_test = {
        **{k: v for k, v in report.items() if k not in registration.challenger_metrics},
        **registration.challenger_metrics,
    }
    finite = {f"test_{k}": float(v) for k, v in measured_test.items() if np.isfinite(v)}
    metrics = [_metric(k, v) for k, v in finite.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(parent_id, metrics=metrics[start : start + 1000])
    if model_run_id:
        client.log_batch(model_run_id, metrics=[m for m in metrics if "." not in m.key[5:]])
    card = render_model_card(
        model_name=model_name,
        version=registration.version,
        bundle=bundle,
        lineage_tags=tags,
        test=test,
        challenger=registration.challenger_metrics,
        champion=registration.champion_metrics,
        champion_version=registration.decision.champion_version,
        decision_reason=registration.decision.reason,
        promoted=registration.decision.promote and "champion" in registration.aliases,
        held_for_canary=registration.decision.promote and "champion" not in registration.aliases,
    )
    client.log_text(parent_id, card, "model_card.md")
    client.log_text(parent_id, json.dumps(registration.decision.as_dict(), indent=2), "gate_decision.json")
    client.update_model_version(model_name, registration.version, card)
    client.set_tag(parent_id, "model_name", model_name)
    client.set_tag(parent_id, "model_version", registration.version)


REFERENCE_ARTIFACT = "reference_sample.parquet"
REFERENCE_ROWS = 5000
#: Column of the reference sample holding the model's own score of each row, computed in context.
REFERENCE_SCORE = "__anomaly_score"


def _log_reference(reference: pd.DataFrame, bundle: DetectorBundle, rows: int = REFERENCE_ROWS) -> None:
    """Store a seeded sample of the training rows with the model: the drift baseline.

    Each row carries the model's score of it (:data:`REFERENCE_SCORE`), computed over the whole
    training period in time order: the sequence members (the LSTM's windows, the forecaster's
    running level) need each pod's preceding rows, which a random sample no longer holds, so
    scoring the sample later would give scores the served model never produces.
    """
    import tempfile

    import mlflow

    with np.errstate(all="ignore"):
        scored = reference.assign(**{REFERENCE_SCORE: np.asarray(bundle.score(reference), dtype=float)})
    sample = scored.sample(rows, random_state=0) if len(scored) > rows else scored
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_ARTIFACT
        sample.sort_values("timestamp").to_parquet(path, index=False)
        mlflow.log_artifact(str(path))
    # Drift checks leave out rows the model trained on; the sample's last row may be early.
    mlflow.set_tag(TRAINING_END_TAG, pd.Timestamp(reference["timestamp"].max()).isoformat())


def _metric(key: str, value: float) -> Any:
    import time

    from mlflow.entities import Metric

    return Metric(key=key, value=value, timestamp=int(time.time() * 1000), step=0)
