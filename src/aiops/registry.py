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

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from aiops.schema import KEY_COLUMNS

log = logging.getLogger(__name__)

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


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI, as SQLAlchemy reads it; ``None`` for other URIs.

    ``sqlite:///mlruns/mlflow.db`` is relative to the working directory and
    ``sqlite:////abs/mlflow.db`` absolute; the URI's path component (``/mlruns/...``) is neither.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    return Path(database).resolve() if database and database != ":memory:" else None


def configure(tracking_uri: str) -> None:
    """Point MLflow's tracking and registry at ``tracking_uri`` (creating a local store's folder)."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    database = sqlite_path(tracking_uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
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
    database = sqlite_path(tracking_uri)
    if database is not None:
        location = (database.parent / "artifacts").as_uri()
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
    guard_regressions: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for logging."""
        return asdict(self)


def decide(
    metric: str,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    margin: float = 0.0,
    guards: Mapping[str, float] | None = None,
    champion_version: str | None = None,
    champion_error: str | None = None,
) -> GateDecision:
    """Decide whether the challenger replaces the champion.

    Promotes when there is no champion yet, or when the challenger's ``metric`` beats the
    champion's by more than ``margin`` *and* no guard metric worsens by more than its tolerance
    (``guards = {"event_precision": 0.02}``: precision may not fall by more than 0.02;
    ``{"false_alarm_events": 2}``: at most two more false alarms). Higher is better except for
    the metrics :func:`lower_is_better` names (counts of errors, delays, error rates). A
    challenger whose metric or guard is not a number is not promoted: missing evidence is not a
    pass. A champion that could not be evaluated is kept: replacing a model nobody could measure
    is a decision for a person (``aiops models promote``), not for the pipeline.
    """
    score = float(challenger[metric])

    def result(
        promote: bool, reason: str, best: float | None = None, regressions: dict | None = None
    ) -> GateDecision:
        return GateDecision(promote, reason, metric, score, best, champion_version, margin, regressions or {})

    if champion_error is not None:
        return result(
            False,
            f"champion v{champion_version} could not be evaluated on this test data ({champion_error}); kept",
        )
    if math.isnan(score):
        return result(False, f"challenger {metric} is not a number; not promoted")
    if champion is None:
        return result(True, "no champion yet: the first version becomes champion")
    best = float(champion[metric])
    sign = -1.0 if lower_is_better(metric) else 1.0
    gain = sign * (score - best) if not math.isnan(best) else math.inf
    regressions = {
        guard: (float(challenger[guard]), float(champion[guard]))
        for guard, tolerance in (guards or {}).items()
        if _worse(guard, float(challenger[guard]), float(champion[guard]), tolerance)
    }
    reason = (
        f"challenger {metric}={score:.4f} vs champion v{champion_version} {metric}={best:.4f}: "
        f"gain {gain:+.4f} {'>' if gain > margin else '<='} margin {margin:.4f}"
    )
    if regressions:
        shown = ", ".join(
            f"{g} {new:.4f} {'>' if lower_is_better(g) else '<'} {old:.4f} "
            f"{'+' if lower_is_better(g) else '-'} tolerance {(guards or {})[g]:g}"
            for g, (new, old) in regressions.items()
        )
        reason += f"; guard regression: {shown}"
    return result(gain > margin and not regressions, reason, best, regressions)


#: Metrics where lower is better: counts of errors, delays and rates of alarms ...
_LOWER_IS_BETTER = ("_fp", "_fn", "false_alarm_events", "delay_s", "alarm_rate")
#: ... and forecast errors, overall or per signal (``forecast_mape_cpu_usage_cores``).
_FORECAST_ERRORS = frozenset({"mape", "smape", "wape"})


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (as :func:`aiops.evaluation.evaluate` names them)."""
    return metric.endswith(_LOWER_IS_BETTER) or not _FORECAST_ERRORS.isdisjoint(metric.split("_"))


def _worse(metric: str, new: float, old: float, tolerance: float) -> bool:
    """Whether ``new`` is worse than ``old`` by more than ``tolerance`` (a missing ``new`` is)."""
    if math.isnan(new):
        return not math.isnan(old)
    if math.isnan(old):
        return False
    return new > old + tolerance if lower_is_better(metric) else new < old - tolerance


@dataclass(frozen=True)
class Registration:
    """What :func:`register_and_gate` did."""

    name: str
    version: str
    aliases: tuple[str, ...]
    decision: GateDecision
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None
    reused: bool = False


def find_version(name: str, tag: str, value: str, tracking_uri: str | None = None) -> str | None:
    """Return the version of ``name`` whose tag ``tag`` equals ``value``, if any (newest first)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    except MlflowException as exc:
        if _not_found(exc):  # a model that does not exist yet has no versions
            return None
        raise
    return str(max(int(v.version) for v in versions)) if versions else None


def _not_found(exc: Exception) -> bool:
    """Whether an MLflow error says the model or alias does not exist (and nothing else).

    Anything else (the tracking server down, a time-out, refused credentials) must not read as
    "no champion yet": the gate would then promote a challenger without comparing it.
    """
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # A missing alias: INVALID_PARAMETER_VALUE "Registered model alias champion not found."
    return code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc)


def alias_version(name: str, alias: str, tracking_uri: str | None = None) -> str | None:
    """The version ``alias`` points at, or ``None`` when the model or the alias does not exist.

    Raises:
        MlflowException: Any other registry error (unreachable server, refused credentials...).
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def _transform_version(client: Any, name: str, version: str) -> str | None:
    """The feature transform a version was trained on: its lineage tag, else its run's parameter.

    Versions registered before the lineage tag existed still carry the training run's
    ``feature_transform_version`` parameter.
    """
    model_version = client.get_model_version(name, version)
    tagged = model_version.tags.get("lineage.feature_transform_version")
    if tagged is not None or not model_version.run_id:
        return tagged
    return client.get_run(model_version.run_id).data.params.get("feature_transform_version")


def _transform_mismatch(client: Any, name: str, champion: str, challenger: str) -> str | None:
    """Why the champion cannot be scored on the challenger's test features, if their transforms differ."""
    old, new = (_transform_version(client, name, version) for version in (champion, challenger))
    if old is None or new is None or old == new:
        return None
    return (
        f"the champion was trained on feature transform v{old} and cannot score this run's v{new} "
        f"features; compare them by hand and promote with 'aiops models promote {name} --version "
        f"{challenger} --reason ...'"
    )


def register_and_gate(
    name: str,
    model_uri: str | None,
    evaluate_model: Callable[[str], Mapping[str, float]],
    *,
    primary_metric: str,
    margin: float = 0.0,
    guards: Mapping[str, float] | None = None,
    run_id: str | None = None,
    version_tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
    existing_version: str | None = None,
    move_champion: bool = True,
) -> Registration:
    """Register ``model_uri`` as a new version (or reuse ``existing_version``) and run the gate.

    Args:
        name: Registered model name.
        model_uri: The logged model to register (ignored when ``existing_version`` is given).
        evaluate_model: Loads a model URI and returns its metrics on the shared test data.
        primary_metric: Metric that decides (higher is better).
        margin: Required improvement over the champion.
        guards: Metrics that may not regress by more than the given tolerance.
        run_id: Run that produced the model (decision logged there).
        version_tags: Lineage tags for a new version.
        tracking_uri: Tracking/registry URI; the configured one when ``None``.
        existing_version: A version registered by an earlier attempt of the same pipeline
            run; re-running the step must not create a duplicate.
        move_champion: Move ``champion`` when the gate passes. ``False`` when a canary rollout
            follows and decides: the version is then tagged ``gate.decision=passed`` and keeps
            only ``challenger``.
    """
    import mlflow

    client = mlflow_client(tracking_uri)
    if existing_version is None and model_uri is None:
        raise ValueError("model_uri is required when no existing version is reused")
    # Scored before it is registered: a model that cannot be scored, or a gate that names a
    # metric the evaluation does not produce, leaves no ungated version behind.
    scored_uri = f"models:/{name}/{existing_version}" if existing_version is not None else str(model_uri)
    challenger_metrics = dict(evaluate_model(scored_uri))
    missing = [m for m in (primary_metric, *(guards or {})) if m not in challenger_metrics]
    if missing:
        raise KeyError(f"gate metric(s) {missing} not among {sorted(challenger_metrics)}")
    if existing_version is not None:
        version = existing_version
    else:
        mlflow.set_registry_uri(tracking_uri or mlflow.get_tracking_uri())
        version = str(mlflow.register_model(model_uri, name, tags=dict(version_tags or {})).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    champion_version = alias_version(name, CHAMPION, tracking_uri)
    champion_metrics = champion_error = None
    already_champion = champion_version == version  # a re-run after this very version was promoted
    if already_champion:
        champion_version = alias_version(name, PREVIOUS, tracking_uri)
    if champion_version is not None:
        champion_error = _transform_mismatch(client, name, champion_version, version)
    if champion_version is not None and champion_error is None:
        try:
            champion_metrics = dict(evaluate_model(f"models:/{name}/{champion_version}"))
        except Exception as exc:  # noqa: BLE001 - any failure to score the champion blocks promotion
            champion_error = f"{type(exc).__name__}: {exc}"

    decision = decide(
        primary_metric,
        challenger_metrics,
        champion_metrics,
        margin=margin,
        guards=guards,
        champion_version=champion_version,
        champion_error=champion_error,
    )
    if already_champion and champion_version is None:
        # A re-run of the first version's step: "no champion yet" would misreport the registry.
        decision = replace(
            decision, reason=f"v{version} is already champion (a re-run); no earlier version to compare"
        )
    if already_champion and not decision.promote:
        # It passed when it was promoted; a retry that cannot judge it again (the previous
        # version fails to load, say) must not brand the serving champion "rejected".
        decision = replace(decision, promote=True, reason=f"already champion, kept: {decision.reason}")
    taken_out = _taken_out(client.get_model_version(name, version).tags)
    if taken_out is not None and decision.promote and not already_champion:
        # An operator (or a later promotion) took this version out of service; a retried step
        # must not put it back.
        decision = replace(decision, promote=False, reason=f"{taken_out}; a retry does not promote it again")
    aliases = [CHALLENGER]
    if decision.promote and move_champion:
        current = alias_version(name, CHAMPION, tracking_uri)
        compared = version if already_champion else champion_version
        if current != compared:
            # Someone promoted or rolled back while this gate ran: the decision is about a
            # champion that no longer serves.
            decision = replace(
                decision,
                promote=False,
                reason=f"the champion changed while the gate ran (v{compared} when compared, v{current} "
                f"now): not promoted over a version it was not compared with; re-run the gate",
            )
        else:
            if current is not None and current != version:
                client.set_registered_model_alias(name, PREVIOUS, current)
            client.set_registered_model_alias(name, CHAMPION, version)
            aliases.append(CHAMPION)
    verdict = ("promoted" if move_champion else "passed") if decision.promote else "rejected"
    client.set_model_version_tag(name, version, "gate.decision", verdict)
    client.set_model_version_tag(name, version, "gate.reason", decision.reason)
    if run_id is not None:
        client.set_tag(run_id, "gate.decision", verdict)
        client.set_tag(run_id, "gate.reason", decision.reason)
        client.log_metric(run_id, f"gate_challenger_{primary_metric}", decision.challenger_score)
        if decision.champion_score is not None:
            client.log_metric(run_id, f"gate_champion_{primary_metric}", decision.champion_score)
    return Registration(
        name,
        version,
        tuple(aliases),
        decision,
        challenger_metrics,
        champion_metrics,
        reused=existing_version is not None,
    )


# --------------------------------------------------------------------------- manual operations


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as ``aiops models list`` shows it."""

    version: str
    aliases: tuple[str, ...]
    created: str
    run_id: str
    decision: str
    tags: dict[str, str]
    metrics: dict[str, float]


def list_versions(name: str, tracking_uri: str | None = None) -> list[VersionSummary]:
    """All versions of ``name``, newest first, with aliases, tags and their run's test metrics."""
    client = mlflow_client(tracking_uri)
    model = client.get_registered_model(name)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases_by_version.setdefault(str(version), []).append(alias)
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        metrics = _run_metrics(client, mv.run_id)
        out.append(
            VersionSummary(
                version=str(mv.version),
                aliases=tuple(sorted(aliases_by_version.get(str(mv.version), []))),
                created=pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").isoformat(
                    timespec="seconds"
                ),
                run_id=mv.run_id or "",
                decision=mv.tags.get("gate.decision", ""),
                tags=dict(mv.tags),
                metrics={k: v for k, v in metrics.items() if k.startswith("test_")},
            )
        )
    return out


def _run_metrics(client: Any, run_id: str | None) -> dict[str, float]:
    """A version's run metrics; none when its run is gone (``mlflow gc``), with a warning."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.metrics)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("run %s of a registered version is gone; listing the version without metrics", run_id)
        return {}


#: Manual actions recorded on a version (``<action>.reason/.by/.at``): taking it out of service,
#: or putting it in.
OUT_OF_SERVICE, INTO_SERVICE = ("rollback", "demotion"), ("promotion", "restoration")


def last_manual_action(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """The latest manual action on a version and its reason, by the ``.at`` stamps; ``None`` if none."""
    done = [
        (tags.get(f"{action}.at", ""), action, tags[f"{action}.reason"])
        for action in (*OUT_OF_SERVICE, *INTO_SERVICE)
        if f"{action}.reason" in tags
    ]
    if not done:
        return None
    _, action, reason = max(done)  # ISO 8601 UTC stamps sort by time
    return action, reason


def _taken_out(tags: Mapping[str, str]) -> str | None:
    """Why a version was last taken out of service (rolled back, or replaced by hand), if it was."""
    last = last_manual_action(tags)
    if last is None or last[0] not in OUT_OF_SERVICE:
        return None
    action, reason = last
    return (
        f"rolled back by an operator ({reason})"
        if action == "rollback"
        else f"taken out of service ({reason})"
    )


def _stamp(client: Any, name: str, version: str, action: str, reason: str) -> None:
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    now = pd.Timestamp.now(tz="UTC").isoformat(timespec="microseconds")
    client.set_model_version_tag(name, version, f"{action}.reason", reason)
    client.set_model_version_tag(name, version, f"{action}.by", user)
    client.set_model_version_tag(name, version, f"{action}.at", now)


def promote(name: str, version: str, reason: str, tracking_uri: str | None = None) -> str | None:
    """Make ``version`` the champion by hand; the old champion becomes ``previous``.

    Returns:
        The version that was champion before, if any.

    Raises:
        ValueError: Without a reason, or when the version does not exist.
    """
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason (it is recorded on the version)")
    client = mlflow_client(tracking_uri)
    # The registry's own spelling: "03", " 3" or "+3" name version 3 to MLflow, but would not
    # compare equal to the alias' "3" below (and `previous` would become the champion itself).
    version = str(client.get_model_version(name, version).version)  # raises when it does not exist
    current = alias_version(name, CHAMPION, tracking_uri)
    if current == version:
        raise ValueError(f"{name} version {version} is already the champion")
    # Tags first: a failure between them and the aliases then leaves no demoted version unmarked
    # (a retried pipeline step reads them and does not put it back).
    _stamp(client, name, version, "promotion", reason)
    if current is not None:
        _stamp(client, name, current, "demotion", f"replaced by version {version}: {reason}")
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    return current


def rollback(name: str, reason: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """Put the ``previous`` version back as champion; the demoted one is tagged with the reason.

    Returns:
        ``(demoted, restored)`` versions.

    Raises:
        ValueError: Without a reason, or when there is no ``previous`` version.
        mlflow.exceptions.MlflowException: When no model of that name is registered.
    """
    if not reason.strip():
        raise ValueError("a rollback needs a reason (it is recorded on the version)")
    client = mlflow_client(tracking_uri)
    client.get_registered_model(name)  # an unknown name is that, not "no previous version"
    previous = alias_version(name, PREVIOUS, tracking_uri)
    current = alias_version(name, CHAMPION, tracking_uri)
    if previous is None or current is None:
        raise ValueError(
            f"{name} has no 'previous' version to roll back to (one rollback undoes one promotion); "
            f"make a version champion with: aiops models promote {name} --version N --reason ..."
        )
    if previous == current:
        raise ValueError(
            f"{name}'s 'previous' alias points at the champion itself (version {current}); promote the "
            "version to restore by hand (aiops models promote)"
        )
    _stamp(client, name, current, "rollback", reason)  # first: see promote
    _stamp(client, name, previous, "restoration", f"restored by the rollback of version {current}: {reason}")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    return current, previous
