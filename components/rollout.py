from kfp import dsl
from kfp.dsl import Dataset, Input

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def canary_rollout(
    features: Input[Dataset],
    version: str,
    model_name: str = "aiops-anomaly-detector",
    tracking_uri: str = "",
    canary_percent: int = 30,
    requests: int = 600,
    mode: str = "local",
    namespace: str = "",
    service_name: str = "aiops-anomaly-detector",
    deployment_mode: str = "RawDeployment",
    prometheus_url: str = "",
    analysis_window: str = "15m",
    min_anomaly_rate_ratio: float = 0.0,
) -> bool:
    """Roll ``version`` out as a canary beside the champion; promote or roll back on the evidence.

    ``mode='local'``: two real model servers on this machine and a Prometheus scraping them,
    replaying the latest feature rows as traffic. ``mode='cluster'``: KServeClient updates the
    InferenceService (Serverless: ``canaryTrafficPercent``; RawDeployment: a second service behind
    a weighted Route) and the evidence comes from ``prometheus_url`` over ``analysis_window``.
    ``min_anomaly_rate_ratio`` > 0 also rolls back a canary that raises significantly fewer
    alarms than that share of the stable arm's (off by default; see ``CanaryPolicy``).
    Returns True when the canary was promoted. The decision is recorded in MLflow either way.
    Only a version the promotion gate passed is rolled out; one it rejected or never judged is
    skipped (returns False).
    """
    import os
    import tempfile
    from pathlib import Path

    from aiops.canary import CanaryPolicy
    from aiops.features import load_features
    from aiops.registry import alias_version, mlflow_client
    from serving.rollout import KServeCanary, run_cluster_rollout, run_local_rollout

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass tracking_uri or set MLFLOW_TRACKING_URI")
    client = mlflow_client(uri)
    tags = client.get_model_version(model_name, version).tags
    gate = tags.get("gate.decision")
    if gate not in ("passed", "promoted"):
        # Only a version the gate has judged and passed reaches production traffic.
        why = (
            f"the promotion gate kept the champion ({tags.get('gate.reason', 'no reason recorded')})"
            if gate == "rejected"
            else "the promotion gate never judged it (no gate.decision tag): register it through "
            "the pipeline's register step"
        )
        print(f"rollout of {model_name} v{version} skipped: {why}")
        return False
    if mode == "local":
        from aiops.localprom import LocalPrometheusError, binaries

        try:
            binaries()
        except LocalPrometheusError as exc:
            raise RuntimeError(
                f"rollout_mode='local' runs two model servers and a Prometheus inside this step ({exc}); "
                "on a cluster, pass rollout_mode=cluster with rollout_namespace and rollout_prometheus_url"
            ) from exc
        table, _ = load_features(features.path)
        traffic = table[table["timestamp"] >= table["timestamp"].quantile(0.8)]
        with tempfile.TemporaryDirectory() as tmp:
            # The floors follow the traffic this step sends (a fifth of it per arm), but never
            # below what a test can judge: too little traffic ends inconclusive, rolled back.
            policy = CanaryPolicy(
                min_requests=max(50, min(200, requests // 5)),
                min_anomaly_rate_ratio=min_anomaly_rate_ratio,
            )
            result = run_local_rollout(
                model_name,
                version,
                traffic,
                uri,
                Path(tmp),
                canary_percent=canary_percent,
                requests=requests,
                policy=policy,
            )
    elif mode == "cluster":
        from serving.manifests import ServiceSpec

        if not (namespace and prometheus_url):
            raise ValueError("mode='cluster' needs namespace and prometheus_url")
        source = client.get_model_version(model_name, version).source
        storage_uri = client.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location
        stable = alias_version(model_name, "champion", uri)
        stable_source = client.get_model_version(model_name, stable).source if stable else source
        stable_uri = client.get_logged_model(stable_source.rsplit("/", 1)[-1]).artifact_location
        spec = ServiceSpec(
            service_name, namespace, stable_uri, mode=deployment_mode, model_version=stable or version
        )
        canary = KServeCanary(spec, canary_percent, prometheus_url, analysis_window)
        result = run_cluster_rollout(
            canary,
            model_name,
            version,
            storage_uri,
            stable or version,
            uri,
            policy=CanaryPolicy(min_anomaly_rate_ratio=min_anomaly_rate_ratio),
        )
    else:
        raise ValueError(f"unknown rollout mode '{mode}'; choose 'local' or 'cluster'")
    if result.promoted:  # the champion-age alert reads this (a no-op without a Pushgateway)
        from aiops.monitoring import report_champion

        report_champion("aiops-rollout", model_name, version, step="rollout")
    decision = "promoted" if result.promoted else "rolled back"
    print(f"rollout of {model_name} v{version}: {decision}: {'; '.join(result.reasons)}")
    return result.promoted
