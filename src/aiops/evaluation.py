"""Detection quality: point-wise and event-wise scores, detection delay, plots.

Definitions (all on rows of one evaluation frame, e.g. the test split):

* **point-wise**: each row is a sample; a row is positive when it lies inside a
  labelled window of its entity; precision/recall/F1 over rows.
* **event-wise recall**: a labelled window counts as detected when at least
  one alarm is raised on its entity inside the window. Only windows with at
  least one row in the frame are counted.
* **event-wise precision**: consecutive alarm rows of one entity (gaps of up
  to ``merge_gap`` rows allowed) form one alarm event; an alarm event is true
  when any of its alarm rows is inside a labelled window. Rows are consecutive
  on the frame's time grid (the median spacing of consecutive rows of an entity),
  so a hole in an entity's data (a scrape gap, a restart) ends an event as quiet
  rows would.
* **detection delay**: time from a window's start to its earliest alarm, over
  detected windows.

Undefined ratios (no alarms, no labels) are reported as 0.0, never NaN, so a
detector that stays silent cannot look good.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, TIMESTAMP, label_masks, row_labels


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Row-level precision, recall, F1 and confusion counts."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    tp = int(np.sum(y_true & y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def alarm_events(frame: pd.DataFrame, alarms: np.ndarray, merge_gap: int = 0) -> pd.DataFrame:
    """Group alarm rows into events: runs of alarms per entity.

    Args:
        frame: Rows with the entity keys and ``timestamp``.
        alarms: Boolean alarm flag per row of ``frame``.
        merge_gap: Alarm runs separated by at most this many quiet rows merge. A missing row
            (a hole in the entity's time grid, see :func:`grid_slots`) counts as a quiet one.

    Returns:
        One row per event: entity keys, ``start``, ``end`` (time of the last
        alarm row) and ``rows`` (positions in ``frame``, the quiet rows between
        merged runs included).

    """
    alarms = np.asarray(alarms, dtype=bool)
    frame = frame.reset_index(drop=True)
    if len(alarms) != len(frame):
        raise ValueError(f"{len(alarms)} alarm flags for {len(frame)} rows")
    order, group, slots = entity_time_order(frame)
    records: list[dict[str, Any]] = []
    stamps = frame[TIMESTAMP]
    keys = frame[list(ENTITY_KEYS)]
    for ids in np.split(np.arange(len(order)), np.flatnonzero(np.diff(group)) + 1):
        idx = order[ids]
        hits = np.flatnonzero(alarms[idx])
        if hits.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(slots[ids][hits]) > merge_gap + 1)
        for run in np.split(hits, breaks + 1):
            rows = idx[run[0] : run[-1] + 1]
            records.append(
                {
                    **dict(zip(ENTITY_KEYS, keys.iloc[idx[0]].tolist(), strict=True)),
                    "start": stamps.iloc[rows[0]],
                    "end": stamps.iloc[rows[-1]],
                    "rows": rows,
                }
            )
    return pd.DataFrame(records, columns=[*ENTITY_KEYS, "start", "end", "rows"])


def entity_time_order(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by entity, then time, with each row's entity and place on its entity's grid.

    Returns:
        ``(order, group, slots)``: ``order`` holds positions in ``frame``; ``group`` numbers the
        entities in that order; ``slots`` is each row's step on its entity's time grid, see
        :func:`grid_slots`. Two rows of one entity are neighbours when their slots differ by 1.
    """
    frame = frame.reset_index(drop=True)
    ordered = frame.sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable")
    order = ordered.index.to_numpy()
    if not len(order):
        return order, np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    keys = ordered[list(ENTITY_KEYS)].to_numpy()
    starts = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    group = np.cumsum(starts) - 1
    stamps = pd.DatetimeIndex(ordered[TIMESTAMP]).as_unit("ns").asi8
    # One grid for the whole frame: the median spacing of consecutive rows of the same entity.
    # An entity's own median misreads a pod of a few rows, or one with as many holes as rows
    # (rows at :00, :01, :03 have a median gap of 1.5 min, and :01 and :03 became neighbours).
    within = np.diff(stamps)[~starts[1:]]
    positive = within[within > 0]
    step = float(np.median(positive)) if positive.size else None
    slots = np.empty(len(order), dtype=np.int64)
    bounds = np.r_[np.flatnonzero(starts), len(order)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        slots[lo:hi] = grid_slots(stamps[lo:hi], step)
    return order, group, slots


def grid_slots(stamps: np.ndarray, step: float | None = None) -> np.ndarray:
    """Each sorted timestamp (int64 nanoseconds) as a step on a grid starting at the first one.

    A row's slot is its time since the first timestamp over ``step`` (nanoseconds; default the
    median positive spacing of ``stamps``). Rows scraped on a regular grid get ``0, 1, 2, ...``;
    a hole of ``k`` missing rows makes the next slot jump by ``k + 1``, and jitter of under half
    a step is rounded away.
    """
    n = len(stamps)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    offsets = (np.asarray(stamps, dtype=np.int64) - stamps[0]).astype(np.float64)
    if step is None:
        gaps = np.diff(offsets)
        step = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 0.0
    if step <= 0:
        return np.arange(n, dtype=np.int64)
    return np.rint(offsets / step).astype(np.int64)


@dataclass
class Evaluation:
    """Metrics of one detector on one frame, plus the detail behind them."""

    metrics: dict[str, float]
    windows: pd.DataFrame = field(repr=False)
    events: pd.DataFrame = field(repr=False)
    row_truth: np.ndarray = field(repr=False)


#: What evaluate adds to each labelled window's own columns.
_WINDOW_RESULTS = ("first_scored", "detected", "delay_s")


def evaluate(
    frame: pd.DataFrame,
    alarms: np.ndarray,
    labels: pd.DataFrame,
    merge_gap: int = 0,
) -> Evaluation:
    """Score a detector's alarms against labelled windows.

    Args:
        frame: Rows that were scored (entity keys and ``timestamp``).
        alarms: Alarm flag per row (``score >= threshold``).
        labels: Label table in the canonical schema.
        merge_gap: See :func:`alarm_events`.

    Returns:
        :class:`Evaluation` with ``metrics`` (point_*, event_*, delay, rates),
        ``windows`` (each labelled window with ``first_scored``, ``detected`` and ``delay_s``)
        and ``events`` (alarm events with ``true``).

    """
    frame = frame.reset_index(drop=True)
    alarms = np.asarray(alarms, dtype=bool)
    if len(alarms) != len(frame):
        raise ValueError(f"{len(alarms)} alarm flags for {len(frame)} rows")
    truth = row_labels(frame, labels)
    point = point_metrics(truth, alarms)

    windows = []
    ts = frame[TIMESTAMP]
    for label, mask in label_masks(frame, labels):
        if not mask.any():
            continue
        hit = np.flatnonzero(mask & alarms)
        # Earliest in time: a node-level window spans several entities, rows are not in time order.
        first = ts.iloc[hit].min() if hit.size else pd.NaT
        windows.append(
            {
                **label,
                # The first scored row inside the window: where a scorer first could see it.
                "first_scored": ts[mask].min(),
                "detected": bool(hit.size),
                "delay_s": (first - label["start"]).total_seconds() if hit.size else np.nan,
            }
        )
    # Without any window the table keeps its columns (windows.csv then still has its header).
    windows_df = pd.DataFrame(windows, columns=None if windows else [*labels.columns, *_WINDOW_RESULTS])
    events = alarm_events(frame, alarms, merge_gap=merge_gap)
    # Only the alarm rows of an event count: merged runs hold quiet rows between them.
    events["true"] = [bool((truth[rows] & alarms[rows]).any()) for rows in events["rows"]]

    n_windows = len(windows_df)
    n_detected = int(windows_df["detected"].sum()) if n_windows else 0
    event_recall = _ratio(n_detected, n_windows)
    event_precision = _ratio(int(events["true"].sum()), len(events))
    delays = windows_df.loc[windows_df["detected"], "delay_s"] if n_windows else pd.Series(dtype=float)

    metrics = {
        **{f"point_{k}": float(v) for k, v in point.items()},
        "event_precision": event_precision,
        "event_recall": event_recall,
        "event_f1": _f1(event_precision, event_recall),
        "windows": float(n_windows),
        "windows_detected": float(n_detected),
        "alarm_events": float(len(events)),
        "false_alarm_events": float((~events["true"]).sum()),
        "mean_delay_s": float(delays.mean()) if len(delays) else float("nan"),
        "median_delay_s": float(delays.median()) if len(delays) else float("nan"),
        "alarm_rate": float(alarms.mean()) if len(alarms) else 0.0,
        "rows": float(len(frame)),
    }
    return Evaluation(metrics=metrics, windows=windows_df, events=events, row_truth=truth)


# --------------------------------------------------------------------------- plots


def plot_timelines(
    frame: pd.DataFrame,
    scores: np.ndarray,
    threshold: float,
    labels: pd.DataFrame,
    max_entities: int = 4,
) -> Any:
    """Score over time for the entities with labelled windows (else the top scorers).

    Labelled windows are shaded, alarms marked, the threshold drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.reset_index(drop=True).assign(_score=np.asarray(scores, dtype=float))
    t_min, t_max = frame[TIMESTAMP].min(), frame[TIMESTAMP].max()
    labels = labels[(labels["end"] > t_min) & (labels["start"] <= t_max)] if len(labels) else labels
    by_entity = frame.groupby(list(ENTITY_KEYS), sort=False)
    # The windows of each entity, by evaluate's own rule (label_masks): the label's cluster, and
    # its pod, or every pod of its node for a node-level fault.
    windows: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for label, mask in label_masks(frame, labels):
        for key in frame.loc[mask, list(ENTITY_KEYS)].drop_duplicates().itertuples(index=False, name=None):
            windows.setdefault(key, []).append(label)
    ranked = list(windows)
    ranked += [k for k in by_entity["_score"].max().sort_values(ascending=False).index if k not in windows]
    chosen = ranked[:max_entities]

    fig, axes = plt.subplots(len(chosen), 1, figsize=(11, 2.4 * len(chosen)), sharex=True, squeeze=False)
    for ax, keys in zip(axes[:, 0], chosen, strict=True):
        part = by_entity.get_group(keys)
        ax.plot(part[TIMESTAMP], part["_score"], lw=0.8, color="tab:blue", label="anomaly score")
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.8, label="threshold")
        alarm = part[part["_score"] >= threshold]
        ax.scatter(alarm[TIMESTAMP], alarm["_score"], s=8, color="tab:red", zorder=3, label="alarm")
        entity = dict(zip(ENTITY_KEYS, keys, strict=True))
        for window in windows.get(keys, []):
            ax.axvspan(window["start"], window["end"], color="tab:orange", alpha=0.25)
            ax.text(window["start"], ax.get_ylim()[1], window["anomaly_type"], fontsize=7, va="top")
        ax.set_title(f"{entity['cluster']}/{entity['namespace']}/{entity['pod']}", fontsize=9, loc="left")
        ax.set_xlim(t_min, t_max)
    axes[0, 0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def plot_score_distribution(scores: np.ndarray, truth: np.ndarray, threshold: float) -> Any:
    """Histogram of scores for normal vs. labelled rows, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    finite = np.isfinite(scores)  # a score without a value has no place on the axis
    scores, truth = scores[finite], truth[finite]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.histogram_bin_edges(scores, bins=60).tolist() if scores.size else 60
    ax.hist(scores[~truth], bins=bins, alpha=0.6, density=True, label=f"normal ({(~truth).sum()})")
    if truth.any():
        ax.hist(scores[truth], bins=bins, alpha=0.6, density=True, label=f"labelled anomaly ({truth.sum()})")
    ax.axvline(threshold, color="tab:red", ls="--", label="threshold")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_recall_by_type(windows: pd.DataFrame) -> Any:
    """Bar chart: share of labelled windows detected, per anomaly type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(windows):
        stats = windows.groupby("anomaly_type")["detected"].agg(["mean", "count"])
        ax.bar(stats.index, stats["mean"], color="tab:green")
        for i, (rate, count) in enumerate(zip(stats["mean"], stats["count"], strict=True)):
            ax.text(i, rate + 0.02, f"n={count}", ha="center", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    else:
        ax.text(0.5, 0.5, "no labelled windows in this split", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("event recall")
    fig.tight_layout()
    return fig


def compare_detectors(
    frame: pd.DataFrame, labels: pd.DataFrame, outputs: dict[str, tuple[np.ndarray, float]]
) -> pd.DataFrame:
    """Evaluate several detectors on the same rows: one row of metrics per detector."""
    rows = []
    for name, (scores, threshold) in outputs.items():
        metrics = evaluate(frame, np.asarray(scores, dtype=float) >= threshold, labels).metrics
        rows.append({"detector": name, "threshold": float(threshold), **metrics})
    return pd.DataFrame(rows).set_index("detector")


def plot_detector_comparison(table: pd.DataFrame) -> Any:
    """Grouped bars: point F1, event precision, recall and F1 per detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["point_f1", "event_precision", "event_recall", "event_f1"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(columns)
    x = np.arange(len(table))
    for i, column in enumerate(columns):
        ax.bar(x + i * width, table[column], width, label=column)
    ax.set_xticks(x + width * (len(columns) - 1) / 2, table.index, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    ax.set_title("detectors on the test period", fontsize=9)
    fig.tight_layout()
    return fig


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def format_metric(value: float) -> str:
    """A metric for people: 4 significant digits, but counts and long delays in full; NaN as "–"."""
    if math.isnan(value):
        return "–"
    if abs(value) >= 1e4:  # 4 digits would round 12,345 false alarms to 1.234e+04
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return f"{value:.4g}"


def html_report(title: str, metrics: dict[str, float], images: dict[str, bytes]) -> str:
    """Build a self-contained HTML page: a metrics table and the PNG plots inline."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{format_metric(v)}</td></tr>" if isinstance(v, float) else ""
        for k, v in metrics.items()
    )
    figs = "".join(
        f"<h3>{html.escape(name)}</h3><img src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"
        for name, png in images.items()
    )
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'><h2>{html.escape(title)}</h2>"
        f"<table border='1' cellpadding='3' style='border-collapse:collapse'>{rows}</table>"
        f"{figs}</body></html>"
    )


def write_report(
    frame: pd.DataFrame,
    scores: np.ndarray,
    threshold: float,
    labels: pd.DataFrame,
    out_dir: str | Path,
    title: str = "Detector evaluation",
    members: dict[str, tuple[np.ndarray, float]] | None = None,
    extra_metrics: dict[str, float] | None = None,
) -> tuple[Evaluation, str]:
    """Evaluate, draw the plots and write them with a metrics table into ``out_dir``.

    Writes ``timelines.png``, ``score_distribution.png``, ``recall_by_type.png``,
    ``windows.csv`` (every labelled window, detected or not), ``metrics.json``
    and ``report.html``; with ``members`` (name -> scores, threshold) also
    ``detectors.csv`` and ``detector_comparison.png``. ``extra_metrics`` (e.g.
    forecast MAPE) are added to ``metrics.json`` and the page.

    Returns:
        The evaluation and the HTML page.

    """
    if frame.empty:
        raise ValueError(f"{title}: no rows to report on (an empty evaluation frame)")
    frame = frame.reset_index(drop=True)
    scores = np.asarray(scores, dtype=float)
    result = evaluate(frame, scores >= threshold, labels)
    images = {
        "timelines": figure_png(plot_timelines(frame, scores, threshold, labels)),
        "score_distribution": figure_png(plot_score_distribution(scores, result.row_truth, threshold)),
        "recall_by_type": figure_png(plot_recall_by_type(result.windows)),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**result.metrics, "threshold": threshold, **(extra_metrics or {})}
    if members:
        table = compare_detectors(frame, labels, {**members, "ensemble": (scores, threshold)})
        table.to_csv(out / "detectors.csv")
        images["detector_comparison"] = figure_png(plot_detector_comparison(table))
        for name, row in table.drop(index="ensemble").iterrows():
            summary.update(
                {f"{name}.{k}": float(row[k]) for k in ("point_precision", "point_f1", "event_f1")}
            )
    for name, png in images.items():
        (out / f"{name}.png").write_bytes(png)
    result.windows.to_csv(out / "windows.csv", index=False)
    # NaN (e.g. a delay without a detected event) is not JSON: it is written as null.
    finite_or_null = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    (out / "metrics.json").write_text(json.dumps(finite_or_null, indent=2, allow_nan=False))
    page = html_report(title, summary, images)
    (out / "report.html").write_text(page)
    return result, page
