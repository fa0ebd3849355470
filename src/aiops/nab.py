"""The Numenta Anomaly Benchmark (NAB): corpus loading, the official scorer, results layout, runner.

A NAB folder holds ``data/<category>/<name>.csv`` (``timestamp,value``), ``combined_windows.json``
(``{"<category>/<name>.csv": [[start, end], ...]}``) and, optionally, ``profiles.json`` (the cost
matrices; NAB's published standard, reward_low_FP_rate and reward_low_FN_rate are built in). A
checkout of NAB's own repository works as it is: there the two files lie in ``labels/`` and
``config/``, where they are read when the folder's top level lacks them.

Scoring follows NAB's ``nab/scorer.py`` (the version that also writes the per-row ``S(t)`` columns
found in NAB's published results), reimplemented here:

* A detection is a row whose ``anomaly_score >= threshold``.
* The first ``min(floor(0.15 * rows), 0.15 * 5000)`` rows of each file (the probationary period)
  are not scored.
* A window covers the rows with ``start <= timestamp <= end``. Only its earliest scored detection
  counts: at relative position ``p = -(end_row - row + 1) / window_rows`` it earns
  ``A_TP * sigma(p) / sigma(-1)`` with ``sigma(p) = 2 / (1 + exp(5 p)) - 1``, i.e. exactly ``A_TP``
  at the window's first row. A window without a detection costs ``A_FN``.
* A detection outside every window is a false positive weighted by ``A_FP * sigma(p)`` with
  ``p = (row - end_row) / (window_rows - 1)`` of the closest preceding window (``-A_FP`` when no
  window precedes it, or when ``p > 3``).
* NAB's TP/TN/FP/FN columns count scored *rows* (in-window rows with or without an alarm, and so
  on), not windows; :class:`FileScore` reports both.
* A corpus score is ``100 * (raw - null) / (perfect - null)`` with ``null`` the score of a
  detector that never fires and ``perfect = windows * A_TP``, all summed over the same files.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PROBATION_PERCENT = 0.15
# NAB caps the probationary period at probationPercent * 5000 rows (750 rows at 15%).
PROBATION_CAP_ROWS = 5000
WINDOWS_FILE = "combined_windows.json"
PROFILES_FILE = "profiles.json"
RESULTS_COLUMNS = ("timestamp", "value", "anomaly_score", "label")
STANDARD = "standard"


class NabError(ValueError):
    """A NAB folder, windows file, profiles file or results file is not usable as given."""


@dataclass(frozen=True)
class CostMatrix:
    """NAB application-profile weights.

    Attributes:
        tp_weight: A_TP, the reward for a window detected at its first row.
        fp_weight: A_FP, the largest cost of one false-positive row.
        fn_weight: A_FN, the cost of a missed window.
        tn_weight: Present in NAB's profiles but unused by its scoring.

    """

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


STANDARD_PROFILES: Mapping[str, CostMatrix] = MappingProxyType(
    {
        "standard": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
        "reward_low_FP_rate": CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
        "reward_low_FN_rate": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
    }
)

Window = tuple[pd.Timestamp, pd.Timestamp]


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True, eq=False)
class NabFile:
    """One data file with its labelled windows.

    Attributes:
        name: Path relative to ``data/``, e.g. ``realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv``.
        timestamps: ``datetime64[ns]`` per row, non-decreasing.
        values: ``float64`` per row.
        windows: Labelled windows ``(start, end)``, inclusive, sorted and disjoint.

    """

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    windows: tuple[Window, ...]

    @property
    def category(self) -> str:
        """The folder under ``data/``, e.g. ``realAWSCloudwatch``."""
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return len(self.values)

    @property
    def probation(self) -> int:
        """Rows at the start of the file that are not scored."""
        return probation_length(self.n_rows)

    def window_bounds(self) -> list[tuple[int, int]]:
        """Inclusive row ranges ``(first, last)`` of the windows."""
        return window_bounds(self.timestamps, self.windows, self.name)

    def labels(self) -> np.ndarray:
        """Boolean per row: True inside a window (NAB's ``label`` column)."""
        return labels_from_bounds(self.n_rows, self.window_bounds())


@dataclass(frozen=True)
class NabCorpus:
    """A loaded NAB folder.

    Attributes:
        root: The folder holding ``data/`` and ``combined_windows.json``.
        files: The data files, sorted by name.
        profiles: Cost matrices by profile name.
        unlabelled: Data files the windows file has no entry for (not scored).

    """

    root: Path
    files: tuple[NabFile, ...]
    profiles: Mapping[str, CostMatrix]
    unlabelled: tuple[str, ...] = ()

    def file(self, name: str) -> NabFile:
        """Return the file called ``name`` (``<category>/<name>.csv``)."""
        for nab_file in self.files:
            if nab_file.name == name:
                return nab_file
        raise NabError(f"no data file '{name}' in {self.root / 'data'}")

    @property
    def n_windows(self) -> int:
        """Number of labelled windows over all files."""
        return sum(len(f.windows) for f in self.files)


def probation_length(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """Rows of NAB's probationary period: ``min(floor(p * rows), p * 5000)``.

    Args:
        n_rows: Rows in the file.
        probation_percent: NAB's ``probationaryPercent``.

    Returns:
        The number of leading rows that are not scored. NAB compares ``row < probation`` with
        a possibly fractional cap; the cap ``p * 5000`` is rounded up so the comparison is the same.

    """
    return int(min(math.floor(probation_percent * n_rows), math.ceil(probation_percent * PROBATION_CAP_ROWS)))


def load_profiles(path: Path | str | None = None) -> dict[str, CostMatrix]:
    """Read NAB's ``profiles.json``; without a path, return NAB's published profiles.

    Args:
        path: A file ``{"<profile>": {"CostMatrix": {"tpWeight": ..., "fpWeight": ...,
            "fnWeight": ..., "tnWeight": ...}}}``, or None.

    Returns:
        Cost matrices by profile name, in file order.

    Raises:
        NabError: The file is not valid JSON or misses a weight.

    """
    if path is None:
        return dict(STANDARD_PROFILES)
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise NabError(f"{path}: expected an object of profiles, e.g. {{'standard': {{'CostMatrix': ...}}}}")
    profiles: dict[str, CostMatrix] = {}
    for name, body in raw.items():
        matrix = body.get("CostMatrix") if isinstance(body, dict) else None
        if not isinstance(matrix, dict):
            raise NabError(f"{path}: profile '{name}' has no 'CostMatrix' object")
        try:
            profiles[name] = CostMatrix(
                tp_weight=float(matrix["tpWeight"]),
                fp_weight=float(matrix["fpWeight"]),
                fn_weight=float(matrix["fnWeight"]),
                tn_weight=float(matrix.get("tnWeight", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NabError(
                f"{path}: profile '{name}' needs numeric tpWeight, fpWeight and fnWeight ({exc!r})"
            ) from exc
    return profiles


def load_windows(path: Path | str) -> dict[str, tuple[Window, ...]]:
    """Read NAB's ``combined_windows.json``.

    Args:
        path: A file ``{"<category>/<name>.csv": [[start, end], ...]}``.

    Returns:
        Sorted windows by file name.

    Raises:
        NabError: The file is missing, not JSON, or holds a malformed, reversed or
            overlapping window.

    """
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise NabError(f"{path}: expected an object {{'<category>/<name>.csv': [[start, end], ...]}}")
    out: dict[str, tuple[Window, ...]] = {}
    for name, windows in raw.items():
        if not isinstance(windows, list):
            raise NabError(f"{path}: '{name}' must map to a list of [start, end] pairs")
        parsed = [_parse_window(path, name, w) for w in windows]
        parsed.sort(key=lambda w: w[0])
        for (_, end), (start, _) in zip(parsed, parsed[1:], strict=False):
            if start <= end:
                raise NabError(f"{path}: windows of '{name}' overlap ({start} <= {end}); merge them")
        out[name] = tuple(parsed)
    return out


def _parse_window(path: Path, name: str, window: Any) -> Window:
    if not (isinstance(window, list | tuple) and len(window) == 2):
        raise NabError(f"{path}: window {window!r} of '{name}' is not a [start, end] pair")
    try:
        start, end = pd.Timestamp(window[0]), pd.Timestamp(window[1])
    except (TypeError, ValueError) as exc:
        raise NabError(f"{path}: window {window!r} of '{name}' has an unreadable timestamp") from exc
    if pd.isna(start) or pd.isna(end):
        raise NabError(f"{path}: window {window!r} of '{name}' lacks its start or its end")
    if end < start:
        raise NabError(f"{path}: window {window!r} of '{name}' ends before it starts")
    return start, end


def _beside_or_in(root: Path, folder: str, name: str) -> Path:
    """``root/name``, else NAB's repository place for it, ``root/folder/name``, when only that exists."""
    top, nested = root / name, root / folder / name
    return nested if not top.is_file() and nested.is_file() else top


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise NabError(f"{path} not found; a NAB folder needs it (see NAB's labels/ and config/ folders)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NabError(f"{path} is not valid JSON: {exc}") from exc


def read_data_file(path: Path | str, name: str, windows: Sequence[Window]) -> NabFile:
    """Read one ``timestamp,value`` CSV.

    Args:
        path: The CSV file.
        name: Its name relative to ``data/`` (the key in ``combined_windows.json``).
        windows: Its labelled windows.

    Returns:
        The file with parsed timestamps and values.

    Raises:
        NabError: Missing columns, unreadable or decreasing timestamps, non-numeric or missing
            values, or a window without any row.

    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise NabError(f"{path}: not a readable CSV ({exc}); expected header 'timestamp,value'") from exc
    missing = [c for c in ("timestamp", "value") if c not in frame.columns]
    if missing:
        raise NabError(f"{path}: column(s) {missing} missing; found {list(frame.columns)}")
    if frame.empty:
        raise NabError(f"{path}: no rows")
    timestamps = _parse_timestamps(frame["timestamp"], path)
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise NabError(
            f"{path}: {int(bad.sum())} value(s) missing or not numeric (first at data row {row + 1}: "
            f"{frame['value'].iloc[row]!r}); NAB files need a number on every row"
        )
    nab_file = NabFile(name=name, timestamps=timestamps, values=values, windows=tuple(windows))
    nab_file.window_bounds()  # fail now, not while scoring, on windows outside the data
    return nab_file


def _parse_timestamps(column: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        # pandas would read 1393632000 as nanoseconds after 1970, and quietly merge the rows.
        raise NabError(
            f"{path}: the timestamps are numbers ({column.iloc[0]} first); NAB files hold date-times "
            "such as '2014-03-01 00:00:00'"
        )
    parsed = pd.to_datetime(column, errors="coerce")
    if parsed.isna().any():
        row = int(np.argmax(parsed.isna().to_numpy()))
        raise NabError(f"{path}: unreadable timestamp {column.iloc[row]!r} at data row {row + 1}")
    stamps = parsed.to_numpy(dtype="datetime64[ns]")
    # Repeated timestamps are allowed: NAB's own AWS files repeat rows at a DST change.
    backwards = np.diff(stamps) < np.timedelta64(0, "ns")
    if backwards.any():
        row = int(np.argmax(backwards)) + 1
        raise NabError(f"{path}: timestamps must not decrease; data row {row + 1} goes back in time")
    return stamps


def load_corpus(data_dir: Path | str, files: Iterable[str] | None = None) -> NabCorpus:
    """Load a NAB-layout folder.

    Args:
        data_dir: The folder holding ``data/``, ``combined_windows.json`` and optionally
            ``profiles.json``.
        files: Names (``<category>/<name>.csv``) to load; all data files when None.

    Returns:
        The corpus. Windows of files absent from ``data/`` are ignored (logged), so the full NAB
        windows file works with a subset of the data.

    Raises:
        NabError: The folder misses ``data/`` or ``combined_windows.json``, a data file has no
            windows entry (even an empty list), a requested file is absent, or a file is malformed.

    """
    root = Path(data_dir)
    data_root = root / "data"
    if not data_root.is_dir():
        raise NabError(f"{data_root} not found; a NAB folder holds data/<category>/<name>.csv")
    windows_path = _beside_or_in(root, "labels", WINDOWS_FILE)
    windows = load_windows(windows_path)
    profiles_path = _beside_or_in(root, "config", PROFILES_FILE)
    profiles = load_profiles(profiles_path if profiles_path.is_file() else None)

    available = sorted(
        p.relative_to(data_root).as_posix()
        for p in data_root.glob("*/*.csv")
        if not (p.name.startswith(".") or p.parent.name.startswith("."))  # e.g. macOS ._ files
    )
    if not available:
        raise NabError(f"{data_root} holds no <category>/<name>.csv files")
    names = available if files is None else list(dict.fromkeys(files))
    absent = sorted(set(names) - set(available))
    if absent:
        raise NabError(f"requested file(s) {absent} not under {data_root}")
    unlabelled = [n for n in names if n not in windows]
    if unlabelled and (files is not None or len(unlabelled) == len(names)):
        raise NabError(
            f"{windows_path} has no entry for {unlabelled}; add one per data file "
            "(an empty list [] when the file has no anomaly)"
        )
    if unlabelled:
        # As NAB's own labeller does: a file without labels cannot be scored; say so and go on.
        logger.warning(
            "%s has no entry for %d data file(s), which are not scored: %s",
            windows_path,
            len(unlabelled),
            unlabelled,
        )
        names = [n for n in names if n in windows]
    extra = sorted(set(windows) - set(available))
    if extra:
        # Normal with NAB's full windows file over a subset of its data; a misspelt name is not.
        logger.warning(
            "ignoring the windows of %d file(s) absent from %s (%s%s); expected when the folder holds "
            "part of NAB, else check the names",
            len(extra),
            data_root,
            ", ".join(extra[:3]),
            ", ..." if len(extra) > 3 else "",
        )
    loaded = tuple(read_data_file(data_root / n, n, windows[n]) for n in sorted(names))
    return NabCorpus(
        root=root, files=loaded, profiles=MappingProxyType(profiles), unlabelled=tuple(unlabelled)
    )


def window_bounds(timestamps: np.ndarray, windows: Sequence[Window], name: str = "") -> list[tuple[int, int]]:
    """Map timestamp windows to inclusive row ranges (rows with ``start <= t <= end``).

    Args:
        timestamps: Sorted ``datetime64[ns]`` per row.
        windows: Sorted, disjoint windows.
        name: File name for error messages.

    Returns:
        ``(first_row, last_row)`` per window.

    Raises:
        NabError: A window holds no row.

    """
    bounds = []
    for start, end in windows:
        first = int(np.searchsorted(timestamps, np.datetime64(start.to_datetime64(), "ns"), side="left"))
        last = int(np.searchsorted(timestamps, np.datetime64(end.to_datetime64(), "ns"), side="right")) - 1
        if last < first:
            raise NabError(f"window [{start}, {end}] of '{name}' contains no data row; fix the windows file")
        bounds.append((first, last))
    return bounds


def labels_from_bounds(n_rows: int, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Boolean per row, True inside any window."""
    labels = np.zeros(n_rows, dtype=bool)
    for first, last in bounds:
        labels[first : last + 1] = True
    return labels


# --------------------------------------------------------------------------- scoring


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's weighting ``2 / (1 + exp(5 p)) - 1``, with ``-1`` for ``p > 3``.

    ``p = -1`` is a window's first row (0.98661), ``p = 0`` its last (0), ``p > 0`` lies after it.
    """
    p = np.asarray(position, dtype=np.float64)
    # Clip only the exponent's argument: p <= 3 keeps exp() finite, and p > 3 is -1 anyway.
    weighted = 2.0 / (1.0 + np.exp(5.0 * np.minimum(p, 3.0))) - 1.0
    return np.where(p > 3.0, -1.0, weighted)


_MAX_TP = float(scaled_sigmoid(-1.0))


@dataclass(frozen=True)
class FileScore:
    """NAB score of one file under one profile.

    Attributes:
        file: ``<category>/<name>.csv``.
        profile: Profile name.
        threshold: Alarm threshold on ``anomaly_score``.
        score: Raw NAB score (the ``Score`` column of NAB's results, not normalised).
        tp: Scored rows inside windows with an alarm (NAB's row count).
        tn: Scored rows outside windows without an alarm.
        fp: Scored rows outside windows with an alarm.
        fn: Scored rows inside windows without an alarm.
        total: Rows in the file, probation included (NAB's ``Total_Count``).
        windows: Labelled windows.
        windows_detected: Windows with at least one scored alarm.

    """

    file: str
    profile: str
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int
    windows: int
    windows_detected: int

    def summary(self) -> dict[str, Any]:
        """The entry of the report's ``files`` list: file, score, tp, fp, fn."""
        return {"file": self.file, "score": self.score, "tp": self.tp, "fp": self.fp, "fn": self.fn}


def score_alarms(
    alarms: np.ndarray,
    bounds: Sequence[tuple[int, int]],
    cost: CostMatrix,
    probation: int,
) -> tuple[float, dict[str, int]]:
    """NAB score of boolean alarms on one file.

    Args:
        alarms: True where the detector fires, one per row.
        bounds: Inclusive row ranges of the windows, sorted and disjoint.
        cost: The profile's weights.
        probation: Leading rows that are not scored.

    Returns:
        ``(score, counts)`` with counts ``tp, tn, fp, fn`` (scored rows) and
        ``windows_detected``.

    """
    alarms = np.asarray(alarms, dtype=bool)
    n_rows = len(alarms)
    labels = labels_from_bounds(n_rows, bounds)
    scored = np.arange(n_rows) >= probation
    fired = alarms & scored
    counts = {
        "tp": int(np.sum(fired & labels)),
        "tn": int(np.sum(~alarms & ~labels & scored)),
        "fp": int(np.sum(fired & ~labels)),
        "fn": int(np.sum(~alarms & labels & scored)),
    }

    score, detected = 0.0, 0
    for first, last in bounds:
        hits = np.flatnonzero(fired[first : last + 1])
        if hits.size == 0:
            # NAB counts a window as missed even when it lies wholly in the probationary period.
            score -= cost.fn_weight
            continue
        detected += 1
        row = first + int(hits[0])
        position = -(last - row + 1) / (last - first + 1)
        score += float(scaled_sigmoid(position)) * cost.tp_weight / _MAX_TP
    counts["windows_detected"] = detected
    return score + _false_positive_score(np.flatnonzero(fired & ~labels), bounds, cost), counts


def _false_positive_score(fp_rows: np.ndarray, bounds: Sequence[tuple[int, int]], cost: CostMatrix) -> float:
    """Sum of FP weights, each by its distance after the closest preceding window."""
    if fp_rows.size == 0:
        return 0.0
    lasts = np.array([last for _, last in bounds], dtype=np.int64)
    widths = np.array([last - first + 1 for first, last in bounds], dtype=np.float64)
    # Index of the last window ending strictly before each FP row; -1 when none precedes it.
    preceding = np.searchsorted(lasts, fp_rows, side="left") - 1
    weights = np.full(fp_rows.size, -1.0)
    has_prev = preceding >= 0
    if has_prev.any():
        idx = preceding[has_prev]
        # NAB divides by (width - 1); a one-row window would divide by zero there, so use 1 instead.
        position = (fp_rows[has_prev] - lasts[idx]) / np.maximum(widths[idx] - 1.0, 1.0)
        weights[has_prev] = scaled_sigmoid(position)
    return float(np.sum(weights)) * cost.fp_weight


def score_file(
    nab_file: NabFile,
    anomaly_scores: np.ndarray,
    threshold: float,
    cost: CostMatrix,
    profile: str = STANDARD,
) -> FileScore:
    """Score a detector's ``anomaly_score`` column on one file, as NAB does.

    Args:
        nab_file: The data file with its windows.
        anomaly_scores: One score per row; a row is an alarm when ``score >= threshold``.
        threshold: The alarm threshold.
        cost: The profile's weights.
        profile: The profile's name, recorded in the result.

    Returns:
        The file's raw score and counts.

    Raises:
        NabError: The scores do not have one finite value per row.

    """
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != (nab_file.n_rows,):
        raise NabError(f"'{nab_file.name}': {scores.shape} anomaly scores for {nab_file.n_rows} rows")
    if not np.isfinite(scores).all():
        raise NabError(f"'{nab_file.name}': anomaly scores must be finite (found NaN or inf)")
    bounds = nab_file.window_bounds()
    raw, counts = score_alarms(scores >= threshold, bounds, cost, nab_file.probation)
    return FileScore(
        file=nab_file.name,
        profile=profile,
        threshold=float(threshold),
        score=raw,
        total=nab_file.n_rows,
        windows=len(bounds),
        **counts,
    )


def null_score(files: Iterable[NabFile], cost: CostMatrix) -> float:
    """Summed raw score of the detector that never fires (NAB's ``null`` baseline)."""
    return sum(
        score_alarms(np.zeros(f.n_rows, dtype=bool), f.window_bounds(), cost, f.probation)[0] for f in files
    )


def perfect_score(files: Iterable[NabFile], cost: CostMatrix) -> float:
    """NAB's perfect score: every window detected at its first row (windows * A_TP)."""
    return sum(len(f.windows) for f in files) * cost.tp_weight


def normalized_score(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``: 0 for the null detector, 100 for a perfect one.

    Raises:
        NabError: ``perfect == null`` (files without any window cannot be normalised).

    """
    if perfect == null:
        raise NabError("cannot normalise: the files have no window, so perfect and null scores are equal")
    return 100.0 * (raw - null) / (perfect - null)


def corpus_score(file_scores: Sequence[FileScore], files: Sequence[NabFile], cost: CostMatrix) -> float:
    """Normalised NAB score of a set of files under one profile.

    Args:
        file_scores: Per-file results of one detector and profile.
        files: The same files (for the null and perfect scores).
        cost: The profile's weights.

    Returns:
        The normalised score (100 perfect, 0 the null detector).

    Raises:
        NabError: The scores and files do not name the same files, or there is no window.

    """
    scored, given = sorted(s.file for s in file_scores), sorted(f.name for f in files)
    if scored != given:
        raise NabError(f"scores cover {scored} but the files are {given}; normalise over the same set")
    raw = sum(s.score for s in file_scores)
    return normalized_score(raw, null_score(files, cost), perfect_score(files, cost))


# --------------------------------------------------------------------------- results layout


def results_path(results_dir: Path | str, detector: str, name: str) -> Path:
    """NAB's results file of ``name`` for ``detector``: ``<dir>/<category>/<detector>_<file>``.

    Args:
        results_dir: The detector's folder (NAB's ``results/<detector>``).
        detector: Detector name, the file-name prefix.
        name: Data file name, ``<category>/<name>.csv``.

    """
    category, _, file_name = name.rpartition("/")
    return Path(results_dir) / category / f"{detector}_{file_name}"


def write_results(
    results_dir: Path | str, detector: str, nab_file: NabFile, anomaly_scores: np.ndarray
) -> Path:
    """Write one file's scores in NAB's results layout (readable by NAB's own scorer).

    Args:
        results_dir: The detector's folder (NAB's ``results/<detector>``).
        detector: Detector name, the file-name prefix.
        nab_file: The scored data file.
        anomaly_scores: One score per row.

    Returns:
        The written path, with columns ``timestamp,value,anomaly_score,label``.

    """
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != (nab_file.n_rows,):
        raise NabError(f"'{nab_file.name}': {scores.shape} anomaly scores for {nab_file.n_rows} rows")
    path = results_path(results_dir, detector, nab_file.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "timestamp": _stamps(nab_file.timestamps),
            "value": nab_file.values,
            "anomaly_score": scores,
            "label": nab_file.labels().astype(int),
        }
    )
    # repr-precision floats so that a read-back threshold comparison gives the same alarms.
    frame.to_csv(path, index=False, float_format="%.17g")
    return path


def _stamps(timestamps: np.ndarray) -> pd.Index:
    """NAB's timestamp text (``2014-02-19 10:50:00``), with the fraction where a row has one."""
    index = pd.DatetimeIndex(timestamps)
    whole = bool(((index.microsecond == 0) & (index.nanosecond == 0)).all())
    return index.strftime("%Y-%m-%d %H:%M:%S" if whole else "%Y-%m-%d %H:%M:%S.%f")


def read_results(path: Path | str, nab_file: NabFile | None = None) -> pd.DataFrame:
    """Read a NAB results file and check it against its data file.

    Args:
        path: A results CSV with at least ``timestamp`` and ``anomaly_score``.
        nab_file: When given, the rows must have the same timestamps.

    Returns:
        The frame with parsed timestamps.

    Raises:
        NabError: Missing columns, non-numeric scores, or rows that differ from the data file.

    """
    path = Path(path)
    try:
        # round_trip: the scores read back are the very floats written, so alarms do not move.
        frame = pd.read_csv(path, float_precision="round_trip")
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise NabError(f"{path}: cannot read results ({exc})") from exc
    missing = [c for c in ("timestamp", "anomaly_score") if c not in frame.columns]
    if missing:
        raise NabError(f"{path}: column(s) {missing} missing; NAB results need {list(RESULTS_COLUMNS)}")
    frame["timestamp"] = _parse_timestamps(frame["timestamp"], path)
    frame["anomaly_score"] = pd.to_numeric(frame["anomaly_score"], errors="coerce")
    if frame["anomaly_score"].isna().any():
        raise NabError(f"{path}: anomaly_score has missing or non-numeric values")
    if nab_file is not None:
        same = len(frame) == nab_file.n_rows and np.array_equal(
            frame["timestamp"].to_numpy(dtype="datetime64[ns]"), nab_file.timestamps
        )
        if not same:
            raise NabError(
                f"{path}: {len(frame)} rows whose timestamps differ from data/{nab_file.name} "
                f"({nab_file.n_rows} rows); results need one row per data row"
            )
    return frame


# --------------------------------------------------------------------------- runner


class StreamingDetector(Protocol):
    """An online, unsupervised detector, one fresh instance per file.

    ``fit`` sees only the file's probationary rows; ``score`` must be causal: the score of row
    ``i`` may depend on rows ``<= i`` only (online statistics may keep updating, as NAB allows).
    Scores are calibrated to ``[0, 1]`` and ``threshold`` is fixed a priori, the same for every
    file, never tuned on labels.
    """

    threshold: float

    def fit(self, values: np.ndarray, timestamps: np.ndarray) -> None:
        """Learn from the probationary rows only."""
        ...

    def score(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Return one causal anomaly score in ``[0, 1]`` per row of the whole file."""
        ...


DetectorFactory = Callable[[], StreamingDetector]


def detect_file(nab_file: NabFile, detector: StreamingDetector) -> np.ndarray:
    """Fit ``detector`` on the file's probationary rows and score every row.

    Raises:
        NabError: The detector returns the wrong number of scores or non-finite ones.

    """
    head = nab_file.probation
    detector.fit(nab_file.values[:head].copy(), nab_file.timestamps[:head].copy())
    scores = np.asarray(detector.score(nab_file.values.copy(), nab_file.timestamps.copy()), dtype=np.float64)
    if scores.shape != (nab_file.n_rows,) or not np.isfinite(scores).all():
        raise NabError(
            f"{type(detector).__name__} returned {scores.shape} scores for the {nab_file.n_rows} rows of "
            f"'{nab_file.name}'; it must return one finite score per row"
        )
    return scores


def run_nab(
    data_dir: Path | str,
    detector_factory: DetectorFactory,
    *,
    threshold: float | None = None,
    detector_name: str = "detector",
    results_dir: Path | str | None = None,
    files: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Run a streaming detector over a NAB folder and score it under every profile.

    Args:
        data_dir: The NAB folder (``data/``, ``combined_windows.json``, optional ``profiles.json``).
        detector_factory: Builds a fresh detector per file; it takes no argument, so nothing
            can be set per file.
        threshold: Alarm threshold for every file and profile; the detector's own ``threshold``
            when None.
        detector_name: Name in the report and in results file names.
        results_dir: When given, writes NAB's results layout into it:
            ``<results_dir>/<category>/<detector_name>_<name>.csv``.
        files: Restrict to these ``<category>/<name>.csv``; all files when None.

    Returns:
        The report of :func:`score_corpus`, plus ``detector``, ``detect_seconds`` (time spent
        in the detector over all files) and ``unlabelled`` (data files without windows, not scored).

    Raises:
        NabError: The folder is broken, the detector's output is malformed, or the detectors
            built for different files disagree on the threshold.

    """
    corpus = load_corpus(data_dir, files)
    scores: dict[str, np.ndarray] = {}
    thresholds: set[float] = set()
    started = time.perf_counter()
    for nab_file in corpus.files:
        detector = detector_factory()
        thresholds.add(float(detector.threshold if threshold is None else threshold))
        scores[nab_file.name] = detect_file(nab_file, detector)
        if results_dir is not None:
            write_results(Path(results_dir), detector_name, nab_file, scores[nab_file.name])
    elapsed = time.perf_counter() - started
    if len(thresholds) != 1:
        raise NabError(
            f"the detectors built for the files have thresholds {sorted(thresholds)}; NAB needs one "
            "threshold for every file (pass threshold=... or fix the factory)"
        )
    report = score_corpus(corpus, scores, thresholds.pop())
    return {
        **report,
        "detector": detector_name,
        "detect_seconds": elapsed,
        "unlabelled": list(corpus.unlabelled),
    }


def score_results(
    data_dir: Path | str,
    results_dir: Path | str,
    threshold: float | Mapping[str, float],
    *,
    detector: str | None = None,
    files: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Score another detector's outputs in NAB's results layout with this scorer.

    Args:
        data_dir: The NAB folder.
        results_dir: The detector's folder (NAB's ``results/<detector>``) holding
            ``<category>/<detector>_<name>.csv``.
        threshold: One threshold, or one per profile (NAB optimises one per profile).
        detector: File-name prefix; when None, read off the files present
            (``<prefix>_<name>.csv``), else the folder's name.
        files: Data files to score; all files that have a results file when None.

    Returns:
        The report of :func:`score_corpus` over the scored files, plus ``detector``,
        ``missing`` (data files without a results file, not scored) and ``unlabelled`` (data
        files without windows, not scored).

    Raises:
        NabError: A requested file has no results file, or no file has one.

    """
    results_dir = Path(results_dir)
    corpus = load_corpus(data_dir, files)
    detector = detector or _infer_prefix(results_dir, corpus) or results_dir.name
    scores: dict[str, np.ndarray] = {}
    missing = []
    for nab_file in corpus.files:
        path = results_path(results_dir, detector, nab_file.name)
        if not path.is_file():
            missing.append(nab_file.name)
            continue
        scores[nab_file.name] = read_results(path, nab_file)["anomaly_score"].to_numpy(dtype=np.float64)
    if files is not None and missing:
        raise NabError(f"no results file for {missing} under {results_dir} (expected {detector}_<name>.csv)")
    if not scores:
        raise NabError(f"no results files '<category>/{detector}_<name>.csv' under {results_dir}")
    if missing:
        logger.warning(
            "%d data file(s) have no results file '<category>/%s_<name>.csv' under %s and are not scored: %s",
            len(missing),
            detector,
            results_dir,
            missing,
        )
    scored = NabCorpus(corpus.root, tuple(f for f in corpus.files if f.name in scores), corpus.profiles)
    return {
        **score_corpus(scored, scores, threshold),
        "detector": detector,
        "missing": missing,
        "unlabelled": list(corpus.unlabelled),
    }


def _infer_prefix(results_dir: Path, corpus: NabCorpus) -> str | None:
    """Return the ``<prefix>`` of the ``<category>/<prefix>_<name>.csv`` files found for the corpus.

    Raises:
        NabError: When the folder holds the outputs of several detectors (prefixes).
    """
    by_category: dict[str, list[str]] = {}
    for nab_file in corpus.files:
        category, _, file_name = nab_file.name.rpartition("/")
        by_category.setdefault(category, []).append(file_name)
    found: set[str] = set()
    for category, names in by_category.items():
        paths = {
            path.name
            for name in names
            for path in (results_dir / category).glob(f"*_{glob.escape(name)}")
            if not path.name.startswith(".")  # e.g. macOS ._ files beside the results
        }
        for output in paths:
            # The longest data file name it ends with: det_a_x.csv is det's output for a_x.csv,
            # not det_a's for x.csv.
            name = max((n for n in names if output.endswith(f"_{n}")), key=len)
            found.add(output[: -len(name) - 1])
    if len(found) > 1:
        raise NabError(
            f"{results_dir} holds the outputs of several detectors ({', '.join(sorted(found))}); "
            "name the one to score (--detector)"
        )
    return found.pop() if found else None


def score_corpus(
    corpus: NabCorpus,
    anomaly_scores: Mapping[str, np.ndarray],
    threshold: float | Mapping[str, float],
) -> dict[str, Any]:
    """Score every file of ``corpus`` under every profile and build the JSON-able report.

    Args:
        corpus: The files to score (all of them need scores).
        anomaly_scores: Scores per file name.
        threshold: One threshold, or one per profile.

    Returns:
        ``{"profiles": {name: {"score", "threshold"}}, "files": [{"file", "score", "tp", "fp",
        "fn"}], "files_profile", "categories": {category: {profile: score or None}},
        "categories_raw": {category: {profile: raw}}, "raw": {profile: {"raw", "null",
        "perfect"}}, "details": {profile: [FileScore dicts]}}``. ``files`` lists the standard
        profile (the first profile when there is no ``standard``); profile and category scores
        are normalised, None where the files hold no window (``categories_raw`` then still
        shows the false-positive cost).

    """
    thresholds = _thresholds_by_profile(threshold, corpus.profiles)
    unscored = [f.name for f in corpus.files if f.name not in anomaly_scores]
    if unscored:
        raise NabError(f"no anomaly scores for {unscored}")
    results = {
        profile: [
            score_file(f, anomaly_scores[f.name], thresholds[profile], cost, profile) for f in corpus.files
        ]
        for profile, cost in corpus.profiles.items()
    }
    totals = {p: _totals(results[p], corpus.files, corpus.profiles[p]) for p in corpus.profiles}
    by_category: dict[str, list[NabFile]] = {}
    for nab_file in corpus.files:
        by_category.setdefault(nab_file.category, []).append(nab_file)
    category_totals = {
        category: {p: _totals(results[p], members, corpus.profiles[p]) for p in corpus.profiles}
        for category, members in by_category.items()
    }
    files_profile = STANDARD if STANDARD in corpus.profiles else next(iter(corpus.profiles))
    return {
        "profiles": {
            p: {"score": totals[p]["normalized"], "threshold": thresholds[p]} for p in corpus.profiles
        },
        "files": [r.summary() for r in results[files_profile]],
        "files_profile": files_profile,
        "categories": {c: {p: t[p]["normalized"] for p in t} for c, t in category_totals.items()},
        "categories_raw": {c: {p: t[p]["raw"] for p in t} for c, t in category_totals.items()},
        "raw": {p: {k: totals[p][k] for k in ("raw", "null", "perfect")} for p in corpus.profiles},
        "details": {p: [asdict(r) for r in results[p]] for p in corpus.profiles},
    }


def _totals(
    results: Sequence[FileScore], files: Sequence[NabFile], cost: CostMatrix
) -> dict[str, float | None]:
    """Raw, null, perfect and normalised scores of ``files`` (None where they hold no window)."""
    names = {f.name for f in files}
    raw = sum(r.score for r in results if r.file in names)
    null, perfect = null_score(files, cost), perfect_score(files, cost)
    normalized = None if perfect == null else normalized_score(raw, null, perfect)
    return {"raw": raw, "null": null, "perfect": perfect, "normalized": normalized}


def _thresholds_by_profile(
    threshold: float | Mapping[str, float], profiles: Mapping[str, CostMatrix]
) -> dict[str, float]:
    if isinstance(threshold, Mapping):
        absent = [p for p in profiles if p not in threshold]
        if absent:
            raise NabError(f"no threshold for profile(s) {absent}; give one per profile or a single number")
        return {p: float(threshold[p]) for p in profiles}
    return dict.fromkeys(profiles, float(threshold))
