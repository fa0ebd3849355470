"""``python -m serving --model URI --port P``: run the KServe model server with the anomaly predictor.

Exit status 2 when the model cannot be loaded (the message says what was looked for where).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from serving.errors import ModelLoadError
from serving.manifests import MODEL_VERSION_ENV
from serving.server import DEFAULT_HOST, DEFAULT_NAME, serve
from serving.service import DEFAULT_MAX_BATCH


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None


def _port(text: str) -> int:
    """A TCP port, checked before the model loads (tens of seconds)."""
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``--help`` lists the options)."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, or a folder (MLflow model or detector bundle)",
    )
    parser.add_argument("--port", type=_port, required=True, help="HTTP port")
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name on the endpoints and in the metrics")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI for models:/ URIs")
    parser.add_argument(
        "--max-batch", type=_positive, default=DEFAULT_MAX_BATCH, help="most rows per request"
    )
    parser.add_argument(
        "--model-version",
        default=os.environ.get(MODEL_VERSION_ENV) or None,
        help=f"model_version metric label (default: ${MODEL_VERSION_ENV}, else derived from the model)",
    )
    parser.add_argument(
        "--feature-repo", default=None, help="Feast repository whose online store answers 'entities' requests"
    )
    parser.add_argument(
        "--feature-service",
        default=None,
        help="Feast feature service (default: anomaly_detector_v<transform>)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit status."""
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    # The serving package's own logger only: kserve configures its and uvicorn's loggers itself.
    package_logger = logging.getLogger("serving")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    try:
        serve(
            args.model,
            args.port,
            name=args.name,
            tracking_uri=args.tracking_uri,
            max_batch=args.max_batch,
            host=args.host,
            model_version=args.model_version,
            feature_repo=args.feature_repo,
            feature_service=args.feature_service,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
