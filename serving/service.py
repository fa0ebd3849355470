"""The predictor's core, without kserve: load once, then decode → score → encode per request.

:class:`ScoringService` is what :class:`serving.predictor.AnomalyPredictor` delegates to. It
raises :class:`~serving.errors.RequestError` (400) and
:class:`~serving.errors.NotConfiguredError` (501) for the client's mistakes, and records
every request in the Prometheus metrics of :mod:`serving.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry

from aiops.schema import KEY_COLUMNS
from serving.codec import Decoded, OutputTensor, RequestDecoder, ResponseEncoder, Tensor, contract_id
from serving.errors import NotConfiguredError, RequestError
from serving.loading import LoadedModel, load_model
from serving.metrics import ModelMetrics, serving_metrics
from serving.scoring import EnsembleScorer, Scores, build_scorer, probe_batch

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
FeatureLookup = Callable[[list[dict[str, str]]], pd.DataFrame]


@dataclass(frozen=True)
class V2Result:
    """A v2 answer: output tensors and response-level parameters."""

    outputs: list[OutputTensor]
    parameters: dict[str, Any]


class ScoringService:
    """A loaded model with its decoder, scorer, encoder and metrics.

    Args:
        loaded: The model (see :func:`serving.loading.load_model`).
        name: The model name on the endpoints and in the metrics.
        max_batch: Most rows one request may carry (feature rows or telemetry rows).
        feature_lookup: Fetches feature rows for entity keys (an online feature store); the
            ``entities`` request kind answers 501 without it.
        registry: Prometheus registry (the process-wide default when ``None``).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        feature_lookup: FeatureLookup | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.loaded = loaded
        self.name = name
        bundle = loaded.bundle
        probe = probe_batch(bundle, loaded.example)
        self.scorer: EnsembleScorer = build_scorer(bundle, probe)
        bind = getattr(feature_lookup, "bind", None)
        if callable(bind):
            bind(bundle.contract)  # e.g. serving.online.FeastLookup: check the service serves the contract
        self.decoder = RequestDecoder(bundle.contract, max_batch, feature_lookup)
        medians = self.scorer.forest.contract_medians if self.scorer.forest is not None else None
        self.encoder = ResponseEncoder(bundle.contract.feature_names, medians)
        # The v2 outputs every response carries (the metadata endpoint lists them): the encoder's
        # own answer for a probe row, so the list cannot drift from what is sent.
        probe_outputs = self.encoder.v2(probe, self.scorer.score(probe))
        self.output_types: list[dict[str, Any]] = [
            {"name": o.name, "datatype": o.datatype, "shape": [-1] * max(1, o.data.ndim)}
            for o in probe_outputs
        ]
        self.metrics = ModelMetrics(serving_metrics(registry), name, loaded.version)
        self.metrics.describe(
            loaded.source, bundle.contract.transform_version, self.scorer.threshold, self.scorer.scorer_kinds
        )
        log.info(
            "serving %s version %s from %s: %d features, members %s, threshold %.4g",
            name,
            loaded.version,
            loaded.source,
            len(bundle.contract.feature_names),
            self.scorer.scorer_kinds,
            self.scorer.threshold,
        )

    @classmethod
    def from_uri(
        cls,
        model_uri: str,
        name: str,
        tracking_uri: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        model_version: str | None = None,
        feature_lookup: FeatureLookup | None = None,
        registry: CollectorRegistry | None = None,
    ) -> ScoringService:
        """Load the model at ``model_uri`` (registry URI or folder) and build the service."""
        loaded = load_model(model_uri, tracking_uri, model_version)
        return cls(loaded, name, max_batch, feature_lookup, registry)

    @property
    def version(self) -> str:
        """The ``model_version`` label: registry version or content fingerprint."""
        return self.loaded.version

    def contract(self) -> dict[str, Any]:
        """What a client needs to build requests: feature order, key columns, transform settings."""
        contract = self.loaded.bundle.contract
        return {
            "model_name": self.name,
            "model_version": self.version,
            "source": self.loaded.source,
            "contract_id": contract_id(contract),
            "key_columns": list(KEY_COLUMNS),
            "feature_names": list(contract.feature_names),
            "signals": list(contract.signals),
            "transform_version": contract.transform_version,
            "feature_config": {
                "windows": list(contract.config.windows),
                "lags": list(contract.config.lags),
                "step_seconds": contract.config.step_seconds,
            },
            "threshold": self.scorer.threshold,
            "members": self.scorer.scorer_kinds,
            "max_batch": self.decoder.max_rows,
        }

    # ----------------------------------------------------------------- requests

    def predict_v1(self, body: Any) -> dict[str, Any]:
        """Answer a v1 request body (parsed JSON, or bytes)."""
        started = time.perf_counter()
        with self._outcome("v1", started):
            decoded = self._decode(lambda: self.decoder.v1(body))
            scores = self._score(decoded)
            encode_started = time.perf_counter()
            predictions = self.encoder.v1(decoded.batch, scores)
            self._finish("v1", scores, encode_started)
        return {
            "model_name": self.name,
            "model_version": self.version,
            "threshold": self.scorer.threshold,
            "predictions": predictions,
        }

    def predict_v2(
        self,
        tensors: Sequence[Tensor],
        parameters: Mapping[str, Any] | None,
        requested: Sequence[str] = (),
    ) -> V2Result:
        """Answer a v2 request given its input tensors, request parameters and requested outputs.

        ``requested`` (the request's ``outputs``) must name outputs this model gives; checked here,
        so that a request KServe would refuse later counts as a client error, not as ``ok``.
        """
        started = time.perf_counter()
        with self._outcome("v2", started):
            decoded = self._decode(lambda: self.decoder.v2(tensors, parameters))
            scores = self._score(decoded)
            encode_started = time.perf_counter()
            outputs = self.encoder.v2(decoded.batch, scores)
            given = [o.name for o in outputs]
            unknown = [name for name in requested if name not in given]
            if unknown:
                raise RequestError(
                    f"requested output(s) {unknown} are not outputs of this model; it gives {given}"
                )
            self._finish("v2", scores, encode_started)
        return V2Result(outputs, {"model_version": self.version, "threshold": self.scorer.threshold})

    def _decode(self, decode: Callable[[], Decoded]) -> Decoded:
        started = time.perf_counter()
        decoded = decode()
        # Telemetry decoding runs the feature transform: report it as its own stage.
        stage = "features" if decoded.kind == "telemetry" else "decode"
        self.metrics.stages({stage: time.perf_counter() - started})
        return decoded

    def _score(self, decoded: Decoded) -> Scores:
        scores = self.scorer.score(decoded.batch, top_k=decoded.options.top_k)
        self.metrics.stages(scores.timings)
        return scores

    def _finish(self, protocol: str, scores: Scores, encode_started: float) -> None:
        self.metrics.stages({"encode": time.perf_counter() - encode_started})
        self.metrics.scored(protocol, scores.score, scores.is_anomaly)

    def _outcome(self, protocol: str, started: float) -> _Outcome:
        return _Outcome(self.metrics, protocol, started)


class _Outcome:
    """Counts a request under the outcome its exception (or its absence) says."""

    def __init__(self, metrics: ModelMetrics, protocol: str, started: float) -> None:
        self.metrics, self.protocol, self.started = metrics, protocol, started

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            outcome = "ok"
        elif issubclass(kind, RequestError):
            outcome = "client_error"
        elif issubclass(kind, NotConfiguredError):
            outcome = "not_configured"
        else:
            outcome = "server_error"
        self.metrics.request(self.protocol, outcome, time.perf_counter() - self.started)
