"""Compile, run locally, and submit the pipelines: the helpers behind `aiops compile|run|submit`."""

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.retraining import retraining_pipeline
from pipelines.training import training_pipeline

PIPELINES: dict[str, Callable[..., Any]] = {"training": training_pipeline, "retraining": retraining_pipeline}


class ClusterError(RuntimeError):
    """Data Science Pipelines could not be reached, or refused the request (the message says which)."""


@contextlib.contextmanager
def _talking_to(host: str) -> Iterator[None]:
    """Turn connection failures and API refusals into a :class:`ClusterError` naming ``host``."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        body = str(exc.body or "")[:300]
        raise ClusterError(
            f"Data Science Pipelines at {host} answered {exc.status} {exc.reason}: {body}"
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterError(f"cannot reach Data Science Pipelines at {host}: {exc}") from exc


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
    with _talking_to(host):
        client = _client(host, namespace, token, ssl_ca_cert)
        result = client.create_run_from_pipeline_func(
            get_pipeline(name),
            arguments=arguments,
            experiment_name=experiment or f"aiops-{name}",
            namespace=namespace,
        )
    return _created(result.run_id, "run", host)


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
#: KFP's six cron fields (robfig/cron with seconds): name, lowest, highest, names allowed.
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)


def kfp_cron(cron: str) -> str:
    """KFP's scheduler takes six cron fields (seconds first); accept the usual five too.

    Each field is checked here (numbers in range, month and weekday names, ``*``, ``?``, lists,
    ranges and steps), so a typo fails before anything is created on the cluster.

    Raises:
        ValueError: Naming the field that is wrong.
    """
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron expression '{cron}' has {len(fields)} fields; expected 5 (or 6 with seconds)")
    if len(fields) == 5:
        fields = ["0", *fields]
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(text, low, high, names)
        if problem:
            raise ValueError(f"cron expression '{cron}': {name} '{text}' {problem}")
    return " ".join(fields)


def _cron_field_problem(text: str, low: int, high: int, names: dict[str, int]) -> str:
    """What is wrong with one cron field, or ``""``."""

    def value(token: str) -> int | None:
        if token.upper() in names:
            return names[token.upper()]
        return int(token) if token.isdigit() and low <= int(token) <= high else None

    for part in text.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return f"has step '{step}'; expected a positive whole number"
        if base in ("*", "?"):
            continue
        first, dash, last = base.partition("-")
        ends = [value(first), value(last)] if dash else [value(first)]
        if None in ends:
            allowed = f"{low}-{high}" + (f" or {', '.join(names)}" if names else "")
            return f"is not a value or range of {allowed}"
        if dash and ends[0] > ends[1]:  # type: ignore[operator]
            return f"has a range that runs backwards ({base})"
    return ""


def _client(host: str, namespace: str | None, token: str | None, ssl_ca_cert: str | None) -> Any:
    import kfp

    client = kfp.Client(
        host=host, existing_token=token or bearer_token(), namespace=namespace, ssl_ca_cert=ssl_ca_cert
    )
    _check_is_pipelines_api(client, host)
    return client


def _check_is_pipelines_api(client: Any, host: str) -> None:
    """Refuse a host that answers, but not as the pipelines API (a dashboard, a login page).

    The generated API client turns any 200 answer into an object, so an HTML page becomes an
    empty run list, or a created run without an id, and the command would report success. The
    health endpoint of the real API answers JSON.
    """
    raw = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    kind = str(raw.headers.get("Content-Type") or "")
    if "json" not in kind.lower():
        raise ClusterError(
            f"{host} answered the pipelines API's health check (/apis/v2beta1/healthz) with "
            f"{kind or 'no content type'}, not JSON: is --host the Data Science Pipelines API route "
            "(oc get route ds-pipeline-dspa), not the dashboard, and is the token accepted "
            "(not a login page)?"
        )


def _created(value: Any, what: str, host: str) -> str:
    """The id the API gave a created object; an answer without one is an error, not ``"None"``."""
    if not value:
        raise ClusterError(f"Data Science Pipelines at {host} answered without the new {what}'s id")
    return str(value)


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

    with _talking_to(host), tempfile.TemporaryDirectory() as tmp:
        client = _client(host, namespace, token, ssl_ca_cert)
        experiment_id = client.create_experiment(
            name=experiment or f"aiops-{name}", namespace=namespace
        ).experiment_id
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
    return _created(result.recurring_run_id, "recurring run", host)


def list_schedules(
    host: str, *, namespace: str | None = None, token: str | None = None, ssl_ca_cert: str | None = None
) -> list[dict[str, str]]:
    """The recurring runs visible to this user: id, name, cron, status."""
    with _talking_to(host):
        response = _client(host, namespace, token, ssl_ca_cert).list_recurring_runs(
            page_size=100, namespace=namespace
        )
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
    with _talking_to(host):
        _client(host, namespace, token, ssl_ca_cert).delete_recurring_run(recurring_run_id)
