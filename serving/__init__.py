"""KServe predictor, InferenceService manifests and the canary rollout."""
