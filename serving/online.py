"""Feature rows from the Feast online store, for the ``entities`` request kind.

A request that names entities instead of sending features gets the latest materialized
features of each from the online store (``aiops.feature_store.online_features``), scored at the
time of the request: the online store keeps one row per entity, not its history. Values older
than their feature view's TTL are not used: an entity with none left is a 400.

The lookup checks at start-up, before the server becomes ready, that the feature service
serves exactly the model's feature contract (same transform version, names and order); a
mismatch stops the server instead of scoring the wrong columns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops.features import FeatureContract
from aiops.schema import ENTITY_KEYS, TIMESTAMP
from serving.errors import ModelLoadError, RequestError

log = logging.getLogger(__name__)


class FeastLookup:
    """Reads feature rows for entity keys from a Feast repository's online store.

    Args:
        repo_path: The Feast repository (``feature_repo/``, or the folder it is mounted at).
        feature_service: The service to read; default ``anomaly_detector_v<transform version>``
            of the served model.
        fs_yaml: Another ``feature_store.yaml`` (e.g. the production one with Redis).
        clock: The current instant (a request is scored at its minute, and the views' TTLs count
            back from it); the system clock by default.
    """

    def __init__(
        self,
        repo_path: str | Path,
        feature_service: str | None = None,
        fs_yaml: str | Path | None = None,
        clock: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        self.repo_path = Path(repo_path)
        self.feature_service = feature_service
        self.fs_yaml = fs_yaml
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self._store: Any = None
        self._ttls: dict[str, float] = {}

    def bind(self, contract: FeatureContract) -> None:
        """Open the store and check that the service serves ``contract``; called once at load."""
        from aiops import feature_store as fs

        # The server refuses models of another transform, so the contract's service is this one.
        service = self.feature_service or fs.ANOMALY_DETECTOR_SERVICE
        try:
            store = fs.open_store(self.repo_path, self.fs_yaml)
            fs.check_contract(store, contract, service)
        except fs.FeatureStoreError as exc:
            raise ModelLoadError(f"feature store {self.repo_path}: {exc}") from exc
        self._store, self.feature_service = store, service
        self._ttls = fs.feature_ttls(store, service)  # read once, as the contract check is
        log.info("online features from %s, service %s", self.repo_path, service)

    def __call__(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Feature rows (key columns first) for the entities in ``rows``, stamped with the current minute."""
        from aiops import feature_store as fs

        if self._store is None or self.feature_service is None:
            raise RuntimeError("FeastLookup.bind() was not called")
        keys = []
        for i, row in enumerate(rows):
            missing = [k for k in ENTITY_KEYS if not isinstance(row.get(k), str)]
            if missing:
                raise RequestError(
                    f"entities[{i}]: needs the entity keys {list(ENTITY_KEYS)} as strings; missing {missing}"
                )
            keys.append({k: row[k] for k in ENTITY_KEYS})
        now = pd.Timestamp(self.clock())
        try:
            found = fs.online_features(self._store, keys, self.feature_service, now=now, ttls=self._ttls)
        except fs.FeatureStoreError as exc:
            raise RequestError(f"online feature lookup: {exc}") from exc
        features = [c for c in found.columns if c not in ENTITY_KEYS]
        unknown = np.flatnonzero(found[features].isna().all(axis=1).to_numpy())
        if unknown.size:
            shown = [keys[i] for i in unknown[:3]]
            raise RequestError(
                f"no features in the online store for {unknown.size} of the entities, e.g. {shown}, "
                f"none at all or only values older than their feature view's TTL at {now}; materialize "
                "recent ones (aiops.feature_store.materialize) or send 'instances'"
            )
        stamp = pd.DataFrame({TIMESTAMP: [now.floor("min")] * len(found)})
        return pd.concat([stamp, found.reset_index(drop=True)], axis=1)
