"""Self-healing AIOps core: telemetry, features, detectors, evaluation, registry."""
