"""The ``aiops`` command line: run, compile and submit pipelines; simulate telemetry.

Heavy imports (kfp, mlflow) happen inside the commands so ``aiops --help`` is instant.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aiops.benchmark_cli import benchmark_app
from aiops.cli_errors import fail as _fail
from aiops.models_cli import models_app
from aiops.schedule_cli import schedule_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
run_app = typer.Typer(no_args_is_help=True, help="Run a pipeline end to end with the local KFP runner.")
app.add_typer(run_app, name="run")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(models_app, name="models")
app.add_typer(schedule_app, name="schedule")


def _parse_params(params: list[str], pipeline: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs into the types ``pipeline`` declares for those parameters.

    Booleans take ``true``/``false`` (also ``yes``/``no``, ``1``/``0``), dicts and lists JSON;
    KFP's API server refuses a parameter of the wrong type, so a mistake stops here, by name.
    """
    from kfp.pipeline_spec.pipeline_spec_pb2 import ParameterType

    from pipelines.runner import get_pipeline

    compiled: Any = get_pipeline(pipeline)  # a kfp GraphComponent, typed as a plain callable
    declared = compiled.pipeline_spec.root.input_definitions.parameters
    out: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param expects key=value, got '{item}'")
        if key not in declared:
            _fail(f"pipeline '{pipeline}' has no parameter '{key}'; it has: {', '.join(sorted(declared))}")
        kind = ParameterType.ParameterTypeEnum.Name(declared[key].parameter_type)
        try:
            out[key] = _cast_param(value, kind)
        except ValueError as exc:
            _fail(f"--param {key}: {exc}")
    return out


#: Pipeline parameters whose command-line option has another name.
_OPTION_OF_PARAM = {"data_path": "data", "prometheus_catalog": "catalog"}


def _fold_params(ctx: typer.Context, extra: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The command's options (keyed by pipeline parameter) with ``--param`` values of the same name folded in.

    A pipeline parameter that is also an option of the command may be given either way. Given
    both ways with different values, one of them would be silently dropped (the run header showing
    one value, the pipeline getting the other), so that is an error. The folded keys leave ``extra``.
    """
    folded = dict(options)
    for key in [k for k in extra if k in options]:
        value = extra.pop(key)
        option = _OPTION_OF_PARAM.get(key, key)
        # By name: typer 0.29 carries its own copy of click, whose enum is not click's.
        source = ctx.get_parameter_source(option)
        given = source is not None and source.name == "COMMANDLINE"
        if key in _OPTION_OF_PARAM and str(value) and str(options[key]):
            # Paths: the same file however it is written ("" is no path, not the current folder).
            same = Path(str(value)).resolve() == Path(str(options[key])).resolve()
        else:
            same = str(value) == str(options[key])
        if given and not same:
            _fail(
                f"{key} is given twice with different values: --{option.replace('_', '-')} "
                f"{options[key]} and --param {key}={value}; give it once"
            )
        folded[key] = value
    return folded


def source_defaults(source: str, n_anomalies: int | None, threshold_policy: str | None) -> tuple[int, str]:
    """Anomalies to inject and the threshold policy, by source, unless given.

    Synthetic data gets 24 labelled anomalies; recorded and Prometheus data none (injecting
    into real data is an explicit choice). Without labels the threshold comes from an alarm
    budget (``quantile``). The same rule holds locally and for runs submitted to a cluster.

    Raises:
        ValueError: For labels that cannot exist (anomalies injected into Nezha, ``event_f1``
            on Prometheus data without injected anomalies).
    """
    if source == "nezha" and n_anomalies:
        raise ValueError("nezha carries its own fault labels; --n-anomalies does not apply")
    injected = n_anomalies if n_anomalies is not None else (24 if source == "synthetic" else 0)
    policy = threshold_policy or ("event_f1" if injected else "quantile")
    if source == "prometheus" and not injected and policy == "event_f1":
        raise ValueError(
            "Prometheus data carries no labels: inject some (--n-anomalies N) or pick the threshold "
            "without labels (--threshold-policy quantile)"
        )
    return injected, policy


def cluster_arguments(pipeline: str, params: list[str]) -> dict[str, Any]:
    """The arguments of a run submitted or scheduled on a cluster.

    The ``--param`` values, checked, with the per-source defaults a local run gets
    (:func:`source_defaults`).
    """
    from aiops.ingest import check_source
    from pipelines.runner import git_commit

    arguments = _parse_params(params, pipeline)
    source = str(arguments.get("source", "synthetic"))
    try:
        check_source(
            source,
            str(arguments.get("data_path", "")),
            str(arguments.get("prometheus_url", "")),
            end=str(arguments.get("end", "")),
            catalog=str(arguments.get("prometheus_catalog", "")),
        )
        injected, policy = source_defaults(
            source, arguments.get("n_anomalies"), arguments.get("threshold_policy")
        )
    except ValueError as exc:
        _fail(str(exc))
    return {
        "git_commit": git_commit(Path.cwd()),
        **arguments,
        "n_anomalies": injected,
        "threshold_policy": policy,
    }


def _cast_param(value: str, kind: str) -> Any:
    if kind == "BOOLEAN":
        truth = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if value.strip().lower() not in truth:
            raise ValueError(f"expects true or false, got '{value}'")
        return truth[value.strip().lower()]
    if kind == "NUMBER_INTEGER":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expects an integer, got '{value}'") from None
    if kind == "NUMBER_DOUBLE":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expects a number, got '{value}'") from None
        if not math.isfinite(number):  # a NaN margin would make every gate comparison false
            raise ValueError(f"expects a finite number, got '{value}'")
        return number
    if kind in ("STRUCT", "LIST"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict if kind == "STRUCT" else list):
            example = '{"name": 0.1}' if kind == "STRUCT" else "[1, 2]"
            raise ValueError(f"expects JSON like {example}, got '{value}'")
        return parsed
    return value


@run_app.command("training")
def run_training(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option(help="Telemetry source (explicit, never a fallback): synthetic, nezha or prometheus."),
    ] = "synthetic",
    data: Annotated[
        Path | None, typer.Option(help="Folder of recorded data (nezha: a day folder or a folder of days).")
    ] = None,
    prometheus_url: Annotated[
        str,
        typer.Option(
            help="Prometheus/thanos-querier URL (token: PROMETHEUS_TOKEN; CA: PROMETHEUS_CA_BUNDLE)."
        ),
    ] = "",
    end: Annotated[str, typer.Option(help="End of the Prometheus range (ISO 8601 UTC; default now).")] = "",
    catalog: Annotated[
        Path | None, typer.Option(help="Extra PromQL catalog YAML (extends/overrides aiops/queries.yaml).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of simulation, injection and model.")] = 42,
    duration: Annotated[str, typer.Option(help="Time span: simulated, or read from Prometheus.")] = "4D",
    n_anomalies: Annotated[
        int | None,
        typer.Option(help="Labelled anomalies to inject (synthetic: default 24; prometheus: default 0)."),
    ] = None,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = "aiops-anomaly-detector",
    tracking_uri: Annotated[
        str, typer.Option(help="MLflow tracking URI; default MLFLOW_TRACKING_URI, else ./mlruns (SQLite).")
    ] = "",
    threshold_policy: Annotated[
        str | None,
        typer.Option(
            help="event_f1 (validation labels only) or quantile (no labels: an alarm budget). Default: "
            "event_f1 for synthetic and for prometheus with injected anomalies; quantile for nezha, whose "
            "faults all fall in the first hours of a recording (the training period)."
        ),
    ] = None,
    pipeline_root: Annotated[Path, typer.Option(help="Where the local runner keeps task outputs.")] = Path(
        ".kfp_local"
    ),
    param: Annotated[
        list[str] | None, typer.Option(help="Any other pipeline parameter as key=value; repeatable.")
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            help="Then roll the new version out as a canary beside the champion (real model servers)."
        ),
    ] = False,
) -> None:
    """Train, evaluate and register a detector locally (the same DAG as on the cluster)."""
    from aiops import registry
    from aiops.ingest import check_source
    from pipelines.runner import git_commit, run_local

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    extra = _parse_params(param or [], "training")  # a bad --param stops here, before anything runs
    # --param source=... (and the other parameters with an option here) count as those options.
    given = _fold_params(
        ctx,
        extra,
        {
            "source": source,
            "data_path": str(data) if data else "",
            "prometheus_url": prometheus_url,
            "prometheus_catalog": str(catalog) if catalog else "",
            "end": end,
            "seed": seed,
            "duration": duration,
            "n_anomalies": n_anomalies,
            "model_name": model_name,
            "threshold_policy": threshold_policy,
            "deploy": deploy,
        },
    )
    source, prometheus_url, end = given["source"], given["prometheus_url"], given["end"]
    data = Path(given["data_path"]) if given["data_path"] else None
    catalog = Path(given["prometheus_catalog"]) if given["prometheus_catalog"] else None
    seed, duration, model_name, deploy = (
        given["seed"],
        given["duration"],
        given["model_name"],
        given["deploy"],
    )
    try:
        check_source(
            source,
            str(data.resolve()) if data else "",
            prometheus_url,
            end=end,
            catalog=str(catalog) if catalog else "",
        )
    except ValueError as exc:
        _fail(str(exc))
    if data is not None and not data.is_dir():
        _fail(f"--data {data}: no such folder")
    try:
        injected, threshold_policy = source_defaults(source, given["n_anomalies"], given["threshold_policy"])
    except ValueError as exc:
        _fail(str(exc))
    uri = registry.resolve_tracking_uri(tracking_uri, Path.cwd())
    settings = {
        "synthetic": f"seed={seed}, duration={duration}, anomalies={injected}",
        "nezha": f"data={data}",
        "prometheus": f"url={prometheus_url}, duration={duration}, end={end or 'now'}, injected={injected}",
    }[source]
    typer.secho(f"Training pipeline: source={source}, {settings}", bold=True)
    typer.echo(f"MLflow tracking: {uri}")
    started = time.perf_counter()
    try:
        task = run_local(
            "training",
            {
                "source": source,
                "data_path": str(data.resolve()) if data else "",
                "prometheus_url": prometheus_url,
                "prometheus_catalog": str(catalog.resolve()) if catalog else "",
                "end": end,
                "seed": seed,
                "duration": duration,
                "n_anomalies": injected,
                "model_name": model_name,
                "mlflow_tracking_uri": uri,
                "git_commit": git_commit(Path.cwd()),
                "image": "local (this virtualenv)",
                "threshold_policy": threshold_policy,
                "deploy": deploy,
                **extra,
            },
            pipeline_root,
        )
    except RuntimeError as exc:
        _fail(f"the training pipeline failed; the failing task's log is above. ({exc})")
    wall = time.perf_counter() - started
    version = str(getattr(task, "output", "") or "")  # the version this run registered
    if not version:
        _fail(f"the training pipeline succeeded but registered no version of {model_name}; see its log above")
    _print_summary(uri, model_name, version, wall, deployed=deploy)


@run_app.command("retraining")
def run_retraining(
    ctx: typer.Context,
    source: Annotated[str, typer.Option(help="Telemetry source of the recent window.")] = "synthetic",
    data: Annotated[Path | None, typer.Option(help="Folder of recorded data (nezha).")] = None,
    prometheus_url: Annotated[str, typer.Option(help="Prometheus/thanos-querier URL.")] = "",
    start: Annotated[str, typer.Option(help="Synthetic: first simulated instant (ISO 8601 UTC).")] = (
        "2026-01-09T00:00:00Z"
    ),
    end: Annotated[str, typer.Option(help="Prometheus: end of the window (default now).")] = "",
    duration: Annotated[str, typer.Option(help="Length of the window read (and retrained on).")] = "4D",
    concept_drift: Annotated[
        str, typer.Option(help="Synthetic: drift to simulate (workload_doubles, daily_shift), or ''.")
    ] = "",
    drift_start: Annotated[str, typer.Option(help="Synthetic: when the drift begins, after --start.")] = "2D",
    drift_window: Annotated[
        str, typer.Option(help="Latest span compared with the champion's reference.")
    ] = "1D",
    max_drift_share: Annotated[
        float, typer.Option(help="Retrain when more columns than this share drifted.")
    ] = 0.5,
    force: Annotated[bool, typer.Option(help="Retrain whatever the drift check says.")] = False,
    deploy: Annotated[
        bool, typer.Option(help="Roll a retrained version out as a canary beside the champion.")
    ] = False,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = "aiops-anomaly-detector",
    tracking_uri: Annotated[str, typer.Option(help="MLflow tracking URI (default: ./mlruns).")] = "",
    pipeline_root: Annotated[Path, typer.Option(help="Where the local runner keeps task outputs.")] = Path(
        ".kfp_local"
    ),
    param: Annotated[
        list[str] | None, typer.Option(help="Any other pipeline parameter as key=value.")
    ] = None,
) -> None:
    """Check a recent window for drift against the champion; retrain, gate and register if it drifted."""
    from aiops import registry
    from aiops.ingest import check_source
    from pipelines.runner import git_commit, run_local

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    extra = _parse_params(param or [], "retraining")  # a bad --param stops here, before anything runs
    given = _fold_params(
        ctx,
        extra,
        {
            "source": source,
            "data_path": str(data) if data else "",
            "prometheus_url": prometheus_url,
            "start": start,
            "end": end,
            "duration": duration,
            "concept_drift": concept_drift,
            "drift_start": drift_start,
            "drift_window": drift_window,
            "max_drift_share": max_drift_share,
            "force": force,
            "deploy": deploy,
            "model_name": model_name,
        },
    )
    source, prometheus_url, start, end = (
        given["source"],
        given["prometheus_url"],
        given["start"],
        given["end"],
    )
    data = Path(given["data_path"]) if given["data_path"] else None
    duration, concept_drift, drift_start = given["duration"], given["concept_drift"], given["drift_start"]
    drift_window, max_drift_share = given["drift_window"], given["max_drift_share"]
    force, deploy, model_name = given["force"], given["deploy"], given["model_name"]
    try:
        check_source(
            source,
            str(data.resolve()) if data else "",
            prometheus_url,
            end=end,
            catalog=str(extra.get("prometheus_catalog", "")),
        )
    except ValueError as exc:
        _fail(str(exc))
    if data is not None and not data.is_dir():
        _fail(f"--data {data}: no such folder")
    uri = registry.resolve_tracking_uri(tracking_uri, Path.cwd())
    try:
        injected, policy = source_defaults(
            source, extra.pop("n_anomalies", None), extra.pop("threshold_policy", None)
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.secho(
        f"Retraining pipeline: source={source}, window {duration}, drift check over the last {drift_window}",
        bold=True,
    )
    started = time.perf_counter()
    try:
        task = run_local(
            "retraining",
            {
                "source": source,
                "data_path": str(data.resolve()) if data else "",
                "prometheus_url": prometheus_url,
                "start": start if source == "synthetic" else "",
                "end": end,
                "duration": duration,
                "concept_drift": concept_drift,
                "drift_start": drift_start,
                "drift_window": drift_window,
                "max_drift_share": max_drift_share,
                "force": force,
                "deploy": deploy,
                "model_name": model_name,
                "mlflow_tracking_uri": uri,
                "git_commit": git_commit(Path.cwd()),
                "image": "local (this virtualenv)",
                "n_anomalies": injected,
                "threshold_policy": policy,
                **extra,
            },
            pipeline_root,
        )
    except RuntimeError as exc:
        _fail(f"the retraining pipeline failed; the failing task's log is above. ({exc})")
    wall = time.perf_counter() - started
    version = str(getattr(task, "output", "") or "")  # the version this run registered, if any
    typer.secho(f"\nRetraining pipeline finished in {wall:.1f} s", bold=True, fg=typer.colors.GREEN)
    typer.echo(f"  drift     {_last_drift_reason(uri)}")
    if version:
        _print_summary(uri, model_name, version, wall, header=False, deployed=deploy)
    else:
        typer.echo(
            f"  model     not retrained; champion stays {registry.alias_version(model_name, 'champion', uri)}"
        )


def _last_drift_reason(uri: str) -> str:
    from aiops.drift import DRIFT_EXPERIMENT
    from aiops.registry import mlflow_client

    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(DRIFT_EXPERIMENT)
    if experiment is None:
        return "no drift check recorded"
    [run] = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    return f"{run.data.tags.get('decision', '?')}: {run.data.tags.get('reason', '')}"


def _print_summary(
    uri: str, model_name: str, version: str, wall: float, header: bool = True, deployed: bool = False
) -> None:
    from aiops.registry import CHAMPION, mlflow_client

    client = mlflow_client(uri)
    mv = client.get_model_version(model_name, version)
    run_id = mv.tags.get("pipeline_run_id") or mv.run_id
    if not run_id:
        _fail(f"{model_name} version {version} records no run id")
    run = client.get_run(str(run_id))
    m, tags = run.data.metrics, run.data.tags
    aliases = sorted((a, str(v)) for a, v in client.get_registered_model(model_name).aliases.items())
    on_this = [a for a, v in aliases if v == version]
    champion = dict(aliases).get(CHAMPION)

    def pct(key: str) -> str:
        return f"{m.get(key, float('nan')):.3f}"

    if header:
        typer.secho(f"\nTraining pipeline finished in {wall:.1f} s", bold=True, fg=typer.colors.GREEN)
    typer.echo(
        f"  data      {int(float(tags.get('lineage.data_rows', 0))):,} rows, "
        f"hash {tags.get('lineage.dataset_hash', '?')[:12]}, source {tags.get('lineage.source', '?')}"
    )
    typer.echo(
        f"  test      event F1 {pct('test_event_f1')} (precision {pct('test_event_precision')}, "
        f"recall {pct('test_event_recall')}), point F1 {pct('test_point_f1')}, "
        f"median delay {m.get('test_median_delay_s', float('nan')) / 60:.1f} min"
    )
    typer.echo(f"  model     {model_name} version {version}, aliases: {', '.join(on_this) or '-'}")
    typer.echo(f"  champion  version {champion} ({tags.get('gate.reason', '')})")
    typer.echo(f"  run       {run_id} (experiment {run.info.experiment_id})")
    if "rollout.decision" in mv.tags:
        typer.echo(f"  rollout   {mv.tags['rollout.decision']}: {mv.tags.get('rollout.reason', '')}")
        typer.echo(f"  serve     .venv/bin/aiops serve --model models:/{model_name}@champion --port 8080")
    elif deployed:
        typer.echo(
            f"  rollout   skipped: the gate did not pass version {version} "
            f"({mv.tags.get('gate.decision', 'no decision')}); the champion keeps serving"
        )
    if uri.startswith("sqlite:///"):
        typer.echo(
            f"  MLflow UI .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000  (then open http://127.0.0.1:5000)"
        )
    else:
        typer.echo(f"  MLflow UI {uri}")


@app.command("serve")
def serve_model(
    model: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model folder.")
    ] = "models:/aiops-anomaly-detector@champion",
    port: Annotated[int, typer.Option(help="HTTP port (v1, v2 and /metrics).", min=1, max=65535)] = 8080,
    name: Annotated[str, typer.Option(help="Model name on the endpoints.")] = "aiops-anomaly-detector",
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 to listen beyond this machine).")] = (
        "127.0.0.1"
    ),
    tracking_uri: Annotated[
        str, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlruns).")
    ] = "",
    max_batch: Annotated[int, typer.Option(help="Most rows one request may carry.", min=1)] = 1024,
    feature_repo: Annotated[
        str, typer.Option(help="Feast repository whose online store answers 'entities' requests.")
    ] = "",
    feature_service: Annotated[
        str, typer.Option(help="Feast feature service (default: anomaly_detector_v<transform>).")
    ] = "",
    model_version: Annotated[
        str,
        typer.Option(
            help="model_version metric label (default: $AIOPS_MODEL_VERSION, else derived from the model).",
            envvar="AIOPS_MODEL_VERSION",
        ),
    ] = "",
) -> None:
    """Serve a registered model with the real KServe model server until Ctrl-C."""
    from serving.errors import ModelLoadError
    from serving.server import serve

    typer.echo(
        f"serving {model} on http://{host}:{port}: POST /v1/models/{name}:predict, "
        f"/v2/models/{name}/infer; GET /metrics"
    )
    try:
        serve(
            model,
            port,
            name=name,
            tracking_uri=tracking_uri or None,
            max_batch=max_batch,
            host=host,
            model_version=model_version or None,
            feature_repo=feature_repo or None,
            feature_service=feature_service or None,
        )
    except ModelLoadError as exc:
        _fail(str(exc))


@app.command("compile")
def compile_pipelines(
    output_dir: Annotated[Path, typer.Option(help="Folder for the IR YAML files.")] = Path("build/pipelines"),
) -> None:
    """Compile every pipeline to KFP IR YAML for Data Science Pipelines."""
    from pipelines.runner import PIPELINES, compile_pipeline

    for name in PIPELINES:
        path = compile_pipeline(name, output_dir)
        typer.echo(f"compiled {name} -> {path}")


@app.command("submit")
def submit_pipeline(
    name: Annotated[str, typer.Argument(help="Pipeline to run: training.")],
    host: Annotated[str, typer.Option(help="Data Science Pipelines API URL (the route of ds-pipeline-...).")],
    namespace: Annotated[str | None, typer.Option(help="Data science project (namespace).")] = None,
    experiment: Annotated[str | None, typer.Option(help="KFP experiment; default aiops-<name>.")] = None,
    ca_bundle: Annotated[str | None, typer.Option(help="CA bundle for the route's TLS certificate.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Pipeline parameter key=value; repeatable.")] = None,
) -> None:
    """Upload and run a pipeline on a cluster (token from KFP_TOKEN or the kubeconfig)."""
    from pipelines.runner import ClusterError, get_pipeline, submit

    try:
        get_pipeline(name)
    except ValueError as exc:
        _fail(str(exc))
    arguments = cluster_arguments(name, param or [])
    try:
        run_id = submit(
            name, host, arguments, experiment=experiment, namespace=namespace, ssl_ca_cert=ca_bundle
        )
    except ClusterError as exc:
        _fail(str(exc))
    typer.echo(f"submitted {name}: run {run_id} on {host}")


@app.command("simulate")
def simulate(
    output: Annotated[Path, typer.Option(help="Folder for metrics/labels/events/logs Parquet files.")],
    seed: Annotated[int, typer.Option()] = 42,
    duration: Annotated[str, typer.Option()] = "4D",
    n_anomalies: Annotated[int, typer.Option()] = 24,
) -> None:
    """Write simulated telemetry with injected, labelled anomalies."""
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    bundle = synthetic_telemetry(SyntheticSource(seed=seed, duration=duration, n_anomalies=n_anomalies))
    bundle.validate().save(output)
    typer.echo(
        f"wrote {len(bundle.metrics):,} metric rows, {len(bundle.labels)} labels, "
        f"{len(bundle.events):,} events, {len(bundle.logs):,} log lines to {output}"
    )


@app.command("demo-prometheus")
def demo_prometheus(
    ctx: typer.Context,
    duration: Annotated[str, typer.Option(help="Simulated time span served by the local Prometheus.")] = "2D",
    seed: Annotated[int, typer.Option()] = 42,
    n_anomalies: Annotated[int, typer.Option(help="Labelled anomalies injected after reading.")] = 16,
    workdir: Annotated[Path, typer.Option(help="Where the TSDB and logs go.")] = Path(
        "build/demo-prometheus"
    ),
) -> None:
    """Run the training pipeline against a real local Prometheus fed with simulated telemetry.

    Simulates a clean cluster, backfills it with promtool into a Prometheus on 127.0.0.1, then
    runs `aiops run training --source prometheus` against it (anomalies injected after reading).
    """
    import shutil

    from aiops.localprom import SCRAPE, LocalPrometheusError, local_prometheus
    from aiops.simulate import ClusterSpec, simulate_cluster

    spec = ClusterSpec(duration=duration, seed=seed)
    telemetry = simulate_cluster(spec)
    end = telemetry.metrics["timestamp"].max()
    shutil.rmtree(workdir, ignore_errors=True)
    typer.echo(
        f"backfilling {len(telemetry.metrics):,} simulated rows into a local Prometheus under {workdir}"
    )
    try:
        with local_prometheus(telemetry, workdir) as url:
            typer.echo(f"Prometheus ready at {url}")
            # The backfill's scrape interval, so that each row's rate window is exact.
            catalog = workdir / "queries.yaml"
            catalog.write_text(f"scrape_interval: {SCRAPE}\n")
            run_training(
                ctx,  # no --param here: nothing to fold
                source="prometheus",
                prometheus_url=url,
                catalog=catalog,
                end=end.isoformat(),
                duration=duration,
                seed=seed,
                n_anomalies=n_anomalies,
            )
    except LocalPrometheusError as exc:
        _fail(str(exc))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
