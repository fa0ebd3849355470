"""aiops.feature_store without Feast: dataset versions, lineage and the row-local transform."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops import feature_store as fs
from aiops.features import FEATURE_VERSION, FeatureConfig, build_features
from aiops.schema import KEY_COLUMNS, SchemaError
from aiops.telemetry import content_hash
from tests.conftest import make_metrics


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / fs.DEFAULT_YAML).write_text("project: aiops\n")
    return tmp_path


@pytest.fixture
def features() -> pd.DataFrame:
    metrics = make_metrics(n_steps=12)
    metrics["cpu_limit_cores"] = 1.0
    return build_features(metrics)


def test_importing_the_module_does_not_import_feast():
    # In a fresh interpreter: other tests of the session may have imported Feast already.
    check = "import sys, aiops.feature_store; sys.exit('feast' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


def test_write_dataset_is_content_addressed_and_binds_the_source(repo, features):
    version = fs.write_dataset(features, repo, config=FeatureConfig(windows=(5, 30)))

    assert (
        version.path
        == f"data/datasets/{fs.METRIC_VIEW}/v{FEATURE_VERSION}-{version.content_hash[:16]}.parquet"
    )
    assert version.rows == len(features) and version.entities == 2
    assert version.features == tuple(c for c in features.columns if c not in KEY_COLUMNS)
    assert version.start == features["timestamp"].min().isoformat()
    assert version.feature_config["windows"] == [5, 30]
    stored = pd.read_parquet(repo / version.path)
    assert content_hash(stored) == version.content_hash
    assert json.loads((repo / fs.MANIFEST).read_text()) == {fs.METRIC_VIEW: version.path}
    assert fs.bound_datasets(repo) == {fs.METRIC_VIEW: version}


def test_same_content_in_another_order_is_the_same_version(repo, features):
    first = fs.write_dataset(features, repo)
    again = fs.write_dataset(features.sample(frac=1.0, random_state=0), repo)
    assert again == first
    assert len(list((repo / fs.DATASETS_DIR / fs.METRIC_VIEW).glob("*.parquet"))) == 1


def test_new_content_is_a_new_version_and_rebinds(repo, features):
    first = fs.write_dataset(features, repo)
    changed = features.copy()
    changed.loc[0, "cpu_usage_cores"] += 1.0
    second = fs.write_dataset(changed, repo)
    assert second.content_hash != first.content_hash
    assert (repo / first.path).is_file() and (repo / second.path).is_file()
    assert fs.read_manifest(repo)[fs.METRIC_VIEW] == second.path


def test_lineage_tags(repo, features):
    version = fs.write_dataset(features, repo)
    tags = version.as_tags()
    assert tags[f"feast.{fs.METRIC_VIEW}.hash"] == version.content_hash
    assert tags[f"feast.{fs.METRIC_VIEW}.rows"] == str(len(features))
    assert fs.DatasetVersion.from_json(version.to_json()) == version


def test_count_sources_take_only_their_prefix(repo, features):
    counts = features[list(KEY_COLUMNS)].assign(events_backoff=0.0, events_warning=1.0)
    version = fs.write_dataset(counts, repo, fs.EVENT_VIEW)
    assert version.features == ("events_backoff", "events_warning")
    assert version.feature_config == {}
    with pytest.raises(fs.FeatureStoreError, match="do not start with 'logs_'"):
        fs.write_dataset(counts, repo, fs.LOG_VIEW)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="pod"), r"key column\(s\) \['pod'\] missing"),
        (lambda f: f.assign(timestamp=f["timestamp"].dt.tz_localize(None)), "timezone-aware UTC"),
        (lambda f: f.iloc[:0], "is empty"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "1 duplicate"),
        (lambda f: f.assign(cpu_usage_cores="x"), "not numeric"),
        (lambda f: f[list(KEY_COLUMNS)], "no feature columns"),
    ],
)
def test_write_dataset_rejects_bad_tables(repo, features, mutate, message):
    with pytest.raises(fs.FeatureStoreError, match=message):
        fs.write_dataset(mutate(features), repo)
    assert not (repo / fs.MANIFEST).exists()


def test_write_dataset_needs_a_feature_repository(tmp_path, features):
    with pytest.raises(fs.FeatureStoreError, match="not a Feast repository"):
        fs.write_dataset(features, tmp_path)
    with pytest.raises(fs.FeatureStoreError, match="unknown source 'nope'"):
        fs.write_dataset(features, tmp_path, "nope")


def test_a_bound_dataset_that_vanished_is_named(repo, features):
    version = fs.write_dataset(features, repo)
    (repo / version.path).unlink()
    with pytest.raises(fs.FeatureStoreError, match="is missing from"):
        fs.bound_datasets(repo)


def test_unbind_dataset(repo, features):
    fs.write_dataset(features, repo)
    fs.unbind_dataset(repo, fs.METRIC_VIEW)
    assert fs.read_manifest(repo) == {}


def test_row_local_features_equal_the_signal_columns_of_build_features():
    metrics = make_metrics(n_steps=15, pods=("a", "b", "c"), seed=3)
    metrics["cpu_limit_cores"] = np.where(metrics["pod"] == "b", 0.0, 2.0)  # zero limit: undefined
    metrics["memory_working_set_bytes"] = 1e8 + np.arange(len(metrics))
    metrics["memory_limit_bytes"] = np.where(metrics["pod"] == "c", np.nan, 4e8)
    metrics = metrics.sample(frac=1.0, random_state=1)  # any row order; the result follows the input's

    local = fs.row_local_features(metrics)
    full = build_features(metrics)

    expected = metrics[list(KEY_COLUMNS)].merge(full, on=list(KEY_COLUMNS), how="left")
    expected.index = metrics.index
    pd.testing.assert_frame_equal(local, expected[list(local.columns)])
    assert list(local.columns) == [
        "cpu_usage_cores",
        "memory_working_set_bytes",
        "request_rate",
        "cpu_utilisation",
        "memory_utilisation",
    ]
    assert local.loc[metrics["pod"] == "b", "cpu_utilisation"].isna().all()


def test_live_utilisation_is_the_odfv_transform():
    sample = pd.DataFrame(
        {
            "cpu_usage_cores": [0.5, 1.0, 0.2],
            "cpu_limit_cores": [2.0, 0.0, 1.0],
            "memory_working_set_bytes": [1.0, 2.0, np.nan],
            "memory_limit_bytes": [4.0, 4.0, 4.0],
        },
        index=[7, 8, 9],
    )
    out = fs.live_utilisation(sample)
    assert list(out.columns) == list(fs.LIVE_OUTPUTS)
    assert list(out.index) == [7, 8, 9]
    np.testing.assert_allclose(out["live_cpu_utilisation"], [0.25, np.nan, 0.2])
    np.testing.assert_allclose(out["live_memory_utilisation"], [0.25, 0.5, np.nan])
    assert fs.live_utilisation(sample.iloc[:0]).empty


def test_row_local_features_need_a_metric():
    with pytest.raises(SchemaError, match="no canonical metric"):
        fs.row_local_features(pd.DataFrame({"x": [1.0]}))


def test_service_names_follow_the_transform_version():
    assert f"anomaly_detector_v{FEATURE_VERSION}" == fs.ANOMALY_DETECTOR_SERVICE


def test_entity_frame(features):
    frame = fs.entity_frame(features)
    assert list(frame.columns) == list(KEY_COLUMNS)
    with pytest.raises(SchemaError, match="label"):
        fs.entity_frame(features, extra=["label"])


def test_default_repo_path(monkeypatch, tmp_path):
    monkeypatch.delenv(fs.REPO_ENV, raising=False)
    assert (fs.default_repo_path() / "definitions.py").is_file()  # the checkout's feature_repo/
    monkeypatch.setenv(fs.REPO_ENV, str(tmp_path))
    assert fs.default_repo_path() == tmp_path
