"""Start KServe's model server with the anomaly predictor: :func:`serve`.

``import kserve`` parses ``sys.argv`` when it is first imported (``kserve.model_server``
builds its argument parser at module level), so :func:`import_kserve` imports it with an
empty command line; ``aiops serve --model ... --port ...`` must not be read as kserve options.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from fastapi import Request, Response

from serving.service import DEFAULT_MAX_BATCH

DEFAULT_NAME = "aiops-anomaly-detector"
DEFAULT_HOST = "127.0.0.1"

log = logging.getLogger(__name__)


def import_kserve() -> ModuleType:
    """Import kserve without letting it parse this process's command line."""
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
    finally:
        sys.argv = saved
    return kserve


def serve(
    model_uri: str,
    port: int,
    name: str = DEFAULT_NAME,
    tracking_uri: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    host: str = DEFAULT_HOST,
    model_version: str | None = None,
    feature_repo: str | None = None,
    feature_service: str | None = None,
) -> None:
    """Load the model and run KServe's model server until SIGINT/SIGTERM.

    The model is loaded before the server listens, so the first answer of the readiness
    endpoints (``/v2/health/ready``, ``/v2/models/NAME/ready``) is already "ready".
    gRPC is off; the HTTP port serves v1, v2, ``/metrics`` and
    ``GET /v2/models/NAME/contract`` (the feature order a v2 client needs).

    Args:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a model folder
            (e.g. ``/mnt/models``).
        port: HTTP port.
        name: Model name on the endpoints and in the metrics.
        tracking_uri: MLflow tracking/registry URI (default ``MLFLOW_TRACKING_URI``, else ``./mlruns``).
        max_batch: Most rows one request may carry.
        host: Address to bind; ``0.0.0.0`` inside a container.
        model_version: Override of the ``model_version`` metric label.
        feature_repo: Feast repository whose online store answers ``entities`` requests
            (none: such requests get 501).
        feature_service: Feast feature service to read (default: the model's
            ``anomaly_detector_v<transform version>``).

    Raises:
        serving.errors.ModelLoadError: When the model cannot be found or loaded (nothing listens).
    """
    import_kserve()
    from serving.predictor import AnomalyPredictor

    lookup = None
    if feature_repo:
        from serving.online import FeastLookup

        lookup = FeastLookup(feature_repo, feature_service)
    predictor = AnomalyPredictor(
        name,
        model_uri,
        tracking_uri=tracking_uri,
        max_batch=max_batch,
        model_version=model_version,
        feature_lookup=lookup,
    )
    predictor.load()
    _one_thread_per_request()
    run_model_server([predictor], port, host, routes=[(f"/v2/models/{name}/contract", _contract(predictor))])


def _one_thread_per_request() -> None:
    """Score each request on one thread.

    The server handles one request at a time on its event loop; letting torch (the LSTM
    member) spread a single small forward pass over every core only makes its threads spin
    against the server's own work, which shows as tens of milliseconds of p99 on two cores.
    """
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)


def _contract(predictor: Any) -> Callable[[], Any]:
    async def contract() -> dict[str, Any]:
        return predictor.service.contract()

    return contract


def run_model_server(
    models: Sequence[Any],
    port: int,
    host: str = DEFAULT_HOST,
    routes: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> None:
    """Run KServe's ModelServer (REST only, one process) for loaded ``models`` on ``host:port``.

    Args:
        models: Loaded ``kserve.Model`` objects.
        port: HTTP port.
        host: Address to bind.
        routes: Extra ``GET`` routes ``(path, endpoint)`` on the same application.
    """
    import_kserve()
    from kserve.model_server import ModelServer, app
    from kserve.protocol.rest.server import RESTServer

    class _ModelServer(ModelServer):
        """ModelServer.start's single-process REST path, binding ``host``.

        kserve 0.21's RESTServer always binds 0.0.0.0; tests and laptops want loopback only.
        """

        def start(self, models: list[Any]) -> None:
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(
                "kserve.model_server:app",
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            self._rest_server.config.host = host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            import asyncio

            asyncio.run(self._serve())

    for path, endpoint in routes:
        app.add_api_route(path, endpoint, methods=["GET"])
    server = _ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False)
    add_fast_v2_infer(app, server.dataplane, server.model_repository_extension)
    # After the server configured kserve's logging: per-request timing lines duplicate the
    # Prometheus histograms and cost time on every call.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    log.info("model server on http://%s:%d", host, port)
    _freeze_heap()
    server.start(list(models))


def add_fast_v2_infer(app: Any, dataplane: Any, model_repository_extension: Any) -> None:
    """Route ``POST /v2/models/{name}/infer`` through orjson before KServe's own handler.

    KServe declares the v2 body as a pydantic ``InferenceRequest``, so FastAPI parses it with
    the standard library's ``json`` first: about 30 ms for a 256 x 208 tensor on one core,
    more than scoring it. This route, registered ahead of KServe's (Starlette matches routes in
    order), parses the same bytes with orjson (a KServe dependency), validates the same
    pydantic model and hands it to KServe's own ``V2Endpoints.infer``: decoding, the model
    call, encoding and errors stay KServe's. Bodies of the binary tensor extension (with an
    ``inference-header-content-length`` header) go to KServe as bytes, as FastAPI would pass
    them. Malformed JSON gets 400 with orjson's message; a body that is JSON but not an
    inference request gets FastAPI's 422 with pydantic's errors, as before.
    """
    import orjson
    from fastapi.exceptions import RequestValidationError
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from kserve.protocol.rest.v2_endpoints import V2Endpoints
    from pydantic import ValidationError

    endpoints = V2Endpoints(dataplane, model_repository_extension)

    async def infer(raw_request: Request, raw_response: Response, model_name: str) -> Any:
        body = await raw_request.body()
        if INFERENCE_CONTENT_LENGTH_HEADER in raw_request.headers:
            try:
                return await endpoints.infer(raw_request, raw_response, model_name, body)
            except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
                # KServe's decoding of the binary extension (header length, sizes, element
                # types); the model itself raises only KServe's own errors (predictor.predict).
                raise InvalidInput(
                    f"the binary tensor request could not be decoded: {type(exc).__name__}: {exc}; "
                    "check inference-header-content-length and each input's binary_data_size "
                    "against its shape and datatype"
                ) from exc
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
        try:
            request = InferenceRequest.model_validate(parsed)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        return await endpoints.infer(raw_request, raw_response, model_name, request)

    app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"], include_in_schema=False)


def _freeze_heap() -> None:
    """Move everything allocated so far (modules, the loaded model) out of the garbage collector's sight.

    A full collection walks every tracked object: with torch, pandas, scikit-learn and MLflow
    loaded that is a few milliseconds, paid by whichever request triggers it, which is what
    the p99 of small requests is made of. Objects alive after loading live as long as the
    server, so scanning them again finds nothing; ``gc.freeze`` leaves collections to the
    objects that requests allocate.
    """
    import gc

    gc.collect()
    gc.freeze()
