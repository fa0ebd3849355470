"""A thin adapter over the Feast repository in ``feature_repo/``.

The pipeline writes each feature table as a content-hashed Parquet *dataset
version* inside the repository, binds the repository to it, applies the
definitions to the registry, reads training sets with Feast's point-in-time
rule, and loads the latest values into the online store for serving:

>>> features = build_features(metrics, config)  # doctest: +SKIP
>>> version = write_dataset(features, "feature_repo", config=config)  # doctest: +SKIP
>>> apply_repo("feature_repo")  # doctest: +SKIP
>>> training = training_frame("feature_repo", entity_frame(features))  # doctest: +SKIP
>>> materialize("feature_repo", version.start, version.end)  # doctest: +SKIP
>>> online_features("feature_repo", [{"cluster": "c1", ...}])  # doctest: +SKIP

Layout of the data a repository holds (git-ignored, under ``<repo>/data/``):

* ``datasets/<source>/v<transform>-<hash16>.parquet`` – one immutable file per
  dataset version, next to a ``.json`` sidecar with its lineage
  (:class:`DatasetVersion`);
* ``datasets/current.json`` – which version each source is bound to; the
  repository's definitions read it, so ``feast apply`` and :func:`apply_repo`
  register the same thing;
* ``registry.db`` and ``online_store.db`` with the embedded configuration.

Feast is imported inside the functions that need it (the import takes seconds
and pulls in torch), so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aiops.features import (
    FEATURE_VERSION,
    FeatureConfig,
    FeatureContract,
    build_features,
    signals_for,
)
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP, SchemaError, metric_columns
from aiops.telemetry import content_hash

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

#: The feature view (and file source) fed by :func:`aiops.features.build_features`.
METRIC_VIEW = "pod_metric_features"
#: Event counts per entity and step: ``events_<class>`` columns (``aiops.k8s_events.event_features``).
EVENT_VIEW = "pod_event_counts"
#: Log-line counts per entity and step: ``logs_*`` columns (``aiops.log_templates.log_features``).
LOG_VIEW = "pod_log_counts"
#: The on-demand view computing the row-local part of the shared transform at request time.
LIVE_VIEW = "live_utilisation"

#: Dataset sources the repository binds to Parquet files, with the column prefix of their features.
SOURCES: dict[str, str] = {METRIC_VIEW: "", EVENT_VIEW: "events_", LOG_VIEW: "logs_"}

#: The anomaly detector's input contract: exactly the columns of ``build_features``.
ANOMALY_DETECTOR_SERVICE = f"anomaly_detector_v{FEATURE_VERSION}"
#: Event and log counts, kept out of the detector's contract until a model consumes them.
CONTEXT_SERVICE = f"pod_context_v{FEATURE_VERSION}"
#: Live utilisation from a raw sample, computed by the on-demand view.
LIVE_SERVICE = f"live_signals_v{FEATURE_VERSION}"

#: Raw fields a request must carry for :data:`LIVE_VIEW`.
LIVE_INPUTS: tuple[str, ...] = (
    "cpu_usage_cores",
    "cpu_limit_cores",
    "memory_working_set_bytes",
    "memory_limit_bytes",
)
#: Outputs of :data:`LIVE_VIEW` and the ``build_features`` signal each one copies.
LIVE_OUTPUTS: dict[str, str] = {
    "live_cpu_utilisation": "cpu_utilisation",
    "live_memory_utilisation": "memory_utilisation",
}

#: Feast's name for the entity frame's time column; the canonical tables call it ``timestamp``.
EVENT_TIMESTAMP = "event_timestamp"
DEFAULT_YAML = "feature_store.yaml"
#: Environment variable naming the repository configuration (e.g. ``feature_store.production.yaml``).
YAML_ENV = "AIOPS_FEAST_YAML"
#: Environment variable naming the repository folder (the pipeline image sets it).
REPO_ENV = "AIOPS_FEATURE_REPO"
DATA_DIR = "data"
DATASETS_DIR = f"{DATA_DIR}/datasets"
MANIFEST = f"{DATASETS_DIR}/current.json"


class FeatureStoreError(RuntimeError):
    """Raised when the feature repository, a dataset or a request is not usable as given."""


class OlderWindowError(FeatureStoreError):
    """A materialization window ends before what the online store already holds."""


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable, content-hashed feature dataset inside a repository.

    Attributes:
        source: The file source and feature view it feeds (one of :data:`SOURCES`).
        path: Location of the Parquet file, relative to the repository root.
        content_hash: SHA-256 over the sorted table (columns, dtypes, values).
        rows: Number of rows.
        entities: Number of distinct ``(cluster, namespace, pod, node)`` entities.
        start: Earliest event timestamp (ISO 8601, UTC).
        end: Latest event timestamp (ISO 8601, UTC).
        features: Feature columns in order (the view's schema).
        transform_version: :data:`aiops.features.FEATURE_VERSION` of the code that wrote it.
        feature_config: The :class:`aiops.features.FeatureConfig` of a metric dataset, as a dict.

    """

    source: str
    path: str
    content_hash: str
    rows: int
    entities: int
    start: str
    end: str
    features: tuple[str, ...]
    transform_version: str = FEATURE_VERSION
    feature_config: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Short name of the version: ``v<transform>-<hash16>``."""
        return f"v{self.transform_version}-{self.content_hash[:16]}"

    def as_tags(self, prefix: str = "feast") -> dict[str, str]:
        """Return lineage tags (for MLflow), keyed ``<prefix>.<source>.<field>``."""
        base = f"{prefix}.{self.source}"
        return {
            f"{base}.version": self.version,
            f"{base}.hash": self.content_hash,
            f"{base}.rows": str(self.rows),
            f"{base}.entities": str(self.entities),
            f"{base}.start": self.start,
            f"{base}.end": self.end,
            f"{base}.path": self.path,
        }

    def to_json(self) -> str:
        """Serialise to JSON (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetVersion:
        """Parse :meth:`to_json` output."""
        raw = json.loads(text)
        raw["features"] = tuple(raw["features"])
        return cls(**raw)


@dataclass(frozen=True)
class TrainingSet:
    """A point-in-time-correct training frame and its lineage.

    Attributes:
        frame: The entity frame's rows and columns, in its order, followed by the
            service's features in the service's order.
        feature_service: Name of the FeatureService that defined the columns.
        service_version: The transform version the service was built for (its ``transform_version`` tag).
        features: The service's feature names, in order.
        datasets: The dataset versions the service's views were bound to.
        rows: Rows of the entity frame (and of ``frame``).
        rows_without_features: Rows for which no view had a value within its TTL.

    """

    frame: pd.DataFrame
    feature_service: str
    service_version: str
    features: tuple[str, ...]
    datasets: tuple[DatasetVersion, ...]
    rows: int
    rows_without_features: int

    def as_tags(self, prefix: str = "feast") -> dict[str, str]:
        """Return lineage tags (for MLflow): the service, its version, row counts and dataset versions."""
        tags = {
            f"{prefix}.feature_service": self.feature_service,
            f"{prefix}.feature_service_version": self.service_version,
            f"{prefix}.training_rows": str(self.rows),
            f"{prefix}.training_rows_without_features": str(self.rows_without_features),
        }
        for dataset in self.datasets:
            tags.update(dataset.as_tags(prefix))
        return tags


# --------------------------------------------------------------------------- repository files


def _repo(repo_path: str | Path) -> Path:
    root = Path(repo_path).resolve()
    if not (root / DEFAULT_YAML).is_file():
        raise FeatureStoreError(
            f"{root} is not a Feast repository (no {DEFAULT_YAML}); pass the project's feature_repo/ folder"
        )
    return root


def default_repo_path() -> Path:
    """Return ``$AIOPS_FEATURE_REPO``, else this checkout's ``feature_repo/``, else ``./feature_repo``."""
    if os.environ.get(REPO_ENV):
        return Path(os.environ[REPO_ENV])
    checkout = Path(__file__).resolve().parents[2] / "feature_repo"  # editable install
    return checkout if (checkout / DEFAULT_YAML).is_file() else Path("feature_repo")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_manifest(repo_path: str | Path) -> dict[str, str]:
    """Return ``{source: path relative to the repository}`` of the bound dataset versions."""
    manifest = Path(repo_path) / MANIFEST
    if not manifest.is_file():
        return {}
    raw: dict[str, str] = json.loads(manifest.read_text())
    return raw


def bound_datasets(repo_path: str | Path) -> dict[str, DatasetVersion]:
    """Return the dataset version each source is bound to (what the next apply registers).

    Raises:
        FeatureStoreError: When the manifest names a file that is gone.

    """
    root = Path(repo_path)
    out: dict[str, DatasetVersion] = {}
    for source, rel in read_manifest(root).items():
        out[source] = _read_sidecar(root, rel)
    return out


def _read_sidecar(root: Path, rel: str) -> DatasetVersion:
    parquet = root / rel
    sidecar = parquet.with_suffix(".json")
    if not parquet.is_file() or not sidecar.is_file():
        raise FeatureStoreError(
            f"dataset {rel} is missing from {root} (or its .json sidecar); write it again with "
            f"aiops.feature_store.write_dataset"
        )
    return DatasetVersion.from_json(sidecar.read_text())


def _check_dataset(frame: pd.DataFrame, source: str) -> list[str]:
    """Validate a dataset for ``source`` and return its feature columns."""
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise FeatureStoreError(f"dataset for {source!r} is empty; nothing to write")
    missing = [c for c in KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise FeatureStoreError(
            f"dataset for {source!r}: key column(s) {missing} missing; expected {list(KEY_COLUMNS)} "
            f"followed by feature columns (the layout of aiops.features.build_features)"
        )
    ts = frame[TIMESTAMP]
    if not pd.api.types.is_datetime64_any_dtype(ts) or str(getattr(ts.dt, "tz", None)) != "UTC":
        raise FeatureStoreError(
            f"dataset for {source!r}: column 'timestamp' must be timezone-aware UTC, got {ts.dtype}"
        )
    features = [c for c in frame.columns if c not in KEY_COLUMNS]
    if not features:
        raise FeatureStoreError(f"dataset for {source!r} has no feature columns besides the keys")
    prefix = SOURCES[source]
    wrong = [c for c in features if not c.startswith(prefix)]
    if wrong:
        raise FeatureStoreError(
            f"dataset for {source!r}: column(s) {wrong[:5]} do not start with {prefix!r}; "
            f"this source holds only '{prefix}*' counts"
        )
    not_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise FeatureStoreError(
            f"dataset for {source!r}: feature column(s) {not_numeric[:5]} are not numeric"
        )
    dupes = frame.duplicated(subset=list(KEY_COLUMNS))
    if dupes.any():
        raise FeatureStoreError(
            f"dataset for {source!r}: {int(dupes.sum())} duplicate (timestamp, entity) row(s); "
            f"a point-in-time join needs one row per entity and time"
        )
    return features


def write_dataset(
    frame: pd.DataFrame,
    repo_path: str | Path,
    source: str = METRIC_VIEW,
    *,
    config: FeatureConfig | None = None,
) -> DatasetVersion:
    """Write a feature table as a content-hashed dataset version and bind ``source`` to it.

    The same content always lands at the same path, so writing twice is a no-op.
    The binding takes effect in the registry at the next :func:`apply_repo`.

    Args:
        frame: Key columns (``timestamp``, ``cluster``, ``namespace``, ``pod``,
            ``node``) plus numeric feature columns; for :data:`METRIC_VIEW` the
            output of :func:`aiops.features.build_features`, for
            :data:`EVENT_VIEW` / :data:`LOG_VIEW` ``events_*`` / ``logs_*`` counts,
            dense on the metric step grid (0 where nothing happened).
        repo_path: The Feast repository (the folder with ``feature_store.yaml``).
        source: Which source/feature view the table feeds.
        config: The transform settings that built a metric table (recorded in its lineage).

    Returns:
        The dataset version: path, content hash, row and entity counts, time span.

    Raises:
        FeatureStoreError: For an unknown source, a missing key column, a naive
            timestamp, non-numeric features or duplicate rows.

    """
    if source not in SOURCES:
        raise FeatureStoreError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    root = _repo(repo_path)
    features = _check_dataset(frame, source)
    table = frame.loc[:, [*KEY_COLUMNS, *features]].sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable")
    table = table.reset_index(drop=True)
    table[features] = table[features].astype("float64")
    digest = content_hash(table)
    # Through JSON, so the version compares equal to its own sidecar.
    config_dict = json.loads(json.dumps(asdict(config or FeatureConfig()))) if source == METRIC_VIEW else {}
    version = DatasetVersion(
        source=source,
        path=f"{DATASETS_DIR}/{source}/v{FEATURE_VERSION}-{digest[:16]}.parquet",
        content_hash=digest,
        rows=len(table),
        entities=int(table.groupby(list(ENTITY_KEYS)).ngroups),
        start=table[TIMESTAMP].min().isoformat(),
        end=table[TIMESTAMP].max().isoformat(),
        features=tuple(features),
        feature_config=config_dict,
    )
    target = root / version.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        table.to_parquet(tmp, index=False)
        tmp.replace(target)
    _atomic_write(target.with_suffix(".json"), version.to_json().encode())
    manifest = read_manifest(root)
    manifest[source] = version.path
    _atomic_write(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return version


def unbind_dataset(repo_path: str | Path, source: str) -> None:
    """Remove ``source``'s binding (its files stay); the view reads no data after the next apply."""
    root = _repo(repo_path)
    manifest = read_manifest(root)
    if manifest.pop(source, None) is not None:
        _atomic_write(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


# --------------------------------------------------------------------------- Feast


def open_store(repo_path: str | Path, fs_yaml: str | Path | None = None) -> FeatureStore:
    """Open the repository's feature store.

    Args:
        repo_path: The Feast repository.
        fs_yaml: Configuration file, absolute or relative to ``repo_path``; by
            default ``$AIOPS_FEAST_YAML`` or ``feature_store.yaml`` (embedded:
            file registry + SQLite online store).

    Raises:
        FeatureStoreError: When the repository or the configuration file does not exist.

    """
    from feast import FeatureStore

    root = _repo(repo_path)
    name = fs_yaml or os.environ.get(YAML_ENV) or DEFAULT_YAML
    config = Path(name) if Path(name).is_absolute() else root / name
    if not config.is_file():
        raise FeatureStoreError(f"feature store configuration {config} does not exist")
    return FeatureStore(repo_path=str(root), fs_yaml_file=config)


def load_definitions(repo_path: str | Path) -> list[Any]:
    """Import the repository's top-level ``*.py`` files and return the Feast objects they define.

    Each call imports fresh copies under private module names, so two
    repositories (or two dataset bindings) in one process never share state.
    """
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView

    root = _repo(repo_path)
    found: list[Any] = []
    seen: set[int] = set()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    for file in sorted(root.glob("*.py")):
        if file.name == "__init__.py":
            continue
        name = f"_aiops_feature_repo_{tag}_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise FeatureStoreError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
        for value in vars(module).values():
            if (
                isinstance(value, Entity | FeatureView | OnDemandFeatureView | FeatureService)
                and id(value) not in seen
            ):
                seen.add(id(value))
                found.append(value)
    if not found:
        raise FeatureStoreError(f"{root} defines no Feast objects in its top-level *.py files")
    return found


@dataclass(frozen=True)
class AppliedRepo:
    """What :func:`apply_repo` registered.

    Attributes:
        project: The Feast project.
        feature_views: Names of the (batch and on-demand) feature views.
        feature_services: Names of the feature services.
        datasets: The dataset versions the views are now bound to.
        deleted: Names of registry objects no longer defined, removed by the apply.

    """

    project: str
    feature_views: tuple[str, ...]
    feature_services: tuple[str, ...]
    datasets: tuple[DatasetVersion, ...]
    deleted: tuple[str, ...] = ()


def apply_repo(repo_path: str | Path, fs_yaml: str | Path | None = None) -> AppliedRepo:
    """Register the repository's definitions, bound to the current dataset versions.

    Like ``feast apply``: objects no longer defined are deleted from the
    registry, and the online store's tables are created or dropped to match.

    Raises:
        FeatureStoreError: When the repository or a bound dataset is missing.

    """
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView

    store = open_store(repo_path, fs_yaml)
    datasets = bound_datasets(store.repo_path)
    objects = load_definitions(store.repo_path)
    names = {(type(o).__name__, o.name) for o in objects}
    stale: list[Any] = [
        *store.list_feature_services(),
        *store.list_on_demand_feature_views(),
        *store.list_feature_views(),
    ]
    to_delete = [o for o in stale if (type(o).__name__, o.name) not in names]
    with warnings.catch_warnings():
        # Feast warns that on-demand views scale badly offline; ours only serve online requests.
        warnings.filterwarnings(
            "ignore", message="On demand feature view is an experimental", category=RuntimeWarning
        )
        store.apply(objects, objects_to_delete=to_delete, partial=False)
    return AppliedRepo(
        project=store.project,
        feature_views=tuple(o.name for o in objects if isinstance(o, FeatureView | OnDemandFeatureView)),
        feature_services=tuple(o.name for o in objects if isinstance(o, FeatureService)),
        datasets=tuple(datasets[s] for s in sorted(datasets)),
        deleted=tuple(o.name for o in to_delete if not isinstance(o, Entity)),
    )


def _service(store: FeatureStore, name: str) -> FeatureService:
    from feast.errors import FeatureServiceNotFoundException

    try:
        return store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise FeatureStoreError(
            f"unknown feature service {name!r} in project {store.project!r}; registered: {known}. "
            f"Run aiops.feature_store.apply_repo after changing the definitions"
        ) from None


def service_features(service: FeatureService) -> list[str]:
    """Return a service's feature names in order (view order, then each view's schema order)."""
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def feature_service_features(
    repo_path: str | Path, name: str = ANOMALY_DETECTOR_SERVICE, fs_yaml: str | Path | None = None
) -> list[str]:
    """Return the registered feature service's feature names in order.

    Raises:
        FeatureStoreError: When the service is not registered.

    """
    return service_features(_service(open_store(repo_path, fs_yaml), name))


def check_contract(
    repo_path: str | Path | FeatureStore,
    contract: FeatureContract,
    feature_service: str = ANOMALY_DETECTOR_SERVICE,
    fs_yaml: str | Path | None = None,
) -> None:
    """Check that a registered feature service serves exactly a model's feature contract.

    A predictor calls this once at start-up, before it reads features online; it may pass the
    store it keeps open (see :func:`open_store`) instead of the repository path.

    Raises:
        FeatureStoreError: When the service is unknown, was built for another
            transform version or other transform settings (``FeatureConfig``), or lists
            other features or another order.

    """
    store = repo_path if not isinstance(repo_path, str | Path) else open_store(repo_path, fs_yaml)
    service = _service(store, feature_service)
    served = service_features(service)
    version = service.tags.get("transform_version", "")
    if version != contract.transform_version:
        raise FeatureStoreError(
            f"feature service {service.name!r} serves transform v{version}; the model needs "
            f"v{contract.transform_version}"
        )
    # Names alone do not say it all: the step length turns differences into rates and slopes.
    built = service.tags.get("feature_config")
    wanted = json.loads(json.dumps(asdict(contract.config)))
    if built is not None and json.loads(built) != wanted:
        raise FeatureStoreError(
            f"feature service {service.name!r} serves features built with {built}; the model was trained "
            f"on {json.dumps(wanted, sort_keys=True)}; bind a dataset built with the model's settings"
        )
    if served != list(contract.feature_names):
        missing = [f for f in contract.feature_names if f not in served]
        extra = [f for f in served if f not in contract.feature_names]
        raise FeatureStoreError(
            f"feature service {service.name!r} does not match the model's contract: missing {missing[:5]}, "
            f"extra {extra[:5]}{' (same names, other order)' if not missing and not extra else ''}; "
            f"bind the dataset the model was trained on and apply the repository"
        )


def _service_datasets(
    store: FeatureStore, service: FeatureService, batch: Mapping[str, Any]
) -> tuple[DatasetVersion, ...]:
    """The dataset versions behind a service's batch views; fail if one is missing or stale."""
    root = Path(store.repo_path)
    bound = read_manifest(root)
    out = []
    for projection in service.feature_view_projections:
        view = batch.get(projection.name)
        if view is None or view.batch_source is None:
            continue  # an on-demand view reads request data, not a dataset
        registered = getattr(view.batch_source, "path", "")
        if projection.name not in bound:
            raise FeatureStoreError(
                f"feature view {projection.name!r} (service {service.name!r}) has no dataset; write one "
                f"with aiops.feature_store.write_dataset(frame, repo, source={projection.name!r}) and "
                f"run apply_repo"
            )
        if registered != bound[projection.name]:
            raise FeatureStoreError(
                f"feature view {projection.name!r} is registered with {registered!r} but the repository "
                f"is bound to {bound[projection.name]!r}; run aiops.feature_store.apply_repo first"
            )
        out.append(_read_sidecar(root, registered))
    return tuple(out)


def _batch_views(store: FeatureStore) -> dict[str, Any]:
    return {view.name: view for view in store.list_feature_views()}


def entity_frame(features: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Return the entity frame for a feature table: its key columns (plus ``extra`` columns)."""
    missing = [c for c in (*KEY_COLUMNS, *extra) if c not in features.columns]
    if missing:
        raise SchemaError(f"entity frame: column(s) {missing} missing from the feature table")
    return features.loc[:, [*KEY_COLUMNS, *extra]].reset_index(drop=True)


def _check_entity_df(entity_df: pd.DataFrame, needed: Iterable[str]) -> None:
    if not isinstance(entity_df, pd.DataFrame) or entity_df.empty:
        raise FeatureStoreError("entity frame is empty; pass one row per (timestamp, entity) to score")
    missing = [c for c in (TIMESTAMP, *needed) if c not in entity_df.columns]
    if missing:
        raise FeatureStoreError(
            f"entity frame: column(s) {missing} missing; expected 'timestamp' (UTC), the join keys "
            f"{list(ENTITY_KEYS)} and the request fields of any on-demand view "
            f"(aiops.feature_store.entity_frame builds it from a feature table)"
        )
    ts = entity_df[TIMESTAMP]
    if not pd.api.types.is_datetime64_any_dtype(ts) or str(getattr(ts.dt, "tz", None)) != "UTC":
        raise FeatureStoreError(f"entity frame: 'timestamp' must be timezone-aware UTC, got {ts.dtype}")
    if ts.isna().any():
        raise FeatureStoreError(f"entity frame: 'timestamp' has {int(ts.isna().sum())} missing value(s)")
    if EVENT_TIMESTAMP in entity_df.columns or _ROW in entity_df.columns:
        raise FeatureStoreError(
            f"entity frame: columns {EVENT_TIMESTAMP!r} and {_ROW!r} are reserved; drop them"
        )


_ROW = "__aiops_row"
_FEATURE_TS = "__aiops_feature_ts"
ENGINES = ("asof", "feast")


def _asof_join(
    root: Path, service: FeatureService, batch: Mapping[str, Any], query: pd.DataFrame
) -> pd.DataFrame:
    """Apply Feast's point-in-time rule with ``pandas.merge_asof``.

    Per view: the entity's latest row at or before the entity time and no older
    than the view's TTL. Linear in the rows, where Feast's file offline store
    (dask) first joins every entity row with every row of its entity.
    """
    left = query.assign(**{_ROW: np.arange(len(query))})
    left[TIMESTAMP] = left[TIMESTAMP].astype("datetime64[ns, UTC]")
    left = left.sort_values(TIMESTAMP, kind="stable")
    names: list[str] = []
    for projection in service.feature_view_projections:
        view = batch[projection.name]
        source = view.batch_source
        columns = [f.name for f in projection.features]
        keys = [view.projection.join_key_map.get(c.name, c.name) for c in view.entity_columns]
        right = pd.read_parquet(root / source.path, columns=[source.timestamp_field, *keys, *columns])
        right = right.rename(columns={source.timestamp_field: _FEATURE_TS})
        right[_FEATURE_TS] = pd.to_datetime(right[_FEATURE_TS], utc=True).astype("datetime64[ns, UTC]")
        for key in keys:
            right[key] = right[key].astype(object)
            left[key] = left[key].astype(object)
        ttl = view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
        left = pd.merge_asof(
            left,
            right.sort_values(_FEATURE_TS, kind="stable"),
            left_on=TIMESTAMP,
            right_on=_FEATURE_TS,
            by=keys,
            direction="backward",
            allow_exact_matches=True,
            tolerance=pd.Timedelta(ttl) if ttl is not None else None,
        ).drop(columns=_FEATURE_TS)
        names += columns
    return left.set_index(_ROW).sort_index().loc[:, names]


def _feast_join(store: FeatureStore, service: FeatureService, query: pd.DataFrame) -> pd.DataFrame:
    """Feast's own ``get_historical_features`` (with the file offline store: quadratic per entity)."""
    request = query.rename(columns={TIMESTAMP: EVENT_TIMESTAMP}).assign(**{_ROW: np.arange(len(query))})
    result = store.get_historical_features(entity_df=request, features=service).to_df()
    # Feast drops an entity row whose entity has rows, none of them in [t - ttl, t]; reindex restores it.
    return result.set_index(_ROW).reindex(np.arange(len(query))).loc[:, service_features(service)]


def training_frame(
    repo_path: str | Path,
    entity_df: pd.DataFrame,
    feature_service: str = ANOMALY_DETECTOR_SERVICE,
    fs_yaml: str | Path | None = None,
    engine: str = "asof",
) -> TrainingSet:
    """Build a training set with the point-in-time rule of Feast's ``get_historical_features``.

    For each entity row, each view contributes its entity's latest row at or
    before the row's ``timestamp`` and no older than the view's TTL, so no
    value from after that instant reaches the row. The views, their datasets,
    TTLs and the feature list all come from the registry.

    Args:
        repo_path: The Feast repository, applied with :func:`apply_repo`.
        entity_df: ``timestamp`` (UTC) and the join keys, one row per example;
            other columns (labels, say) are passed through.
        feature_service: The model's input contract.
        fs_yaml: Configuration file (see :func:`open_store`).
        engine: ``asof`` joins the registered datasets with ``pandas.merge_asof``
            (linear; the default); ``feast`` calls Feast's
            ``get_historical_features``, whose file offline store joins every
            entity row with every row of the same entity (quadratic: fine for
            thousands of rows, not for a pipeline's full table). Both give the same
            values; ``feast`` is also what runs on-demand views offline.

    Returns:
        The frame (``entity_df``'s rows in its order, then the service's
        features) and its lineage.

    Raises:
        FeatureStoreError: For an unknown service or engine, a view without a
            dataset, a registry not applied since the last :func:`write_dataset`,
            or a bad entity frame.

    """
    if engine not in ENGINES:
        raise FeatureStoreError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    store = open_store(repo_path, fs_yaml)
    service = _service(store, feature_service)
    features = service_features(service)
    batch = _batch_views(store)
    on_demand = [p.name for p in service.feature_view_projections if p.name not in batch]
    if len(on_demand) == len(service.feature_view_projections):
        raise FeatureStoreError(
            f"feature service {service.name!r} has only on-demand views {on_demand}, which compute from "
            f"request data: use online_features, or call their transform on the frame directly"
        )
    if on_demand and engine == "asof":
        raise FeatureStoreError(
            f"feature service {service.name!r} has on-demand views {on_demand}; use engine='feast'"
        )
    request_fields = [
        f.name
        for name in on_demand
        for source in store.get_on_demand_feature_view(name).source_request_sources.values()
        for f in source.schema
    ]
    datasets = _service_datasets(store, service, batch)
    query_columns = [TIMESTAMP, *ENTITY_KEYS, *request_fields]
    _check_entity_df(entity_df, query_columns[1:])

    # Each distinct (time, entity, request) is joined once; ngroup(sort=False) numbers them in order of
    # first appearance, the order drop_duplicates keeps, so it maps every entity row to its result.
    rows = entity_df.reset_index(drop=True)
    codes = rows.groupby(query_columns, sort=False, dropna=False).ngroup().to_numpy()
    query = rows.loc[:, query_columns].drop_duplicates(ignore_index=True)
    if engine == "asof":
        joined = _asof_join(Path(store.repo_path), service, batch, query)
    else:
        joined = _feast_join(store, service, query)
    values = joined.iloc[codes].reset_index(drop=True).astype("float64")
    passthrough = [c for c in rows.columns if c not in features]
    frame = pd.concat([rows.loc[:, passthrough], values], axis=1)
    return TrainingSet(
        frame=frame,
        feature_service=service.name,
        service_version=service.tags.get("transform_version", ""),
        features=tuple(features),
        datasets=datasets,
        rows=len(frame),
        rows_without_features=int(values.isna().all(axis=1).sum()) if features else 0,
    )


def _utc(moment: datetime | pd.Timestamp | str, what: str) -> datetime:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        raise FeatureStoreError(f"{what} {moment!r} has no time zone; pass a UTC time")
    result: datetime = stamp.tz_convert("UTC").to_pydatetime()
    return result


def materialize(
    repo_path: str | Path,
    start: datetime | pd.Timestamp | str,
    end: datetime | pd.Timestamp | str,
    fs_yaml: str | Path | None = None,
    views: Sequence[str] | None = None,
) -> list[str]:
    """Load the latest value per entity in ``[start, end]`` from the datasets into the online store.

    Args:
        repo_path: The Feast repository, applied with :func:`apply_repo`.
        start: Earliest event time to load (timezone-aware).
        end: Latest event time to load (timezone-aware).
        fs_yaml: Configuration file (see :func:`open_store`).
        views: Feature views to load; by default every view with a bound dataset.

    Returns:
        The names of the views materialized.

    Raises:
        FeatureStoreError: For naive times, an unknown view, a view without a dataset, or one
            whose registered dataset is not the bound one (``apply_repo`` not run since);
            :class:`OlderWindowError` for a window that ends before the views' last one.

    """
    store = open_store(repo_path, fs_yaml)
    begin, finish = _utc(start, "start"), _utc(end, "end")
    if finish < begin:
        raise FeatureStoreError(f"end {finish} is before start {begin}")
    registered = _batch_views(store)  # one registry listing serves every check below
    bound = read_manifest(store.repo_path)
    chosen = list(views) if views is not None else sorted(registered.keys() & bound.keys())
    unknown = [v for v in chosen if v not in registered]
    if unknown:
        raise FeatureStoreError(f"unknown feature view(s) {unknown}; registered: {sorted(registered)}")
    unbound = [v for v in chosen if v not in bound]
    if unbound:
        raise FeatureStoreError(f"feature view(s) {unbound} have no dataset; write one with write_dataset")
    # Feast reads the registered source: after a write_dataset without apply_repo that is the
    # previous dataset, and the online store would get its values without a word.
    stale = [v for v in chosen if getattr(registered[v].batch_source, "path", "") != bound[v]]
    if stale:
        raise FeatureStoreError(
            f"feature view(s) {stale} are registered with another dataset than the repository is bound to; "
            "run aiops.feature_store.apply_repo first"
        )
    # The online store keeps one row per entity. SQLite overwrites it with whatever comes (Redis
    # keeps the newer one), so a window ending before the last one would roll values back.
    behind = {}
    for v in chosen:
        last = registered[v].most_recent_end_time
        if last is not None:
            last = pd.Timestamp(last)
            last = last.tz_localize("UTC") if last.tzinfo is None else last.tz_convert("UTC")
            if finish < last:
                behind[v] = last
    if behind:
        raise OlderWindowError(
            f"feature view(s) {sorted(behind)} are materialized up to {max(behind.values())}, after the end "
            f"{finish}; an older window would replace newer online values: end at or after it"
        )
    if chosen:
        store.materialize(begin, finish, feature_views=chosen)
    return chosen


def online_features(
    repo_path: str | Path | FeatureStore,
    entity_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    feature_service: str = ANOMALY_DETECTOR_SERVICE,
    fs_yaml: str | Path | None = None,
    now: pd.Timestamp | None = None,
    ttls: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Read the latest materialized features of some entities from the online store.

    A value older than its view's TTL at ``now`` is ``NaN``, as in the offline join: Feast's
    SQLite online store returns whatever was materialized last, however old (a pod deleted
    weeks ago, a materialization job that stopped), and scoring that as current would be wrong.

    Args:
        repo_path: The Feast repository, or a store from :func:`open_store`
            (a server should keep one open).
        entity_rows: The join keys (``cluster``, ``namespace``, ``pod``,
            ``node``) of each entity, plus the request fields of any
            on-demand view in the service.
        feature_service: The model's input contract.
        fs_yaml: Configuration file (see :func:`open_store`).
        now: The instant the TTLs count back from (default: the current time).
        ttls: :func:`feature_ttls` of the service, when the caller keeps them (a server reads
            them once; listing the views costs milliseconds a call).

    Returns:
        One row per entity: the join keys, then the service's features in
        order (``NaN`` where the online store has no value, or only one older than the TTL).

    Raises:
        FeatureStoreError: For an unknown service or missing join keys.

    """
    store = repo_path if not isinstance(repo_path, str | Path) else open_store(repo_path, fs_yaml)
    service = _service(store, feature_service)
    features = service_features(service)
    rows = pd.DataFrame(list(entity_rows)) if not isinstance(entity_rows, pd.DataFrame) else entity_rows
    if rows.empty:
        raise FeatureStoreError("no entity rows given")
    missing = [k for k in ENTITY_KEYS if k not in rows.columns]
    if missing:
        raise FeatureStoreError(f"entity rows: join key(s) {missing} missing; expected {list(ENTITY_KEYS)}")
    response = store.get_online_features(features=service, entity_rows=rows.to_dict("records")).to_df(
        include_event_timestamps=True
    )
    front = [c for c in rows.columns if c in response.columns and c not in features]
    out = response.loc[:, [*front, *features]]
    out[features] = out[features].astype("float64")
    now_s = (now if now is not None else pd.Timestamp.now(tz="UTC")).timestamp()
    for name, ttl in (ttls if ttls is not None else feature_ttls(store, feature_service)).items():
        stamped = f"{name}__ts"  # Feast's event-timestamp column (seconds since the epoch)
        if stamped in response.columns:
            age = now_s - response[stamped].to_numpy(dtype="float64")
            out.loc[age > ttl, name] = np.nan
    return out


def feature_ttls(store: FeatureStore, feature_service: str = ANOMALY_DETECTOR_SERVICE) -> dict[str, float]:
    """TTL in seconds of each feature of the service that comes from a batch view with a TTL.

    Raises:
        FeatureStoreError: For an unknown service.
    """
    views = _batch_views(store)
    ttls = {}
    for projection in _service(store, feature_service).feature_view_projections:
        view = views.get(projection.name)
        ttl = view.ttl.total_seconds() if view is not None and view.ttl else 0.0
        if ttl > 0:
            ttls.update({f.name: ttl for f in projection.features})
    return ttls


# --------------------------------------------------------------------------- on-demand transform


def row_local_features(raw: pd.DataFrame) -> pd.DataFrame:
    """Return the outputs of :func:`aiops.features.build_features` that depend on one row only.

    Those are the signal columns: the metric values and the derived
    utilisations (usage / limit, undefined for a zero or missing limit). The
    rolling, lag, diff and slope columns need the entity's history, which an
    on-demand view does not see; they come from the materialized view instead.

    The rows are passed to ``build_features`` itself as one synthetic entity
    with increasing timestamps, so the values are computed by the shared code
    and come back in input order; the history-dependent columns are dropped.

    Args:
        raw: Canonical metric columns (any other column is ignored).

    Returns:
        One column per signal, aligned with ``raw``'s index.

    """
    present = metric_columns(raw)
    if not present:
        raise SchemaError(f"row-local features: no canonical metric column among {list(raw.columns)}")
    synthetic = pd.DataFrame(
        {
            TIMESTAMP: pd.date_range("1970-01-01", periods=len(raw), freq="s", tz="UTC"),
            **{key: "" for key in ENTITY_KEYS},
        }
    )
    for column in present:
        synthetic[column] = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype=np.float64)
    signals = signals_for(synthetic)
    if raw.empty:
        return pd.DataFrame({s: pd.Series(dtype="float64") for s in signals}, index=raw.index)
    out = build_features(synthetic)[signals]
    out.index = raw.index
    return out


def live_utilisation(inputs: pd.DataFrame) -> pd.DataFrame:
    """The on-demand view :data:`LIVE_VIEW`: utilisation of a raw sample, by the shared transform.

    Args:
        inputs: The request fields :data:`LIVE_INPUTS` (Feast passes them as a frame).

    Returns:
        The columns of :data:`LIVE_OUTPUTS`.

    """
    signals = row_local_features(inputs.loc[:, list(LIVE_INPUTS)])
    return pd.DataFrame({out: signals[signal] for out, signal in LIVE_OUTPUTS.items()}, index=inputs.index)
