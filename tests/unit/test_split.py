import pandas as pd
import pytest

from aiops.schema import SchemaError
from aiops.split import time_split
from tests.conftest import make_metrics


def test_parts_are_consecutive_in_time_and_cover_everything():
    df = make_metrics(n_steps=100, pods=("a", "b", "c"))
    parts = time_split(df, 0.2, 0.3)
    assert parts.train["timestamp"].max() < parts.validation["timestamp"].min()
    assert parts.validation["timestamp"].max() < parts.test["timestamp"].min()
    assert len(parts.train) + len(parts.validation) + len(parts.test) == len(df)
    assert parts.train["timestamp"].nunique() == 50
    assert parts.validation["timestamp"].nunique() == 20
    assert parts.test["timestamp"].nunique() == 30
    # every entity is cut at the same instant
    assert parts.test.groupby("pod")["timestamp"].min().nunique() == 1
    assert parts.test_start == parts.test["timestamp"].min()


def test_shuffled_input_gives_the_same_split():
    df = make_metrics(n_steps=50)
    a = time_split(df)
    b = time_split(df.sample(frac=1, random_state=3))
    assert a.test_start == b.test_start
    assert sorted(a.test.index) != [] and len(a.test) == len(b.test)


@pytest.mark.parametrize(("val", "test"), [(0, 0.2), (0.2, 1.0), (0.5, 0.45)])
def test_bad_fractions(val, test):
    with pytest.raises(ValueError):
        time_split(make_metrics(), val, test)


def test_too_short_for_min_rows():
    with pytest.raises(SchemaError, match="fewer than 100"):
        time_split(make_metrics(n_steps=10), min_rows=100)


@pytest.mark.parametrize("test_fraction", [0.04, 0.05])
def test_a_test_share_under_one_timestamp_is_a_schema_error(test_fraction):
    # 10 instants x 0.95 rounds to 10: the test part would start past the last instant.
    with pytest.raises(SchemaError, match="leave none for the test part"):
        time_split(make_metrics(n_steps=10), 0.3, test_fraction)


def test_a_row_without_a_timestamp_is_refused_not_dropped():
    df = make_metrics(n_steps=20)
    df.loc[3, "timestamp"] = pd.NaT
    with pytest.raises(SchemaError, match="1 row"):
        time_split(df)


@pytest.mark.parametrize("kind", ["text", "epoch seconds"])
def test_timestamps_that_are_not_datetimes_are_refused(kind):
    """Text sorts by its characters: month-first dates put December after January, and a split
    on them put later rows in training than in test."""
    df = make_metrics(n_steps=20, start="2025-12-27T00:00:00Z", step="8h")
    stamps = df["timestamp"]
    df["timestamp"] = (
        stamps.dt.strftime("%m/%d/%Y %H:%M") if kind == "text" else stamps.astype("int64") // 10**9
    )
    with pytest.raises(SchemaError, match="not datetimes; parse it first"):
        time_split(df)
