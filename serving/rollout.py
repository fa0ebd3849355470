"""Canary rollout: serve the challenger beside the champion, measure both, promote or roll back.

The decision is measured, not timed: both arms serve real requests, a real Prometheus scrapes
their serving metrics, and :func:`aiops.canary.analyse` compares error rates, latency and the
anomaly-score distributions with minimum sample sizes. Then:

* **promote** – the canary takes all traffic and MLflow's ``champion`` alias moves to it (the
  old champion becomes ``previous``);
* **roll back** – the canary is removed and the alias stays where it was.

Either way the decision and its evidence are recorded in MLflow (experiment ``aiops-rollouts``)
and as tags on the candidate version.

Two ways to run the arms:

* :class:`LocalCanary` starts two real KServe model servers (``python -m serving``) on
  127.0.0.1 and a Prometheus (Debian package) that scrapes them; a seeded router sends each
  request to the canary with the configured probability, as the cluster's router would.
* :class:`KServeCanary` acts on a cluster through ``KServeClient``: Serverless mode updates the
  InferenceService with the new ``storageUri`` and ``canaryTrafficPercent``; RawDeployment mode
  creates a second InferenceService behind the weighted Route (``serving.manifests``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops.canary import ArmStats, CanaryPolicy, CanaryVerdict, analyse
from aiops.localprom import free_port, serve

log = logging.getLogger(__name__)

ROLLOUT_EXPERIMENT = "aiops-rollouts"
ARMS = ("stable", "canary")


# --------------------------------------------------------------------------- evidence from Prometheus


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query, with the bearer token and CA of ``aiops.ingest.prometheus_credentials``."""
    import ssl

    from aiops.ingest import prometheus_credentials

    token, ca_bundle = prometheus_credentials()
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cafile=ca_bundle) if url.startswith("https") else None
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query failed: {expr}: {body}")
    return list(body["data"]["result"])


def _scalar(prometheus: str, expr: str) -> float:
    result = _query(prometheus, expr)
    return float(result[0]["value"][1]) if result else 0.0


def _buckets(prometheus: str, metric: str, selector: str) -> dict[float, float]:
    result = _query(prometheus, f"sum by (le) ({metric}_bucket{{{selector}}})")
    return {float(r["metric"]["le"]): float(r["value"][1]) for r in result}


def arm_stats(prometheus: str, selector: str, window: str | None = None) -> ArmStats:
    """Summarise one arm's serving metrics.

    Args:
        prometheus: Prometheus URL.
        selector: Label matchers of the arm, e.g. ``job="canary"`` or ``model_version="7"``.
        window: Analysis window (``increase`` over it); ``None`` reads the counters as they are,
            which is right for freshly started servers.
    """

    def counter(metric: str, extra: str = "") -> str:
        sel = ",".join(s for s in (selector, extra) if s)
        series = f"{metric}{{{sel}}}"
        return f"sum(increase({series}[{window}]))" if window else f"sum({series})"

    info = "aiops_serving_model_info{" + selector + "}"
    if not _query(prometheus, f"count(max_over_time({info}[{window}]))" if window else f"count({info})"):
        # Without this, a selector that matches nothing reads as an arm that served 0 requests,
        # and every rollout would end "inconclusive" with the cause hidden.
        raise RuntimeError(
            f"Prometheus at {prometheus} has no predictor series matching {{{selector}}}"
            f"{f' in the last {window}' if window else ''}: is the arm scraped (the "
            "InferenceService's prometheus.io annotations), and do its series carry these labels "
            "(namespace from the scrape; model_name and model_version from the server, to which the "
            "manifests pass the registry version as AIOPS_MODEL_VERSION)?"
        )

    def buckets(metric: str) -> dict[float, float]:
        if window is None:
            return _buckets(prometheus, metric, selector)
        result = _query(prometheus, f"sum by (le) (increase({metric}_bucket{{{selector}}}[{window}]))")
        return {float(r["metric"]["le"]): float(r["value"][1]) for r in result}

    # Every outcome counts: both arms see the same traffic, so a canary that rejects requests the
    # stable arm accepts (a narrower feature contract, say) fails like one that crashes.
    return ArmStats(
        requests=_scalar(prometheus, counter("aiops_serving_requests_total")),
        errors=_scalar(prometheus, counter("aiops_serving_requests_total", 'outcome!="ok"')),
        rows=_scalar(prometheus, counter("aiops_serving_rows_total")),
        anomalies=_scalar(prometheus, counter("aiops_serving_anomalies_total")),
        latency_buckets=buckets("aiops_serving_request_seconds"),
        score_buckets=buckets("aiops_serving_anomaly_score"),
    )


# --------------------------------------------------------------------------- the local arms


def _wait_ready(url: str, name: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"model server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=1) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"model server at {url} not ready after {timeout_s}s:\n{log_path.read_text()[-3000:]}")


@dataclass
class LocalCanary:
    """Two real KServe model servers (stable, canary) and a Prometheus scraping both.

    Attributes:
        stable_uri: Model URI of the stable arm (``models:/NAME/VERSION``).
        canary_uri: Model URI of the canary arm.
        workdir: Folder for logs and the Prometheus TSDB.
        tracking_uri: MLflow URI the servers load ``models:/`` URIs from.
        name: Model name on the endpoints.
    """

    stable_uri: str
    canary_uri: str
    workdir: Path
    tracking_uri: str
    name: str = "aiops-anomaly-detector"
    urls: dict[str, str] = field(default_factory=dict)
    prometheus: str = ""

    @contextlib.contextmanager
    def running(self, timeout_s: float = 120.0) -> Iterator[LocalCanary]:
        """Start both servers and Prometheus; stop them on exit."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        processes: list[subprocess.Popen] = []
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": self.tracking_uri}
        try:
            for arm, uri in (("stable", self.stable_uri), ("canary", self.canary_uri)):
                port = free_port()
                log_path = self.workdir / f"{arm}.log"
                command = [sys.executable, "-m", "serving", "--model", uri, "--port", str(port)]
                command += ["--name", self.name, "--tracking-uri", self.tracking_uri]
                with log_path.open("w") as out:
                    processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env))
                self.urls[arm] = f"http://127.0.0.1:{port}"
            for (arm, url), process in zip(self.urls.items(), processes, strict=True):
                _wait_ready(url, self.name, process, self.workdir / f"{arm}.log", timeout_s)
            targets = {arm: [url.removeprefix("http://")] for arm, url in self.urls.items()}
            (self.workdir / "tsdb").mkdir(exist_ok=True)
            with serve(
                self.workdir / "tsdb", self.workdir, scrape_targets=targets, scrape_interval="1s"
            ) as prom:
                self.prometheus = prom
                yield self
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()

    def drive(
        self, rows: pd.DataFrame, canary_percent: int, requests: int, batch: int = 8, seed: int = 0
    ) -> dict:
        """Send ``requests`` v1 requests of ``batch`` rows, each to the canary with ``canary_percent``%."""
        from aiops.pyfunc import to_model_input

        payload = to_model_input(rows).astype({"timestamp": str})
        records = json.loads(payload.to_json(orient="records", date_format="iso"))
        rng = np.random.default_rng(seed)
        sent = dict.fromkeys(ARMS, 0)
        unanswered = dict.fromkeys(ARMS, 0)
        for i in range(requests):
            arm = "canary" if rng.random() < canary_percent / 100 else "stable"
            start = (i * batch) % max(len(records) - batch, 1)
            body = json.dumps({"instances": records[start : start + batch]}).encode()
            request = urllib.request.Request(
                f"{self.urls[arm]}/v1/models/{self.name}:predict", body, {"Content-Type": "application/json"}
            )
            try:
                urllib.request.urlopen(request, timeout=30).read()
            except urllib.error.HTTPError:
                pass  # an error answer is evidence, counted by the server
            except (OSError, http.client.HTTPException):
                # No answer at all (refused, reset, timed out): the server cannot count it.
                unanswered[arm] += 1
            sent[arm] += 1
        return {**sent, "unanswered": unanswered}

    def evidence(self, timeout_s: float = 60.0) -> tuple[ArmStats, ArmStats]:
        """Both arms' stats, once Prometheus has scraped both after the last request was answered."""
        answered = time.time()
        deadline = time.monotonic() + timeout_s
        while True:
            # timestamp() of the plain selector is the scrape's time; of "up == 1" it would be the
            # query's (a comparison drops the samples' timestamps), true at once.
            scraped = {
                r["metric"].get("job"): float(r["value"][1])
                for r in _query(self.prometheus, 'timestamp(up{job=~"stable|canary"})')
            }
            healthy = {
                r["metric"].get("job") for r in _query(self.prometheus, 'up{job=~"stable|canary"} == 1')
            }
            if all(scraped.get(arm, 0.0) > answered and arm in healthy for arm in ARMS):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prometheus at {self.prometheus} did not scrape both arms within {timeout_s:.0f} s "
                    f"after the traffic (last scrapes: {scraped}); see {self.workdir / 'prometheus.log'}"
                )
            time.sleep(0.5)
        return arm_stats(self.prometheus, 'job="stable"'), arm_stats(self.prometheus, 'job="canary"')


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class RolloutResult:
    """What the rollout did and why."""

    model_name: str
    candidate_version: str
    stable_version: str | None
    promoted: bool
    reasons: tuple[str, ...]
    evidence: dict[str, Any]
    run_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for logging."""
        return asdict(self)


def record_decision(result: RolloutResult, tracking_uri: str, canary_percent: int, mode: str) -> str:
    """Log the rollout decision with its evidence to MLflow and tag the candidate version."""
    import mlflow

    from aiops.registry import configure, ensure_experiment, mlflow_client

    configure(tracking_uri)
    experiment_id = ensure_experiment(ROLLOUT_EXPERIMENT, tracking_uri)
    decision = "promoted" if result.promoted else "rolled_back"
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"canary {result.model_name} v{result.candidate_version}"
    ) as run:
        mlflow.log_params(
            {
                "model_name": result.model_name,
                "candidate_version": result.candidate_version,
                "stable_version": result.stable_version or "none",
                "canary_percent": canary_percent,
                "mode": mode,
            }
        )
        mlflow.set_tags({"decision": decision, "reason": "; ".join(result.reasons)[:5000]})
        flat = {
            f"{arm}_{k}": float(v)
            for arm in ARMS
            for k, v in result.evidence.get(arm, {}).items()
            if isinstance(v, int | float)
        }
        mlflow.log_metrics({k: v for k, v in flat.items() if np.isfinite(v)})
        mlflow.log_text(json.dumps(result.as_dict(), indent=2, default=str), "canary_evidence.json")
    client = mlflow_client(tracking_uri)
    client.set_model_version_tag(result.model_name, result.candidate_version, "rollout.decision", decision)
    client.set_model_version_tag(
        result.model_name, result.candidate_version, "rollout.reason", "; ".join(result.reasons)[:5000]
    )
    client.set_model_version_tag(
        result.model_name, result.candidate_version, "rollout.run_id", run.info.run_id
    )
    return str(run.info.run_id)


def decide(
    model_name: str,
    candidate_version: str,
    stable_version: str | None,
    verdict: CanaryVerdict,
    tracking_uri: str,
) -> RolloutResult:
    """Apply a verdict to the registry: promote (alias moves) or roll back (alias stays)."""
    from aiops.registry import alias_version, promote

    promoted = verdict.promote
    if promoted and alias_version(model_name, "champion", tracking_uri) != candidate_version:
        promote(
            model_name,
            candidate_version,
            f"canary analysis passed: {'; '.join(verdict.reasons)}",
            tracking_uri,
        )
    return RolloutResult(
        model_name, candidate_version, stable_version, promoted, verdict.reasons, verdict.evidence
    )


def run_local_rollout(
    model_name: str,
    candidate_version: str,
    traffic: pd.DataFrame,
    tracking_uri: str,
    workdir: Path,
    *,
    canary_percent: int = 30,
    requests: int = 600,
    batch: int = 8,
    policy: CanaryPolicy = CanaryPolicy(),
    stable_version: str | None = None,
    seed: int = 0,
) -> RolloutResult:
    """The whole canary rollout on this machine, with real servers and a real Prometheus.

    Args:
        model_name: Registered model.
        candidate_version: The version to roll out (usually the new ``challenger``).
        traffic: Feature rows (with keys) replayed as requests to both arms.
        tracking_uri: MLflow tracking/registry URI.
        workdir: Folder for logs and the Prometheus TSDB.
        canary_percent: Share of requests routed to the canary.
        requests: Requests sent in the analysis window.
        batch: Rows per request.
        policy: Thresholds of the analysis.
        stable_version: The stable arm; the current ``champion`` when ``None``.
        seed: Seed of the router.
    """
    from aiops.canary import CanaryVerdict
    from aiops.registry import alias_version

    stable = stable_version or alias_version(model_name, "champion", tracking_uri)
    if stable is None or stable == candidate_version:
        verdict = CanaryVerdict(
            True, (f"no other serving version to compare with (stable: {stable}); deployed",), {}
        )
        result = decide(model_name, candidate_version, stable, verdict, tracking_uri)
    else:
        canary = LocalCanary(
            f"models:/{model_name}/{stable}",
            f"models:/{model_name}/{candidate_version}",
            workdir,
            tracking_uri,
            model_name,
        )
        try:
            with canary.running():
                sent = canary.drive(traffic, canary_percent, requests, batch, seed)
                stable_stats, canary_stats = (
                    _with_unanswered(stats, sent["unanswered"][arm])
                    for arm, stats in zip(ARMS, canary.evidence(), strict=True)
                )
        except Exception as exc:
            # The servers are stopped and the alias never moved: record why, then fail loudly.
            _record_failure(model_name, candidate_version, stable, exc, tracking_uri, canary_percent, "local")
            raise
        verdict = analyse(stable_stats, canary_stats, policy)
        verdict.evidence["requests_sent"] = sent
        result = decide(model_name, candidate_version, stable, verdict, tracking_uri)
    run_id = record_decision(result, tracking_uri, canary_percent, "local")
    return RolloutResult(**{**result.as_dict(), "run_id": run_id})


def _with_unanswered(stats: ArmStats, unanswered: int) -> ArmStats:
    """Add requests the arm never answered (the server could not count them) as failed ones."""
    from dataclasses import replace

    if not unanswered:
        return stats
    return replace(stats, requests=stats.requests + unanswered, errors=stats.errors + unanswered)


def _record_failure(
    model_name: str,
    candidate_version: str,
    stable_version: str | None,
    exc: BaseException,
    tracking_uri: str,
    canary_percent: int,
    mode: str,
    verdict: CanaryVerdict | None = None,
    rolled_back: bool = True,
) -> None:
    """Record a rollout that broke off, with the error as its reason (best effort).

    Without a ``verdict`` it broke off before one, and the canary was rolled back (or
    ``rolled_back`` is False: that failed too). With a failing verdict, its rollback failed. With
    a passing one, the cluster already serves the candidate but the ``champion`` alias could not
    be moved.
    """
    error = f"{type(exc).__name__}: {exc}"
    left = (
        f"the canary v{candidate_version} may still take {canary_percent}% of traffic: remove it by hand "
        "(see the log)"
    )
    if verdict is None:
        then = "canary rolled back" if rolled_back else f"and its rollback failed too; {left}"
        reasons: tuple[str, ...] = (f"rollout failed before a verdict, {then}: {error}",)
        result = RolloutResult(model_name, candidate_version, stable_version, False, reasons, {})
    elif not verdict.promote:
        reasons = (
            *verdict.reasons,
            f"the verdict is to roll back, but the rollback failed ({error}); {left}",
        )
        result = RolloutResult(
            model_name, candidate_version, stable_version, False, reasons, verdict.evidence
        )
    else:
        reasons = (
            *verdict.reasons,
            f"the cluster serves v{candidate_version}, but the champion alias could not be moved "
            f"({error}); move it with `aiops models promote {model_name} --version {candidate_version}`",
        )
        result = RolloutResult(model_name, candidate_version, stable_version, True, reasons, verdict.evidence)
    try:
        record_decision(result, tracking_uri, canary_percent, mode)
    except Exception:  # noqa: BLE001 - the original error is the one to raise
        log.exception("could not record the failed rollout of %s v%s", model_name, candidate_version)


# --------------------------------------------------------------------------- the cluster arms


@dataclass
class KServeCanary:
    """Canary on a cluster through ``KServeClient`` (Serverless or RawDeployment mode).

    Attributes:
        stable: The stable arm's service spec (name, namespace, storage URI, mode).
        canary_percent: Share of traffic the canary gets.
        prometheus: Cluster Prometheus / thanos-querier URL with the serving metrics.
        window: Analysis window.
    """

    stable: Any  # serving.manifests.ServiceSpec
    canary_percent: int
    prometheus: str
    window: str = "15m"
    client: Any = None
    #: Creates or replaces an OpenShift Route (RawDeployment mode); the Kubernetes API by default.
    apply_route: Callable[[dict], None] | None = None

    def _route(self, canary_name: str, canary_percent: int) -> None:
        from serving.manifests import canary_route

        route = canary_route(
            self.stable.name, self.stable.namespace, f"{self.stable.name}-predictor",
            f"{canary_name}-predictor", canary_percent,
        )  # fmt: skip
        (self.apply_route or _apply_route)(route)

    def _client(self) -> Any:
        if self.client is None:
            from serving.server import import_kserve

            self.client = import_kserve().KServeClient()
        return self.client

    def _canary_spec(self, storage_uri: str, version: str) -> Any:
        from dataclasses import replace

        name = self.stable.name if self.stable.mode == "Serverless" else f"{self.stable.name}-canary"
        return replace(self.stable, name=name, storage_uri=storage_uri, model_version=version)

    def deploy(self, storage_uri: str, version: str, timeout_s: int = 600) -> None:
        """Start the canary and wait until it is ready."""
        from serving.manifests import inference_service, raw_canary, to_dict

        canary = self._canary_spec(storage_uri, version)
        client = self._client()
        if self.stable.mode == "Serverless":
            client.patch(
                canary.name, inference_service(canary, self.canary_percent), namespace=canary.namespace
            )
            client.wait_isvc_ready(canary.name, namespace=canary.namespace, timeout_seconds=timeout_s)
            return
        isvc, route = raw_canary(self.stable, canary, self.canary_percent)
        client.create(isvc, namespace=canary.namespace)
        # The Route shifts traffic only once the canary can answer it.
        client.wait_isvc_ready(canary.name, namespace=canary.namespace, timeout_seconds=timeout_s)
        (self.apply_route or _apply_route)(route)
        log.info("route %s: %s", route["metadata"]["name"], to_dict(route)["spec"])

    def deploy_first(self, storage_uri: str, version: str, timeout_s: int = 600) -> None:
        """No champion yet: serve ``version`` as the stable service ``{name}``, created or updated.

        There is nothing to compare it with, so no canary; in RawDeployment mode the Route then
        sends all traffic to ``{name}``.
        """
        from dataclasses import replace

        from serving.manifests import inference_service

        client = self._client()
        first = replace(self.stable, storage_uri=storage_uri, model_version=version)
        isvc = inference_service(first)
        try:
            client.create(isvc, namespace=first.namespace)
        except RuntimeError as exc:  # KServeClient wraps the API's 409 AlreadyExists
            if getattr(exc.__context__, "status", None) != 409:
                raise
            client.patch(first.name, isvc, namespace=first.namespace)
        client.wait_isvc_ready(first.name, namespace=first.namespace, timeout_seconds=timeout_s)
        self.stable = first
        if first.mode != "Serverless":
            self._route(f"{first.name}-canary", 0)

    def evidence(self, stable_version: str, canary_version: str) -> tuple[ArmStats, ArmStats]:
        """Both arms' stats over the window, told apart by their ``model_version`` label.

        Only this service's series count: its namespace, and the ``model_name`` its servers
        export (the InferenceService's name, ``{name}`` or ``{name}-canary``). Another model, or
        a copy of this one in another namespace, that serves the same version number is left out.
        """
        return (
            arm_stats(self.prometheus, self.arm_selector(stable_version), self.window),
            arm_stats(self.prometheus, self.arm_selector(canary_version), self.window),
        )

    def arm_selector(self, version: str) -> str:
        """The label matchers of the arm serving ``version``."""
        name = self.stable.name  # a Kubernetes name: [a-z0-9-], nothing a regex reads specially
        return (
            f'namespace="{self.stable.namespace}",model_name=~"{name}|{name}-canary",'
            f'model_version="{version}"'
        )

    def promote(self, storage_uri: str, version: str, timeout_s: int = 600) -> None:
        """Give the new version all traffic, and leave the cluster ready for the next rollout.

        RawDeployment: all traffic to the canary first; then the stable InferenceService is
        updated to the new model and, once ready, takes all traffic back, and the canary is
        deleted. The next rollout then finds ``{name}`` serving the champion and no canary.
        If the updated stable service never gets ready, its old spec is put back before the
        error goes up: the Deployment's old pods still serve (a rolling update keeps them
        until new ones are ready), so the rollback's Route leads to the old model, not to a
        service that would switch to the new one later.
        """
        from dataclasses import replace

        from serving.manifests import inference_service

        client = self._client()
        promoted = self._canary_spec(storage_uri, version)
        if self.stable.mode == "Serverless":
            client.patch(promoted.name, inference_service(promoted, 100), namespace=promoted.namespace)
            return
        self._route(promoted.name, 100)
        stable = replace(self.stable, storage_uri=storage_uri, model_version=version)
        client.patch(stable.name, inference_service(stable), namespace=stable.namespace)
        try:
            client.wait_isvc_ready(stable.name, namespace=stable.namespace, timeout_seconds=timeout_s)
        except BaseException:
            client.patch(self.stable.name, inference_service(self.stable), namespace=self.stable.namespace)
            raise
        # From here the stable service serves the new version: the promotion has happened, and
        # a failed clean-up must not read as a rollback (the record would say the old model serves).
        self.stable = stable
        try:
            self._route(promoted.name, 0)
            client.delete(promoted.name, namespace=promoted.namespace)
        except Exception as exc:  # noqa: BLE001 - named in the log; both arms serve the new version
            log.warning(
                "promoted v%s: %s serves it, but removing the canary failed (%s: %s); both serve v%s. "
                "Delete InferenceService %s in %s and point Route %s at %s-predictor only before the "
                "next rollout",
                version, stable.name, type(exc).__name__, exc, version, promoted.name,
                stable.namespace, stable.name, stable.name,
            )  # fmt: skip

    def rollback(self, storage_uri: str, version: str) -> None:
        """Send all traffic back to the stable arm and remove the canary."""
        from serving.manifests import inference_service

        client = self._client()
        if self.stable.mode == "Serverless":
            client.patch(self.stable.name, inference_service(self.stable, 0), namespace=self.stable.namespace)
        else:
            canary = self._canary_spec(storage_uri, version)
            self._route(canary.name, 0)  # before the canary's Service disappears behind the Route
            client.delete(canary.name, namespace=canary.namespace)


def _apply_route(route: dict) -> None:
    """Create or replace an OpenShift Route through the Kubernetes API."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    with contextlib.suppress(config.ConfigException):
        config.load_incluster_config()
    api = client.CustomObjectsApi()
    namespace, name = route["metadata"]["namespace"], route["metadata"]["name"]
    try:
        api.replace_namespaced_custom_object("route.openshift.io", "v1", namespace, "routes", name, route)
    except ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_custom_object("route.openshift.io", "v1", namespace, "routes", route)


def run_cluster_rollout(
    canary: KServeCanary,
    model_name: str,
    candidate_version: str,
    storage_uri: str,
    stable_version: str,
    tracking_uri: str,
    *,
    policy: CanaryPolicy = CanaryPolicy(),
    wait_s: float | None = None,
) -> RolloutResult:
    """Deploy the canary on the cluster, wait one analysis window, decide, act, record.

    With no other version serving (``stable_version`` is the candidate: no champion yet), the
    candidate is deployed as the stable service and promoted without a comparison, as the
    local rollout does; the reason says so.
    """
    from aiops.canary import CanaryVerdict

    mode = canary.stable.mode
    first = stable_version == candidate_version
    try:
        if first:
            canary.deploy_first(storage_uri, candidate_version)
            verdict = CanaryVerdict(
                True,
                (
                    "no other serving version to compare with (no champion yet); "
                    f"deployed as {canary.stable.name}",
                ),
                {},
            )
        else:
            canary.deploy(storage_uri, candidate_version)
            time.sleep(wait_s if wait_s is not None else pd.Timedelta(canary.window).total_seconds())
            stable_stats, canary_stats = canary.evidence(stable_version, candidate_version)
            verdict = analyse(stable_stats, canary_stats, policy)
            if verdict.promote:
                canary.promote(storage_uri, candidate_version)
    except Exception as exc:
        # Whatever broke (a canary never ready, Prometheus without its series, a failed
        # promotion), the stable arm takes all traffic back and the alias stays.
        rolled_back = first or _try_rollback(canary, storage_uri, candidate_version)
        _record_failure(
            model_name, candidate_version, None if first else stable_version, exc, tracking_uri,
            canary.canary_percent, mode, rolled_back=rolled_back,
        )  # fmt: skip
        raise
    if not verdict.promote:
        try:
            canary.rollback(storage_uri, candidate_version)
        except Exception as exc:
            _record_failure(
                model_name, candidate_version, stable_version, exc, tracking_uri,
                canary.canary_percent, mode, verdict, rolled_back=False,
            )  # fmt: skip
            raise
    try:
        result = decide(model_name, candidate_version, stable_version, verdict, tracking_uri)
    except Exception as exc:
        if verdict.promote:  # the cluster and the registry now disagree: say so where people look
            _record_failure(
                model_name, candidate_version, stable_version, exc, tracking_uri,
                canary.canary_percent, mode, verdict,
            )  # fmt: skip
        raise
    run_id = record_decision(result, tracking_uri, canary.canary_percent, mode)
    return RolloutResult(**{**result.as_dict(), "run_id": run_id})


def _try_rollback(canary: KServeCanary, storage_uri: str, version: str) -> bool:
    """Roll the canary back after an error; whether that worked (its own error is logged)."""
    try:
        canary.rollback(storage_uri, version)
    except Exception:  # noqa: BLE001 - the error that broke the rollout is the one raised
        log.exception("rolling back the canary of v%s failed too", version)
        return False
    return True
