"""``entities`` requests answered from a real Feast online store (SQLite, the embedded configuration).

The served ensemble's feature table is bound as the metric dataset of a copy of ``feature_repo/``,
applied and materialized; the predictor then reads the latest row of each entity online.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from aiops.schema import ENTITY_KEYS
from serving.errors import ModelLoadError
from tests.serving.conftest import instances

pytestmark = pytest.mark.slow

FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
NAME = "detector"


@pytest.fixture(scope="module")
def online_repo(trained, tmp_path_factory) -> Path:
    from aiops import feature_store as fs

    repo = tmp_path_factory.mktemp("feast") / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    fs.write_dataset(trained.features, repo, config=trained.bundle.contract.config)
    fs.apply_repo(repo)
    fs.materialize(repo, trained.features["timestamp"].min(), trained.features["timestamp"].max())
    return repo


def _lookup(trained, repo, **kw):
    """A lookup whose clock stands a minute after the stored data (the views' TTLs count back from it)."""
    from serving.online import FeastLookup

    after = trained.features["timestamp"].max() + pd.Timedelta("1min")
    return FeastLookup(repo, clock=lambda: after, **kw)


def _service(trained, lookup):
    from serving.service import ScoringService

    return ScoringService.from_uri(
        str(trained.bundle_dir), NAME, feature_lookup=lookup, registry=CollectorRegistry()
    )


def test_entities_are_scored_on_their_latest_online_features(trained, online_repo):
    service = _service(trained, _lookup(trained, online_repo))
    latest = trained.features.sort_values("timestamp").groupby(list(ENTITY_KEYS)).tail(1)
    latest = latest[latest["timestamp"] == latest["timestamp"].max()].head(2)  # pods still running
    keys = [{k: row[k] for k in ENTITY_KEYS} for row in latest.to_dict("records")]
    online = service.predict_v1({"entities": keys})["predictions"]
    offline = service.predict_v1({"instances": instances(latest)})["predictions"]
    assert [p["pod"] for p in online] == [p["pod"] for p in offline]
    # The forest reads no time: the same features give the same member score. (The forecaster
    # scores the request's minute, so its numbers differ from the stored rows' instants.)
    np.testing.assert_allclose(
        [p["detectors"]["isolation_forest"]["raw"] for p in online],
        [p["detectors"]["isolation_forest"]["raw"] for p in offline],
    )


def test_unknown_entities_and_missing_keys_are_client_errors(trained, online_repo):
    from serving.errors import RequestError
    from serving.online import FeastLookup

    service = _service(trained, _lookup(trained, online_repo))
    row = trained.features.iloc[-1]
    known = {k: row[k] for k in ENTITY_KEYS}
    with pytest.raises(RequestError, match="no features in the online store"):
        service.predict_v1({"entities": [known, {**known, "pod": "no-such-pod"}]})
    with pytest.raises(RequestError, match="entity keys"):
        service.predict_v1({"entities": [{"pod": known["pod"]}]})
    # a day later every stored value is older than its view's TTL: none is scored as current
    later = trained.features["timestamp"].max() + pd.Timedelta("1D")
    stale = _service(trained, FeastLookup(online_repo, clock=lambda: later))
    with pytest.raises(RequestError, match="only values older than their feature view's TTL"):
        stale.predict_v1({"entities": [known]})


def test_a_service_that_does_not_serve_the_contract_stops_the_load(trained, online_repo):
    from serving.online import FeastLookup

    with pytest.raises(ModelLoadError, match="does not match the model's contract|serves transform"):
        _service(
            trained,
            FeastLookup(
                online_repo, feature_service=f"live_signals_v{trained.bundle.contract.transform_version}"
            ),
        )
    with pytest.raises(ModelLoadError, match="unknown feature service"):
        _service(trained, FeastLookup(online_repo, feature_service="nope"))
