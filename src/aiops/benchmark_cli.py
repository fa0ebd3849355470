"""``aiops benchmark ...``: quality benchmarks that write JSON and print a table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from aiops.cli_errors import fail as _fail

benchmark_app = typer.Typer(no_args_is_help=True, help="Measure detectors on labelled data; write JSON.")


def _write(payload: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2, default=float))
    typer.echo(f"wrote {output}")


def _check_output(
    output: Path, flag: str = "--output", folder: bool = False, what: str = "JSON file"
) -> None:
    """Refuse a path that cannot be written, before a run of minutes, not after it.

    ``folder``: the option names a folder to create or fill (else a file to write).
    """
    if folder and output.exists() and not output.is_dir():
        _fail(f"{flag} {output} is a file; name a folder")
    if not folder and output.is_dir():
        _fail(f"{flag} {output} is a folder; name the {what} to write")
    if not folder and output.exists() and not os.access(output, os.W_OK):
        _fail(f"{flag} {output} cannot be written: no permission to overwrite it")
    existing = output if folder and output.is_dir() else output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        _fail(f"{flag} {output} cannot be written: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"{flag} {output} cannot be written: no permission to write in {existing}")


def _print_nab(report: dict[str, Any]) -> None:
    typer.echo(f"{'profile':<22} {'score':>8} {'threshold':>10}")
    for name, entry in report["profiles"].items():
        score = "n/a" if entry["score"] is None else f"{entry['score']:.1f}"  # None: no labelled window
        typer.echo(f"{name:<22} {score:>8} {entry['threshold']:>10.6g}")
    shown_profile = report.get("files_profile", "standard")  # a custom profiles.json may lack it
    for category, by_profile in report.get("categories", {}).items():
        score = by_profile.get(shown_profile)
        shown = "n/a (no windows)" if score is None else f"{score:.1f}"
        typer.echo(f"  {shown_profile}, {category:<28} {shown}")
    files = report["files"]
    typer.echo(
        f"{len(files)} files: TP {sum(f['tp'] for f in files)}, FP {sum(f['fp'] for f in files)}, "
        f"FN {sum(f['fn'] for f in files)} (rows, {shown_profile} profile)"
    )
    for key, why in (("unlabelled", "no entry in the windows file"), ("missing", "no results file")):
        if report.get(key):
            typer.secho(
                f"NOT SCORED ({why}): {len(report[key])} file(s): {', '.join(report[key])}",
                fg=typer.colors.RED,
                err=True,
            )


@benchmark_app.command("nab")
def benchmark_nab(
    data: Annotated[
        Path,
        typer.Option(
            help="NAB-layout folder: data/<category>/*.csv and combined_windows.json (or NAB's own checkout)."
        ),
    ],
    output: Annotated[Path, typer.Option(help="JSON report to write.")],
    detector: Annotated[
        str | None,
        typer.Option(
            help="Streaming detector: novelty (default), robust_change or windowed_gaussian. With "
            "--scores-from: the results files' <detector> prefix (default: the one found)."
        ),
    ] = None,
    results_out: Annotated[
        Path | None, typer.Option(help="Also write every file's scores in NAB's results layout here.")
    ] = None,
    scores_from: Annotated[
        Path | None, typer.Option(help="Score another detector's outputs (NAB results layout) instead.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Alarm threshold for --scores-from.")] = None,
) -> None:
    """Run a streaming detector on a NAB folder (online, unsupervised) and score all three profiles."""
    from aiops.detectors.streaming import DEFAULT_STREAMING_DETECTOR, STREAMING_DETECTORS
    from aiops.nab import NabError, run_nab, score_results

    _check_output(output)
    if results_out is not None:
        _check_output(results_out, "--results-out", folder=True)
    try:
        if scores_from is not None:
            if threshold is None:
                _fail("--scores-from needs --threshold (the detector's published alarm threshold)")
            if not math.isfinite(threshold):
                _fail(f"--threshold must be a finite number, got {threshold}")
            if results_out:
                _fail("--scores-from scores existing outputs; --results-out does not apply")
            report = score_results(data, scores_from, threshold, detector=detector)
        else:
            if threshold is not None:
                _fail("--threshold applies to --scores-from only; detectors carry their own fixed threshold")
            name = detector or DEFAULT_STREAMING_DETECTOR
            if name not in STREAMING_DETECTORS:
                _fail(f"unknown detector '{name}'; available: {', '.join(STREAMING_DETECTORS)}")
            report = run_nab(data, STREAMING_DETECTORS[name], detector_name=name, results_dir=results_out)
    except NabError as exc:
        _fail(str(exc))
    _print_nab(report)
    _write(report, output)


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _print_nezha(report: dict[str, Any]) -> None:
    from aiops.nezha_bench import TARGETS

    typer.echo(
        f"{'day':<11} {'injected':<9} {'pod':<30} {'fault':<15} {'det':>3} {'delay':>6} {'rank':>5} "
        f"{'top pod':<30} {'kind':<12}"
    )
    for f in report["faults"]:
        kind = f["predicted_kind"] or "-"
        mark = "" if f["kind_correct"] is None else (" ok" if f["kind_correct"] else " x")
        typer.echo(
            f"{f['day']:<11} {f['inject_time'][11:19]:<9} {f['pod'][:30]:<30} {f['fault_type']:<15} "
            f"{'yes' if f['detected'] else 'no':>3} {_fmt(f['delay_s'], '{:.0f}s'):>6} "
            f"{_fmt(f['rank'], '{:d}'):>5} {(f['top_pod'] or '-')[:30]:<30} {kind + mark:<12}"
        )
    summary = report["summary"]
    values = {**summary, **{f"recall_{k}": v for k, v in summary["recall_by_kind"].items()}}
    typer.echo(f"\n{'metric':<24} {'value':>8}  target")
    for name in (
        "detection_recall",
        *(f"recall_{kind}" for kind in summary["recall_by_kind"]),
        "false_alarms_per_hour",
        "alarm_minutes_share",
        "median_delay_s",
        "localization_top1",
        "localization_top3",
        "kind_accuracy",
    ):
        target = TARGETS.get(name)
        verdict = ""
        if target is not None and values[name] is not None:
            sign, bound = target
            met = values[name] >= bound if sign == ">=" else values[name] <= bound
            verdict = f"{sign} {bound:g} {'met' if met else 'MISSED'}"
        typer.echo(f"{name:<24} {_fmt(values[name]):>8}  {verdict}")
    typer.echo(
        f"{summary['n_detected']}/{summary['n_faults']} faults detected; "
        f"{summary['n_false_alarms']} false alarms in {summary['hours']:.1f} h"
    )
    strict = summary["strict"]
    typer.echo(
        "strictly read (an onset row must be sampled after the recorded injection): recall "
        f"{_fmt(strict['detection_recall'])}, "
        + ", ".join(f"{kind} {_fmt(v)}" for kind, v in strict["recall_by_kind"].items())
        + f", median delay {_fmt(strict['median_delay_s'], '{:.0f}s')}"
    )
    if len(report["days"]) > 1:
        typer.echo(
            f"\n{'day':<16} {'pods':>5} {'hours':>6} {'faults':>6} {'recall':>7} {'false/h':>8} "
            f"{'alarm share':>11} {'top-1':>6}"
        )
        for day in report["days"]:
            one = day["summary"]
            typer.echo(
                f"{day['day'][:16]:<16} {day['pods']:>5} {day['hours']:>6.1f} {day['faults']:>6} "
                f"{_fmt(one['detection_recall']):>7} {_fmt(one['false_alarms_per_hour']):>8} "
                f"{_fmt(one['alarm_minutes_share']):>11} {_fmt(one['localization_top1']):>6}"
            )
    for skipped in report.get("skipped_days", []):
        typer.secho(
            f"SKIPPED {skipped['day']} (not in the figures above): {skipped['reason']}",
            fg=typer.colors.RED,
            err=True,
        )


@benchmark_app.command("nezha")
def benchmark_nezha(
    data: Annotated[Path, typer.Option(help="A Nezha day folder, or a folder of day folders.")],
    output: Annotated[Path, typer.Option(help="JSON report to write.")],
    alarms_out: Annotated[
        Path | None,
        typer.Option(help="Also write every alarm (day, pod, start, end, peak score, kind) as CSV."),
    ] = None,
) -> None:
    """Detect, localise and classify the injected faults of Nezha days online; score against the labels."""
    from aiops.nezha_bench import NezhaBenchError, run_nezha_benchmark

    _check_output(output)
    if alarms_out is not None:
        _check_output(alarms_out, "--alarms-out", what="CSV file")
    try:
        report = run_nezha_benchmark(data)
    except NezhaBenchError as exc:
        _fail(str(exc))
    payload = report.to_json()
    _print_nezha(payload)
    _write(payload, output)
    if alarms_out is not None:
        report.write_alarms(alarms_out)
        typer.echo(f"wrote {alarms_out} ({len(report.alarms)} alarms)")


@benchmark_app.command("synthetic")
def benchmark_synthetic(
    output: Annotated[Path, typer.Option(help="JSON report to write.")],
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the simulated cluster: pick one not used in development (benchmarks/README.md "
            "lists those)."
        ),
    ],
    duration: Annotated[
        str, typer.Option(help="Simulated time span (three weeks: training holds a whole week).")
    ] = "21D",
    n_anomalies: Annotated[int, typer.Option(help="Injected anomalies.")] = 160,
    threshold_policy: Annotated[
        str, typer.Option(help="Ensemble threshold policy: event_f1 or quantile.")
    ] = ("event_f1"),
) -> None:
    """Train every detector and the ensemble on a simulated cluster; score them on its latest period."""
    from aiops.synthetic_bench import SyntheticBenchmark, run_synthetic_benchmark

    _check_output(output)
    settings = SyntheticBenchmark(
        seed=seed,
        duration=duration,
        n_anomalies=n_anomalies,
        threshold_policy=threshold_policy,
        # weights are chosen by validation event F1, which only that policy computes
        select_weights=threshold_policy == "event_f1",
    )
    report = run_synthetic_benchmark(settings)
    columns = ("point_precision", "point_recall", "event_precision", "event_recall", "event_f1")
    typer.echo(f"{'detector':<18}" + "".join(f"{c:>17}" for c in columns))
    for name, metrics in report["detectors"].items():
        typer.echo(f"{name:<18}" + "".join(f"{metrics[c]:>17.3f}" for c in columns))
    forecast = report["forecast"]
    typer.echo(
        f"forecast MAPE {forecast.get('mape', float('nan')):.1f}% "
        f"(sMAPE {forecast.get('smape', float('nan')):.1f}%) "
        f"on normal test rows; {report['data']['labelled_windows']} labelled windows, "
        f"{int(report['detectors']['ensemble']['windows'])} in the test period"
    )
    best = report["headroom"]["ensemble_at_test_optimal_weights"]
    typer.echo(
        f"headroom (threshold and weights chosen on the test labels; diagnosis only): ensemble "
        f"event F1 {best['event_f1']:.3f} ({best['combine']}, {best['weights']})"
    )
    _write(report, output)


@benchmark_app.command("serving")
def benchmark_serving(
    output: Annotated[Path, typer.Option(help="JSON report to write.")],
    model: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder.")
    ] = "models:/aiops-anomaly-detector@champion",
    tracking_uri: Annotated[
        str, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlruns).")
    ] = "",
    requests: Annotated[int, typer.Option(help="Single-row requests per round, server and protocol.")] = 1000,
    rounds: Annotated[int, typer.Option(help="Rounds per measurement (medians are reported).")] = 5,
) -> None:
    """Latency and throughput of the predictor next to a do-nothing KServe model, both over HTTP."""
    from aiops.serving_bench import ServingBenchmark, format_summary, run_serving_benchmark

    _check_output(output)
    settings = ServingBenchmark(requests=requests, rounds=rounds)
    try:
        report = run_serving_benchmark(model, tracking_uri=tracking_uri or None, settings=settings)
    except RuntimeError as exc:
        _fail(str(exc))
    typer.echo(format_summary(report))
    _write(report, output)
