"""A bundle of the four canonical tables, stored as Parquet files in one folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aiops.schema import (
    ENTITY_KEYS,
    EVENT_COLUMNS,
    LOG_COLUMNS,
    TIMESTAMP,
    SchemaError,
    empty_labels,
    label_masks,
    validate_labels,
    validate_metrics,
)

_TABLES = ("metrics", "labels", "events", "logs")


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    frame[TIMESTAMP] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def empty_events() -> pd.DataFrame:
    """Return an event table with no rows."""
    return _empty(EVENT_COLUMNS)


def empty_logs() -> pd.DataFrame:
    """Return a log table with no rows."""
    return _empty(LOG_COLUMNS)


@dataclass
class Telemetry:
    """Metrics plus the labels, events and logs that go with them."""

    metrics: pd.DataFrame
    labels: pd.DataFrame = field(default_factory=empty_labels)
    events: pd.DataFrame = field(default_factory=empty_events)
    logs: pd.DataFrame = field(default_factory=empty_logs)

    def validate(self) -> Telemetry:
        """Validate metrics and labels, and that every label covers metrics rows; return self.

        A label that covers no row (an entity the metrics do not have, a window outside their
        time range: names or time zones that do not line up) would train and score as if the
        anomaly never happened.

        Raises:
            SchemaError: On a table that breaks the schema, or a label that covers no row.
        """
        validate_metrics(self.metrics)
        validate_labels(self.labels)
        for label, mask in label_masks(self.metrics, self.labels):
            if not mask.any():
                entity = label["pod"] or f"node {label['node']}"
                raise SchemaError(
                    f"labels: the {label['anomaly_type']} label on {label['namespace']}/{entity} from "
                    f"{label['start']} to {label['end']} covers no metrics row; the metrics have no such "
                    "entity at that time (entity names or time zones that do not line up?)"
                )
        return self

    def lineage_hash(self) -> str:
        """A SHA-256 of the dataset for lineage: all four tables, each in a canonical row order.

        Unlike :func:`content_hash` of one table it does not depend on the order rows arrived in,
        and it changes when only the labels (or events, or logs) do.
        """
        digest = hashlib.sha256()
        for name in _TABLES:
            table = getattr(self, name)
            keys = [*ENTITY_KEYS, TIMESTAMP] if name == "metrics" else list(table.columns)
            ordered = table.sort_values(keys, kind="stable", ignore_index=True) if len(table) else table
            digest.update(f"{name}:{content_hash(ordered)}".encode())
        return digest.hexdigest()

    def save(self, folder: str | Path) -> Path:
        """Write each table as ``<folder>/<table>.parquet``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name in _TABLES:
            getattr(self, name).to_parquet(out / f"{name}.parquet", index=False)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Telemetry:
        """Read a folder written by :meth:`save`; missing side tables are empty.

        Raises:
            SchemaError: When ``metrics.parquet`` is absent.

        """
        root = Path(folder)
        metrics_path = root / "metrics.parquet"
        if not metrics_path.exists():
            raise SchemaError(f"no metrics.parquet in {root}; expected a folder written by Telemetry.save")
        tables = {
            name: pd.read_parquet(root / f"{name}.parquet")
            for name in _TABLES
            if (root / f"{name}.parquet").exists()
        }
        return cls(**tables)

    @property
    def n_entities(self) -> int:
        """Number of distinct (cluster, namespace, pod, node) entities."""
        return int(self.metrics.groupby(list(ENTITY_KEYS)).ngroups)


def content_hash(df: pd.DataFrame) -> str:
    """Return a SHA-256 over a table's columns, dtypes and values (order-sensitive)."""
    digest = hashlib.sha256()
    digest.update(",".join(f"{c}:{t}" for c, t in df.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()
