"""Read the Nezha fault-injection recordings into the canonical telemetry schema.

Nezha (FSE 2023) ran the OnlineBoutique demo on Kubernetes and injected faults into one
pod at a time. Layout of one recorded day::

    <day>/metric/<pod>_metric.csv   one row per minute per pod
    <day>/fault_list.json           {"<hour>": [{"inject_time", "inject_timestamp",
                                                 "inject_pod", "inject_type"}, ...]}

The study's own repository names the fault list ``<day>-fault_list.json``; both names are read
(:func:`fault_list_path`). A data folder is either one day (it holds a fault list) or a folder
of days.

Time alignment: on some days ``inject_timestamp`` (and the metrics' ``TimeStamp``) is off by
whole hours or corrupt, while the UTC wall-clock strings ``inject_time`` and ``Time`` agree.
So rows are timed by ``Time`` and faults by ``inject_time``, and the loader checks that every
fault falls inside the recorded range of its pod.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, TIMESTAMP, SchemaError, empty_labels
from aiops.telemetry import Telemetry

log = logging.getLogger(__name__)

CLUSTER = "nezha"
NAMESPACE = "online-boutique"
#: Nezha's fault types, grouped by what an SRE would call them.
FAULT_KINDS = {
    "cpu_contention": "resource",
    "cpu_consumed": "resource",
    "network_delay": "network",
    "exception": "application",
    "return": "application",
}

_MIB = 2.0**20
_REQUIRED = ("Time", "PodName", "CpuUsage(m)", "MemoryUsage(Mi)")
#: canonical column <- (Nezha column, scale). PodSuccessRate(%) is left out: it reads 0 on every
#: row of the recordings, which would claim a 100% error ratio.
_MAPPING = {
    "cpu_usage_cores": ("CpuUsage(m)", 1e-3),
    "memory_working_set_bytes": ("MemoryUsage(Mi)", _MIB),
    "network_rx_bytes_per_s": ("NetworkReceiveBytes", 1.0),
    "network_tx_bytes_per_s": ("NetworkTransmitBytes", 1.0),
    "request_rate": ("PodWorkload(Ops)", 1.0),
    "latency_p95_seconds": ("PodServerLatencyP95(s)", 1.0),
    "node_cpu_utilisation": ("NodeCpuUsageRate(%)", 0.01),
    "node_memory_utilisation": ("NodeMemoryUsageRate(%)", 0.01),
}
#: limit <- (usage column, usage-as-percent-of-limit column)
_LIMITS = {
    "cpu_limit_cores": ("cpu_usage_cores", "CpuUsageRate(%)"),
    "memory_limit_bytes": ("memory_working_set_bytes", "MemoryUsageRate(%)"),
}


@dataclass(frozen=True)
class NezhaOptions:
    """How faults become labels and how rows align.

    Attributes:
        fault_duration: Length of each labelled window from the injection time (faults last about 3 min).
        step: Grid the rows are floored to.
    """

    fault_duration: str = "3min"
    step: str = "1min"


FAULT_LIST = "fault_list.json"


def fault_list_path(day: str | Path) -> Path | None:
    """The day's fault list: ``fault_list.json``, else the single ``<prefix>fault_list.json``.

    A prefix is e.g. ``2022-08-22-`` or ``2022-08-22_``. ``None`` when there is no fault list.

    Raises:
        SchemaError: When there is no ``fault_list.json`` but several prefixed ones.
    """
    folder = Path(day)
    if (folder / FAULT_LIST).is_file():
        return folder / FAULT_LIST
    named = sorted(p for p in folder.glob(f"*{FAULT_LIST}") if p.is_file() and not p.name.startswith("."))
    if len(named) > 1:
        raise SchemaError(f"nezha: {folder} holds several fault lists ({[p.name for p in named]}); keep one")
    return named[0] if named else None


def _has_fault_list(folder: Path) -> bool:
    """Whether ``folder`` holds a fault list, even an ambiguous one (reading it says what is wrong)."""
    try:
        return fault_list_path(folder) is not None
    except SchemaError:
        return True


def day_folders(data_dir: str | Path) -> list[Path]:
    """Return the recorded days under ``data_dir`` (itself, or its sub-folders).

    Raises:
        SchemaError: When no folder holds a fault list (see :func:`fault_list_path`) and ``metric/``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SchemaError(f"nezha: {root} is not a folder")
    candidates = (
        [root] if fault_list_path(root) is not None else sorted(p for p in root.iterdir() if p.is_dir())
    )
    days = [p for p in candidates if (p / "metric").is_dir() and _has_fault_list(p)]
    for folder in candidates:
        if (folder / "metric").is_dir() and folder not in days:
            # Recorded metrics without labels cannot be scored or trained on: say so, never drop quietly.
            log.warning(
                "nezha: %s has metric/ but no %s (nor a <prefix>%s); skipped", folder, FAULT_LIST, FAULT_LIST
            )
    if not days:
        raise SchemaError(
            f"nezha: no recorded day under {root}; "
            "expected <day>/fault_list.json and <day>/metric/*_metric.csv"
        )
    return days


_GO_TIME = re.compile(
    r"^\s*(\S+[ T]\S+?)(?:\s*([+-]\d{2}:?\d{2}))?(?:\s+[A-Za-z]{2,5})?(?:\s+m=[+-][\d.]+)?\s*$"
)


def _parse_time(values: pd.Series) -> pd.Series:
    """Parse Nezha's Go-style ``2022-08-22 03:51:19.607158889 +0000 UTC m=+0.11`` strings to UTC.

    The numeric offset counts (``+0800 CST`` is eight hours ahead of UTC); the zone name and
    Go's monotonic clock reading (``m=+...``) are dropped. Without an offset the time is UTC.
    What does not parse (or lies outside pandas' years 1677-2262) is NaT.
    """
    parts = values.astype(str).str.extract(_GO_TIME)
    text = parts[0] + parts[1].fillna("+00:00")
    return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")


#: Longest span one day folder may cover (the study's days are about 20 hours); a longer one
#: means a row with a wrong time, whose minute grid could take gigabytes.
MAX_DAY_SPAN = pd.Timedelta(days=3)
#: Most rows of a file whose time may fail to parse; beyond it the column is not a Nezha time.
MAX_UNTIMED_SHARE = 0.1


def _timed_rows(raw: pd.DataFrame, column: str, path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The rows of ``raw`` whose ``column`` parses as a time, and those times (UTC).

    A few rows that do not parse (an empty cell, a header line repeated where files were
    joined, Go's zero time) are dropped with a warning; the columns such a line left as text
    are read as numbers again.

    Raises:
        SchemaError: When more than :data:`MAX_UNTIMED_SHARE` of the rows do not parse.
    """
    parsed = _parse_time(raw[column])
    bad = parsed.isna().to_numpy()
    if not bad.any():
        return raw, parsed
    header = [str(c) for c in raw.columns]
    for i in np.flatnonzero(bad):
        values = [str(v) for v in raw.iloc[i]]
        if sorted(values) == sorted(header) and values != header:
            raise SchemaError(
                f"nezha: {path.name} repeats its header on data row {i + 1} with the columns in another "
                f"order ({', '.join(values[:4])}, ...): the rows after it would be read under the wrong "
                "columns; split the file where the files were joined"
            )
    example = raw[column][bad].iloc[0]
    if bad.mean() > MAX_UNTIMED_SHARE:
        raise SchemaError(
            f"nezha: cannot parse {column} value {example!r} in {path.name} "
            f"({int(bad.sum())} of {len(raw)} rows do not parse)"
        )
    log.warning(
        "nezha: %s: %d of %d rows have a %s that does not parse (e.g. %r); those rows are dropped",
        path.name,
        int(bad.sum()),
        len(raw),
        column,
        example,
    )
    kept = raw.loc[~bad].copy()
    for name in kept.columns:
        if kept[name].dtype == object:
            numbers = pd.to_numeric(kept[name], errors="coerce")
            if numbers.notna().sum() == kept[name].notna().sum():
                kept[name] = numbers
    return kept, parsed[~bad]


def _numeric(raw: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(raw[name], errors="coerce").astype("float64")


def _pod_metrics(path: Path, options: NezhaOptions) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise SchemaError(f"nezha: {path} is empty (not even a header line)") from exc
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise SchemaError(f"nezha: {path.name} lacks column(s) {missing}; is it a Nezha *_metric.csv?")
    if raw.empty:
        raise SchemaError(f"nezha: {path.name} holds no rows")
    raw, times = _timed_rows(raw, "Time", path)
    frame = pd.DataFrame(
        {
            TIMESTAMP: times.dt.floor(options.step),
            "cluster": CLUSTER,
            "namespace": NAMESPACE,
            "pod": raw["PodName"].astype(str),
            "node": "",
        }
    )
    for column, (source, scale) in _MAPPING.items():
        if source in raw.columns:
            frame[column] = _numeric(raw, source) * scale
    for limit, (usage, percent) in _LIMITS.items():
        if percent in raw.columns:
            # Usage and usage-as-%-of-limit are both recorded: their ratio is the (constant) limit.
            value = float(np.nanmedian(frame[usage] / (_numeric(raw, percent) / 100.0)))
            frame[limit] = value if np.isfinite(value) and value > 0 else np.nan
    for ratio in ("node_cpu_utilisation", "node_memory_utilisation"):
        if ratio in frame:
            frame[ratio] = frame[ratio].clip(0.0, 1.0)
    frame = frame.drop_duplicates(subset=[TIMESTAMP], keep="last")
    first, last = frame[TIMESTAMP].min(), frame[TIMESTAMP].max()
    if last - first > MAX_DAY_SPAN:
        raise SchemaError(
            f"nezha: {path.name} spans {first} .. {last}, more than {MAX_DAY_SPAN} for one recorded "
            "day: a row with a wrong Time?"
        )
    # Explicit NaN rows for missed minutes keep row-count windows honest.
    grid = pd.date_range(first, last, freq=options.step)
    frame = frame.set_index(TIMESTAMP).reindex(grid)
    frame.index.name = TIMESTAMP
    for key in ENTITY_KEYS:
        frame[key] = frame[key].ffill()
    for limit in _LIMITS:
        if limit in frame:
            frame[limit] = frame[limit].ffill()
    return frame.reset_index()


def _faults(day: Path) -> list[dict[str, str]]:
    path = fault_list_path(day)
    if path is None:
        raise SchemaError(f"nezha: {day} has no {FAULT_LIST}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"nezha: {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(
            f"nezha: {path} is not a fault list: expected an object of hours, each with a list of "
            f"faults, got a JSON {type(raw).__name__}"
        )
    odd = [hour for hour, value in raw.items() if not isinstance(value, list | type(None))]
    if odd:
        raise SchemaError(
            f"nezha: {path}: hour {odd[0]!r} holds {type(raw[odd[0]]).__name__}, expected a list of faults"
        )
    faults = [fault for hour in sorted(raw) for fault in raw[hour] or []]
    for fault in faults:
        if not isinstance(fault, dict):
            raise SchemaError(f"nezha: a fault in {day.name}/{path.name} is not an object: {fault!r}")
        missing = {"inject_time", "inject_pod", "inject_type"} - set(fault)
        if missing:
            raise SchemaError(f"nezha: a fault in {day.name}/{path.name} lacks {sorted(missing)}: {fault}")
    return faults


def _labels(day: Path, metrics: pd.DataFrame, options: NezhaOptions) -> pd.DataFrame:
    duration = pd.Timedelta(options.fault_duration)
    span = metrics.groupby("pod")[TIMESTAMP].agg(["min", "max"])
    rows = []
    for fault in _faults(day):
        pod = fault["inject_pod"]
        try:
            start = pd.Timestamp(fault["inject_time"], tz="UTC")
        except (ValueError, TypeError):
            start = pd.NaT
        if pd.isna(start):
            raise SchemaError(
                f"nezha: {day.name}: the fault on '{pod}' has no readable inject_time "
                f"({fault['inject_time']!r})"
            )
        if pod not in span.index:
            raise SchemaError(f"nezha: {day.name}: fault on pod '{pod}' which has no metric file")
        if not span.at[pod, "min"] <= start <= span.at[pod, "max"]:
            raise SchemaError(
                f"nezha: {day.name}: fault at {start} on '{pod}' lies outside its metrics "
                f"({span.at[pod, 'min']} .. {span.at[pod, 'max']}); time zones misaligned?"
            )
        offset = _timestamp_offset_hours(fault, start)
        if offset:
            log.info(
                "nezha %s: inject_timestamp is %+d h off inject_time; using inject_time", day.name, offset
            )
        kind = fault["inject_type"]
        rows.append(
            {
                "cluster": CLUSTER,
                "namespace": NAMESPACE,
                "pod": pod,
                "node": "",
                "start": start,
                "end": start + duration,
                "anomaly_type": kind,
                "category": "collective",
            }
        )
    return pd.DataFrame(rows) if rows else empty_labels()


def _timestamp_offset_hours(fault: dict[str, str], start: pd.Timestamp) -> int:
    try:
        recorded = pd.Timestamp(int(float(fault["inject_timestamp"])), unit="s", tz="UTC")
    except (KeyError, ValueError):
        return 0
    return int(round((recorded - start).total_seconds() / 3600))


def load_nezha(data_dir: str | Path, options: NezhaOptions = NezhaOptions()) -> Telemetry:
    """Load every recorded day under ``data_dir`` as canonical metrics plus fault labels.

    Args:
        data_dir: One day folder, or a folder of day folders.
        options: Label window length and row grid.

    Returns:
        Telemetry with metrics (one row per pod per minute, gaps as NaN) and one label per fault.

    Raises:
        SchemaError: On a missing or malformed file, or a fault outside its pod's recording.
    """
    metrics, labels = [], []
    for day in day_folders(data_dir):
        files = sorted((day / "metric").glob("*_metric.csv"))
        if not files:
            raise SchemaError(f"nezha: {day / 'metric'} holds no *_metric.csv files")
        day_metrics = pd.concat(
            [_pod_metrics(f, options).assign(**{_SOURCE: f"{day.name}/{f.name}"}) for f in files],
            ignore_index=True,
        )
        metrics.append(day_metrics)
        labels.append(_labels(day, day_metrics, options))
    table = pd.concat(metrics, ignore_index=True).sort_values([TIMESTAMP, "pod"], kind="stable")
    clash = table.duplicated(subset=[TIMESTAMP, *ENTITY_KEYS], keep=False).to_numpy()
    if clash.any():
        first = table.loc[clash].iloc[0]
        same = table.loc[
            clash & (table["pod"] == first["pod"]).to_numpy() & (table[TIMESTAMP] == first[TIMESTAMP])
        ]
        raise SchemaError(
            f"nezha: pod '{first['pod']}' has samples at {first[TIMESTAMP]} in more than one file "
            f"({', '.join(same[_SOURCE])}; {int(clash.sum())} rows in all): is a day given twice, or a "
            "pod split over two files? Keep one copy"
        )
    table = table.drop(columns=_SOURCE).reset_index(drop=True)
    return Telemetry(metrics=table, labels=pd.concat(labels, ignore_index=True)).validate()


#: Column naming each row's file while the days are joined (dropped before validation).
_SOURCE = "__nezha_file"


# --------------------------------------------------------------------------- raw tables of one day
# The canonical schema keeps one latency percentile per pod and no call graph. The Nezha benchmark
# (aiops.nezha_bench) also reads the raw per-pod columns, the call graph and the per-edge latencies.


@dataclass(frozen=True)
class NezhaDayExtras:
    """The call-graph tables of one recorded day, on the minute grid (index: UTC ``timestamp``).

    Attributes:
        dependencies: Call-graph edges ``(caller, callee)`` between services, from
            ``metric/dependency.csv``; targets that are IP addresses (node endpoints) are dropped.
        edge_source: Per-edge median latency (s) measured at the caller's side, one column per edge
            named ``<caller>_<callee>`` (``metric/source_50.csv``); ``None`` when absent.
        edge_destination: The same edges measured at the callee's side (``destination_50.csv``).
        front_service: The entry service's success rate and latency percentiles
            (``front_service.csv``); ``None`` when absent.
    """

    dependencies: tuple[tuple[str, str], ...]
    edge_source: pd.DataFrame | None
    edge_destination: pd.DataFrame | None
    front_service: pd.DataFrame | None


def read_minutely_csv(path: Path, step: str = "1min", sampled_column: str | None = None) -> pd.DataFrame:
    """Read one Nezha CSV timed by a Go-style ``Time``/``time`` column onto its minute grid.

    Rows are floored to ``step`` (later duplicates win); the other columns are returned as they
    are (numeric columns as floats, text as objects), indexed by the UTC ``timestamp``. With
    ``sampled_column``, the row's own (unfloored) time is kept in a column of that name.

    Raises:
        SchemaError: When the file has no rows or no ``Time`` column, or its times do not parse
            (a few rows that do not are dropped, with a warning: :func:`_timed_rows`).
    """
    raw = pd.read_csv(path)
    column = next((c for c in ("Time", "time") if c in raw.columns), None)
    if column is None:
        raise SchemaError(f"nezha: {path.name} has no 'Time' column; got {list(raw.columns)[:6]} ...")
    if raw.empty:
        raise SchemaError(f"nezha: {path.name} holds no rows")
    raw, times = _timed_rows(raw, column, path)
    index = pd.DatetimeIndex(times.dt.floor(step), name=TIMESTAMP)
    table = raw.drop(columns=[column]).set_index(index)
    if sampled_column:
        table[sampled_column] = times.to_numpy()
    return table[~table.index.duplicated(keep="last")].sort_index()


def _is_address(name: str) -> bool:
    return all(part.isdigit() for part in name.split(".")) and name.count(".") == 3


def load_nezha_day_extras(day: str | Path, step: str = "1min") -> NezhaDayExtras:
    """Read the call graph and per-edge latencies of one day folder (each file is optional).

    Args:
        day: A day folder (holds ``metric/``).
        step: Grid the rows are floored to.

    Returns:
        The tables that exist; missing or empty files give an empty graph or ``None``.

    Raises:
        SchemaError: On a malformed file (missing columns, unparseable times).
    """
    metric = Path(day) / "metric"
    dependencies: list[tuple[str, str]] = []
    graph_file = metric / "dependency.csv"
    if graph_file.exists() and _holds_no_rows(graph_file):
        log.warning("nezha: %s holds no rows; the call graph is taken from the edge files alone", graph_file)
    elif graph_file.exists():
        graph = pd.read_csv(graph_file)
        missing = [c for c in ("Source", "Target") if c not in graph.columns]
        if missing:
            raise SchemaError(f"nezha: {graph_file} lacks column(s) {missing}; expected Source,Target,Weight")
        for caller, callee in zip(graph["Source"].astype(str), graph["Target"].astype(str), strict=True):
            if not _is_address(callee) and (caller, callee) not in dependencies:
                dependencies.append((caller, callee))

    def optional(name: str) -> pd.DataFrame | None:
        path = metric / name
        if not path.exists():
            return None
        if _holds_no_rows(path):  # as if absent: these files only add evidence
            log.warning("nezha: %s holds no rows; the day is read without it", path)
            return None
        table = read_minutely_csv(path, step)
        return table.drop(columns=[c for c in ("timestamp", "TimeStamp") if c in table.columns])

    return NezhaDayExtras(
        dependencies=tuple(dependencies),
        edge_source=optional("source_50.csv"),
        edge_destination=optional("destination_50.csv"),
        front_service=optional("front_service.csv"),
    )


def _holds_no_rows(path: Path) -> bool:
    """An empty file, or a header and nothing else."""
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip()) <= 1


def read_fault_list(day: str | Path) -> pd.DataFrame:
    """The injected faults of one day folder, timed by ``inject_time`` (UTC wall clock).

    Returns:
        One row per fault: ``pod``, ``start`` (UTC timestamp), ``fault_type``; sorted by ``start``.

    Raises:
        SchemaError: When the fault list (:func:`fault_list_path`) is missing or ambiguous, not JSON,
            lacks a field or has a bad time.
    """
    folder = Path(day)
    rows = []
    for fault in _faults(folder):
        try:
            start = pd.Timestamp(fault["inject_time"], tz="UTC")
        except (ValueError, TypeError) as exc:
            raise SchemaError(
                f"nezha: {folder.name}: cannot parse inject_time {fault['inject_time']!r}"
            ) from exc
        if pd.isna(start):  # "" and null parse to NaT without a word
            raise SchemaError(f"nezha: {folder.name}: a fault has no inject_time ({fault['inject_time']!r})")
        rows.append(
            {"pod": str(fault["inject_pod"]), "start": start, "fault_type": str(fault["inject_type"])}
        )
    table = pd.DataFrame(rows, columns=["pod", "start", "fault_type"])
    table["start"] = pd.to_datetime(table["start"], utc=True)
    return table.sort_values("start", kind="stable").reset_index(drop=True)
