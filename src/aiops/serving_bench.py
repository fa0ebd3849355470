"""``aiops benchmark serving``: latency and throughput of the KServe predictor, next to a do-nothing model.

Two real KServe model servers run as subprocesses on 127.0.0.1, set up the same way: the
predictor (``python -m serving``) with the model under test, and a baseline ``kserve.Model``
that returns its input (``python -m serving.baseline``). One client drives both over
persistent HTTP/1.1 connections with the same pre-encoded request bodies, alternating
between them round by round so that background load hits both alike.

Measured, per protocol (v1 JSON rows, v2 tensors):

* latency of single-row requests: p50 and p99 per round, the median over rounds;
* throughput at batch sizes 1, 32 and 256: rows per second over a fixed number of rows per
  round, the median over rounds;
* where the predictor's time goes: mean time per stage (decode, score per member, combine,
  explain, encode) from the predictor's own ``aiops_serving_stage_seconds`` histograms, and
  the time outside the predictor (HTTP, KServe's decoding and routing);
* the cost of a forecast-cache miss: single rows at instants nobody asked for before.

The request rows are feature rows of the simulated cluster (the pipeline's default data), so a
model trained by ``make run`` sees its own workloads. The client runs on the same machine as
the servers and takes CPU from them: the numbers are a conservative bound for a pod with the
same cores. This module imports neither kserve nor ``serving``; it talks to them over HTTP.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aiops.schema import KEY_COLUMNS, TIMESTAMP

#: A pre-encoded request: body bytes and headers.
Body = tuple[bytes, dict[str, str]]

DEFAULT_MODEL = "models:/aiops-anomaly-detector@champion"
PREDICTOR_NAME = "aiops-anomaly-detector"
BASELINE_NAME = "echo"
#: v1 JSON rows as objects (named columns), v1 rows as feature vectors (the contract's column
#: order), v2 JSON tensors, v2 with the features tensor in the binary data extension.
PROTOCOLS = ("v1", "v1-vectors", "v2", "v2-binary")
_JSON_HEADERS = {"content-type": "application/json"}
#: The targets the predictor is held to.
TARGET_P99_MS = 20.0
TARGET_BASELINE_RATIO = 3.0
TARGET_ROWS_PER_S_AT_256 = 5000.0


@dataclass(frozen=True)
class ServingBenchmark:
    """Size of the run.

    Attributes:
        requests: Single-row requests per round, server and protocol.
        rounds: Rounds per measurement (medians over rounds are reported).
        warmup: Requests per server and protocol before measuring.
        batch_sizes: Batch sizes of the throughput measurement.
        rows_per_round: Rows sent per throughput round (requests = rows / batch size, at most
            ``requests``).
        distinct_rows: Different feature rows the requests cycle through.
        cold_requests: Single-row requests at unseen instants (forecast-cache misses).
        seed: Seed of the simulated cluster that provides the rows.
        duration: Simulated span (the latest rows are used).
        max_batch: The predictor's ``--max-batch``.
        startup_timeout_s: How long a server may take to become ready.
    """

    requests: int = 1000
    rounds: int = 5
    warmup: int = 200
    batch_sizes: tuple[int, ...] = (1, 32, 256)
    rows_per_round: int = 4096
    distinct_rows: int = 512
    cold_requests: int = 10
    seed: int = 42
    duration: str = "4D"
    max_batch: int = 1024
    startup_timeout_s: float = 180.0


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class _Server:
    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]


@contextmanager
def _server(command: list[str], name: str, port: int, log: Path) -> Iterator[_Server]:
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield _Server(name, port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(servers: Sequence[_Server], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    while pending:
        server = pending[0]
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} server exited ({server.process.returncode}):\n"
                f"{server.log.read_text()[-3000:]}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            connection.request("GET", f"/v2/models/{server.name}/ready")
            if connection.getresponse().status == 200:
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} server not ready in {timeout_s:.0f} s:\n{server.log.read_text()[-3000:]}"
            )
        time.sleep(0.25)


class _Client:
    """One persistent HTTP/1.1 connection; every answer is read whole and must be 200."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: Body) -> float:
        """Send one request; returns its latency in milliseconds."""
        try:
            return self._post(path, body)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closes a keep-alive connection left idle too long: reconnect, untimed.
            self.connection.close()
            self.connection.connect()
            return self._post(path, body)

    def _post(self, path: str, body: Body) -> float:
        payload, headers = body
        started = time.perf_counter()
        self.connection.request("POST", path, body=payload, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status != 200:
            raise RuntimeError(f"POST {path} answered {response.status}: {data[:500]!r}")
        return elapsed

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {data[:500]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


# --------------------------------------------------------------------------- request bodies


def benchmark_rows(contract: dict[str, Any], settings: ServingBenchmark) -> pd.DataFrame:
    """Feature rows for the model's contract: the latest rows of the simulated cluster.

    Raises:
        ValueError: When the simulated signals cannot provide the model's features.
    """
    from aiops.features import FeatureConfig, build_features
    from aiops.ingest import SyntheticSource, synthetic_telemetry

    config = contract["feature_config"]
    feature_config = FeatureConfig(
        windows=tuple(config["windows"]),
        lags=tuple(config["lags"]),
        step_seconds=float(config["step_seconds"]),
    )
    telemetry = synthetic_telemetry(SyntheticSource(seed=settings.seed, duration=settings.duration))
    features = build_features(telemetry.metrics, feature_config)
    missing = [name for name in contract["feature_names"] if name not in features.columns]
    if missing:
        raise ValueError(
            f"the simulated cluster does not provide {len(missing)} of the model's features "
            f"(e.g. {missing[:3]}); pass rows= with feature rows of the model's own data"
        )
    latest = features.sort_values(TIMESTAMP, kind="stable").tail(settings.distinct_rows)
    return latest.loc[:, [*KEY_COLUMNS, *contract["feature_names"]]].reset_index(drop=True)


def _json_rows(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    stamps = rows[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    for stamp, record in zip(stamps, rows.drop(columns=[TIMESTAMP]).to_dict("records"), strict=True):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        out.append({TIMESTAMP: stamp, **clean})
    return out


def v1_body(rows: pd.DataFrame) -> bytes:
    """A v1 ``instances`` body."""
    return json.dumps({"instances": _json_rows(rows)}).encode()


def v1_vectors_body(rows: pd.DataFrame, feature_names: Sequence[str]) -> bytes:
    """A v1 ``instances`` body of feature vectors: the key columns, then the features in contract order."""
    columns = [TIMESTAMP, *KEY_COLUMNS[1:], *feature_names]
    vectors = [[row[c] for c in columns] for row in _json_rows(rows)]
    return json.dumps({"instances": vectors}).encode()


def v2_body(rows: pd.DataFrame, feature_names: Sequence[str]) -> bytes:
    """A v2 body: ``features`` FP64 [n, F] and the key columns as BYTES [n]."""
    values = rows.loc[:, list(feature_names)].to_numpy(dtype=np.float64).ravel().tolist()
    features = {
        "name": "features",
        "datatype": "FP64",
        "shape": [len(rows), len(feature_names)],
        "data": [None if math.isnan(v) else v for v in values],
    }
    return json.dumps({"inputs": [features, *_key_tensors(rows)]}).encode()


def v2_binary_body(rows: pd.DataFrame, feature_names: Sequence[str]) -> Body:
    """A v2 request in the binary data extension: the features as raw little-endian FP64 after the JSON.

    The open inference protocol's binary tensor extension (KServe, Triton): the JSON header
    describes the tensors, ``binary_data_size`` says how many bytes of the tail belong to
    ``features``, and the ``inference-header-content-length`` header says where the JSON ends.
    NaN (a missing value) travels as itself.
    """
    raw = rows.loc[:, list(feature_names)].to_numpy(dtype="<f8").tobytes()
    features = {
        "name": "features",
        "datatype": "FP64",
        "shape": [len(rows), len(feature_names)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [features, *_key_tensors(rows)]}).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def _key_tensors(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The timestamp and entity keys as v2 BYTES [n] tensors."""
    n = len(rows)
    inputs: list[dict[str, Any]] = [
        {
            "name": TIMESTAMP,
            "datatype": "BYTES",
            "shape": [n],
            "data": rows[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist(),
        },
    ]
    inputs += [
        {"name": k, "datatype": "BYTES", "shape": [n], "data": rows[k].tolist()} for k in KEY_COLUMNS[1:]
    ]
    return inputs


def request_body(rows: pd.DataFrame, names: Sequence[str], protocol: str) -> Body:
    """The request for ``rows`` in ``protocol`` (one of :data:`PROTOCOLS`)."""
    if protocol == "v1":
        return v1_body(rows), _JSON_HEADERS
    if protocol == "v1-vectors":
        return v1_vectors_body(rows, names), _JSON_HEADERS
    if protocol == "v2":
        return v2_body(rows, names), _JSON_HEADERS
    if protocol == "v2-binary":
        return v2_binary_body(rows, names)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _bodies(rows: pd.DataFrame, names: Sequence[str], protocol: str, batch: int) -> list[Body]:
    """Bodies of ``batch`` consecutive rows, cycling through ``rows`` (at most 64 distinct bodies)."""
    count = max(1, min(64, len(rows) // batch)) if batch > 1 else len(rows)
    return [
        request_body(rows.iloc[[(i * batch + j) % len(rows) for j in range(batch)]], names, protocol)
        for i in range(count)
    ]


def _path(protocol: str, name: str) -> str:
    return f"/v1/models/{name}:predict" if protocol.startswith("v1") else f"/v2/models/{name}/infer"


# --------------------------------------------------------------------------- measurements


def _run(client: _Client, path: str, bodies: Sequence[Body], n: int) -> np.ndarray:
    return np.array([client.post(path, bodies[i % len(bodies)]) for i in range(n)])


def _latency(
    clients: dict[str, _Client],
    bodies: dict[str, list[Body]],
    paths: dict[str, str],
    settings: ServingBenchmark,
) -> dict[str, Any]:
    """Single-row p50/p99 per round for predictor and baseline, alternating; medians over rounds."""
    for role, client in clients.items():
        _run(client, paths[role], bodies[role], settings.warmup)
    rounds: dict[str, list[tuple[float, float]]] = {role: [] for role in clients}
    for _ in range(settings.rounds):
        for role, client in clients.items():
            ms = _run(client, paths[role], bodies[role], settings.requests)
            rounds[role].append((float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))
    out: dict[str, Any] = {}
    for role, values in rounds.items():
        prefix = "" if role == "predictor" else "baseline_"
        out[f"{prefix}p50_ms"] = float(np.median([p50 for p50, _ in values]))
        out[f"{prefix}p99_ms"] = float(np.median([p99 for _, p99 in values]))
        out[f"{prefix}rounds_p99_ms"] = [round(p99, 3) for _, p99 in values]
    return out


def _throughput(
    client: _Client, path: str, bodies: Sequence[Body], batch: int, settings: ServingBenchmark
) -> float:
    requests = max(1, min(settings.rows_per_round // batch, settings.requests))
    _run(client, path, bodies, min(requests, 20))
    rates = []
    for _ in range(settings.rounds):
        started = time.perf_counter()
        _run(client, path, bodies, requests)
        rates.append(requests * batch / (time.perf_counter() - started))
    return float(np.median(rates))


def _scrape(client: _Client) -> dict[tuple[str, str], float]:
    """The predictor's stage and request-time histogram sums and counts."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").decode()):
        for sample in family.samples:
            if sample.name.startswith(
                ("aiops_serving_stage_seconds_", "aiops_serving_request_seconds_")
            ) and (sample.name.endswith(("_sum", "_count"))):
                key = sample.labels.get("stage") or f"request.{sample.labels.get('protocol', '')}"
                out[(key, sample.name.rsplit("_", 1)[1])] = out.get(
                    (key, sample.name.rsplit("_", 1)[1]), 0.0
                ) + (sample.value)
    return out


def _stage_means(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    """Mean milliseconds per stage between two scrapes."""
    out = {}
    for (stage, part), total in after.items():
        if part != "sum":
            continue
        count = after.get((stage, "count"), 0.0) - before.get((stage, "count"), 0.0)
        if count > 0:
            out[stage] = round((total - before.get((stage, "sum"), 0.0)) / count * 1000.0, 4)
    return dict(sorted(out.items()))


def _cold(client: _Client, path: str, rows: pd.DataFrame, settings: ServingBenchmark) -> float | None:
    """Median latency of single rows at instants the forecast cache has not seen (3 h apart)."""
    if settings.cold_requests <= 0:
        return None
    base = rows.iloc[[0]].copy()
    latencies = []
    for k in range(1, settings.cold_requests + 1):
        base[TIMESTAMP] = rows[TIMESTAMP].max() + pd.Timedelta(hours=3 * k)
        latencies.append(client.post(path, (v1_body(base), _JSON_HEADERS)))
    return float(np.median(latencies))


# --------------------------------------------------------------------------- the run


def run_serving_benchmark(
    model: str = DEFAULT_MODEL,
    *,
    tracking_uri: str | None = None,
    settings: ServingBenchmark | None = None,
    rows: pd.DataFrame | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Benchmark the predictor serving ``model`` against the do-nothing baseline.

    Args:
        model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a model folder.
        tracking_uri: MLflow tracking URI for ``models:/`` URIs (default: ``MLFLOW_TRACKING_URI``,
            else ``./mlruns``).
        settings: Size of the run (:class:`ServingBenchmark` defaults when ``None``).
        rows: Feature rows (key columns + the model's features) to send; default: the latest
            rows of the simulated cluster (see :func:`benchmark_rows`).
        workdir: Where the server logs go (a temporary folder by default).

    Returns:
        The report: ``p50_ms``, ``p99_ms``, ``baseline_p99_ms``, ``rows_per_s`` (v1, by batch
        size), ``protocols`` (both protocols in detail), ``stages_ms``, ``cold_forecast_ms``,
        ``targets`` and the machine it ran on.

    Raises:
        RuntimeError: When a server does not start or answers an error.
    """
    from aiops.registry import resolve_tracking_uri

    settings = settings or ServingBenchmark()
    started = time.perf_counter()
    load_before = os.getloadavg()
    with ExitStack() as stack:
        folder = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        ports = {"predictor": _free_port(), "baseline": _free_port()}
        predictor_command = [
            sys.executable, "-m", "serving", "--model", str(model), "--port", str(ports["predictor"]),
            "--name", PREDICTOR_NAME, "--max-batch", str(settings.max_batch),
        ]  # fmt: skip
        if str(model).startswith("models:/"):
            predictor_command += ["--tracking-uri", resolve_tracking_uri(tracking_uri or "")]
        baseline_command = [
            sys.executable, "-m", "serving.baseline",
            "--port", str(ports["baseline"]), "--name", BASELINE_NAME,
        ]  # fmt: skip
        servers = {
            "predictor": stack.enter_context(
                _server(predictor_command, PREDICTOR_NAME, ports["predictor"], folder / "predictor.log")
            ),
            "baseline": stack.enter_context(
                _server(baseline_command, BASELINE_NAME, ports["baseline"], folder / "baseline.log")
            ),
        }
        _wait_ready(list(servers.values()), settings.startup_timeout_s)
        clients = {role: _Client(server.port) for role, server in servers.items()}
        for client in clients.values():
            stack.callback(client.close)
        contract = json.loads(clients["predictor"].get(f"/v2/models/{PREDICTOR_NAME}/contract"))
        data = rows if rows is not None else benchmark_rows(contract, settings)
        report = _measure(clients, contract, data, settings)
    report.update(
        {
            "model": str(model),
            "model_version": contract["model_version"],
            "members": contract["members"],
            "n_features": len(contract["feature_names"]),
            "settings": asdict(settings),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "client": "same machine as the servers (it takes CPU from them)",
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    report["targets"] = _targets(report)
    return report


def _measure(
    clients: dict[str, _Client], contract: dict[str, Any], rows: pd.DataFrame, settings: ServingBenchmark
) -> dict[str, Any]:
    names = contract["feature_names"]
    predictor = clients["predictor"]
    protocols: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        paths = {"predictor": _path(protocol, PREDICTOR_NAME), "baseline": _path(protocol, BASELINE_NAME)}
        single = _bodies(rows, names, protocol, 1)
        before = _scrape(predictor)
        latency = _latency(clients, {"predictor": single, "baseline": single}, paths, settings)
        stages[f"{protocol}.single_row"] = _stage_means(before, _scrape(predictor))
        rates, baseline_rates = {}, {}
        for batch in settings.batch_sizes:
            bodies = _bodies(rows, names, protocol, batch)
            before = _scrape(predictor)
            rates[str(batch)] = round(_throughput(predictor, paths["predictor"], bodies, batch, settings), 1)
            stages[f"{protocol}.batch_{batch}"] = _stage_means(before, _scrape(predictor))
            baseline_rates[str(batch)] = round(
                _throughput(clients["baseline"], paths["baseline"], bodies, batch, settings), 1
            )
        protocols[protocol] = {**latency, "rows_per_s": rates, "baseline_rows_per_s": baseline_rates}
    headline = protocols["v1"]
    return {
        "headline_protocol": "v1",
        "p50_ms": round(headline["p50_ms"], 3),
        "p99_ms": round(headline["p99_ms"], 3),
        "baseline_p50_ms": round(headline["baseline_p50_ms"], 3),
        "baseline_p99_ms": round(headline["baseline_p99_ms"], 3),
        "rows_per_s": headline["rows_per_s"],
        "protocols": protocols,
        "stages_ms": stages,
        "cold_forecast_ms": _cold(predictor, _path("v1", PREDICTOR_NAME), rows, settings),
    }


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for protocol, detail in report["protocols"].items():
        at_256 = detail["rows_per_s"].get("256")
        out[protocol] = {
            f"p99_under_{TARGET_P99_MS:g}_ms": detail["p99_ms"] < TARGET_P99_MS,
            f"p99_within_{TARGET_BASELINE_RATIO:g}x_baseline": detail["p99_ms"]
            <= TARGET_BASELINE_RATIO * detail["baseline_p99_ms"],
            "p99_over_baseline": round(detail["p99_ms"] / detail["baseline_p99_ms"], 2),
            f"rows_per_s_at_256_over_{TARGET_ROWS_PER_S_AT_256:g}": None
            if at_256 is None
            else at_256 >= TARGET_ROWS_PER_S_AT_256,
        }
    return out


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"model {report['model']} (version {report['model_version']}, members {report['members']})",
        f"{'protocol':<11}{'p50 ms':>9}{'p99 ms':>9}{'base p99':>10}{'ratio':>7}"
        + "".join(f"{'rows/s @' + b:>14}" for b in report["rows_per_s"]),
    ]
    for protocol, detail in report["protocols"].items():
        ratio = detail["p99_ms"] / detail["baseline_p99_ms"]
        lines.append(
            f"{protocol:<11}{detail['p50_ms']:>9.2f}{detail['p99_ms']:>9.2f}{detail['baseline_p99_ms']:>10.2f}"
            f"{ratio:>7.2f}" + "".join(f"{detail['rows_per_s'][b]:>14,.0f}" for b in detail["rows_per_s"])
        )
    if report.get("cold_forecast_ms") is not None:
        lines.append(
            f"forecast-cache miss (single row at an unseen instant): {report['cold_forecast_ms']:.1f} ms"
        )
    lines.append(f"targets: {json.dumps(report['targets'])}")
    return "\n".join(lines)
