"""Track a trained detector in MLflow and register it through the promotion gate."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aiops import registry
from aiops.evaluation import evaluate
from aiops.model import DetectorBundle
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
    pipeline_version: str = "local"
    git_commit: str = "unknown"
    image: str = "local"
    extra: Mapping[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Flat string tags under the ``lineage.`` prefix."""
        base = {
            "dataset_hash": self.dataset_hash,
            "data_rows": str(self.data_rows),
            "source": self.source,
            "seed": str(self.seed),
            "kfp_run_id": self.kfp_run_id,
            "pipeline_version": self.pipeline_version,
            "git_commit": self.git_commit,
            "image": self.image,
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
    artifacts_dir: str | Path | None = None,
    run_name: str | None = None,
) -> PublishResult:
    """Log params, metrics, plots and the model; register it; run the gate.

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
        artifacts_dir: Plots and reports to attach to the run.
        run_name: MLflow run name.

    """
    import mlflow

    registry.configure(tracking_uri)
    experiment_id = registry.ensure_experiment(experiment, tracking_uri)
    bundle = DetectorBundle.load(bundle_dir)
    trained = {k: float(v) for k, v in bundle.meta.items() if k.rsplit(".", 1)[-1] in MEASURED_META}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({**lineage.tags(), "detector": str(bundle.meta.get("detector", ""))})
        mlflow.log_params({k: v for k, v in bundle.meta.items() if k not in trained})
        mlflow.log_params(
            {"threshold": bundle.threshold, "primary_metric": primary_metric, "gate_margin": margin}
        )
        mlflow.log_metrics({f"train_{k}": v for k, v in trained.items()})
        mlflow.log_text(bundle.contract.to_json(), "feature_contract.json")
        if artifacts_dir is not None and Path(artifacts_dir).exists():
            mlflow.log_artifacts(str(artifacts_dir), artifact_path="evaluation")
        info = registry.log_detector(
            bundle_dir, test.dropna().head(20) if test.dropna().size else test.head(20)
        )

        def evaluate_uri(uri: str) -> dict[str, float]:
            return score_model_uri(uri, test, labels)

        registration = registry.register_and_gate(
            model_name,
            info.model_uri,
            evaluate_uri,
            primary_metric=primary_metric,
            margin=margin,
            run_id=run.info.run_id,
            version_tags={**lineage.tags(), "run_id": run.info.run_id},
            tracking_uri=tracking_uri,
        )
        measured = dict(registration.challenger_metrics)
        report_metrics = Path(artifacts_dir or "", "metrics.json")
        if artifacts_dir is not None and report_metrics.exists():
            # Per-member and forecast numbers from the evaluation step; the gate's own numbers win.
            for key, value in json.loads(report_metrics.read_text()).items():
                measured.setdefault(key, value)
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in measured.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            gate_file = Path(tmp) / "gate_decision.json"
            gate_file.write_text(json.dumps(registration.decision.as_dict(), indent=2))
            mlflow.log_artifact(str(gate_file))
        mlflow.set_tags({"model_name": model_name, "model_version": registration.version})
    return PublishResult(run.info.run_id, experiment_id, registration)
