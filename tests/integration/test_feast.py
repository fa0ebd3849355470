"""The Feast repository in feature_repo/, applied into temporary copies through aiops.feature_store.

Embedded configuration (file registry, SQLite online store) for most tests; the production
configuration (SQL registry, Redis online store) against a real ``redis-server`` that the module
starts on 127.0.0.1. Feast is imported once for the module (it takes seconds), and the applied
repositories are shared by the tests that only read them.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops import feature_store as fs
from aiops.features import FEATURE_VERSION, FeatureConfig, build_features, contract_for
from aiops.localprom import free_port
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS
from tests.conftest import make_metrics, need_binary

pytestmark = pytest.mark.integration

FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def copy_repo(dest: Path) -> Path:
    """The project's feature repository without its data (registry, online store, datasets)."""
    shutil.copytree(FEATURE_REPO, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return dest


@dataclass(frozen=True)
class Applied:
    repo: Path
    features: pd.DataFrame
    version: fs.DatasetVersion
    applied: fs.AppliedRepo


@pytest.fixture(scope="module")
def metric_features() -> pd.DataFrame:
    metrics = make_metrics(n_steps=40, pods=("api-1", "api-2", "api-3"), seed=5)
    metrics["cpu_limit_cores"] = np.where(metrics["pod"] == "api-3", 0.0, 2.0)  # api-3: no limit
    return build_features(metrics)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, metric_features) -> Applied:
    """The repository applied with a metric dataset and an event-count dataset bound."""
    repo = copy_repo(tmp_path_factory.mktemp("feast") / "feature_repo")
    version = fs.write_dataset(metric_features, repo)
    events = metric_features[list(KEY_COLUMNS)].assign(
        events_backoff=0.0, events_warning=(metric_features["pod"] == "api-2").astype(float)
    )
    fs.write_dataset(events, repo, fs.EVENT_VIEW)
    return Applied(repo, metric_features, version, fs.apply_repo(repo))


def latest_rows(features: pd.DataFrame) -> pd.DataFrame:
    return features.sort_values("timestamp").groupby(list(ENTITY_KEYS), sort=True).tail(1)


def test_apply_registers_entities_views_and_services(embedded):
    store = fs.open_store(embedded.repo)
    assert {e.name for e in store.list_entities()} >= {"cluster", "namespace", "pod", "node"}
    assert set(embedded.applied.feature_views) == {fs.METRIC_VIEW, fs.EVENT_VIEW, fs.LOG_VIEW, fs.LIVE_VIEW}
    assert set(embedded.applied.feature_services) == {
        fs.ANOMALY_DETECTOR_SERVICE,
        fs.CONTEXT_SERVICE,
        fs.LIVE_SERVICE,
    }
    view = store.get_feature_view(fs.METRIC_VIEW)
    assert view.batch_source.path == embedded.version.path
    assert view.batch_source.tags["content_hash"] == embedded.version.content_hash
    assert fs.apply_repo(embedded.repo).deleted == ()  # applying again changes nothing


def test_anomaly_detector_service_is_the_model_contract(embedded):
    contract = contract_for(embedded.features)
    assert fs.feature_service_features(embedded.repo) == list(contract.feature_names)
    service = fs.open_store(embedded.repo).get_feature_service(fs.ANOMALY_DETECTOR_SERVICE)
    assert service.name == f"anomaly_detector_v{FEATURE_VERSION}"
    assert service.tags["transform_version"] == contract.transform_version
    assert service.tags["n_features"] == str(len(contract.feature_names))
    fs.check_contract(embedded.repo, contract)
    fewer = contract_for(embedded.features.drop(columns="request_rate__lag_1"))
    with pytest.raises(fs.FeatureStoreError, match=r"does not match.*extra \['request_rate__lag_1'\]"):
        fs.check_contract(embedded.repo, fewer)
    # the same names built at another step length are other features (rates and slopes)
    other_step = contract_for(embedded.features, FeatureConfig(step_seconds=30.0))
    with pytest.raises(fs.FeatureStoreError, match="step_seconds.*: 60.0.*the model was trained"):
        fs.check_contract(embedded.repo, other_step)


@pytest.mark.parametrize("engine", fs.ENGINES)
def test_training_frame_reproduces_build_features(embedded, engine):
    shuffled = embedded.features.sample(frac=1.0, random_state=0).reset_index(drop=True)
    entity_df = fs.entity_frame(shuffled).assign(label=1)
    training = fs.training_frame(embedded.repo, entity_df, engine=engine)

    pd.testing.assert_frame_equal(
        training.frame[list(shuffled.columns)], shuffled
    )  # in the entity frame's order
    assert training.frame["label"].eq(1).all()  # other entity-frame columns pass through
    assert training.rows == len(shuffled) and training.rows_without_features == 0
    tags = training.as_tags()
    assert tags["feast.feature_service"] == fs.ANOMALY_DETECTOR_SERVICE
    assert tags["feast.feature_service_version"] == FEATURE_VERSION
    assert tags[f"feast.{fs.METRIC_VIEW}.hash"] == embedded.version.content_hash


def test_point_in_time_join_never_leaks_a_later_value(tmp_path):
    repo = copy_repo(tmp_path / "feature_repo")
    keys = {"cluster": "c1", "namespace": "shop", "node": "node-0"}

    def dataset(p1_at_2min: float) -> pd.DataFrame:
        rows = [("p1", 0, 1.0), ("p1", 2, p1_at_2min), ("p1", 5, 3.0), ("p2", 10, 7.0)]
        return pd.DataFrame(
            [
                {"timestamp": T0 + pd.Timedelta(minutes=m), **keys, "pod": p, "cpu_usage_cores": v}
                for p, m, v in rows
            ]
        )

    fs.write_dataset(dataset(2.0), repo)
    fs.apply_repo(repo)
    asked = [
        ("p1", "-1min", np.nan),  # before the first value
        ("p1", "0min", 1.0),  # the same instant counts
        ("p1", "1min", 1.0),  # not 2.0, which is only known at 2 min
        ("p1", "3min", 2.0),
        ("p1", "4min59s", 2.0),  # not 3.0, known at 5 min
        ("p1", "5min", 3.0),
        ("p1", "125min", np.nan),  # the latest value is older than the view's TTL (1 h)
        ("p2", "9min", np.nan),  # p2's only value lies in the future
        ("p2", "10min", 7.0),
    ]
    entity_df = pd.DataFrame(
        [
            {"timestamp": T0 + pd.Timedelta(at), **keys, "pod": p, "row": i}
            for i, (p, at, _) in enumerate(asked)
        ]
    )

    expected = [v for *_, v in asked]
    entity_df = pd.concat([entity_df, entity_df.iloc[[2, 4]]], ignore_index=True)  # repeated rows too
    expected += [expected[2], expected[4]]
    for engine in fs.ENGINES:
        got = fs.training_frame(repo, entity_df, engine=engine).frame
        assert got["row"].tolist() == entity_df["row"].tolist()
        np.testing.assert_array_equal(got["cpu_usage_cores"].to_numpy(), expected, err_msg=engine)

    # A new dataset version is read only once it is applied, and it rewrites only what it changed.
    fs.write_dataset(dataset(20.0), repo)
    with pytest.raises(fs.FeatureStoreError, match="run aiops.feature_store.apply_repo first"):
        fs.training_frame(repo, entity_df)
    # nor would the online store get the old dataset's values in its place
    with pytest.raises(fs.FeatureStoreError, match="run aiops.feature_store.apply_repo first"):
        fs.materialize(repo, T0, T0 + pd.Timedelta("1h"), views=[fs.METRIC_VIEW])
    fs.apply_repo(repo)
    got = fs.training_frame(repo, entity_df).frame
    assert got["cpu_usage_cores"].tolist()[2:5] == [1.0, 20.0, 20.0]


def test_materialize_then_online_lookup_equals_the_latest_offline_values(embedded):
    features = embedded.features
    views = fs.materialize(embedded.repo, features["timestamp"].min(), features["timestamp"].max())
    assert views == sorted([fs.EVENT_VIEW, fs.METRIC_VIEW])

    latest = latest_rows(features).reset_index(drop=True)
    now = features["timestamp"].max() + pd.Timedelta("1min")
    online = fs.online_features(embedded.repo, latest[list(ENTITY_KEYS)], now=now)
    pd.testing.assert_frame_equal(online, latest.drop(columns="timestamp"))
    # an older window would roll the online rows back (SQLite overwrites, whatever the time)
    with pytest.raises(fs.FeatureStoreError, match="an older window would replace newer online values"):
        fs.materialize(
            embedded.repo, features["timestamp"].min(), features["timestamp"].min() + pd.Timedelta("2min")
        )
    pd.testing.assert_frame_equal(
        fs.online_features(embedded.repo, latest[list(ENTITY_KEYS)], now=now), online
    )
    # Values older than their view's TTL (1 h for metrics, 5 min for counts) are not current:
    # Feast's SQLite store returns them anyway, the adapter blanks them as the offline join does.
    keys = latest[list(ENTITY_KEYS)]
    context = fs.online_features(embedded.repo, keys, fs.CONTEXT_SERVICE, now=now)
    counts = [c for c in context.columns if c.startswith("events_")]
    assert counts and context[counts].notna().all().all()
    later = fs.online_features(embedded.repo, keys, fs.CONTEXT_SERVICE, now=now + pd.Timedelta("30min"))
    assert later[counts].isna().all().all()
    gone = fs.online_features(embedded.repo, keys, now=now + pd.Timedelta("2h"))
    assert gone.drop(columns=list(ENTITY_KEYS)).isna().all().all()


def test_live_view_runs_the_shared_transform_online_and_offline(embedded):
    sample = {"cpu_usage_cores": 0.5, "cpu_limit_cores": 2.0, "memory_working_set_bytes": 3.0}
    rows = [
        {
            "cluster": "c1",
            "namespace": "shop",
            "pod": "api-1",
            "node": "node-0",
            **sample,
            "memory_limit_bytes": 4.0,
        },
        {
            "cluster": "c1",
            "namespace": "shop",
            "pod": "api-3",
            "node": "node-0",
            **sample,
            "memory_limit_bytes": 0.0,
        },
    ]
    online = fs.online_features(embedded.repo, rows, fs.LIVE_SERVICE)
    np.testing.assert_allclose(online["live_cpu_utilisation"], [0.25, 0.25])
    np.testing.assert_allclose(online["live_memory_utilisation"], [0.75, np.nan])

    # Offline, the same function runs on the frame itself: the view has no history to join.
    offline = fs.live_utilisation(pd.DataFrame(rows)[list(fs.LIVE_INPUTS)])
    pd.testing.assert_frame_equal(offline, online[list(fs.LIVE_OUTPUTS)])
    with pytest.raises(fs.FeatureStoreError, match="only on-demand views.*use online_features"):
        fs.training_frame(embedded.repo, pd.DataFrame(rows).assign(timestamp=T0), fs.LIVE_SERVICE)


def test_clear_errors(embedded):
    entity_df = fs.entity_frame(embedded.features)
    with pytest.raises(fs.FeatureStoreError, match=r"unknown feature service 'nope'.*anomaly_detector_v\d+"):
        fs.training_frame(embedded.repo, entity_df, "nope")
    with pytest.raises(fs.FeatureStoreError, match="unknown feature service 'nope'"):
        fs.online_features(embedded.repo, entity_df, "nope")
    with pytest.raises(fs.FeatureStoreError, match=f"'{fs.LOG_VIEW}'.*has no dataset.*write_dataset"):
        fs.training_frame(embedded.repo, entity_df, fs.CONTEXT_SERVICE)
    with pytest.raises(fs.FeatureStoreError, match=r"column\(s\) \['node'\] missing"):
        fs.training_frame(embedded.repo, entity_df.drop(columns="node"))
    with pytest.raises(fs.FeatureStoreError, match="no time zone"):
        fs.materialize(embedded.repo, "2026-01-05", "2026-01-06")
    with pytest.raises(fs.FeatureStoreError, match=f"{fs.LOG_VIEW}.*no dataset"):
        fs.materialize(embedded.repo, T0, T0 + pd.Timedelta("1h"), views=[fs.LOG_VIEW])
    with pytest.raises(fs.FeatureStoreError, match="does not exist"):
        fs.open_store(embedded.repo, "missing.yaml")
    with pytest.raises(fs.FeatureStoreError, match="unknown engine 'spark'"):
        fs.training_frame(embedded.repo, entity_df, engine="spark")


# --------------------------------------------------------------------------- production configuration


def _need_redis_client() -> None:
    try:
        import redis  # noqa: F401
    except ImportError:
        import os

        message = "the redis Python client is not installed (Feast's redis extra)"
        if os.environ.get("AIOPS_CI"):
            pytest.fail(f"{message}; pyproject.toml must pin it")
        pytest.skip(message)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    """A redis-server of its own on 127.0.0.1, without persistence, stopped after the module."""
    binary = need_binary("redis-server", "redis-server")
    _need_redis_client()
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with (workdir / "redis.log").open("w") as log:
        proc = subprocess.Popen([*command, "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_production_config_with_redis_online_store_and_sql_registry(
    embedded, redis_port, tmp_path, monkeypatch
):
    registry_db = tmp_path / "registry.db"
    monkeypatch.setenv("FEAST_REGISTRY_URL", f"sqlite:///{registry_db}")
    monkeypatch.setenv("FEAST_REDIS_CONNECTION", f"127.0.0.1:{redis_port},db=0")
    production = "feature_store.production.yaml"

    applied = fs.apply_repo(embedded.repo, fs_yaml=production)
    assert fs.ANOMALY_DETECTOR_SERVICE in applied.feature_services
    features = embedded.features
    fs.materialize(
        embedded.repo, features["timestamp"].min(), features["timestamp"].max(), fs_yaml=production
    )

    latest = latest_rows(features).reset_index(drop=True)
    now = features["timestamp"].max() + pd.Timedelta("1min")
    online = fs.online_features(embedded.repo, latest[list(ENTITY_KEYS)], fs_yaml=production, now=now)
    pd.testing.assert_frame_equal(online, latest.drop(columns="timestamp"))

    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_port)
    assert client.dbsize() > 0
    # the values came from Redis, not from the embedded SQLite online store other tests filled:
    # once Redis is empty, the production read finds nothing
    client.flushdb()
    # read at the same instant as above, when the values were fresh: only their absence empties it
    emptied = fs.online_features(embedded.repo, latest[list(ENTITY_KEYS)], fs_yaml=production, now=now)
    assert emptied.drop(columns=list(ENTITY_KEYS)).isna().all().all()
    with sqlite3.connect(registry_db) as db:
        services = {name for (name,) in db.execute("SELECT feature_service_name FROM feature_services")}
    assert fs.ANOMALY_DETECTOR_SERVICE in services
    assert fs.feature_service_features(embedded.repo, fs_yaml=production) == list(
        contract_for(features).feature_names
    )
