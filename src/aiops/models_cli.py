"""``aiops models ...``: inspect the registry, promote or roll back by hand (with a reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aiops.cli_errors import fail as _fail

models_app = typer.Typer(no_args_is_help=True, help="List, inspect, promote and roll back registered models.")

TrackingUri = Annotated[
    str, typer.Option(help="MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlruns (SQLite).")
]
_KEY_METRICS = ("test_event_f1", "test_event_precision", "test_event_recall", "test_point_f1")


def _uri(tracking_uri: str) -> str:
    from aiops.registry import configure, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    configure(uri)
    return uri


@models_app.command("list")
def list_models(name: str, tracking_uri: TrackingUri = "") -> None:
    """Every version of NAME with its aliases, gate decision and key test metrics."""
    from mlflow.exceptions import MlflowException

    from aiops.registry import list_versions

    try:
        versions = list_versions(name, _uri(tracking_uri))
    except MlflowException as exc:
        _fail(f"cannot list '{name}': {exc.message}")
    header = f"{'version':>7}  {'aliases':<28} {'created':<26} {'gate':<9} {'since':<12}" + "".join(
        f"{m[5:]:>16}" for m in _KEY_METRICS
    )
    typer.echo(header)
    for v in versions:
        cells = "".join(f"{v.metrics.get(m, float('nan')):>16.3f}" for m in _KEY_METRICS)
        since = _since(v.tags)
        typer.echo(
            f"{v.version:>7}  {','.join(v.aliases) or '-':<28} {v.created:<26} {v.decision or '-':<9} "
            f"{since:<12}{cells}"
        )


_SINCE = {
    "rollback": "rolled back",
    "demotion": "replaced",
    "promotion": "promoted",
    "restoration": "restored",
}


def _since(tags: dict[str, str]) -> str:
    """What happened after the gate: the latest manual action outranks the canary's verdict."""
    from aiops.registry import last_manual_action

    last = last_manual_action(tags)
    return _SINCE[last[0]] if last else tags.get("rollout.decision", "-")


@models_app.command("show")
def show_model(
    name: str,
    version: Annotated[str | None, typer.Option(help="Version number.")] = None,
    alias: Annotated[str, typer.Option(help="Alias, when no version is given.")] = "champion",
    tracking_uri: TrackingUri = "",
) -> None:
    """Lineage, gate decision, manual actions and metrics of one version."""
    from mlflow.exceptions import MlflowException

    from aiops.evaluation import format_metric
    from aiops.registry import mlflow_client

    client = mlflow_client(_uri(tracking_uri))
    try:
        mv = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias)
        )
    except MlflowException as exc:
        _fail(f"cannot find {name} {'version ' + version if version else '@' + alias}: {exc.message}")
    run_id = mv.tags.get("pipeline_run_id") or mv.run_id
    typer.secho(f"{name} version {mv.version}  (aliases: {', '.join(mv.aliases) or '-'})", bold=True)
    typer.echo(f"  source    {mv.source}")
    typer.echo(f"  run       {run_id}")
    for key in sorted(mv.tags):
        if key.startswith(
            ("lineage.", "gate.", "promotion.", "rollback.", "demotion.", "restoration.", "rollout.")
        ):
            typer.echo(f"  {key:<34} {mv.tags[key]}")
    if run_id:
        try:
            metrics = client.get_run(run_id).data.metrics
        except MlflowException as exc:
            typer.echo(f"  (no metrics: run {run_id} cannot be read: {exc.message})")
            return
        for key in sorted(k for k in metrics if k.startswith("test_") and "." not in k):
            typer.echo(f"  {key:<34} {format_metric(metrics[key])}")


@models_app.command("promote")
def promote_model(
    name: str,
    version: Annotated[str, typer.Option(help="Version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded on the version).")],
    tracking_uri: TrackingUri = "",
) -> None:
    """Make VERSION the champion by hand; the old champion becomes `previous`."""
    from mlflow.exceptions import MlflowException

    from aiops.registry import promote

    try:
        before = promote(name, version, reason, _uri(tracking_uri))
    except (ValueError, MlflowException) as exc:
        _fail(str(getattr(exc, "message", exc)))
    typer.echo(f"{name}: champion is now version {int(version)} (was {before or 'none'}); reason recorded")
    _report_champion(name, str(int(version)))  # the registry's form: "002" is version 2


@models_app.command("rollback")
def rollback_model(
    name: str,
    reason: Annotated[str, typer.Option(help="Why (recorded on the demoted version).")],
    tracking_uri: TrackingUri = "",
) -> None:
    """Put the `previous` version back as champion."""
    from mlflow.exceptions import MlflowException

    from aiops.registry import rollback

    try:
        demoted, restored = rollback(name, reason, _uri(tracking_uri))
    except (ValueError, MlflowException) as exc:
        _fail(str(getattr(exc, "message", exc)))
    typer.echo(f"{name}: champion rolled back from version {demoted} to {restored}; reason recorded")
    _report_champion(name, restored)


def _report_champion(name: str, version: str) -> None:
    """Tell the Pushgateway (when ``AIOPS_PUSHGATEWAY_URL`` names one) that the champion changed."""
    from aiops.monitoring import report_champion

    report_champion("aiops-models-cli", name, str(version), step="promote")


@models_app.command("performance")
def track_performance(
    name: str,
    predictions: Annotated[
        Path, typer.Option(help="Parquet of served predictions: timestamp, keys, model_version, score, flag.")
    ],
    labels: Annotated[Path, typer.Option(help="Parquet of outcome labels (canonical label table).")],
    period: Annotated[str, typer.Option(help="Scoring period (pandas offset).")] = "1D",
    tracking_uri: TrackingUri = "",
) -> None:
    """Precision/recall of the served versions over time, from outcome labels; logged to MLflow."""
    import numpy as np
    import pandas as pd

    from aiops.performance import log_performance, score_periods
    from aiops.schema import SchemaError

    try:
        scores = score_periods(pd.read_parquet(predictions), pd.read_parquet(labels), period)
    except (SchemaError, FileNotFoundError) as exc:
        _fail(str(exc))
    runs = log_performance(scores, name, _uri(tracking_uri), period)
    typer.echo(f"{'version':>7}  {'period':<26} {'rows':>7} {'event P':>8} {'event R':>8} {'event F1':>8}")
    for s in scores:
        shown = [
            "–" if np.isnan(s.metrics[k]) else f"{s.metrics[k]:.3f}"
            for k in ("event_precision", "event_recall", "event_f1")
        ]
        typer.echo(
            f"{s.model_version:>7}  {s.period_start.isoformat():<26} {s.rows:>7} "
            + " ".join(f"{v:>8}" for v in shown)
        )
    typer.echo("(– : nothing to measure in that period: no incident, or no alarm)")
    typer.echo(f"logged to MLflow experiment aiops-model-performance: {runs}")
