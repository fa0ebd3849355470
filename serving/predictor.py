"""The KServe predictor: a ``kserve.Model`` over :class:`~serving.service.ScoringService`.

This module imports kserve at its top, and ``import kserve`` parses ``sys.argv``: import it
through :func:`serving.server.import_kserve` (or after it), never from library code or at the
top of a test module.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InferenceError, InvalidInput
from prometheus_client import CollectorRegistry

from aiops.schema import ENTITY_KEYS, TIMESTAMP
from serving.codec import Tensor
from serving.errors import NotConfiguredError, RequestError
from serving.service import DEFAULT_MAX_BATCH, FeatureLookup, ScoringService

log = logging.getLogger(__name__)


class AnomalyPredictor(Model):
    """Serves a registered anomaly detector on the v1 and v2 endpoints.

    The model is loaded by :meth:`load`; the server registers the predictor, and answers
    ready, only after that succeeded.

    Args:
        name: Model name on the endpoints (``/v1/models/NAME:predict``, ``/v2/models/NAME/infer``).
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a model folder.
        tracking_uri: MLflow tracking/registry URI for ``models:/`` URIs.
        max_batch: Most rows one request may carry.
        model_version: Override of the ``model_version`` metric label.
        feature_lookup: Online feature lookup by entity keys (the ``entities`` request kind).
        registry: Prometheus registry for the predictor's metrics (default: the global one
            that KServe's ``/metrics`` exposes).
    """

    def __init__(
        self,
        name: str,
        model_uri: str,
        *,
        tracking_uri: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        model_version: str | None = None,
        feature_lookup: FeatureLookup | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.max_batch = max_batch
        self.model_version = model_version
        self.feature_lookup = feature_lookup
        self.registry = registry
        self.service: ScoringService | None = None

    def load(self) -> bool:
        """Fetch and load the model, check its fast scorers; ready only when all of that worked."""
        self.service = ScoringService.from_uri(
            self.model_uri,
            self.name,
            tracking_uri=self.tracking_uri,
            max_batch=self.max_batch,
            model_version=self.model_version,
            feature_lookup=self.feature_lookup,
            registry=self.registry,
        )
        self.ready = True
        return self.ready

    def _service(self) -> ScoringService:
        if self.service is None:
            raise InferenceError(f"model {self.name} is not loaded")
        return self.service

    def predict(
        self, payload: dict[str, Any] | InferRequest | bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        """Score a v1 body or a v2 request; client mistakes become 400, the unconfigured 501."""
        service = self._service()
        try:
            if isinstance(payload, InferRequest):
                return self._infer_v2(service, payload)
            return service.predict_v1(payload)
        except RequestError as exc:
            raise InvalidInput(str(exc)) from exc
        except NotConfiguredError as exc:
            # kserve's handler answers NotImplementedError with 501.
            raise NotImplementedError(str(exc)) from exc
        except InvalidInput:
            raise
        except Exception as exc:
            log.exception("scoring failed")
            raise InferenceError(
                f"internal error while scoring ({type(exc).__name__}); the server log has the details"
            ) from exc

    def _infer_v2(self, service: ScoringService, request: InferRequest) -> InferResponse:
        tensors = [_tensor(item) for item in request.inputs]
        requested = [output.name for output in request.request_outputs or []]
        result = service.predict_v2(tensors, request.parameters, requested)
        outputs = [
            InferOutput(name=t.name, shape=list(t.data.shape), datatype=t.datatype, data=t.data)
            for t in result.outputs
        ]
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=service.version,
            infer_outputs=outputs,
            parameters=result.parameters,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 metadata: the feature-vector inputs (``telemetry`` BYTES [k] is the alternative)."""
        width = len(self.service.loaded.bundle.contract.feature_names) if self.service else -1
        keys = [{"name": key, "datatype": "BYTES", "shape": [-1]} for key in (TIMESTAMP, *ENTITY_KEYS)]
        return [{"name": "features", "datatype": "FP64", "shape": [-1, width]}, *keys]

    def get_output_types(self) -> list[dict[str, Any]]:
        """v2 metadata: every output a response carries, as the loaded model's encoder gives them."""
        if self.service is None:
            return [
                {"name": "anomaly_score", "datatype": "FP64", "shape": [-1]},
                {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
            ]
        return self.service.output_types


def _tensor(item: Any) -> Tensor:
    """A kserve InferInput as the codec's neutral tensor (binary inputs decoded by kserve)."""
    data = item.data
    if data is None:
        try:
            data = item.as_numpy()
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"input {item.name!r}: binary data does not match shape {item.shape}: {exc}"
            ) from exc
    elif isinstance(data, np.ndarray):
        data = data.reshape(-1)
    return Tensor(
        name=item.name,
        datatype=item.datatype,
        shape=list(item.shape),
        data=data,
        parameters=dict(item.parameters or {}),
    )
