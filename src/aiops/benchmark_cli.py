"""``aiops benchmark ...``: quality benchmarks that write JSON and print a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

benchmark_app = typer.Typer(no_args_is_help=True, help="Measure detectors on labelled data; write JSON.")


def _write(payload: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2, default=float))
    typer.echo(f"wrote {output}")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _print_nab(report: dict[str, Any]) -> None:
    typer.echo(f"{'profile':<22} {'score':>8} {'threshold':>10}")
    for name, entry in report["profiles"].items():
        typer.echo(f"{name:<22} {entry['score']:>8.1f} {entry['threshold']:>10.6g}")
    for category, by_profile in report.get("categories", {}).items():
        score = by_profile.get("standard")
        shown = "n/a (no windows)" if score is None else f"{score:.1f}"
        typer.echo(f"  standard, {category:<28} {shown}")
    files = report["files"]
    typer.echo(
        f"{len(files)} files: TP {sum(f['tp'] for f in files)}, FP {sum(f['fp'] for f in files)}, "
        f"FN {sum(f['fn'] for f in files)} (rows, standard profile)"
    )


@benchmark_app.command("nab")
def benchmark_nab(
    data: Annotated[
        Path, typer.Option(help="NAB-layout folder: data/<category>/*.csv, combined_windows.json.")
    ],
    output: Annotated[Path, typer.Option(help="JSON report to write.")],
    detector: Annotated[str | None, typer.Option(help="Streaming detector to run (see --help).")] = None,
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

    try:
        if scores_from is not None:
            if threshold is None:
                _fail("--scores-from needs --threshold (the detector's published alarm threshold)")
            if detector or results_out:
                _fail("--scores-from scores existing outputs; --detector and --results-out do not apply")
            report = score_results(data, scores_from, threshold)
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
