"""A Markdown model card for every registered version: what it is, what it saw, how it did."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from aiops.evaluation import format_metric
from aiops.model import DetectorBundle

_CARD_METRICS = (
    "event_f1",
    "event_precision",
    "event_recall",
    "point_precision",
    "point_recall",
    "point_f1",
    "median_delay_s",
    "false_alarm_events",
    "windows",
)

_LIMITS = {
    "synthetic": "Trained and judged on simulated telemetry with injected anomalies; quality on a real "
    "cluster is unknown until it is measured there.",
    "prometheus": "Real metrics; any labels are synthetic anomalies injected after reading, so the test "
    "metrics measure detection of those injected patterns, not of this cluster's real incidents.",
    "nezha": "Nezha faults all fall in the first hours of a recording, so the test period may hold no "
    "labelled faults; use `aiops benchmark nezha` for its online evaluation.",
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: no value (no event)
        return "–"
    if isinstance(value, float):
        return format_metric(value)
    return str(value)


def _outcome(promoted: bool, held_for_canary: bool) -> str:
    if promoted:
        return "promoted to champion"
    if held_for_canary:
        return "passed the gate; a canary rollout decides whether it becomes champion"
    return "not promoted"


def render_model_card(
    *,
    model_name: str,
    version: str,
    bundle: DetectorBundle,
    lineage_tags: Mapping[str, str],
    test: pd.DataFrame,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    champion_version: str | None,
    decision_reason: str,
    promoted: bool,
    held_for_canary: bool = False,
) -> str:
    """Return the Markdown card of one registered version.

    ``promoted``: the version became champion; ``held_for_canary``: it passed the gate and a
    canary rollout, not the gate, decides whether it becomes champion.
    """
    meta, detector = bundle.meta, bundle.detector
    source = lineage_tags.get("lineage.source", "")
    members = getattr(detector, "members", None)
    dataset_hash = lineage_tags.get("lineage.dataset_hash", "?")
    lines = [
        f"# {model_name} v{version}",
        "",
        f"**Gate decision:** {_outcome(promoted, held_for_canary)}: {decision_reason}",
        "",
        "## Model",
        f"- Detector: `{getattr(detector, 'kind', type(detector).__name__)}`"
        + (f" over {', '.join(f'`{m}`' for m in members)}" if members else ""),
        f"- Alarm threshold: {bundle.threshold:.6g} (policy: {meta.get('threshold_policy', 'quantile')})",
        f"- Feature transform v{bundle.contract.transform_version}: {len(bundle.contract.feature_names)} "
        f"features from {len(bundle.contract.signals)} signals ({', '.join(bundle.contract.signals)})",
        "- Input: feature-table rows (`aiops.features.build_features`) with their key columns; output: "
        "`anomaly_score`, `is_anomaly`.",
        "",
        "## Data",
        f"- Source: {source or 'unknown'}; dataset hash `{dataset_hash[:16]}`, "
        f"{lineage_tags.get('lineage.data_rows', '?')} rows",
        f"- Training period: {meta.get('train_start', meta.get('isolation_forest.train_start', '?'))} to "
        f"{meta.get('train_end', meta.get('isolation_forest.train_end', '?'))}",
        f"- Test period: {test['timestamp'].min()} to {test['timestamp'].max()} ({len(test):,} rows)",
        f"- Lineage: KFP run `{lineage_tags.get('lineage.kfp_run_id', '?')}`, commit "
        f"`{lineage_tags.get('lineage.git_commit', '?')}`, image `{lineage_tags.get('lineage.image', '?')}`, "
        f"seed {lineage_tags.get('lineage.seed', '?')}",
        "",
        "## Metrics on the test period",
        "",
        f"| metric | this version | champion{f' v{champion_version}' if champion_version else ''} |",
        "|---|---|---|",
    ]
    for metric in _CARD_METRICS:
        if metric in challenger:
            lines.append(f"| {metric} | {_fmt(challenger[metric])} | {_fmt((champion or {}).get(metric))} |")
    lines += [
        "",
        "## Intended use",
        "Flag anomalous pod behaviour (resource saturation, leaks, crash loops, network degradation) from "
        "one-minute Kubernetes/OpenShift metrics, as evidence for incidents and remediation decisions. "
        "Alarms are inputs for an SRE or the remediation logic, not automatic actions on their own.",
        "",
        "## Known limits",
        f"- {_LIMITS.get(source, 'Labels come from the source named above.')}",
        "- Scores are causal, but sequence and rolling features need a warm-up: a pod's first rows "
        "(about 30 minutes) are judged on little history.",
        "- Workload forecasts assume Deployment-style pod names; a new workload has no forecast until "
        "the next training run.",
    ]
    return "\n".join(lines) + "\n"
