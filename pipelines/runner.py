"""Compile, run locally, and submit the pipelines: the helpers behind `aiops compile|run|submit`."""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.retraining import retraining_pipeline
from pipelines.training import training_pipeline

PIPELINES: dict[str, Callable[..., Any]] = {"training": training_pipeline, "retraining": retraining_pipeline}


def get_pipeline(name: str) -> Callable[..., Any]:
    """Return the pipeline function called ``name``."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline '{name}'; available: {', '.join(PIPELINES)}") from None


def compile_pipeline(name: str, out_dir: str | Path) -> Path:
    """Write the KFP IR YAML of pipeline ``name`` into ``out_dir``."""
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(get_pipeline(name), package_path=str(path))
    return path


def git_commit(root: str | Path = ".") -> str:
    """Return the checkout's commit (with ``-dirty`` when it has local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
        ).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_local(name: str, arguments: dict[str, Any], pipeline_root: str | Path) -> Any:
    """Run pipeline ``name`` end to end with the KFP local subprocess runner.

    Every component runs in a subprocess of this Python environment, exactly
    the code the cluster runs in the pipeline image; resource requests and
    kfp-kubernetes settings are ignored locally.
    """
    import warnings

    from kfp import local

    # Locally the components run in this virtualenv, which *is* the pipeline image's content.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve())
    )
    return get_pipeline(name)(**arguments)


def bearer_token() -> str | None:
    """Token for Data Science Pipelines: ``KFP_TOKEN``, else the current kubeconfig user's token."""
    token = os.environ.get("KFP_TOKEN")
    if token:
        return token
    try:
        from kubernetes import client, config

        config.load_kube_config()
        auth = client.Configuration.get_default_copy().api_key.get("authorization", "")
    except Exception:  # noqa: BLE001 - no kubeconfig simply means no token
        return None
    return auth.removeprefix("Bearer ").strip() or None


def submit(
    name: str,
    host: str,
    arguments: dict[str, Any],
    *,
    experiment: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    ssl_ca_cert: str | None = None,
) -> str:
    """Compile pipeline ``name`` and start a run on Data Science Pipelines; return the run id."""
    import kfp

    client = kfp.Client(
        host=host,
        existing_token=token or bearer_token(),
        namespace=namespace,
        ssl_ca_cert=ssl_ca_cert,
    )
    result = client.create_run_from_pipeline_func(
        get_pipeline(name),
        arguments=arguments,
        experiment_name=experiment or f"aiops-{name}",
        namespace=namespace,
    )
    return str(result.run_id)


def kfp_cron(cron: str) -> str:
    """KFP's scheduler takes six cron fields (seconds first); accept the usual five too."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + cron.strip()
    if len(fields) == 6:
        return cron.strip()
    raise ValueError(f"cron expression '{cron}' has {len(fields)} fields; expected 5 (or 6 with seconds)")


def _client(host: str, namespace: str | None, token: str | None, ssl_ca_cert: str | None) -> Any:
    import kfp

    return kfp.Client(
        host=host, existing_token=token or bearer_token(), namespace=namespace, ssl_ca_cert=ssl_ca_cert
    )


def schedule(
    name: str,
    host: str,
    cron: str,
    arguments: dict[str, Any],
    *,
    job_name: str | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    ssl_ca_cert: str | None = None,
) -> str:
    """Create a recurring run of pipeline ``name`` on Data Science Pipelines; return its id.

    Runs never overlap (``max_concurrency=1``) and missed runs are not caught up: a retraining
    that was skipped while the cluster was down is not worth three back-to-back retrainings.
    """
    import tempfile

    client = _client(host, namespace, token, ssl_ca_cert)
    experiment_id = client.create_experiment(
        name=experiment or f"aiops-{name}", namespace=namespace
    ).experiment_id
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, tmp)
        result = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name or f"aiops-{name}-scheduled",
            description=f"aiops {name} pipeline, cron '{cron}'",
            cron_expression=kfp_cron(cron),
            max_concurrency=1,
            no_catchup=True,
            params=arguments,
            pipeline_package_path=str(package),
        )
    return str(result.recurring_run_id)


def list_schedules(
    host: str, *, namespace: str | None = None, token: str | None = None, ssl_ca_cert: str | None = None
) -> list[dict[str, str]]:
    """The recurring runs visible to this user: id, name, cron, status."""
    client = _client(host, namespace, token, ssl_ca_cert)
    response = client.list_recurring_runs(page_size=100, namespace=namespace)
    out = []
    for run in response.recurring_runs or []:
        cron = getattr(getattr(getattr(run, "trigger", None), "cron_schedule", None), "cron", "") or ""
        out.append(
            {
                "id": run.recurring_run_id,
                "name": run.display_name,
                "cron": cron,
                "status": str(run.status or ""),
            }
        )
    return out


def delete_schedule(
    host: str,
    recurring_run_id: str,
    *,
    namespace: str | None = None,
    token: str | None = None,
    ssl_ca_cert: str | None = None,
) -> None:
    """Delete a recurring run."""
    _client(host, namespace, token, ssl_ca_cert).delete_recurring_run(recurring_run_id)
