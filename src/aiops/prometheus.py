"""Ingest pod and node metrics from Prometheus (or OpenShift's Thanos querier) into the canonical schema.

The PromQL lives in a catalog (``queries.yaml`` next to this module), one
query per canonical metric column; users extend or override it with their own
YAML file, without code (:func:`load_catalog`). Each query runs as a range
query over a grid of whole steps, split into chunks that stay under
Prometheus' limit of 11,000 points per series, with retries and exponential
back-off on server errors, time-outs and dropped connections.

The result follows :mod:`aiops.schema`: one row per ``(timestamp, pod)`` on
the step grid from each pod's first to its last sample, with ``NaN`` for the
steps where Prometheus has nothing (never a made-up value), node-level metrics
joined onto the rows of each node's pods, and float64 metric columns that are
rates, not raw counters (the catalog turns counters into rates in PromQL).

Anything that would leave the pipeline without real data stops it with a
:class:`PrometheusError` naming the URL and the query: an unreachable server,
rejected credentials, a time range without data, or a required query with an
empty result. There is no fallback to synthetic data.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import requests
import yaml
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from aiops.schema import (
    ENTITY_KEYS,
    KEY_COLUMNS,
    METRIC_COLUMNS,
    TIMESTAMP,
    SchemaError,
    validate_metrics,
)
from aiops.telemetry import Telemetry

_LOG = logging.getLogger(__name__)

PROMETHEUS_MAX_POINTS = 11_000
"""Prometheus rejects range queries that would return more points per series than this."""

Level = Literal["pod", "node"]
_LEVELS: tuple[str, ...] = ("pod", "node")
_QUERY_FIELDS = frozenset({"metric", "level", "required", "description", "query", "enabled"})
_POD_INFO_FIELDS = frozenset({"required", "description", "query"})
_PLACEHOLDERS = frozenset({"selector", "rate", "step"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
# 408/429 are a proxy's or Thanos' way of saying "later"; 5xx is the server's.
_RETRY_STATUS = frozenset({408, 429})
_AUTH_STATUS = frozenset({401, 403})
_POD_KEYS = ("namespace", "pod")
#: Prometheus' own default; a catalog's ``scrape_interval`` or the ingest's argument overrides it.
DEFAULT_SCRAPE_INTERVAL = "1m"


class PrometheusError(RuntimeError):
    """Raised when Prometheus cannot deliver the data an ingest needs; names the URL and the query."""


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class CatalogQuery:
    """One catalog entry: a PromQL query that fills one canonical metric column.

    Attributes:
        name: Entry name (the key in the YAML file).
        metric: Canonical column it fills, one of :data:`aiops.schema.METRIC_COLUMNS`.
        query: PromQL with the placeholders ``{selector}``, ``{rate}`` and ``{step}``.
        level: ``pod`` for series labelled by ``namespace`` and ``pod``, ``node`` for series
            labelled by ``node`` (or ``instance``) that are joined onto the node's pods.
        required: Whether an empty result stops the ingest.
        description: What the query measures.

    """

    name: str
    metric: str
    query: str
    level: Level = "pod"
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class QueryCatalog:
    """The queries an ingest runs.

    Attributes:
        queries: Enabled metric queries, at most one per canonical column.
        pod_info: Query returning one series per ``(namespace, pod, node)``, which gives each
            pod row its ``node`` key.
        pod_info_required: Whether an empty ``pod_info`` result stops the ingest.
        scrape_interval: How often Prometheus scrapes the series the queries read (a pandas
            timedelta string); it sets the default ``rate()`` window (see
            :func:`rate_window_ms`).

    """

    queries: tuple[CatalogQuery, ...]
    pod_info: str
    pod_info_required: bool = True
    scrape_interval: str = DEFAULT_SCRAPE_INTERVAL


def _listing(names: Iterable[object]) -> str:
    return ", ".join(repr(n) for n in names)


def _read_yaml(source: str | Path, text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SchemaError(f"query catalog {source} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SchemaError(f"query catalog {source} must be a mapping with 'queries' (and 'pod_info')")
    unknown = sorted(set(raw) - {"queries", "pod_info", "scrape_interval"})
    if unknown:
        raise SchemaError(
            f"query catalog {source}: unknown top-level key(s) {_listing(unknown)}; "
            "expected 'queries', 'pod_info' and 'scrape_interval'"
        )
    return raw


def _check_fields(source: str | Path, what: str, entry: object, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SchemaError(f"query catalog {source}: {what} must be a mapping of fields, got {entry!r}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SchemaError(
            f"query catalog {source}: {what} has unknown field(s) {_listing(unknown)}; "
            f"expected some of {_listing(sorted(allowed))}"
        )
    return entry


def _merge(base: dict[str, Any], extra: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Overlay ``extra`` on ``base``: entries by name, and fields within an entry."""
    merged: dict[str, Any] = {
        "pod_info": dict(base.get("pod_info") or {}),
        "queries": {k: dict(v) for k, v in (base.get("queries") or {}).items()},
        "scrape_interval": extra.get("scrape_interval", base.get("scrape_interval")),
    }
    if "pod_info" in extra:
        merged["pod_info"].update(_check_fields(source, "pod_info", extra["pod_info"], _POD_INFO_FIELDS))
    queries = extra.get("queries") or {}
    if not isinstance(queries, dict):
        raise SchemaError(f"query catalog {source}: 'queries' must map names to entries")
    for name, entry in queries.items():
        fields = _check_fields(source, f"query '{name}'", entry, _QUERY_FIELDS)
        if "enabled" in fields and not isinstance(fields["enabled"], bool):
            raise SchemaError(
                f"query catalog {source}: query '{name}': 'enabled' must be true or false, "
                f"got {fields['enabled']!r}"
            )
        if str(name) not in merged["queries"] and set(fields) <= {"enabled"}:
            raise SchemaError(
                f"query catalog {source}: query '{name}' only sets 'enabled' and no such query exists; "
                f"the queries are {_listing(sorted(merged['queries']))}"
            )
        merged["queries"].setdefault(str(name), {}).update(fields)
    return merged


def _check_template(name: str, query: str) -> None:
    unknown = sorted(set(_PLACEHOLDER.findall(query)) - _PLACEHOLDERS)
    if unknown:
        raise SchemaError(
            f"query '{name}' uses unknown placeholder(s) {_listing('{' + u + '}' for u in unknown)}; "
            f"the placeholders are {{selector}}, {{rate}} and {{step}}"
        )


def _build_query(name: str, fields: Mapping[str, Any]) -> CatalogQuery:
    metric = fields.get("metric")
    if metric is None:
        raise SchemaError(f"query '{name}' has no 'metric'; expected one of {_listing(METRIC_COLUMNS)}")
    if metric not in METRIC_COLUMNS:
        raise SchemaError(
            f"query '{name}' maps to unknown metric '{metric}'; expected one of {_listing(METRIC_COLUMNS)}"
        )
    query = fields.get("query")
    if not isinstance(query, str) or not query.strip():
        raise SchemaError(f"query '{name}' has no PromQL; give it a non-empty 'query' string")
    level = fields.get("level", "pod")
    if level not in _LEVELS:
        raise SchemaError(f"query '{name}' has level {level!r}; expected one of {_listing(_LEVELS)}")
    required = fields.get("required", False)
    if not isinstance(required, bool):
        raise SchemaError(f"query '{name}': 'required' must be true or false, got {required!r}")
    _check_template(name, query)
    return CatalogQuery(
        name=name,
        metric=metric,
        query=query.strip(),
        level=level,
        required=required,
        description=str(fields.get("description", "")).strip(),
    )


def _build_catalog(raw: dict[str, Any]) -> QueryCatalog:
    queries = [
        _build_query(name, fields) for name, fields in raw["queries"].items() if fields.get("enabled", True)
    ]
    by_metric: dict[str, str] = {}
    for query in queries:
        if query.metric in by_metric:
            raise SchemaError(
                f"queries '{by_metric[query.metric]}' and '{query.name}' both fill metric '{query.metric}'; "
                f"override the entry '{by_metric[query.metric]}' or disable it with 'enabled: false'"
            )
        by_metric[query.metric] = query.name
    pod_info = raw["pod_info"]
    if not isinstance(pod_info.get("query"), str) or not pod_info["query"].strip():
        raise SchemaError(
            "query catalog: 'pod_info' needs a 'query' returning namespace, pod and node labels"
        )
    _check_template("pod_info", pod_info["query"])
    order = {m: i for i, m in enumerate(METRIC_COLUMNS)}
    scrape = raw.get("scrape_interval") or DEFAULT_SCRAPE_INTERVAL
    try:
        _whole_seconds(str(scrape), "scrape_interval")
    except ValueError as exc:
        raise SchemaError(f"query catalog: {exc} (e.g. '30s' or '1m')") from exc
    pod_info_required = pod_info.get("required", True)
    if not isinstance(pod_info_required, bool):
        raise SchemaError(
            f"query catalog: 'pod_info': 'required' must be true or false, got {pod_info_required!r}"
        )
    return QueryCatalog(
        queries=tuple(sorted(queries, key=lambda q: order[q.metric])),
        pod_info=pod_info["query"].strip(),
        pod_info_required=pod_info_required,
        scrape_interval=str(scrape),
    )


def rate_window_ms(step_s: int, scrape_s: int) -> int:
    """The default ``rate()`` window: every change between two rows, counted once.

    A row at ``t`` must see the counter's change from the last scrape at or before ``t - step``
    to the last scrape at or before ``t``. Scrapes are not aligned with the step grid, so a
    window of one step (``[t - step, t]``) misses the change between the last scrape before
    ``t - step`` and the first after it: a burst in that gap is never seen, and Prometheus
    extrapolates the part it does see to the whole window. A window of ``step + scrape``
    less one millisecond holds exactly the scrapes from the last one at or before ``t - step``
    to the last at or before ``t`` on regular scrapes, on Prometheus 2 (windows closed on the
    left) and 3 (open on the left) alike, so consecutive rows neither overlap nor leave a gap,
    and ``rate()`` is the counter's slope between them. A longer step than scrape is the
    usual case; when the step is shorter, the window spans two scrapes so that it always
    holds two samples. If the declared interval is longer than the real one, rows overlap a
    little (smoothing, nothing lost) and a pod's rates may outlive its last scrape by one row;
    if it is shorter, windows may hold one sample and rows go missing: declare the slowest
    scrape interval of the series read.

    Prometheus stops extrapolating where a counter would cross zero, so the first row of a
    counter that starts at 0 (a new container, or the first errors after none) reads
    ``step / window`` of its rate, and a row after missed scrapes reads what its window holds.
    """
    return (max(step_s, scrape_s) + scrape_s) * 1000 - 1


def load_catalog(extra: str | Path | None = None) -> QueryCatalog:
    """Load the built-in query catalog, optionally extended or overridden by a user YAML file.

    The extra file has the built-in layout (``queries:`` mapping names to entries, optional
    ``pod_info:``). An entry with a built-in name is merged field by field (so
    ``request_rate: {required: true}`` only changes that flag); a new name adds a query;
    ``enabled: false`` drops one.

    Args:
        extra: Path of the user's YAML file, or ``None`` for the built-in catalog alone.

    Returns:
        The validated catalog.

    Raises:
        SchemaError: When an entry maps to a metric that is not a canonical column, two entries
            fill the same column, a field or placeholder is unknown, or the YAML is malformed.
        FileNotFoundError: When ``extra`` does not exist.

    """
    builtin = resources.files("aiops").joinpath("queries.yaml")
    raw = _merge(
        {}, _read_yaml("aiops/queries.yaml", builtin.read_text(encoding="utf-8")), "aiops/queries.yaml"
    )
    if extra is not None:
        path = Path(extra)
        if not path.is_file():
            raise FileNotFoundError(f"query catalog {path} does not exist")
        raw = _merge(raw, _read_yaml(path, path.read_text(encoding="utf-8")), path)
    return _build_catalog(raw)


def render(query: str, *, selector: str = "", rate: str = "1m", step: str = "1m") -> str:
    """Fill a catalog query's placeholders.

    Args:
        query: PromQL with ``{selector}``, ``{rate}`` and ``{step}``.
        selector: Extra label matchers without the leading comma, e.g. ``namespace="shop"``.
        rate: Rate window as a PromQL duration.
        step: Step as a PromQL duration.

    Returns:
        The PromQL to send.

    """
    selector = selector.strip().strip(",").strip()
    return (
        query.replace("{selector}", f", {selector}" if selector else "")
        .replace("{rate}", rate)
        .replace("{step}", step)
    )


# --------------------------------------------------------------------------- time grid


@dataclass(frozen=True)
class _Grid:
    """Whole-step instants (epoch seconds, multiples of ``step_s``) from ``first_s`` to ``last_s``."""

    first_s: int
    last_s: int
    step_s: int

    @property
    def n_points(self) -> int:
        return (self.last_s - self.first_s) // self.step_s + 1

    def chunks(self, max_points: int) -> list[tuple[int, int]]:
        """Consecutive, non-overlapping ``(start, end)`` ranges of at most ``max_points`` points each."""
        out = []
        for k in range(0, self.n_points, max_points):
            last = min(k + max_points, self.n_points) - 1
            out.append((self.first_s + k * self.step_s, self.first_s + last * self.step_s))
        return out

    def describe(self) -> str:
        start = datetime.fromtimestamp(self.first_s, UTC).isoformat()
        end = datetime.fromtimestamp(self.last_s, UTC).isoformat()
        return f"{start} .. {end} (step {self.step_s}s)"


def _utc(value: datetime | str | pd.Timestamp, what: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"{what} is not a time: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _whole_seconds(value: str, what: str) -> int:
    seconds = pd.to_timedelta(value).total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"{what} must be a positive whole number of seconds, got {value!r}")
    return int(seconds)


def _grid(start: datetime | str | pd.Timestamp, end: datetime | str | pd.Timestamp, step_s: int) -> _Grid:
    """Grid points inside ``[start, end]``, anchored at the epoch so every chunk and rerun agrees."""
    lo, hi = _utc(start, "start").timestamp(), _utc(end, "end").timestamp()
    if hi < lo:
        raise ValueError(f"end {end!r} is before start {start!r}")
    first, last = math.ceil(lo / step_s) * step_s, math.floor(hi / step_s) * step_s
    if last < first:
        raise ValueError(f"the range {start!r} .. {end!r} holds no whole multiple of the {step_s}s step")
    return _Grid(first, last, step_s)


# --------------------------------------------------------------------------- HTTP


class _HTTPStatusError(Exception):
    """A non-200 answer, raised from a response hook so the status code survives the client library."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def _raise_for_status(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    if response.status_code == 200 or response.is_redirect:  # requests follows a redirect itself
        return response
    try:  # Prometheus explains errors in JSON: {"status": "error", "error": "..."}
        body = response.json()
    except ValueError:
        body = None
    detail = str(body.get("error") or response.text) if isinstance(body, dict) else response.text
    raise _HTTPStatusError(response.status_code, detail.strip()[:500] or response.reason)


def _root_cause(exc: requests.RequestException) -> Exception:
    """The socket-level error inside requests' and urllib3's wrappers (refused, DNS, time-out)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    reason = getattr(inner, "reason", None)
    return reason if isinstance(reason, Exception) else exc


@dataclass(frozen=True)
class _Retry:
    attempts: int
    backoff_s: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): doubling, capped at 30 s."""
        return min(self.backoff_s * 2 ** (attempt - 1), 30.0)


class _Client:
    """``PrometheusConnect`` plus bearer-token/CA-bundle auth, bounded retries and clear errors."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        ca_bundle: str | Path | None,
        timeout: float,
        retry: _Retry,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", url):
            raise PrometheusError(f"Prometheus URL {url!r} is not an http(s) URL, e.g. https://host:9091")
        self.url = url.rstrip("/")
        self._retry = retry
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise PrometheusError(
                f"the CA bundle {ca_bundle} for {self.url} does not exist (PROMETHEUS_CA_BUNDLE?)"
            )
        # A token read from a file often ends with a newline; one with whitespace inside is broken
        # (and is not echoed: it is a secret).
        token = token.strip() if token else token
        if token and any(c.isspace() or not c.isprintable() for c in token):
            raise PrometheusError(
                f"the bearer token for {self.url} holds spaces, line breaks or control characters; "
                "check the secret it was read from (PROMETHEUS_TOKEN)"
            )
        self.warnings: list[str] = []
        session = requests.Session()
        session.verify = str(ca_bundle) if ca_bundle is not None else True
        session.hooks["response"].append(_raise_for_status)
        session.hooks["response"].append(self._keep_warnings)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        # The library's own urllib3 retries are switched off: they would hide the status code
        # and multiply with ours.
        self._prom = PrometheusConnect(
            url=self.url,
            headers=headers,
            retry=Retry(total=0, status_forcelist=(), raise_on_status=False),
            session=session,
            timeout=timeout,
        )

    def close(self) -> None:
        self._prom.close()

    def _keep_warnings(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """Keep the ``warnings`` of an answer (Thanos reports a partial response there)."""
        if response.status_code == 200 and b'"warnings"' in response.content:
            try:
                self.warnings = [str(w) for w in response.json().get("warnings") or []]
            except (ValueError, AttributeError):
                self.warnings = []
        else:
            self.warnings = []
        return response

    def query_range(
        self, name: str, promql: str, start_s: int, end_s: int, step_s: int
    ) -> list[dict[str, Any]]:
        """Run one range query, retrying what may be transient.

        Raises:
            PrometheusError: On rejected credentials, TLS failures, a rejected query, or when every
                attempt failed.

        """
        where = f"Prometheus at {self.url} (query '{name}': {promql})"
        last: Exception | None = None
        for attempt in range(1, self._retry.attempts + 1):
            try:
                result = self._prom.custom_query_range(
                    promql,
                    start_time=datetime.fromtimestamp(start_s, UTC),
                    end_time=datetime.fromtimestamp(end_s, UTC),
                    step=str(step_s),
                    # Thanos: fail rather than answer without the stores it could not reach
                    params={"partial_response": "false"},
                )
                if not isinstance(result, list):
                    raise PrometheusError(f"{where} answered without a result list; is the URL the API root?")
                if self.warnings:
                    raise PrometheusError(
                        f"{where} answered with warnings, so the data may be partial (e.g. a Thanos store "
                        f"unreachable): {'; '.join(self.warnings)[:500]}"
                    )
                return result
            except _HTTPStatusError as exc:
                if exc.status in _AUTH_STATUS:
                    raise PrometheusError(
                        f"{where} refused the credentials (HTTP {exc.status}: {exc.detail}); pass a valid "
                        f"bearer token (e.g. `oc whoami -t`, or a service account allowed to read metrics)"
                    ) from exc
                if exc.status < 500 and exc.status not in _RETRY_STATUS:
                    hint = " (is the URL the API root, with any path prefix, e.g. https://host/prometheus?)"
                    raise PrometheusError(
                        f"{where} rejected the query (HTTP {exc.status}): {exc.detail}"
                        + (hint if exc.status == 404 else "")
                    ) from exc
                last = exc
            except requests.exceptions.SSLError as exc:  # a ConnectionError, but retrying cannot help
                raise PrometheusError(
                    f"TLS verification failed for {where}: {exc}; pass ca_bundle= the CA that signed the "
                    f"server certificate (on OpenShift the service CA or the ingress CA)"
                ) from exc
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                last = _root_cause(exc)  # refused, timed out, or dropped in the middle of the answer
            except (ValueError, KeyError) as exc:  # HTML from a proxy, or JSON without data.result
                raise PrometheusError(
                    f"{where} did not answer with Prometheus JSON ({exc}); is the URL the "
                    f"Prometheus or Thanos querier root?"
                ) from exc
            if attempt < self._retry.attempts:
                delay = self._retry.delay(attempt)
                _LOG.warning(
                    "attempt %d/%d failed for %s: %s; retrying in %.1fs",
                    attempt,
                    self._retry.attempts,
                    where,
                    last,
                    delay,
                )
                time.sleep(delay)
        raise PrometheusError(
            f"cannot get an answer from {where} after {self._retry.attempts} attempts: {last}; check that "
            f"the URL is right and the server is reachable from here"
        ) from last


# --------------------------------------------------------------------------- results to frames


def _series_keys(name: str, labels: dict[str, str], level: str) -> dict[str, str]:
    """Entity keys of one returned series; a node-level series may name its node by ``instance``."""
    if level == "node":
        node = labels.get("node") or re.sub(r":\d+$", "", labels.get("instance", ""))
        if not node:
            raise PrometheusError(
                f"query '{name}' returned a series without a 'node' or 'instance' label ({labels}); "
                f"aggregate it with `max by (node) (...)`"
            )
        return {"node": node}
    wanted = ("namespace", "pod", "node") if level == "pod_info" else _POD_KEYS
    missing = [k for k in wanted if not labels.get(k)]
    if missing:
        raise PrometheusError(
            f"query '{name}' returned a series without label(s) {_listing(missing)} ({labels}); "
            f"aggregate it with `sum by ({', '.join(wanted)}) (...)`"
        )
    return {k: labels[k] for k in wanted}


def _long_frame(name: str, result: list[dict[str, Any]], level: str, step_s: int) -> pd.DataFrame:
    """One row per returned sample: ``ts`` (int64 ns on the grid), the entity keys, ``value``."""
    keys = {"node": ["node"], "pod": list(_POD_KEYS), "pod_info": ["namespace", "pod", "node"]}[level]
    parts = []
    for series in result:
        values = np.asarray(series.get("values") or [], dtype=object).reshape(-1, 2)
        if not len(values):
            continue
        seconds = values[:, 0].astype(np.float64)
        part = pd.DataFrame(
            {
                # Prometheus answers on start + k*step already; rounding makes that a guarantee.
                "ts": np.rint(seconds / step_s).astype(np.int64) * step_s * 1_000_000_000,
                "value": values[:, 1].astype(np.float64),
            }
        )
        for key, value in _series_keys(name, series.get("metric") or {}, level).items():
            part[key] = value
        parts.append(part)
    if not parts:
        return pd.DataFrame(
            {
                "ts": pd.Series(dtype=np.int64),
                **{k: pd.Series(dtype=object) for k in keys},
                "value": pd.Series(dtype=np.float64),
            }
        )
    frame = pd.concat(parts, ignore_index=True)
    infinite = np.isinf(frame["value"].to_numpy())
    if infinite.any():
        # e.g. x/0 or a quantile beyond the last histogram bucket: not a measurement, so missing.
        _LOG.warning("query '%s': %d infinite value(s) kept as NaN", name, int(infinite.sum()))
        frame.loc[infinite, "value"] = np.nan
    return frame


def _unique(name: str, frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    dupes = frame.duplicated(["ts", *keys])
    if dupes.any():
        example = frame.loc[dupes, keys].iloc[0].to_dict()
        raise PrometheusError(
            f"query '{name}' returned several series for the same {'/'.join(keys)} (e.g. {example}); "
            f"aggregate it with `sum by ({', '.join(keys)}) (...)` in the catalog"
        )
    return frame


def _has_data(frame: pd.DataFrame) -> bool:
    return bool(frame["value"].notna().any())


# --------------------------------------------------------------------------- assembly


def _fill_lifetimes(wide: pd.DataFrame, step_ns: int) -> pd.DataFrame:
    """Reindex each pod to every grid step from its first to its last sample, so gaps become NaN rows."""
    spans = wide.reset_index().groupby(list(_POD_KEYS), sort=False)["ts"].agg(["min", "max"])
    counts = ((spans["max"] - spans["min"]) // step_ns + 1).to_numpy()
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    full = pd.MultiIndex.from_arrays(
        [
            np.repeat(spans["min"].to_numpy(), counts) + offsets * step_ns,
            np.repeat(spans.index.get_level_values("namespace").to_numpy(), counts),
            np.repeat(spans.index.get_level_values("pod").to_numpy(), counts),
        ],
        names=["ts", *_POD_KEYS],
    )
    return wide.reindex(full)


def _attach_nodes(rows: pd.DataFrame, pod_info: pd.DataFrame) -> pd.Series:
    """The node of each pod row: kube_pod_info at that step, else the pod's nearest known node."""
    if pod_info.empty:
        return pd.Series("", index=rows.index, dtype=object)
    info = pod_info.sort_values(["ts", "namespace", "pod", "node"]).drop_duplicates(["ts", *_POD_KEYS])
    left = rows[["ts", *_POD_KEYS]].reset_index().sort_values("ts")
    joined = pd.merge_asof(
        left, info[["ts", *_POD_KEYS, "node"]], on="ts", by=list(_POD_KEYS), direction="nearest"
    )
    return joined.set_index("index")["node"].reindex(rows.index).fillna("").astype(object)


def _assemble(
    pod_frames: dict[str, pd.DataFrame],
    node_frames: dict[str, pd.DataFrame],
    pod_info: pd.DataFrame,
    step_ns: int,
    cluster: str,
) -> pd.DataFrame:
    columns = [
        f["value"].rename(m).set_axis(pd.MultiIndex.from_frame(f[["ts", *_POD_KEYS]]))
        for m, f in pod_frames.items()
    ]
    wide = _fill_lifetimes(pd.concat(columns, axis=1), step_ns)
    rows = wide.reset_index()
    rows["node"] = _attach_nodes(rows, pod_info)
    for metric, frame in node_frames.items():
        rows = rows.merge(frame.rename(columns={"value": metric}), on=["ts", "node"], how="left")
    rows[TIMESTAMP] = pd.to_datetime(rows["ts"].to_numpy(), utc=True).astype("datetime64[ns, UTC]")
    rows["cluster"] = cluster
    for key in ENTITY_KEYS:
        rows[key] = rows[key].astype(str).astype(object)
    metrics = [m for m in METRIC_COLUMNS if m in rows.columns]
    out = rows[[*KEY_COLUMNS, *metrics]].astype(dict.fromkeys(metrics, np.float64))
    return out.sort_values(list(KEY_COLUMNS), ignore_index=True)


# --------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class _Run:
    """Everything one ingest needs to send its queries."""

    client: _Client
    grid: _Grid
    max_points: int
    selector: str
    rate: str
    step: str

    def promql(self, template: str) -> str:
        return render(template, selector=self.selector, rate=self.rate, step=self.step)

    def fetch(self, name: str, template: str, level: str) -> pd.DataFrame:
        """Run one catalog query over the whole grid, chunk by chunk, as one long frame."""
        promql = self.promql(template)
        results: list[dict[str, Any]] = []
        for start_s, end_s in self.grid.chunks(self.max_points):
            results += self.client.query_range(name, promql, start_s, end_s, self.grid.step_s)
        frame = _long_frame(name, results, level, self.grid.step_s)
        _LOG.info("query '%s': %d series, %d samples", name, len(results), len(frame))
        return frame


def _check_results(
    catalog: QueryCatalog, frames: dict[str, pd.DataFrame], pod_info: pd.DataFrame, run: _Run
) -> None:
    """Stop on a range without data, an empty required query, or nothing to make pod rows from."""
    where = f"Prometheus at {run.client.url}"
    if not _has_data(pod_info) and not any(_has_data(f) for f in frames.values()):
        raise PrometheusError(
            f"{where} has no data in {run.grid.describe()}: none of the {len(frames) + 1} catalog queries "
            f"returned a sample (e.g. query 'pod_info': {run.promql(catalog.pod_info)}); check the time "
            f"range against the server's retention, and the selector {run.selector!r}"
        )
    empty = [(q.name, q.query) for q in catalog.queries if q.required and not _has_data(frames[q.name])]
    if catalog.pod_info_required and not _has_data(pod_info):
        empty.insert(0, ("pod_info", catalog.pod_info))
    if empty:
        details = "; ".join(f"query '{name}': {run.promql(template)}" for name, template in empty)
        raise PrometheusError(
            f"{where} returned no data in {run.grid.describe()} for required {details}; check that the "
            f"exporter behind it is scraped, or mark the entry `required: false` in an extra catalog"
        )
    if not any(_has_data(frames[q.name]) for q in catalog.queries if q.level == "pod"):
        raise PrometheusError(
            f"{where}: no pod-level query returned data in {run.grid.describe()}; "
            f"the metrics table needs pod rows"
        )


def ingest_prometheus(
    url: str,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    step: str = "1min",
    catalog: QueryCatalog | str | Path | None = None,
    cluster: str = "",
    token: str | None = None,
    ca_bundle: str | Path | None = None,
    timeout: float = 60.0,
    max_points: int = PROMETHEUS_MAX_POINTS,
    *,
    rate_interval: str | None = None,
    scrape_interval: str | None = None,
    selector: str = "",
    attempts: int = 4,
    backoff_s: float = 0.5,
) -> Telemetry:
    """Read the catalog's metrics for ``[start, end]`` from Prometheus into canonical telemetry.

    Args:
        url: Prometheus or Thanos querier root, e.g.
            ``https://thanos-querier.openshift-monitoring.svc:9091``.
        start: First instant (naive times are UTC); rounded up to the step grid.
        end: Last instant; rounded down to the step grid.
        step: Row spacing, a whole number of seconds (pandas timedelta string).
        catalog: A loaded catalog, the path of a YAML file extending the built-in one, or
            ``None`` for the built-in catalog.
        cluster: Value of the ``cluster`` entity key on every row.
        token: Bearer token sent as ``Authorization: Bearer ...`` (OpenShift: ``oc whoami -t``
            or a service account token).
        ca_bundle: CA certificate file that verifies the server's TLS certificate.
        timeout: Seconds to wait for each HTTP answer.
        max_points: Most points per series in one request; the range is split into chunks.
        rate_interval: Window of ``rate()`` (default: from the step and the scrape interval, see
            :func:`rate_window_ms`). Make it at least twice the scrape interval, or rates go
            missing.
        scrape_interval: How often the series are scraped (default: the catalog's
            ``scrape_interval``, ``1m`` in the built-in one, Prometheus' own default; OpenShift
            scrapes the kubelet's cAdvisor every 30 s).
        selector: Label matchers added to every pod-level query, e.g. ``namespace=~"shop|pay"``.
        attempts: Tries per request on server errors, time-outs and connection failures.
        backoff_s: Wait after the first failed try; doubled after each further one.

    Returns:
        Telemetry whose metrics table passes :func:`aiops.schema.validate_metrics`; labels,
        events and logs are empty.

    Raises:
        PrometheusError: When Prometheus is unreachable, refuses the credentials, rejects a query,
            has no data in the range, or returns nothing for a required query.
        SchemaError: When the catalog (or the extra YAML file) is invalid.
        ValueError: When the time range or step is malformed.

    """
    if max_points < 1 or attempts < 1:
        raise ValueError(f"max_points and attempts must be >= 1, got {max_points} and {attempts}")
    step_s = _whole_seconds(step, "step")
    loaded = catalog if isinstance(catalog, QueryCatalog) else load_catalog(catalog)
    scrape_s = _whole_seconds(scrape_interval or loaded.scrape_interval, "scrape_interval")
    if rate_interval:
        rate = f"{_whole_seconds(rate_interval, 'rate_interval')}s"
    else:
        rate = f"{rate_window_ms(step_s, scrape_s)}ms"
    grid = _grid(start, end, step_s)
    client = _Client(
        url, token=token, ca_bundle=ca_bundle, timeout=timeout, retry=_Retry(attempts, backoff_s)
    )
    run = _Run(client, grid, max_points, selector, rate=rate, step=f"{step_s}s")
    try:
        pod_info = run.fetch("pod_info", loaded.pod_info, "pod_info")
        frames = {q.name: run.fetch(q.name, q.query, q.level) for q in loaded.queries}
    finally:
        client.close()
    _check_results(loaded, frames, pod_info, run)

    keyed: dict[Level, dict[str, pd.DataFrame]] = {"pod": {}, "node": {}}
    for query in loaded.queries:
        frame = frames[query.name]
        if not _has_data(frame):
            _LOG.info("query '%s' (%s) returned no data; column left out", query.name, query.metric)
            continue
        keys = list(_POD_KEYS) if query.level == "pod" else ["node"]
        keyed[query.level][query.metric] = _unique(query.name, frame, keys)
    metrics = _assemble(keyed["pod"], keyed["node"], pod_info, step_s * 1_000_000_000, cluster)
    return Telemetry(metrics=validate_metrics(metrics))


@dataclass(frozen=True)
class PrometheusSource:
    """Settings of a Prometheus ingest; :meth:`ingest` reads one time range.

    Attributes mirror the arguments of :func:`ingest_prometheus`; ``catalog`` is the path of an
    extra YAML catalog (or ``None``), so the settings stay plain, serialisable values.
    """

    url: str
    step: str = "1min"
    catalog: str | None = None
    cluster: str = ""
    token: str | None = field(default=None, repr=False)  # keep secrets out of logs and reprs
    ca_bundle: str | None = None
    timeout: float = 60.0
    max_points: int = PROMETHEUS_MAX_POINTS
    rate_interval: str | None = None
    scrape_interval: str | None = None
    selector: str = ""
    attempts: int = 4
    backoff_s: float = 0.5

    def ingest(self, start: datetime | str | pd.Timestamp, end: datetime | str | pd.Timestamp) -> Telemetry:
        """Read ``[start, end]``; see :func:`ingest_prometheus`."""
        return ingest_prometheus(
            self.url,
            start,
            end,
            step=self.step,
            catalog=self.catalog,
            cluster=self.cluster,
            token=self.token,
            ca_bundle=self.ca_bundle,
            timeout=self.timeout,
            max_points=self.max_points,
            rate_interval=self.rate_interval,
            scrape_interval=self.scrape_interval,
            selector=self.selector,
            attempts=self.attempts,
            backoff_s=self.backoff_s,
        )
