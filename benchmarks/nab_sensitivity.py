"""How the NAB score of the novelty detector moves when one of its settings moves.

Usage:
    python benchmarks/nab_sensitivity.py --data ../shared/benchmarks/nab \
        [--output benchmarks/results/nab_sensitivity.json]

Each row changes one setting of :class:`~aiops.detectors.nab_detectors.NoveltyDetector` and
keeps the others at their defaults, then scores every file of the folder (any folder in NAB's
layout) under all three profiles. Writes JSON and prints a table of the standard profile per
category. This is the check behind "the defaults sit on plateaus, not on peaks": a setting whose
neighbours score far lower was fitted to these files and will not carry over to others.
It also scores each file with the row that is best on the other files of its category (leave
one file out): what picking settings on development files would deliver on a new file.
About 2 minutes for the 28 files of ``../shared/benchmarks/nab`` on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path
from typing import Any

from aiops.detectors.nab_detectors import NoveltyDetector
from aiops.nab import (
    STANDARD,
    NabCorpus,
    load_corpus,
    normalized_score,
    null_score,
    perfect_score,
    run_nab,
)

#: Values tried per setting (the default is always among them).
SWEEPS: dict[str, list[Any]] = {
    "expected_exceedances": [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 16.0],
    "refractory_fraction": [0.0, 0.025, 0.04, 0.05, 0.06, 0.075, 0.1],
    "scales": [(1, 4, 16), (1, 8, 64), (1, 4, 16, 64), (1, 3, 9, 27, 81), (1, 2, 4, 8, 16, 32, 64)],
    "tail_fraction": [0.05, 0.075, 0.1, 0.125, 0.15, 0.2],
    "min_history": [15, 30, 45, 60, 90, 120],
    "refit_every": [10, 25, 50],
    "seasonal": [False, True],
}


def sweep(data: Path, sweeps: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Score one detector per (setting, value); the others stay at their defaults."""
    defaults = NoveltyDetector()
    rows = []
    for setting, values in sweeps.items():
        for value in values:
            started = time.perf_counter()
            factory = functools.partial(NoveltyDetector, **{setting: value})
            report = run_nab(data, factory, detector_name="novelty")
            rows.append(
                {
                    "setting": setting,
                    "value": list(value) if isinstance(value, tuple) else value,
                    "default": value == getattr(defaults, setting),
                    "profiles": {name: p["score"] for name, p in report["profiles"].items()},
                    "categories": {
                        category: scores["standard"]
                        for category, scores in report["categories"].items()
                        if scores["standard"] is not None
                    },
                    "file_scores": {f["file"]: f["score"] for f in report["files"]},
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            if len(rows) == 1:
                print(_header(rows[0]))
            print(_line(rows[-1]), flush=True)
    return rows


def leave_one_file_out(corpus: NabCorpus, rows: list[dict[str, Any]], category: str) -> dict[str, Any]:
    """Score each file of ``category`` with the row that is best on the category's *other* files.

    This is what choosing settings on development files delivers on a file that took no part
    in the choice (standard profile): the honest counterpart of the best row's score, which
    saw every file it is scored on. Ties go to the default, then to the earlier row.
    """
    files = [f for f in corpus.files if f.category == category]
    cost = corpus.profiles[STANDARD]
    raw, chosen = 0.0, {}
    for held_out in files:
        others = [f.name for f in files if f.name != held_out.name]
        best = max(
            rows,
            key=lambda r: (round(sum(r["file_scores"][name] for name in others), 9), r["default"]),
        )
        raw += best["file_scores"][held_out.name]
        chosen[held_out.name] = f"{best['setting']}={best['value']}"
    default = next(r for r in rows if r["default"])
    null, perfect = null_score(files, cost), perfect_score(files, cost)
    return {
        "category": category,
        "score": normalized_score(raw, null, perfect),
        "default_score": default["categories"][category],
        "best_row_score": max(r["categories"][category] for r in rows),
        "chosen": chosen,
    }


def _header(row: dict[str, Any]) -> str:
    categories = "".join(f"{category[:9]:>10}" for category in row["categories"])
    return (
        f"standard profile; * = default; last column: all {len(row['file_scores'])} files\n"
        f"{'setting':<22}{'value':<26}{categories}{'all':>10}"
    )


def _line(row: dict[str, Any]) -> str:
    value = str(row["value"]) + (" *" if row["default"] else "")
    categories = "".join(f"{score:>10.1f}" for score in row["categories"].values())
    return f"{row['setting']:<22}{value:<26}{categories}{row['profiles']['standard']:>10.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder in NAB's layout")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/nab_sensitivity.json"))
    args = parser.parse_args()

    rows = sweep(args.data, SWEEPS)
    categories = list(rows[0]["categories"])  # those with windows, in the report's order
    ranges = {}
    for setting in SWEEPS:
        scores = {c: [r["categories"][c] for r in rows if r["setting"] == setting] for c in categories}
        ranges[setting] = {c: [round(min(v), 2), round(max(v), 2)] for c, v in scores.items()}
    corpus = load_corpus(args.data)
    lofo = [leave_one_file_out(corpus, rows, category) for category in categories]
    for check in lofo:
        print(
            f"{check['category']}: defaults {check['default_score']:.1f}, best row "
            f"{check['best_row_score']:.1f}, settings chosen without the file scored "
            f"{check['score']:.1f} (leave one file out)"
        )
    result = {
        "data": str(args.data),
        "detector": "novelty",
        "defaults": {s: getattr(NoveltyDetector(), s) for s in SWEEPS},
        "rows": rows,
        "range_by_setting": ranges,
        "leave_one_file_out": lofo,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=list) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
