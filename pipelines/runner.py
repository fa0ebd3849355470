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
