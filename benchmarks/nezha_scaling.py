"""How the Nezha detector would fare on a larger application, judged by its alarm level alone.

Usage:
    python benchmarks/nezha_scaling.py --data ../shared/benchmarks/nezha [--pods 46 100] \
        [--output benchmarks/results/nezha_scaling.json]

The detector's alarm level is a Bonferroni bound over the pod x signal tests of each minute, so
on an application with ``P`` pods instead of a day's ``p`` it rises by ``log10(P / p)`` decades
(about as many tests per pod). Re-running a day with the false-alarm budget scaled by ``p / P``
gives exactly that level, on the faults and quiet minutes the day really has. The faults of a
larger application are not simulated: this answers "which of these detections survive the
stricter level?", not "how would a 46-pod application behave?". Each day is run at its own
scaled budget. Writes JSON and prints a table. A few seconds per day and size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

from aiops.nezha import day_folders
from aiops.nezha_bench import (
    DEFAULT_SETTINGS,
    KINDS,
    DayScore,
    NezhaDay,
    detect_day,
    load_day,
    score_day,
    summarise_days,
)

#: Printed columns: summary key -> header.
COLUMNS = {
    "detection_recall": "recall",
    **{f"recall_{kind}": kind for kind in KINDS},
    "false_alarms_per_hour": "false/h",
    "alarm_minutes_share": "alarm share",
    "localization_top1": "top-1",
}


def at_size(loaded: list[NezhaDay], pods: int | None) -> dict[str, Any]:
    """The benchmark with every day's budget scaled to ``pods`` (None: the days as recorded)."""
    scores: list[DayScore] = []
    days: list[dict[str, Any]] = []
    for day in loaded:
        budget = DEFAULT_SETTINGS.false_alarms_per_hour * (1.0 if pods is None else len(day.pods) / pods)
        settings = dataclasses.replace(DEFAULT_SETTINGS, false_alarms_per_hour=budget)
        detection = detect_day(day, settings)
        scores.append(score_day(day, detection, settings))
        days.append(
            {
                "day": day.name,
                "pods": len(day.pods),
                "budget_per_hour": budget,
                "threshold_decades": detection.threshold,
            }
        )
    return {
        "pods": pods,
        "days": days,
        "summary": summarise_days(scores),
    }


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    return {**summary, **{f"recall_{k}": v for k, v in summary["recall_by_kind"].items()}}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a Nezha day folder or a folder of days")
    parser.add_argument("--pods", type=int, nargs="+", default=[46, 100], help="application sizes to judge")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/nezha_scaling.json"))
    args = parser.parse_args()
    loaded = [load_day(folder) for folder in day_folders(args.data)]  # read once, judged at every size
    rows = [at_size(loaded, None), *(at_size(loaded, pods) for pods in args.pods)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"data": str(args.data), "python": platform.python_version(), "sizes": rows},
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"{'pods':<12}" + "".join(f"{header:>13}" for header in COLUMNS.values()))
    for row in rows:
        label = "as recorded" if row["pods"] is None else str(row["pods"])
        values = _flat(row["summary"])
        print(f"{label:<12}" + "".join(f"{_cell(values[key]):>13}" for key in COLUMNS))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
