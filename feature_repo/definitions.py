"""Feast definitions of the aiops feature repository.

Entities are the canonical entity keys of ``aiops.schema`` (a pod name is only
unique within its namespace and cluster, so the cluster is an entity too).
Every batch view joins on all four keys, the key columns of
``aiops.features.build_features``.

Each file source reads the dataset version that ``data/datasets/current.json``
binds it to (written by ``aiops.feature_store.write_dataset``), and the view's
schema is that dataset's feature list. Unbound sources get a placeholder path
and a declared schema, so the repository applies on a fresh clone; reading
them fails with a message that says which dataset to write.

Names (views, services, request fields) come from ``aiops.feature_store``, so
the library and this repository cannot drift apart.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    RequestSource,
    ValueType,
)
from feast.types import Float64

from aiops import feature_store as fs
from aiops.features import FEATURE_VERSION, FeatureConfig, feature_names, signals_for
from aiops.schema import METRIC_COLUMNS, TIMESTAMP

REPO = Path(__file__).resolve().parent
BOUND = fs.bound_datasets(REPO)

#: How far back the point-in-time join looks for a row of the same entity.
METRIC_TTL = timedelta(hours=1)
#: Counts belong to one step window: write them dense (0 where nothing happened), and never let a
#: sparse count be carried forward for long.
COUNT_TTL = timedelta(minutes=5)


def _declared(module: str, attribute: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """Column names declared by the module that produces a count table, if that module is installed."""
    try:
        return tuple(getattr(importlib.import_module(module), attribute))
    except (ImportError, AttributeError):
        return fallback


#: Schemas for sources with no dataset bound yet; once bound, a view's schema is its dataset's columns.
DEFAULT_FEATURES: dict[str, tuple[str, ...]] = {
    fs.METRIC_VIEW: tuple(feature_names(signals_for(pd.DataFrame(columns=list(METRIC_COLUMNS))))),
    fs.EVENT_VIEW: _declared("aiops.k8s_events", "EVENT_FEATURES", ("events_other", "events_warning")),
    fs.LOG_VIEW: _declared("aiops.log_templates", "LOG_FEATURES", ("logs_total", "logs_error")),
}

cluster = Entity(
    name="cluster", join_keys=["cluster"], value_type=ValueType.STRING, description="Kubernetes cluster"
)
namespace = Entity(
    name="namespace", join_keys=["namespace"], value_type=ValueType.STRING, description="namespace"
)
pod = Entity(
    name="pod",
    join_keys=["pod"],
    value_type=ValueType.STRING,
    description="pod name ('' on node-level rows)",
)
node = Entity(
    name="node", join_keys=["node"], value_type=ValueType.STRING, description="node the pod runs on"
)
ENTITIES = [cluster, namespace, pod, node]


def _features(source: str) -> tuple[str, ...]:
    bound = BOUND.get(source)
    return bound.features if bound is not None else DEFAULT_FEATURES[source]


def _file_source(source: str, description: str) -> FileSource:
    bound = BOUND.get(source)
    tags = {"bound": "false"}
    if bound is not None:
        tags = {"bound": "true", "dataset_version": bound.version, "content_hash": bound.content_hash}
    return FileSource(
        name=source,
        path=bound.path if bound is not None else f"{fs.DATASETS_DIR}/{source}/unbound.parquet",
        timestamp_field=TIMESTAMP,
        description=description,
        tags=tags,
    )


def _view(source: str, ttl: timedelta, description: str, tags: dict[str, str]) -> FeatureView:
    return FeatureView(
        name=source,
        entities=ENTITIES,
        ttl=ttl,
        schema=[Field(name=name, dtype=Float64) for name in _features(source)],
        source=_file_source(source, description),
        online=True,
        description=description,
        tags={"transform_version": FEATURE_VERSION, **tags},
    )


def _metric_config() -> str:
    bound = BOUND.get(fs.METRIC_VIEW)
    config = bound.feature_config if bound is not None and bound.feature_config else asdict(FeatureConfig())
    return json.dumps(config, sort_keys=True)


pod_metric_features = _view(
    fs.METRIC_VIEW,
    METRIC_TTL,
    "Causal rolling statistics, lags, diffs and slopes per signal (aiops.features.build_features)",
    {"producer": "aiops.features.build_features", "feature_config": _metric_config()},
)
pod_event_counts = _view(
    fs.EVENT_VIEW,
    COUNT_TTL,
    "Kubernetes event counts per entity and step window, one events_<class> column per class",
    {"producer": "aiops.k8s_events.event_features (dense on the metric step grid)"},
)
pod_log_counts = _view(
    fs.LOG_VIEW,
    COUNT_TTL,
    "Container log-line counts per entity and step window (logs_* columns)",
    {"producer": "aiops.log_templates.log_features (dense on the metric step grid)"},
)

live_sample = RequestSource(
    name="live_sample",
    schema=[Field(name=name, dtype=Float64) for name in fs.LIVE_INPUTS],
    description="A raw canonical metrics sample sent with the request",
)


def live_utilisation_udf(inputs: pd.DataFrame) -> pd.DataFrame:
    """Utilisation of a raw sample, by the shared transform (aiops.feature_store.live_utilisation)."""
    # Feast re-creates a UDF from this source text with only pandas and numpy in scope, so the body
    # imports the installed library rather than capturing a copy of it.
    from aiops.feature_store import live_utilisation

    return live_utilisation(inputs)


live_utilisation = OnDemandFeatureView(
    name=fs.LIVE_VIEW,
    sources=[live_sample],
    schema=[Field(name=name, dtype=Float64) for name in fs.LIVE_OUTPUTS],
    udf=live_utilisation_udf,
    udf_string=inspect.getsource(live_utilisation_udf),
    mode="pandas",
    description="Row-local part of aiops.features.build_features (utilisation) for a raw sample",
    tags={"transform_version": FEATURE_VERSION, "producer": "aiops.feature_store.live_utilisation"},
)


def _contract_tags(features: tuple[str, ...]) -> dict[str, str]:
    digest = hashlib.sha256("\n".join(features).encode()).hexdigest()
    return {
        "transform_version": FEATURE_VERSION,
        "feature_config": _metric_config(),
        "n_features": str(len(features)),
        "features_sha256": digest,
    }


anomaly_detector = FeatureService(
    name=fs.ANOMALY_DETECTOR_SERVICE,
    features=[pod_metric_features],
    description="Input contract of the anomaly detector: the columns of aiops.features.build_features",
    tags=_contract_tags(_features(fs.METRIC_VIEW)),
)
pod_context = FeatureService(
    name=fs.CONTEXT_SERVICE,
    features=[pod_event_counts, pod_log_counts],
    description="Event and log counts per entity (not yet part of a model contract)",
    tags={"transform_version": FEATURE_VERSION},
)
live_signals = FeatureService(
    name=fs.LIVE_SERVICE,
    features=[live_utilisation],
    description="Utilisation of a live sample computed by the shared transform",
    tags={"transform_version": FEATURE_VERSION},
)
