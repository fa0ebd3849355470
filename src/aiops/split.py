"""Time-ordered train/validation/test splits.

Time series are never split at random: a random split lets the model see the
future of the very periods it is tested on. Every entity is cut at the same
instants, so no row of one split is later than any row of the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from aiops.schema import TIMESTAMP, SchemaError


@dataclass(frozen=True)
class TimeSplit:
    """The three parts of a split and the instants that separate them."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_start: pd.Timestamp
    test_start: pd.Timestamp


def time_split(
    frame: pd.DataFrame,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    min_rows: int = 1,
) -> TimeSplit:
    """Split ``frame`` into consecutive time ranges.

    Cut points are taken on the sorted distinct timestamps, so each part covers
    the stated share of the time span whatever the number of entities.

    Args:
        frame: Any table with a ``timestamp`` column.
        validation_fraction: Share of distinct timestamps for validation.
        test_fraction: Share of distinct timestamps for test (the latest).
        min_rows: Minimum rows each part must hold.

    Raises:
        ValueError: When the fractions do not leave room for training.
        SchemaError: When ``timestamp`` does not hold datetimes, a row has none, or a part would
            be smaller than ``min_rows``.

    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must lie in (0, 1)")
    if validation_fraction + test_fraction >= 0.9:
        raise ValueError(
            f"validation ({validation_fraction}) + test ({test_fraction}) leave under 10% for training"
        )
    if TIMESTAMP not in frame.columns:
        raise SchemaError(f"split: column '{TIMESTAMP}' missing")
    if not pd.api.types.is_datetime64_any_dtype(frame[TIMESTAMP]):
        # Text sorts by its characters and numbers by their value, neither by time: a split on
        # them can put later rows in training than in test.
        raise SchemaError(
            f"split: column '{TIMESTAMP}' holds {frame[TIMESTAMP].dtype}, not datetimes; parse it "
            f"first (pd.to_datetime(..., utc=True)) so that the parts are cut in time order"
        )
    missing = int(frame[TIMESTAMP].isna().sum())
    if missing:
        raise SchemaError(f"split: {missing} row(s) without a timestamp would fall in no part")
    instants = pd.Series(frame[TIMESTAMP].unique()).sort_values().reset_index(drop=True)
    n = len(instants)
    if n < 3:
        raise SchemaError(f"split: need at least 3 distinct timestamps, got {n}")
    val_idx = int(round(n * (1 - validation_fraction - test_fraction)))
    test_idx = int(round(n * (1 - test_fraction)))
    if test_idx >= n:
        raise SchemaError(
            f"split: {n} distinct timestamps leave none for the test part at test_fraction "
            f"{test_fraction}; ingest a longer time range"
        )
    val_start, test_start = instants.iloc[val_idx], instants.iloc[test_idx]

    ts = frame[TIMESTAMP]
    parts = {
        "train": frame[ts < val_start],
        "validation": frame[(ts >= val_start) & (ts < test_start)],
        "test": frame[ts >= test_start],
    }
    for name, part in parts.items():
        if len(part) < min_rows:
            raise SchemaError(
                f"split: the {name} part holds {len(part)} rows, fewer than {min_rows}; "
                f"ingest a longer time range"
            )
    return TimeSplit(
        **{k: v.reset_index(drop=True) for k, v in parts.items()},
        validation_start=pd.Timestamp(val_start),
        test_start=pd.Timestamp(test_start),
    )
