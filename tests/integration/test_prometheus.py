"""Prometheus ingest against a real Prometheus, fed by promtool backfill from simulated telemetry.

The module simulates three hours of a small cluster (with a crash loop, a CPU saturation and a
ten-minute scrape gap), exports it with ``aiops.openmetrics``, backfills it with ``promtool tsdb
create-blocks-from openmetrics``, starts Debian's ``prometheus`` on 127.0.0.1 and reads it back
with ``aiops.prometheus``. Auth, TLS and retries are checked through a small local proxy in front
of that Prometheus.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops.localprom import (
    SCRAPE,
    LocalPrometheusError,
    backfill,
    binaries,
    free_port,
    local_prometheus,
    serve,
)
from aiops.prometheus import (
    PrometheusError,
    PrometheusSource,
    ingest_prometheus,
    load_catalog,
    rate_window_ms,
)
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, METRIC_COLUMNS, SchemaError, validate_metrics
from aiops.simulate import ClusterSpec, simulate_cluster
from aiops.synth import inject
from aiops.telemetry import Telemetry
from tests.conftest import need_binary

pytestmark = pytest.mark.integration

SPEC = ClusterSpec(duration="3h", step="1min", rollouts_per_day=8.0, seed=3)
TOKEN = "t0k3n"
FAST = {"attempts": 2, "backoff_s": 0.01}  # keep failure tests quick
POD_COLUMNS = [c for c in METRIC_COLUMNS if not c.startswith("node_")]
NODE_COLUMNS = [c for c in METRIC_COLUMNS if c.startswith("node_")]


@dataclass(frozen=True)
class Backfilled:
    """A running Prometheus holding ``expected`` (the canonical metrics it was fed)."""

    url: str
    expected: pd.DataFrame
    gap_pod: str
    gap_times: pd.DatetimeIndex

    @property
    def start(self) -> pd.Timestamp:
        return self.expected["timestamp"].min()

    @property
    def end(self) -> pd.Timestamp:
        return self.expected["timestamp"].max()


def _pod_covering(metrics: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, taken: set) -> tuple:
    """Entity keys of a pod alive over the whole of ``[start, end]`` and not already taken."""
    span = metrics.groupby(list(ENTITY_KEYS))["timestamp"].agg(["min", "max"])
    alive = span[(span["min"] <= start) & (span["max"] >= end)].index.difference(pd.Index(list(taken)))
    assert len(alive), f"no free pod alive from {start} to {end}; change SPEC"
    taken.add(alive[0])
    return alive[0]


def _telemetry() -> tuple[Telemetry, str, pd.DatetimeIndex]:
    """Simulated cluster with a crash loop, a CPU saturation and one pod missing ten scrapes."""
    telemetry = simulate_cluster(SPEC)
    t0 = telemetry.metrics["timestamp"].min()
    rng = np.random.default_rng(1)
    taken: set = set()
    for anomaly, (start, end) in (("crash_loop", ("5min", "45min")), ("cpu_saturation", ("90min", "130min"))):
        window = {"start": t0 + pd.Timedelta(start), "end": t0 + pd.Timedelta(end)}
        keys = _pod_covering(telemetry.metrics, window["start"], window["end"], taken)
        telemetry = inject(telemetry, anomaly, **dict(zip(ENTITY_KEYS, keys, strict=True)), **window, rng=rng)
    gap_times = pd.date_range(t0 + pd.Timedelta("140min"), periods=10, freq="1min")
    gap_pod = _pod_covering(telemetry.metrics, gap_times[0] - pd.Timedelta("5min"), gap_times[-1], taken)[2]
    metrics = telemetry.metrics
    dropped = (metrics["pod"] == gap_pod) & metrics["timestamp"].isin(gap_times)
    return Telemetry(metrics=metrics[~dropped].reset_index(drop=True)), gap_pod, gap_times


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfilled]:
    need_binary("prometheus", "prometheus")
    need_binary("promtool", "prometheus")
    telemetry, gap_pod, gap_times = _telemetry()
    with local_prometheus(telemetry, tmp_path_factory.mktemp("prometheus")) as url:
        yield Backfilled(url, telemetry.metrics, gap_pod, gap_times)


@pytest.fixture(scope="module")
def ingested(server: Backfilled) -> pd.DataFrame:
    # The backfill's scrapes are 30 s apart (two per step): the ingest must say so to read the
    # rows back exactly (the built-in catalog assumes Prometheus' default of 1 minute).
    return ingest_prometheus(
        server.url, server.start, server.end, cluster=SPEC.cluster, scrape_interval=SCRAPE
    ).metrics


# --------------------------------------------------------------------------- round trip


def test_a_backfill_into_a_used_workdir_is_refused(tmp_path: Path) -> None:
    """promtool adds blocks to what is there: the server would serve the old telemetry as well."""
    need_binary("promtool", "prometheus")
    telemetry = simulate_cluster(ClusterSpec(duration="10min", step="1min", seed=1))
    data = backfill(telemetry, tmp_path)
    blocks = sorted(p.name for p in data.iterdir())
    with pytest.raises(LocalPrometheusError, match="already holds a TSDB"):
        backfill(simulate_cluster(ClusterSpec(duration="10min", step="1min", seed=2)), tmp_path)
    assert sorted(p.name for p in data.iterdir()) == blocks  # nothing added, nothing lost


def test_output_follows_the_canonical_schema(ingested: pd.DataFrame) -> None:
    validate_metrics(ingested)
    assert list(ingested.columns) == [*KEY_COLUMNS, *METRIC_COLUMNS]
    assert str(ingested["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert all(ingested[c].dtype == np.float64 for c in METRIC_COLUMNS)
    assert ingested.duplicated(list(KEY_COLUMNS)).sum() == 0


@pytest.mark.parametrize("column", METRIC_COLUMNS)
def test_values_round_trip(server: Backfilled, ingested: pd.DataFrame, column: str) -> None:
    """Counters went in cumulative and come back as the simulated rates; gauges unchanged.

    Except on the first row after the ten missed scrapes: its window holds only the step's last
    scrape interval, so a rate is the step's second half extrapolated half-way (at most the
    truth) and the restart count, which needs the scrape before the step, is unknown (NaN).
    """
    merged = server.expected.merge(ingested, on=list(KEY_COLUMNS), how="left", suffixes=("", "_got"))
    after = server.gap_times[-1] + pd.Timedelta("1min")
    after_gap = (merged["pod"] == server.gap_pod) & (merged["timestamp"] == after)
    assert after_gap.sum() == 1
    got, want = merged.loc[~after_gap, f"{column}_got"], merged.loc[~after_gap, column]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    first, truth = merged.loc[after_gap, f"{column}_got"].iloc[0], merged.loc[after_gap, column].iloc[0]
    assert np.isnan(first) or 0.0 <= first <= truth * (1 + 1e-9) + 1e-12


def test_anomalies_survive_the_round_trip(ingested: pd.DataFrame) -> None:
    # The injected crash loop and CPU saturation: increase() and the CFS ratio must see them.
    assert ingested["restarts"].sum() >= 3
    assert set(ingested["restarts"].dropna().unique()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert ingested["cpu_throttled_ratio"].max() > 0.5


def test_every_simulated_row_and_only_gap_rows_are_added(server: Backfilled, ingested: pd.DataFrame) -> None:
    keys = list(KEY_COLUMNS)
    got = ingested[keys].merge(server.expected[keys], how="left", indicator=True)
    extra = got[got["_merge"] == "left_only"]
    assert len(ingested) == len(server.expected) + len(server.gap_times)
    assert set(extra["pod"]) == {server.gap_pod}
    assert pd.DatetimeIndex(extra["timestamp"]).equals(server.gap_times)


def test_pods_keep_their_observed_lifetimes(server: Backfilled, ingested: pd.DataFrame) -> None:
    """No rows before a pod's first sample or after its last, rollouts included."""
    span = ["namespace", "pod"]
    want = server.expected.groupby(span)["timestamp"].agg(["min", "max"])
    got = ingested.groupby(span)["timestamp"].agg(["min", "max"])
    assert len(want) > 8, "the spec should roll out pods within the range"
    pd.testing.assert_frame_equal(got, want)


def test_gaps_are_explicit_nan_rows(server: Backfilled, ingested: pd.DataFrame) -> None:
    rows = ingested[(ingested["pod"] == server.gap_pod) & ingested["timestamp"].isin(server.gap_times)]
    assert len(rows) == len(server.gap_times)
    assert rows[POD_COLUMNS].isna().all().all()
    # The node was scraped meanwhile, so the pod's node columns are still known.
    assert rows[NODE_COLUMNS].notna().all().all()
    assert rows["node"].nunique() == 1 and rows["node"].iloc[0] != ""


# --------------------------------------------------------------------------- scrapes off the step grid

T0 = 1767571200  # 2026-01-05T00:00:00Z, a whole hour
OFF_GRID_SCRAPES = np.arange(T0 + 15, T0 + 3600, 30)  # at :15 and :45 of each minute, as real scrapes fall
RESTARTS_AT = (T0 + 605, T0 + 1220, T0 + 1840, T0 + 2450)  # one restart each
BURST = (T0 + 1246, T0 + 1274)  # 28 s at 2 extra cores, across a step boundary (00:21:00)


def _cpu_seconds(t: float) -> float:
    return 0.5 * (t - T0) + 2.0 * min(max(t - BURST[0], 0.0), BURST[1] - BURST[0])


@pytest.fixture(scope="module")
def off_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus over one pod scraped every 30 s, half a scrape off the minute grid."""
    need_binary("prometheus", "prometheus")
    work = tmp_path_factory.mktemp("off-grid")
    pod = 'namespace="shop",pod="api-1"'
    container = f'{pod},container="api"'
    lines = ["# TYPE kube_pod_info gauge"]
    lines += [f'kube_pod_info{{{pod},node="n1"}} 1 {s}' for s in OFF_GRID_SCRAPES]
    lines += ["# TYPE container_cpu_usage_seconds counter"]
    cpu = f"container_cpu_usage_seconds_total{{{container}}}"
    lines += [f"{cpu} {_cpu_seconds(s)} {s}" for s in OFF_GRID_SCRAPES]
    lines += ["# TYPE container_memory_working_set_bytes gauge"]
    lines += [f"container_memory_working_set_bytes{{{container}}} 1e8 {s}" for s in OFF_GRID_SCRAPES]
    lines += ["# TYPE kube_pod_container_status_restarts counter"]
    lines += [
        f"kube_pod_container_status_restarts_total{{{container}}} {sum(r <= s for r in RESTARTS_AT)} {s}"
        for s in OFF_GRID_SCRAPES
    ]
    exposition = work / "metrics.om"
    exposition.write_text("\n".join(lines) + "\n# EOF\n")
    _, promtool = binaries()
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(exposition), str(work / "data")],
        check=True,
        capture_output=True,
    )
    with serve(work / "data", work) as url:
        yield url


def _off_grid_rows(url: str, scrape_interval: str | None) -> pd.DataFrame:
    start, end = pd.Timestamp(T0 + 120, unit="s", tz="UTC"), pd.Timestamp(T0 + 3540, unit="s", tz="UTC")
    return ingest_prometheus(url, start, end, scrape_interval=scrape_interval).metrics.set_index("timestamp")


def test_off_grid_scrapes_lose_no_change_between_rows(off_grid: str) -> None:
    """Each row counts the change since the previous row's last scrape: nothing missed, nothing twice.

    A rate window of one step would miss the 30 s between the last scrape before ``t - step``
    and the first after it (the 28 s burst vanished) and extrapolate what it saw (a single
    restart read as 2, or 0).
    """
    rows = _off_grid_rows(off_grid, "30s")
    assert rows["cpu_usage_cores"].notna().all() and rows["restarts"].notna().all()
    # Core-seconds are conserved: the rows' total is the counter's rise between the last scrapes
    # at or before the first row's previous step and the last row.
    first, last = rows.index.min().timestamp() - 60, rows.index.max().timestamp()
    scraped = lambda t: _cpu_seconds(OFF_GRID_SCRAPES[t >= OFF_GRID_SCRAPES].max())  # noqa: E731
    total = (rows["cpu_usage_cores"] * 60).sum()
    np.testing.assert_allclose(total, scraped(last) - scraped(first), rtol=1e-9)
    burst_row = pd.Timestamp(T0 + 1320, unit="s", tz="UTC")  # the scrape at 00:21:15 sees the burst
    assert rows.loc[burst_row, "cpu_usage_cores"] == pytest.approx(0.5 + 56 / 60, rel=1e-9)
    # Every restart once, in the row whose step holds the first scrape that saw it.
    seen = [OFF_GRID_SCRAPES[r <= OFF_GRID_SCRAPES].min() for r in RESTARTS_AT]
    expected = {pd.Timestamp(-(-s // 60) * 60, unit="s", tz="UTC") for s in seen}
    assert set(rows.index[rows["restarts"] > 0]) == expected
    assert (rows["restarts"][rows["restarts"] > 0] == 1.0).all()


def test_a_longer_declared_scrape_interval_smooths_but_loses_nothing(off_grid: str) -> None:
    """The built-in 1-minute scrape interval on 30-second scrapes: rows overlap by one scrape."""
    rows = _off_grid_rows(off_grid, None)
    assert rows["cpu_usage_cores"].notna().all()
    assert rows["restarts"].sum() == len(RESTARTS_AT)  # counted exactly whatever the interval
    # The burst spreads over the rows whose 90 s of scrapes hold it, all of it still seen.
    assert rows["cpu_usage_cores"].max() > 0.5 + 56 / 90 - 1e-9


def test_chunked_queries_equal_one_query(
    server: Backfilled, ingested: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_api_client import PrometheusConnect

    calls: list[tuple[dt.datetime, dt.datetime]] = []
    original = PrometheusConnect.custom_query_range

    def spy(self: PrometheusConnect, query: str, start_time: dt.datetime, end_time: dt.datetime, **kw):
        calls.append((start_time, end_time))
        return original(self, query, start_time, end_time, **kw)

    monkeypatch.setattr(PrometheusConnect, "custom_query_range", spy)
    chunked = ingest_prometheus(
        server.url, server.start, server.end, cluster=SPEC.cluster, max_points=50, scrape_interval=SCRAPE
    )
    pd.testing.assert_frame_equal(chunked.metrics, ingested)
    n_queries = len(load_catalog().queries) + 1  # + pod_info
    n_points = (server.end - server.start) // pd.Timedelta("1min") + 1
    assert len(calls) == n_queries * -(-n_points // 50)
    assert max(int((e - s).total_seconds()) // 60 + 1 for s, e in calls) == 50


def test_source_settings_object_reads_the_same(server: Backfilled, ingested: pd.DataFrame) -> None:
    source = PrometheusSource(url=server.url, cluster=SPEC.cluster, token="secret", scrape_interval=SCRAPE)
    assert "secret" not in repr(source)
    pd.testing.assert_frame_equal(source.ingest(server.start, server.end).metrics, ingested)


# --------------------------------------------------------------------------- catalog


def test_extra_catalog_overrides_and_disables_entries(server: Backfilled, tmp_path: Path) -> None:
    extra = tmp_path / "queries.yaml"
    extra.write_text(
        "queries:\n"
        "  latency_p95_seconds: {enabled: false}\n"
        "  error_ratio: {enabled: false}\n"
        "  request_rate:\n"
        "    required: true\n"
        "    query: >-\n"
        "      sum by (namespace, pod) (rate(istio_requests_total{response_code='200'{selector}}[{rate}]))\n"
    )
    metrics = ingest_prometheus(server.url, server.start, server.end, catalog=extra).metrics
    assert "latency_p95_seconds" not in metrics.columns and "error_ratio" not in metrics.columns
    assert metrics["request_rate"].notna().mean() > 0.9


def test_selector_narrows_pod_queries(server: Backfilled) -> None:
    metrics = ingest_prometheus(
        server.url, server.start, server.end, selector='namespace="shop"', scrape_interval=SCRAPE
    ).metrics
    assert set(metrics["namespace"]) == {"shop"}
    assert metrics["node_cpu_utilisation"].notna().all()


def test_catalog_scrape_interval_sets_the_rate_window(tmp_path: Path) -> None:
    assert load_catalog().scrape_interval == "1m"
    extra = tmp_path / "queries.yaml"
    extra.write_text("scrape_interval: 30s\n")
    assert load_catalog(extra).scrape_interval == "30s"
    assert rate_window_ms(60, 30) == 89_999  # one step and one scrape, less 1 ms
    assert rate_window_ms(15, 30) == 59_999  # a step shorter than the scrape: two scrapes


def test_unknown_metric_in_extra_catalog_is_rejected(tmp_path: Path) -> None:
    extra = tmp_path / "queries.yaml"
    extra.write_text("queries:\n  foo:\n    metric: bar\n    query: up\n")
    with pytest.raises(SchemaError, match="query 'foo' maps to unknown metric 'bar'; expected one of"):
        load_catalog(extra)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("queries:\n  foo: {metric: cpu_usage_cores, query: up}\n", "both fill metric 'cpu_usage_cores'"),
        ("queries:\n  restarts: {qurey: up}\n", "unknown field"),
        ("queries:\n  restarts: {query: 'increase(x[{window}])'}\n", "unknown placeholder"),
        ("queries: [\n", "not valid YAML"),
        ("scrape_interval: 1.5s\n", "scrape_interval must be a positive whole number of seconds"),
        ("queries:\n  request_rate: {enabled: 'false'}\n", "'enabled' must be true or false, got 'false'"),
        ("queries:\n  request_rates: {enabled: false}\n", "only sets 'enabled' and no such query exists"),
        ("pod_info: {required: 'no'}\n", "'required' must be true or false, got 'no'"),
    ],
)
def test_malformed_extra_catalog_is_rejected(tmp_path: Path, yaml_text: str, message: str) -> None:
    extra = tmp_path / "queries.yaml"
    extra.write_text(yaml_text)
    with pytest.raises(SchemaError, match=message):
        load_catalog(extra)


# --------------------------------------------------------------------------- failures


def test_range_bounds_read_promql_steps() -> None:
    from aiops.ingest import PrometheusRange

    expected = (pd.Timestamp("2023-12-31T23:07Z"), pd.Timestamp("2024-01-01T00:07Z"))
    for step in ("1min", "1m", "60s"):  # "1m" is a minute here, as in PromQL, not a month end
        assert (
            PrometheusRange(url="http://x", end="2024-01-01T00:07:30Z", duration="1h", step=step).bounds()
            == expected
        )


def test_unreachable_prometheus_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    with pytest.raises(
        PrometheusError, match=f"cannot get an answer from Prometheus at {url}.*query 'pod_info'"
    ):
        ingest_prometheus(url, "2026-01-05T00:00Z", "2026-01-05T01:00Z", **FAST)


def test_required_query_without_data_names_the_query(server: Backfilled, tmp_path: Path) -> None:
    extra = tmp_path / "queries.yaml"
    extra.write_text(
        "queries:\n"
        "  cpu_usage_cores:\n"
        "    query: sum by (namespace, pod) (rate(no_such_counter_total{pod!=''{selector}}[{rate}]))\n"
    )
    with pytest.raises(
        PrometheusError, match=r"required query 'cpu_usage_cores': .*no_such_counter_total"
    ) as err:
        ingest_prometheus(server.url, server.start, server.end, catalog=extra)
    assert server.url in str(err.value)


def test_range_without_data_is_an_error(server: Backfilled) -> None:
    start = server.start - pd.Timedelta("7D")
    with pytest.raises(PrometheusError, match=f"Prometheus at {server.url} has no data in"):
        ingest_prometheus(server.url, start, start + pd.Timedelta("1h"))


def test_bad_promql_is_reported_not_retried(server: Backfilled, tmp_path: Path) -> None:
    extra = tmp_path / "queries.yaml"
    extra.write_text("queries:\n  restarts: {query: 'sum by (pod) (rate(x[{rate}]'}\n")
    with pytest.raises(PrometheusError, match=r"query 'restarts'.*rejected the query \(HTTP 400\)"):
        ingest_prometheus(server.url, server.start, server.end, catalog=extra, **FAST)


# --------------------------------------------------------------------------- auth, TLS, retries


class _Proxy(http.server.ThreadingHTTPServer):
    """Forwards GETs to Prometheus when they carry the bearer token; can fail on purpose."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.fail_next = 0  # answer this many requests with 503 first
        self.failures = 0
        self.slow_next = 0  # answer this many requests only after a second
        self.redirect_next = 0  # answer this many requests with a redirect to the same query
        self.cut_next = 0  # answer this many requests with half a body, then hang up
        self.warnings: list[str] = []  # add these warnings to every answer (a partial answer)
        self.authorizations: list[str | None] = []
        self.daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up on a slow answer, or rejected our certificate: expected here


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _Proxy

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        self.server.authorizations.append(authorization)
        if authorization != f"Bearer {TOKEN}":
            return self._send(401, json.dumps({"status": "error", "error": "missing or bad token"}).encode())
        if self.server.slow_next > 0:
            self.server.slow_next -= 1
            time.sleep(1.0)
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            self.server.failures += 1
            return self._send(503, b"service unavailable")
        if self.server.redirect_next > 0:
            self.server.redirect_next -= 1
            self.send_response(302)
            self.send_header("Location", self.path + "&redirected=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        try:
            with urllib.request.urlopen(self.server.upstream + self.path, timeout=30) as upstream:
                body = upstream.read()
        except urllib.error.HTTPError as exc:
            return self._send(exc.code, exc.read())
        if self.server.warnings:
            body = json.dumps({**json.loads(body), "warnings": self.server.warnings}).encode()
        if self.server.cut_next > 0:
            self.server.cut_next -= 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return None
        return self._send(200, body)


@contextlib.contextmanager
def _running_proxy(upstream: str, tls: ssl.SSLContext | None = None) -> Iterator[_Proxy]:
    proxy = _Proxy(upstream)
    if tls is not None:
        proxy.socket = tls.wrap_socket(proxy.socket, server_side=True)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)


@pytest.fixture
def proxy(server: Backfilled) -> Iterator[_Proxy]:
    with _running_proxy(server.url) as running:
        yield running


def _proxy_url(proxy: _Proxy, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{proxy.server_address[1]}"


def _read_through(proxy: _Proxy, server: Backfilled, token: str = TOKEN) -> pd.DataFrame:
    """The backfilled range, ingested through the proxy with the settings of the direct read."""
    return ingest_prometheus(
        _proxy_url(proxy), server.start, server.end, cluster=SPEC.cluster, token=token, scrape_interval=SCRAPE
    ).metrics


def test_bearer_token_is_sent(server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy) -> None:
    pd.testing.assert_frame_equal(_read_through(proxy, server), ingested)
    assert set(proxy.authorizations) == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("token", [None, "wrong"])
def test_rejected_token_is_an_auth_error(server: Backfilled, proxy: _Proxy, token: str | None) -> None:
    url = _proxy_url(proxy)
    with pytest.raises(PrometheusError, match=f"Prometheus at {url} .*refused the credentials \\(HTTP 401"):
        ingest_prometheus(url, server.start, server.end, token=token, **FAST)
    assert len(proxy.authorizations) == 1, "an auth failure must not be retried"


def test_server_errors_are_retried_with_backoff(
    server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.fail_next = 3
    # The waits the client asks for, not how long the test took (no wall-clock assertions).
    waits: list[float] = []
    sleep = time.sleep

    def recorded(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            waits.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", recorded)
    metrics = ingest_prometheus(
        _proxy_url(proxy),
        server.start,
        server.end,
        cluster=SPEC.cluster,
        token=TOKEN,
        attempts=4,
        backoff_s=0.05,
        scrape_interval=SCRAPE,
    )
    assert proxy.failures == 3
    assert waits == pytest.approx([0.05, 0.1, 0.2])  # three waits, doubling
    pd.testing.assert_frame_equal(metrics.metrics, ingested)


def test_timeouts_are_retried(server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy) -> None:
    # with one attempt, the slow answer (the proxy waits 1 s) is a time-out (0.5 s): the timeout
    # is applied ... (0.5 s leaves the other answers, which take milliseconds, room on a busy machine)
    proxy.slow_next = 1
    with pytest.raises(PrometheusError, match="after 1 attempt"):
        ingest_prometheus(_proxy_url(proxy), server.start, server.end, token=TOKEN, timeout=0.5, attempts=1)
    # ... and with more, the next attempt gets the answer
    proxy.slow_next = 1
    metrics = ingest_prometheus(
        _proxy_url(proxy),
        server.start,
        server.end,
        cluster=SPEC.cluster,
        token=TOKEN,
        timeout=0.5,
        scrape_interval=SCRAPE,
        **FAST,
    )
    pd.testing.assert_frame_equal(metrics.metrics, ingested)
    assert proxy.slow_next == 0


def test_a_redirect_is_followed(server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy) -> None:
    proxy.redirect_next = 1  # e.g. a route that moved: the client follows it, as a browser would
    pd.testing.assert_frame_equal(_read_through(proxy, server), ingested)
    assert proxy.redirect_next == 0


def test_an_answer_cut_short_is_retried(server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy) -> None:
    proxy.cut_next = 1
    pd.testing.assert_frame_equal(_read_through(proxy, server), ingested)
    assert proxy.cut_next == 0


def test_a_partial_answer_is_an_error_not_less_data(server: Backfilled, proxy: _Proxy) -> None:
    """Thanos answers 200 with a warning when a store is unreachable: that data is incomplete."""
    proxy.warnings = ["receive Series from Addr: 10.128.0.7:10901: rpc error: code = Unavailable"]
    with pytest.raises(
        PrometheusError, match="answered with warnings, so the data may be partial.*Unavailable"
    ):
        ingest_prometheus(_proxy_url(proxy), server.start, server.end, token=TOKEN, **FAST)


def test_a_token_read_with_its_newline_works_and_a_broken_one_is_named_not_shown(
    server: Backfilled, ingested: pd.DataFrame, proxy: _Proxy
) -> None:
    pd.testing.assert_frame_equal(_read_through(proxy, server, token=TOKEN + "\n"), ingested)
    with pytest.raises(PrometheusError, match="token .* holds spaces, line breaks") as err:
        ingest_prometheus(_proxy_url(proxy), server.start, server.end, token="abc\ndef", **FAST)
    assert "abc" not in str(err.value)


def test_a_ca_bundle_that_is_not_there_is_named(server: Backfilled, tmp_path: Path) -> None:
    with pytest.raises(PrometheusError, match="the CA bundle .*missing.pem .* does not exist"):
        ingest_prometheus(server.url, server.start, server.end, ca_bundle=tmp_path / "missing.pem", **FAST)


def test_persistent_server_errors_give_up(server: Backfilled, proxy: _Proxy) -> None:
    proxy.fail_next = 100
    with pytest.raises(PrometheusError, match="after 3 attempts: HTTP 503"):
        ingest_prometheus(
            _proxy_url(proxy), server.start, server.end, token=TOKEN, attempts=3, backoff_s=0.01
        )
    assert proxy.failures == 3


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A CA-flagged self-signed certificate for 127.0.0.1 and its key."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiops-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ca.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_ca_bundle_verifies_tls(server: Backfilled, ingested: pd.DataFrame, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _running_proxy(server.url, tls=context) as proxy:
        url = _proxy_url(proxy, "https")
        with pytest.raises(PrometheusError, match=f"TLS verification failed for Prometheus at {url}"):
            ingest_prometheus(url, server.start, server.end, token=TOKEN, **FAST)
        metrics = ingest_prometheus(
            url,
            server.start,
            server.end,
            cluster=SPEC.cluster,
            token=TOKEN,
            ca_bundle=cert,
            scrape_interval=SCRAPE,
        )
    pd.testing.assert_frame_equal(metrics.metrics, ingested)


# --------------------------------------------------------------------------- the pipeline on Prometheus


@pytest.mark.slow
def test_training_pipeline_trains_on_prometheus(server: Backfilled, tmp_path: Path) -> None:
    """`aiops run training --source prometheus` end to end, anomalies injected after reading."""
    from aiops.registry import mlflow_client
    from pipelines.runner import run_local

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    catalog = tmp_path / "queries.yaml"  # the pipeline learns the scrape interval from the catalog
    catalog.write_text(f"scrape_interval: {SCRAPE}\n")
    args = {
        "source": "prometheus",
        "prometheus_url": server.url,
        "prometheus_catalog": str(catalog),
        "end": server.end.isoformat(),
        "duration": "3h",
        "n_anomalies": 3,
        "n_estimators": 20,
        "validation_fraction": 0.25,
        "test_fraction": 0.3,
        "mlflow_tracking_uri": uri,
        "model_name": "prom",
    }
    task = run_local("training", args, tmp_path / "kfp")
    client = mlflow_client(uri)
    run = client.get_run(client.get_model_version("prom", task.output).run_id)
    assert run.data.tags["lineage.source"] == "prometheus"
    # every sample read back, plus the scrape gap kept as explicit NaN rows
    assert int(run.data.tags["lineage.data_rows"]) == len(server.expected) + len(server.gap_times)


def test_ingest_component_stops_on_unreachable_prometheus(tmp_path: Path) -> None:
    from kfp import dsl

    from components.ingest import ingest_telemetry

    url = f"http://127.0.0.1:{free_port()}"
    out = dsl.Dataset(name="t", uri=str(tmp_path / "t"), metadata={})
    with pytest.raises(PrometheusError, match=url.replace(".", r"\.")):
        ingest_telemetry.python_func(source="prometheus", telemetry=out, prometheus_url=url, duration="1h")
    assert not (tmp_path / "t").exists(), "nothing may be written, least of all synthetic data"


def test_the_mounted_service_ca_is_used_unless_the_environment_names_one(tmp_path, monkeypatch):
    """A cluster run mounts OpenShift's service CA; a local run keeps PROMETHEUS_CA_BUNDLE."""
    from aiops import ingest

    mounted = tmp_path / "service-ca.crt"
    monkeypatch.setattr(ingest, "SERVICE_CA_BUNDLE", str(mounted))
    monkeypatch.delenv("PROMETHEUS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("PROMETHEUS_TOKEN", TOKEN)
    assert ingest.prometheus_credentials() == (TOKEN, None)  # nothing mounted: the system's CAs
    mounted.write_text("-----BEGIN CERTIFICATE-----\n")
    assert ingest.prometheus_credentials() == (TOKEN, str(mounted))
    monkeypatch.setenv("PROMETHEUS_CA_BUNDLE", "/home/me/ca.pem")
    assert ingest.prometheus_credentials() == (TOKEN, "/home/me/ca.pem")
