"""Log lines into templates (Drain3), levels and classes, and per-window log features.

* :func:`parse_level` reads a line's level the way a person would: a JSON
  ``level``/``severity`` field, a klog prefix (``E0105 10:00:00.000000``), the head
  line of an exception (``KeyError: ...``, ``java.lang.NullPointerException: ...``,
  ``Caused by: ...``), a logfmt ``level=`` outside quoted values, a level name as the
  first word after an optional time (``<time> warn ...``, ``error: ...``), an upper-case
  level word near the start (``ERROR``, ``[WARN]``, ``FATAL:``), nginx's ``[error]``;
  failing all that, error or warning words anywhere in the line; else ``INFO``. Levels
  are normalised to :data:`LEVELS`.
* :class:`LogTemplateMiner` mines templates with Drain3 (IBM's streaming
  implementation of the Drain parser) after masking IPs, UUIDs, hex ids,
  durations and numbers. Its state persists between runs in one file, so a
  template that appears for the first time (*never seen*) can be told from a
  known one: Drain numbers clusters in creation order, so a line is never
  seen exactly when its cluster id is above the last id of the loaded state.
* :func:`classify_lines` flags error, panic, out-of-memory and
  connection-refused lines; :func:`log_features` counts them per entity and
  step window, with the share of lines whose template was never seen.

The state file is a jsonpickle document, which can run code when loaded:
only load state files this module wrote.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zlib
from binascii import Error as BinasciiError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from drain3 import TemplateMiner
from drain3.file_persistence import FilePersistence
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP, SchemaError, window_end

_LOG = logging.getLogger(__name__)

LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
"""Normalised log levels, least to most severe."""

_LEVEL_NAMES: dict[str, str] = {
    **dict.fromkeys(("trace", "debug", "dbg", "verbose"), "DEBUG"),
    **dict.fromkeys(("info", "information", "informational", "notice", "inf"), "INFO"),
    **dict.fromkeys(("warn", "warning", "wrn"), "WARN"),
    **dict.fromkeys(("error", "err", "eror", "severe"), "ERROR"),
    **dict.fromkeys(("fatal", "critical", "crit", "panic", "dpanic", "emerg", "emergency", "alert"), "FATAL"),
}
# bunyan/pino numeric levels.
_NUMERIC_LEVELS = ((60, "FATAL"), (50, "ERROR"), (40, "WARN"), (30, "INFO"), (0, "DEBUG"))
_JSON_LEVEL_KEYS = ("level", "lvl", "severity", "log.level", "levelname", "loglevel", "@l", "status")
# Only these keys may hold a number (bunyan/pino): a numeric "status" is an HTTP code, and a
# numeric syslog "severity" counts the other way round.
_JSON_NUMERIC_LEVEL_KEYS = frozenset({"level", "lvl"})
_KLOG = re.compile(r"^([IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d+\s")
_KLOG_LEVELS = {"I": "INFO", "W": "WARN", "E": "ERROR", "F": "FATAL"}
# A logfmt pair outside quoted values: parse_level blanks the quoted values (_QUOTED) first.
_LOGFMT = re.compile(r"(?:^|\s)(?:level|lvl|severity)=\"?([A-Za-z]+)", re.IGNORECASE)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# The head line of an exception: Python's "KeyError: ...", Java's "java.lang.NullPointerException: ...",
# "Caused by: ...", 'Exception in thread "main" ...'. Class names are CamelCase, which \b-words miss.
_EXCEPTION_HEAD = re.compile(
    r'^(?:Caused by: |Exception in thread "[^"]*" )?'
    r"(?:[A-Za-z_$][\w$]*\.)*[A-Z][\w$]*(?:Error|Exception)(?::|$)"
)
# Upper-case only: a lower-case "error" is as likely to be part of the message.
_LEVEL_WORD = re.compile(
    r"(?<![A-Za-z0-9_])(TRACE|DEBUG|INFO|NOTICE|WARNING|WARN|ERROR|ERR|SEVERE|FATAL|CRITICAL|CRIT|PANIC)"
    r"(?![A-Za-z0-9_])"
)
_BRACKETED = re.compile(
    r"\[(debug|info|notice|warn|warning|error|crit|critical|alert|emerg)\]", re.IGNORECASE
)
_LEADING_TIME = re.compile(
    r"^\[?\d{4}[-/]\d{2}[-/]\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?(?:\s+UTC)?\s+"
)
_LEVEL_WORD_WINDOW = 80  # characters from the start where a level word counts as the level
_ERROR_WORDS = re.compile(
    r"\b(error|errors|exception|traceback|fatal|panic|failed|failure|refused|denied|segfault|"
    r"out of memory|oom)\b",
    re.IGNORECASE,
)
_WARN_WORDS = re.compile(
    r"\b(warn|warning|retry|retrying|deprecated|timeout|timed out|slow)\b", re.IGNORECASE
)


def _normalise_level(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # bunyan/pino levels are 10-60; a negative or non-finite number is no level at all (an
        # int is finite however large: math.isfinite would overflow converting it to a float).
        if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
            return None
        return next(name for floor, name in _NUMERIC_LEVELS if value >= floor)
    if isinstance(value, str):
        return _LEVEL_NAMES.get(value.strip().lower())
    return None


def _json_level(line: str) -> str | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    if not isinstance(record, dict):
        return None
    for key in _JSON_LEVEL_KEYS:
        value = record.get(key)
        if isinstance(value, int | float) and key not in _JSON_NUMERIC_LEVEL_KEYS:
            continue
        level = _normalise_level(value)
        if level is not None:
            return level
    nested = record.get("log")
    if isinstance(nested, dict):
        return _normalise_level(nested.get("level"))
    return None


def parse_level(message: str) -> str:
    """Guess a log line's level (one of :data:`LEVELS`); see the module docstring for the rules."""
    line = message.strip()
    if line.startswith("{"):
        level = _json_level(line)
        if level is not None:
            return level
    klog = _KLOG.match(line)
    if klog:
        return _KLOG_LEVELS[klog.group(1)]
    if _EXCEPTION_HEAD.match(line):
        return "ERROR"
    logfmt = _LOGFMT.search(_QUOTED.sub('""', line)) if "=" in line else None
    if logfmt:
        level = _normalise_level(logfmt.group(1))
        if level is not None:
            return level
    first = _LEADING_TIME.sub("", line, count=1).split(None, 1)
    if first:  # "<time>\twarn\t..." (zap's console format), "error: ...", "panic: ..."
        level = _LEVEL_NAMES.get(first[0].strip("[]():|,").lower())
        if level is not None:
            return level
    head = line[:_LEVEL_WORD_WINDOW]
    word = _LEVEL_WORD.search(head) or _BRACKETED.search(head)
    if word:
        level = _normalise_level(word.group(1))
        if level is not None:
            return level
    if _ERROR_WORDS.search(line):
        return "ERROR"
    if _WARN_WORDS.search(line):
        return "WARN"
    return "INFO"


# --------------------------------------------------------------------------- classes

LOG_CLASSES: tuple[str, ...] = ("error", "panic", "oom", "conn_refused")
"""Line classes; a line may have several (a Go panic is also an error)."""

_CLASS_PATTERNS: dict[str, re.Pattern[str]] = {
    "panic": re.compile(
        r"\bpanic(?::|\(| in\b)|\bpanicked at\b|goroutine \d+ \[running\]|"
        r"traceback \(most recent call last\)|"
        r"\bsegmentation (?:fault|violation)\b|\bSIGSEGV\b|unhandled exception|uncaught exception|"
        r"core dumped|fatal error:",
        re.IGNORECASE,
    ),
    "oom": re.compile(
        r"out of memory|\bOOM(?:Kill(?:ed|ing)?)?\b|OutOfMemoryError|\bMemoryError\b|cannot allocate memory|"
        r"\bbad_alloc\b|memory cgroup out of memory|JavaScript heap out of memory",
        re.IGNORECASE,
    ),
    "conn_refused": re.compile(
        r"connection refused|ECONNREFUSED|actively refused|os error 111|errno 111", re.IGNORECASE
    ),
}
_ERROR_LEVELS = frozenset({"ERROR", "FATAL"})


def classify_lines(messages: pd.Series, levels: pd.Series | None = None) -> pd.DataFrame:
    """Flag each line with the classes of :data:`LOG_CLASSES`.

    ``panic``, ``oom`` and ``conn_refused`` come from the message text (case-insensitive). A line
    is an ``error`` when its level is ERROR or FATAL, or it is a panic or an out-of-memory line.

    Args:
        messages: Log messages.
        levels: Their levels (:data:`LEVELS`); parsed with :func:`parse_level` when ``None``.

    Returns:
        Boolean columns ``is_error``, ``is_panic``, ``is_oom``, ``is_conn_refused``, aligned with
        ``messages``.

    """
    text = messages.fillna("").astype(str)
    if levels is None:
        levels = text.map(parse_level)
    flags = {f"is_{name}": text.str.contains(pattern) for name, pattern in _CLASS_PATTERNS.items()}
    level_error = levels.fillna("").astype(str).str.upper().isin(_ERROR_LEVELS).to_numpy()
    error = level_error | flags["is_panic"].to_numpy() | flags["is_oom"].to_numpy()
    return pd.DataFrame(
        {"is_error": error, **{k: v.to_numpy(dtype=bool) for k, v in flags.items()}}, index=messages.index
    )


# --------------------------------------------------------------------------- templates

DEFAULT_MASKING: tuple[tuple[str, str], ...] = (
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "UUID"),
    (r"((?<=[^A-Za-z0-9])|^)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(:\d{1,5})?((?=[^A-Za-z0-9])|$)", "IP"),
    (r"((?<=[^A-Za-z0-9])|^)(0x[a-fA-F0-9]+)((?=[^A-Za-z0-9])|$)", "HEX"),
    (r"((?<=[^A-Za-z0-9])|^)([0-9a-f]{16,})((?=[^A-Za-z0-9])|$)", "ID"),
    (r"((?<=[^A-Za-z0-9])|^)(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))((?=[^A-Za-z0-9])|$)", "DURATION"),
    (r"((?<=[^A-Za-z0-9])|^)([\-\+]?\d+(\.\d+)?)((?=[^A-Za-z0-9])|$)", "NUM"),
)
"""Drain3 masking, applied in order: ``(regex, mask name)``; a match becomes ``<NAME>``."""


@dataclass(frozen=True)
class TemplateConfig:
    """Drain3 settings. Changing them makes an existing state file mine differently: start a new one.

    Attributes:
        sim_th: Similarity (share of equal tokens) below which a line starts a new template.
        depth: Depth of Drain's prefix tree (at least 3).
        max_children: Most children of a tree node.
        max_clusters: Most templates kept (least recently used ones are dropped, and count as
            never seen when they come back); ``None`` keeps all.
        masking: ``(regex, mask name)`` pairs applied before mining.

    """

    sim_th: float = 0.4
    depth: int = 4
    max_children: int = 100
    max_clusters: int | None = None
    masking: tuple[tuple[str, str], ...] = DEFAULT_MASKING

    def drain3(self) -> TemplateMinerConfig:
        """The equivalent ``drain3`` configuration."""
        config = TemplateMinerConfig()
        config.drain_sim_th = self.sim_th
        config.drain_depth = self.depth
        config.drain_max_children = self.max_children
        config.drain_max_clusters = self.max_clusters
        config.masking_instructions = [MaskingInstruction(p, name) for p, name in self.masking]
        config.snapshot_compress_state = True
        return config


class TemplateStateError(ValueError):
    """Raised when a Drain3 state file cannot be read back."""


class _AtomicFilePersistence(FilePersistence):
    """drain3's FilePersistence, but a crash mid-write cannot leave a truncated state behind."""

    def save_state(self, state: bytes) -> None:
        path = Path(self.file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(state)
        os.replace(tmp, path)


MINED_COLUMNS: tuple[str, ...] = (
    "template_id",
    "template",
    "new_template",
    "is_error",
    "is_panic",
    "is_oom",
    "is_conn_refused",
)
"""Columns :meth:`LogTemplateMiner.mine` adds to a logs table."""


class LogTemplateMiner:
    """Drain3 template mining whose state persists in one file between runs.

    Args:
        state_path: File holding the state (read when it exists, written by :meth:`save`);
            ``None`` mines in memory only, so every template is new.
        config: Drain3 settings (default :class:`TemplateConfig`).

    Raises:
        TemplateStateError: When the state file exists but cannot be read.

    """

    def __init__(self, state_path: str | Path | None = None, config: TemplateConfig | None = None):
        self.state_path = Path(state_path) if state_path is not None else None
        self.config = config if config is not None else TemplateConfig()
        persistence = _AtomicFilePersistence(str(self.state_path)) if self.state_path is not None else None
        try:
            self._miner = TemplateMiner(persistence, self.config.drain3())
        except (ValueError, TypeError, KeyError, AttributeError, zlib.error, BinasciiError) as exc:
            raise TemplateStateError(
                f"Drain3 state file {self.state_path} cannot be read ({type(exc).__name__}: {exc}); "
                f"delete it to start afresh (every template then counts as never seen once)"
            ) from exc
        self.known_clusters = int(self._miner.drain.clusters_counter)
        """Highest template id in the loaded state; ids above it were first created in this run."""

    def add(self, message: str) -> int:
        """Mine one line; return its template id."""
        # drain3's TemplateMiner.add_log_message would write the whole state to the file after each
        # new or changed template; masking and mining directly, then saving once, keeps a run linear.
        cluster, _ = self._miner.drain.add_log_message(self._miner.masker.mask(message))
        return int(cluster.cluster_id)

    def is_new(self, template_id: int) -> bool:
        """Whether the template did not exist in the loaded state."""
        return template_id > self.known_clusters

    def template(self, template_id: int) -> str:
        """The template's current text (``''`` when dropped by ``max_clusters``)."""
        cluster = self._miner.drain.id_to_cluster.get(template_id)
        return str(cluster.get_template()) if cluster is not None else ""

    def templates(self) -> pd.DataFrame:
        """Every known template: ``template_id``, ``template``, ``size`` (lines mined), ``new``."""
        clusters = list(self._miner.drain.clusters)
        return pd.DataFrame(
            {
                "template_id": pd.Series([c.cluster_id for c in clusters], dtype=np.int64),
                "template": pd.Series([c.get_template() for c in clusters], dtype=object),
                "size": pd.Series([c.size for c in clusters], dtype=np.int64),
                "new": pd.Series([self.is_new(c.cluster_id) for c in clusters], dtype=bool),
            }
        ).sort_values("template_id", ignore_index=True)

    def mine(self, logs: pd.DataFrame) -> pd.DataFrame:
        """Mine a logs table in time order and add :data:`MINED_COLUMNS`.

        Args:
            logs: Logs table with a ``message`` column; ``timestamp`` (mining order) and
                ``level`` (else parsed) are used when present.

        Returns:
            A copy of ``logs``, same row order, plus ``template_id`` (int64), ``template`` (its text
            at the end of the run), ``new_template`` (first created in this run) and the class
            flags of :func:`classify_lines`.

        Raises:
            SchemaError: When ``message`` is missing.

        """
        if "message" not in logs.columns:
            raise SchemaError(f"logs: column 'message' missing (got {list(logs.columns)})")
        out = logs.copy()
        messages = out["message"].fillna("").astype(str)
        order = np.arange(len(out))
        if TIMESTAMP in out.columns:  # Drain is order-dependent: mine as the lines were written
            order = np.argsort(out[TIMESTAMP].to_numpy(dtype="datetime64[ns]"), kind="stable")
        ids = np.empty(len(out), dtype=np.int64)
        values = messages.to_numpy()
        for i in order:
            ids[i] = self.add(values[i])
        texts = {int(t): self.template(int(t)) for t in np.unique(ids)}
        out["template_id"] = ids
        out["template"] = pd.Series([texts[int(t)] for t in ids], index=out.index, dtype=object)
        out["new_template"] = ids > self.known_clusters
        levels = out["level"] if "level" in out.columns else None
        flags = classify_lines(messages, levels)
        for column in flags.columns:
            out[column] = flags[column]
        return out

    def save(self) -> Path | None:
        """Write the state to ``state_path`` (atomically); return the path, or ``None`` without one."""
        if self.state_path is None:
            return None
        self._miner.save_state("end of run")
        return self.state_path


# --------------------------------------------------------------------------- features

LOG_FEATURES: tuple[str, ...] = (
    "logs_total",
    "logs_error",
    "logs_panic",
    "logs_oom",
    "logs_conn_refused",
    "logs_new_template",
    "logs_new_template_ratio",
)
"""Columns of :func:`log_features`, in order: line counts, and the share of never-seen-template lines."""


def log_features(mined: pd.DataFrame, step: str = "1min") -> pd.DataFrame:
    """Count mined lines per entity and step window.

    Args:
        mined: Output of :meth:`LogTemplateMiner.mine` on a canonical logs table.
        step: Window length, a pandas timedelta string; use the metrics' step.

    Returns:
        ``timestamp`` (window end, right-closed as in :func:`aiops.schema.window_end`), the
        entity keys and the float64 :data:`LOG_FEATURES`: lines, error/panic/OOM/
        connection-refused lines, lines of never-seen templates and their share of the lines.
        One row per window and entity with at least one line; a pod's containers are summed.

    Raises:
        SchemaError: When a column is missing (run :meth:`LogTemplateMiner.mine` first).

    """
    needed = [*KEY_COLUMNS, "new_template", "is_error", "is_panic", "is_oom", "is_conn_refused"]
    missing = [c for c in needed if c not in mined.columns]
    if missing:
        raise SchemaError(
            f"logs: column(s) {missing} missing; pass the output of LogTemplateMiner.mine (got "
            f"{list(mined.columns)})"
        )
    counts = pd.DataFrame(
        {
            "logs_total": np.ones(len(mined)),
            "logs_error": mined["is_error"].to_numpy(dtype=np.float64),
            "logs_panic": mined["is_panic"].to_numpy(dtype=np.float64),
            "logs_oom": mined["is_oom"].to_numpy(dtype=np.float64),
            "logs_conn_refused": mined["is_conn_refused"].to_numpy(dtype=np.float64),
            "logs_new_template": mined["new_template"].to_numpy(dtype=np.float64),
        }
    )
    counts[TIMESTAMP] = window_end(mined[TIMESTAMP], step).to_numpy()
    for key in ENTITY_KEYS:
        counts[key] = mined[key].fillna("").astype(str).to_numpy()
    sums = [c for c in LOG_FEATURES if c != "logs_new_template_ratio"]
    grouped = counts.groupby(list(KEY_COLUMNS), sort=True, as_index=False)[sums].sum()
    grouped["logs_new_template_ratio"] = grouped["logs_new_template"] / grouped["logs_total"]
    grouped[TIMESTAMP] = grouped[TIMESTAMP].astype("datetime64[ns, UTC]")
    return grouped[[*KEY_COLUMNS, *LOG_FEATURES]].astype(dict.fromkeys(LOG_FEATURES, np.float64))


def log_template_features(
    logs: pd.DataFrame,
    state_path: str | Path | None,
    step: str = "1min",
    config: TemplateConfig | None = None,
) -> pd.DataFrame:
    """Load the template state, mine ``logs``, save the state and return :func:`log_features`.

    Args:
        logs: Canonical logs table (:data:`aiops.schema.LOG_COLUMNS`).
        state_path: Drain3 state file carried from run to run (``None``: in memory only).
        step: Window length.
        config: Drain3 settings (default :class:`TemplateConfig`).

    Returns:
        The per-window log features.

    """
    miner = LogTemplateMiner(state_path, config)
    mined = miner.mine(logs)
    saved = miner.save()
    templates = miner.templates()
    _LOG.info(
        "mined %d line(s) into %d template(s), %d never seen before%s",
        len(mined),
        len(templates),
        int(templates["new"].sum()),
        f"; state saved to {saved}" if saved else "",
    )
    return log_features(mined, step)
