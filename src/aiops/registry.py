"""MLflow adapter: where runs go, how a detector is logged, and the promotion gate.

Local default: a SQLite backend at ``mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts`` (MLflow 3 deprecates the plain file store). A remote
server is used when ``MLFLOW_TRACKING_URI`` (or an explicit URI) says so.

Promotion: every registered version gets alias ``challenger``; alias
``champion`` moves to it only when it beats the current champion on the same
test data by more than a margin. The old champion keeps alias ``previous``.
Nothing touches ``champion`` before the decision, so a failure anywhere leaves
it where it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from aiops.schema import KEY_COLUMNS

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
LOCAL_STORE_DIR = "mlruns"
#: What a served detector needs at run time; versions are read from this environment.
_RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "joblib", "pyarrow", "scipy")


def local_tracking_uri(project_root: str | Path) -> str:
    """Return the SQLite tracking URI of the local store under ``<project_root>/mlruns``."""
    return f"sqlite:///{(Path(project_root) / LOCAL_STORE_DIR / 'mlflow.db').resolve()}"


def resolve_tracking_uri(explicit: str = "", project_root: str | Path = ".") -> str:
    """Pick the tracking URI: explicit argument, then ``MLFLOW_TRACKING_URI``, then the local store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI", "") or local_tracking_uri(project_root)


def configure(tracking_uri: str) -> None:
    """Point MLflow's tracking and registry at ``tracking_uri`` (creating a local store's folder)."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if tracking_uri.startswith("sqlite:///"):
        Path(urlparse(tracking_uri).path).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def mlflow_client(tracking_uri: str | None = None) -> Any:
    """Return an ``MlflowClient`` whose tracking *and* registry point at ``tracking_uri``.

    ``MlflowClient(uri)`` alone takes the registry from process-wide state,
    which silently splits runs and models across two stores.
    """
    from mlflow import MlflowClient
    from mlflow.tracking import get_tracking_uri

    uri = tracking_uri or get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Return the id of experiment ``name``, creating it if needed.

    For a local SQLite store the artifacts go to ``artifacts/`` beside the
    database, so the whole store lives under ``mlruns/``. A tracking server
    chooses its own artifact location.
    """
    store = mlflow_client(tracking_uri)
    found = store.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(urlparse(tracking_uri).path).parent / "artifacts").resolve().as_uri()
    return str(store.create_experiment(name, artifact_location=location))


def runtime_requirements() -> list[str]:
    """Exact pins of the packages a served detector imports, from this environment."""
    return [f"{pkg}=={metadata.version(pkg)}" for pkg in _RUNTIME_PACKAGES]


def log_detector(bundle_dir: str | Path, sample: pd.DataFrame) -> Any:
    """Log a detector bundle as an MLflow pyfunc model in the active run.

    Args:
        bundle_dir: Folder written by :meth:`aiops.model.DetectorBundle.save`.
        sample: A few feature rows, used for the signature and the input example.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what gets registered).

    """
    import mlflow
    from mlflow.models import infer_signature

    import aiops
    from aiops.model import DetectorBundle
    from aiops.pyfunc import BUNDLE_ARTIFACT, DetectorPyfunc, to_model_input

    bundle = DetectorBundle.load(bundle_dir)
    rows = sample.loc[:, [*KEY_COLUMNS, *bundle.contract.feature_names]].head(5)
    example = to_model_input(rows)
    signature = infer_signature(example, bundle.predict(rows))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=DetectorPyfunc(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        code_paths=[str(Path(aiops.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=runtime_requirements(),
    )


@dataclass(frozen=True)
class GateDecision:
    """Outcome of comparing a challenger with the champion on the same data."""

    promote: bool
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None = None
    champion_version: str | None = None
    margin: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for logging."""
        return asdict(self)


def decide(
    metric: str,
    challenger_score: float,
    champion_score: float | None,
    *,
    margin: float = 0.0,
    champion_version: str | None = None,
    champion_error: str | None = None,
) -> GateDecision:
    """Decide whether the challenger replaces the champion (higher scores are better).

    Promotes when there is no champion yet, or when the challenger's score
    exceeds the champion's by more than ``margin``. A champion that could not
    be evaluated is kept: replacing a model nobody could measure is a decision
    for a person (``aiops models promote``), not for the pipeline.
    """
    if champion_error is not None:
        verdict = False
        reason = (
            f"champion v{champion_version} could not be evaluated on this test data ({champion_error}); kept"
        )
    elif champion_score is None:
        verdict, reason = True, "no champion yet: the first version becomes champion"
    else:
        gain = challenger_score - champion_score
        verdict = gain > margin
        reason = (
            f"challenger {metric}={challenger_score:.4f} vs champion v{champion_version} "
            f"{metric}={champion_score:.4f}: gain {gain:+.4f} {'>' if verdict else '<='} margin {margin:.4f}"
        )
    return GateDecision(
        promote=verdict,
        reason=reason,
        metric=metric,
        challenger_score=challenger_score,
        champion_score=champion_score,
        champion_version=champion_version,
        margin=margin,
    )


@dataclass(frozen=True)
class Registration:
    """What :func:`register_and_gate` did."""

    name: str
    version: str
    aliases: tuple[str, ...]
    decision: GateDecision
    challenger_metrics: dict[str, float]


def register_and_gate(
    name: str,
    model_uri: str,
    evaluate_model: Callable[[str], Mapping[str, float]],
    *,
    primary_metric: str,
    margin: float = 0.0,
    run_id: str | None = None,
    version_tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> Registration:
    """Register ``model_uri`` as a new version and run the champion/challenger gate.

    Args:
        name: Registered model name.
        model_uri: The logged model to register.
        evaluate_model: Loads a model URI and returns its metrics on the shared test data.
        primary_metric: Metric that decides (higher is better).
        margin: Required improvement over the champion.
        run_id: Run that produced the model (decision logged there).
        version_tags: Lineage tags for the new version.
        tracking_uri: Tracking/registry URI; the configured one when ``None``.

    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_registry_uri(tracking_uri or mlflow.get_tracking_uri())
    client = mlflow_client(tracking_uri)
    version = str(mlflow.register_model(model_uri, name, tags=dict(version_tags or {})).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    challenger_metrics = dict(evaluate_model(f"models:/{name}/{version}"))
    if primary_metric not in challenger_metrics:
        raise KeyError(f"primary metric '{primary_metric}' not among {sorted(challenger_metrics)}")

    champion_version = champion_score = champion_error = None
    try:
        champion_version = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        champion_version = None
    if champion_version is not None:
        try:
            champion_score = float(evaluate_model(f"models:/{name}/{champion_version}")[primary_metric])
        except Exception as exc:  # noqa: BLE001 - any failure to score the champion blocks promotion
            champion_error = f"{type(exc).__name__}: {exc}"

    decision = decide(
        primary_metric,
        float(challenger_metrics[primary_metric]),
        champion_score,
        margin=margin,
        champion_version=champion_version,
        champion_error=champion_error,
    )
    aliases = [CHALLENGER]
    if decision.promote:
        if champion_version is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion_version)
        client.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    client.set_model_version_tag(
        name, version, "gate.decision", "promoted" if decision.promote else "rejected"
    )
    client.set_model_version_tag(name, version, "gate.reason", decision.reason)
    if run_id is not None:
        client.set_tag(run_id, "gate.decision", "promoted" if decision.promote else "rejected")
        client.set_tag(run_id, "gate.reason", decision.reason)
        client.log_metric(run_id, f"gate_challenger_{primary_metric}", decision.challenger_score)
        if decision.champion_score is not None:
            client.log_metric(run_id, f"gate_champion_{primary_metric}", decision.champion_score)
    return Registration(name, str(version), tuple(aliases), decision, challenger_metrics)
