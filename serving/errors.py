"""Errors the scoring core raises; the KServe adapter maps them to HTTP status codes.

The core (decoding, scoring, encoding) does not import kserve, so it is tested without a
server; :mod:`serving.predictor` turns these into kserve's own error types.
"""

from __future__ import annotations


class RequestError(ValueError):
    """The request is malformed or breaks the model's contract (HTTP 400).

    The message says what was wrong and what the server expected.
    """


class NotConfiguredError(RuntimeError):
    """The request asks for a capability this server was not set up with (HTTP 501)."""


class ModelLoadError(RuntimeError):
    """The model could not be found, downloaded or loaded; the server must not become ready."""
