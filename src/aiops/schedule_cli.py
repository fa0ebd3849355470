"""``aiops schedule ...``: recurring pipeline runs on Data Science Pipelines (kfp.Client)."""

from __future__ import annotations

from typing import Annotated

import typer

from aiops.cli_errors import fail as _fail

schedule_app = typer.Typer(no_args_is_help=True, help="Create, list and delete recurring pipeline runs.")

Host = Annotated[str, typer.Option(help="Data Science Pipelines API URL (the route of ds-pipeline-...).")]
Namespace = Annotated[str | None, typer.Option(help="Data science project (namespace).")]
CaBundle = Annotated[str | None, typer.Option(help="CA bundle for the route's TLS certificate.")]


Cron = Annotated[str, typer.Option(help="Cron expression, e.g. '0 2 * * 0' (Sundays 02:00 UTC).")]
JobName = Annotated[str | None, typer.Option(help="Name of the recurring run.")]
Params = Annotated[list[str] | None, typer.Option(help="Pipeline parameter key=value; repeatable.")]


@schedule_app.command("retraining")
def schedule_retraining(
    cron: Cron,
    host: Host,
    namespace: Namespace = None,
    job_name: JobName = None,
    ca_bundle: CaBundle = None,
    param: Params = None,
) -> None:
    """Run the retraining pipeline (drift check, then train/gate/register) on a cron schedule."""
    _create("retraining", cron, host, namespace, job_name, ca_bundle, param)


@schedule_app.command("training")
def schedule_training(
    cron: Cron,
    host: Host,
    namespace: Namespace = None,
    job_name: JobName = None,
    ca_bundle: CaBundle = None,
    param: Params = None,
) -> None:
    """Run the training pipeline on a cron schedule."""
    _create("training", cron, host, namespace, job_name, ca_bundle, param)


def _create(
    name: str,
    cron: str,
    host: str,
    namespace: str | None,
    job_name: str | None,
    ca_bundle: str | None,
    param: list[str] | None,
) -> None:
    """Create a recurring run (token from KFP_TOKEN or the kubeconfig)."""
    from aiops.cli import cluster_arguments
    from pipelines.runner import ClusterError, get_pipeline, kfp_cron, schedule

    try:
        get_pipeline(name)
        kfp_cron(cron)
    except ValueError as exc:
        _fail(str(exc))
    arguments = cluster_arguments(name, param or [])
    try:
        run_id = schedule(
            name, host, cron, arguments, job_name=job_name, namespace=namespace, ssl_ca_cert=ca_bundle
        )
    except ClusterError as exc:
        _fail(str(exc))
    typer.echo(f"scheduled {name} '{cron}': recurring run {run_id} on {host}")


@schedule_app.command("list")
def list_(host: Host, namespace: Namespace = None, ca_bundle: CaBundle = None) -> None:
    """List recurring runs."""
    from pipelines.runner import ClusterError, list_schedules

    try:
        items = list_schedules(host, namespace=namespace, ssl_ca_cert=ca_bundle)
    except ClusterError as exc:
        _fail(str(exc))
    for item in items:
        typer.echo(f"{item['id']}  {item['name']:<32} {item['cron']:<16} {item['status']}")


@schedule_app.command("delete")
def delete(
    recurring_run_id: Annotated[str, typer.Argument(help="Id shown by `aiops schedule list`.")],
    host: Host,
    namespace: Namespace = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Delete a recurring run."""
    from pipelines.runner import ClusterError, delete_schedule

    try:
        delete_schedule(host, recurring_run_id, namespace=namespace, ssl_ca_cert=ca_bundle)
    except ClusterError as exc:
        _fail(str(exc))
    typer.echo(f"deleted recurring run {recurring_run_id}")
