"""Gradual concept drift for simulated (or real) telemetry: the cluster changes, nothing breaks.

Unlike :mod:`aiops.synth`, these changes are not anomalies and carry no labels: they are the
slow shifts that make a trained detector stale, so the retraining loop can be shown end to end.

* ``workload_doubles`` – traffic of the chosen pods ramps up to ``factor`` times its level
  (requests, network, CPU follow; memory grows a little), as after a successful launch.
* ``daily_shift`` – the daily pattern moves by ``shift_hours`` (users in another time zone):
  each value from ``start`` on is the pod's own value from ``shift_hours`` earlier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.schema import TIMESTAMP
from aiops.telemetry import Telemetry

DRIFT_KINDS = ("workload_doubles", "daily_shift")
_TRAFFIC = ("request_rate", "network_rx_bytes_per_s", "network_tx_bytes_per_s")


@dataclass(frozen=True)
class ConceptDrift:
    """One drift to apply.

    Attributes:
        kind: One of :data:`DRIFT_KINDS`.
        start: Offset from the first timestamp at which the drift begins (pandas timedelta).
        ramp: How long ``workload_doubles`` takes to reach its full factor.
        factor: Traffic multiplier of ``workload_doubles``.
        shift_hours: Shift of ``daily_shift``.
        pod_prefix: Only pods whose name starts with this ('' = every pod).
    """

    kind: str
    start: str = "0min"
    ramp: str = "6h"
    factor: float = 2.0
    shift_hours: float = 6.0
    pod_prefix: str = ""

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown concept drift '{self.kind}'; choose one of {DRIFT_KINDS}")
        if self.factor <= 0:
            raise ValueError("factor must be positive")


def apply_concept_drift(telemetry: Telemetry, drift: ConceptDrift) -> Telemetry:
    """Return a copy of ``telemetry`` whose metrics drift as ``drift`` says (labels unchanged)."""
    metrics = telemetry.metrics.copy()
    t0 = metrics[TIMESTAMP].min() + pd.Timedelta(drift.start)
    if t0 >= metrics[TIMESTAMP].max():
        raise ValueError(
            f"concept drift '{drift.kind}' would start {drift.start} after the first row, at or after the "
            f"last one ({metrics[TIMESTAMP].max()}): it would change nothing; start it earlier or ask for "
            "a longer duration"
        )
    chosen = metrics["pod"].str.startswith(drift.pod_prefix)
    if drift.kind == "workload_doubles":
        elapsed = (metrics[TIMESTAMP] - t0).dt.total_seconds().to_numpy()
        progress = np.clip(elapsed / max(pd.Timedelta(drift.ramp).total_seconds(), 1.0), 0.0, 1.0)
        gain = np.where(chosen.to_numpy(), 1.0 + (drift.factor - 1.0) * progress, 1.0)
        for column in _TRAFFIC:
            if column in metrics:
                metrics[column] = metrics[column] * gain
        # A pod without a limit (missing or 0, as the schema reads it) is not capped: fmin
        # ignores the NaN where np.minimum would blank the usage. Only the rows the drift
        # scales (up or down) are changed: the others keep their values, even above the cap.
        scaled = gain != 1.0
        if "cpu_usage_cores" in metrics:
            cpu = metrics["cpu_usage_cores"] * gain
            capped = np.fmin(cpu, _limit(metrics, "cpu_limit_cores"))
            metrics["cpu_usage_cores"] = np.where(scaled, capped, metrics["cpu_usage_cores"])
        if "memory_working_set_bytes" in metrics:
            mem = metrics["memory_working_set_bytes"] * (1.0 + 0.2 * (gain - 1.0))
            capped = np.fmin(mem, 0.95 * _limit(metrics, "memory_limit_bytes"))
            metrics["memory_working_set_bytes"] = np.where(
                scaled, capped, metrics["memory_working_set_bytes"]
            )
    else:
        shift = pd.Timedelta(hours=drift.shift_hours)
        columns = [c for c in (*_TRAFFIC, "cpu_usage_cores") if c in metrics]
        keys = ["cluster", "namespace", "pod", TIMESTAMP]
        earlier = metrics.loc[:, keys + columns].assign(**{TIMESTAMP: metrics[TIMESTAMP] + shift})
        moved = metrics.loc[:, keys].merge(earlier, on=keys, how="left")
        replace = (chosen & (metrics[TIMESTAMP] >= t0)).to_numpy() & moved[columns[0]].notna().to_numpy()
        for column in columns:
            metrics.loc[replace, column] = moved.loc[replace, column].to_numpy()
    return Telemetry(metrics=metrics, labels=telemetry.labels, events=telemetry.events, logs=telemetry.logs)


def _limit(metrics: pd.DataFrame, column: str) -> pd.Series:
    """A limit column with "no limit" (missing, or 0) as NaN."""
    if column not in metrics:
        return pd.Series(np.nan, index=metrics.index)
    limit = metrics[column]
    return limit.where(limit > 0)
