"""Self-healing AIOps core: telemetry, features, detectors, evaluation, registry."""

from __future__ import annotations


def package_version() -> str:
    """The installed ``aiops-selfheal`` version; ``"unknown"`` from a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiops-selfheal")
    except PackageNotFoundError:
        return "unknown"
