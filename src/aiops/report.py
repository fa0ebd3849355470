"""Evaluate a trained bundle on the test period and write its report (plots, tables, metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aiops.detectors.forecast import ForecastDetector, forecast_errors
from aiops.evaluation import Evaluation, write_report
from aiops.model import DetectorBundle
from aiops.schema import row_labels


def report_bundle(
    bundle: DetectorBundle, test: pd.DataFrame, labels: pd.DataFrame, out_dir: str | Path
) -> Evaluation:
    """Score ``test`` with ``bundle`` and write the report into ``out_dir``.

    For an ensemble, every member is evaluated with its own threshold too (side by side in
    ``detectors.csv`` and ``detector_comparison.png``). For a forecasting member, MAPE/sMAPE
    of its forecasts on the test period's normal rows are reported.
    """
    test = test.reset_index(drop=True)
    detector = bundle.detector
    members = getattr(detector, "members", {}) if getattr(detector, "kind", "") == "ensemble" else {}
    outputs = {name: (m.score(test), detector.member_thresholds[name]) for name, m in members.items()}
    extra: dict[str, float] = {}
    normal = ~row_labels(test, labels)
    for candidate in [detector, *members.values()]:
        if isinstance(candidate, ForecastDetector):
            extra.update({f"forecast_{k}": v for k, v in forecast_errors(candidate, test, normal).items()})
    result, _ = write_report(
        test,
        np.asarray(bundle.score(test), dtype=float),
        bundle.threshold,
        labels,
        out_dir,
        title=f"{getattr(detector, 'kind', 'detector')} on the test period",
        members=outputs or None,
        extra_metrics=extra,
    )
    return result
