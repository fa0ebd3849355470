"""Drain3 template mining, its persisted state, line classes and per-window log features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops.log_templates import (
    LEVELS,
    LOG_FEATURES,
    MINED_COLUMNS,
    LogTemplateMiner,
    TemplateConfig,
    TemplateStateError,
    classify_lines,
    log_features,
    log_template_features,
    parse_level,
)
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, LOG_COLUMNS, SchemaError
from aiops.simulate import ClusterSpec, simulate_cluster
from aiops.synth import inject
from aiops.telemetry import Telemetry

SPEC = ClusterSpec(duration="6h", rollouts_per_day=6.0, seed=3)


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    """Six simulated hours with a crash loop (conn refused + panic) and a memory leak (OOM)."""
    telemetry = simulate_cluster(SPEC)
    metrics = telemetry.metrics
    t0 = metrics["timestamp"].min()
    spans = metrics.groupby(list(ENTITY_KEYS))["timestamp"].agg(["min", "max"])
    alive = spans[(spans["min"] <= t0) & (spans["max"] >= t0 + pd.Timedelta("3h"))].index
    rng = np.random.default_rng(1)
    for keys, anomaly, (start, end) in (
        (alive[0], "crash_loop", ("60min", "90min")),
        (alive[1], "memory_leak", ("120min", "150min")),
    ):
        entity = dict(zip(ENTITY_KEYS, keys, strict=True))
        window = {"start": t0 + pd.Timedelta(start), "end": t0 + pd.Timedelta(end)}
        telemetry = inject(telemetry, anomaly, **entity, **window, rng=rng)
    return telemetry


def _logs(*lines: tuple[str, str, str], pod: str = "api-1") -> pd.DataFrame:
    """A canonical logs table from (time, level, message) triples."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([t for t, _, _ in lines], utc=True, format="ISO8601"),
            "cluster": "c1",
            "namespace": "shop",
            "pod": pod,
            "node": "node-1",
            "container": "api",
            "level": [level for _, level, _ in lines],
            "message": [m for _, _, m in lines],
        },
        columns=list(LOG_COLUMNS),
    )


# --------------------------------------------------------------------------- templates


def test_templates_mined_from_simulator_logs(telemetry: Telemetry) -> None:
    miner = LogTemplateMiner()
    mined = miner.mine(telemetry.logs)
    assert list(mined.columns) == [*telemetry.logs.columns, *MINED_COLUMNS]
    pd.testing.assert_frame_equal(mined[telemetry.logs.columns], telemetry.logs)
    templates = miner.templates()
    # Each kind of line the simulator writes is one template, whatever its numbers.
    assert len(templates) == mined["template_id"].nunique() <= 10
    assert len(mined) > 10 * len(templates)
    by_text = templates.set_index("template")["size"]
    assert "served <NUM> requests in the last <DURATION>, p95=<DURATION>" in by_text
    assert "dial tcp <IP>: connect: connection refused" in by_text
    served = mined["message"].str.startswith("served ")
    assert mined.loc[served, "template_id"].nunique() == 1
    assert int(by_text.sum()) == len(mined)
    assert mined["new_template"].all()  # no state: everything is new


def test_persistence_round_trip(tmp_path: Path, telemetry: Telemetry) -> None:
    state = tmp_path / "state" / "drain3.bin"
    first = LogTemplateMiner(state)
    first.mine(telemetry.logs)
    assert first.save() == state and state.exists()
    known = first.templates()

    second = LogTemplateMiner(state)
    assert second.known_clusters == len(known)
    mined = second.mine(telemetry.logs)
    assert not mined["new_template"].any()  # the same lines: no never-seen template
    pd.testing.assert_frame_equal(
        second.templates()[["template_id", "template"]], known[["template_id", "template"]]
    )
    features = log_features(mined)
    assert (features["logs_new_template"] == 0).all() and (features["logs_new_template_ratio"] == 0).all()

    t = telemetry.logs["timestamp"].max()
    fresh = _logs(
        (str(t), "INFO", "served 12 requests in the last 15m, p95=40ms"),  # a known template
        (str(t), "ERROR", "certificate for auth.shop.svc has expired, refusing handshake"),
        (str(t), "ERROR", "certificate for cart.shop.svc has expired, refusing handshake"),
    )
    third = LogTemplateMiner(state)
    mined = third.mine(fresh)
    assert mined["new_template"].tolist() == [False, True, True]
    assert mined.loc[1, "template_id"] == mined.loc[2, "template_id"] > third.known_clusters
    row = log_features(mined).iloc[0]
    assert (row["logs_total"], row["logs_new_template"]) == (3, 2)
    assert row["logs_new_template_ratio"] == pytest.approx(2 / 3)
    # Not saved: a fourth run still finds the certificate template never seen.
    assert LogTemplateMiner(state).mine(fresh)["new_template"].sum() == 2


def test_log_template_features_saves_the_state(tmp_path: Path, telemetry: Telemetry) -> None:
    state = tmp_path / "drain3.bin"
    first = log_template_features(telemetry.logs, state, "1min")
    assert (first["logs_new_template_ratio"] == 1).all()
    second = log_template_features(telemetry.logs, state, "1min")
    assert (second["logs_new_template_ratio"] == 0).all()
    pd.testing.assert_frame_equal(
        first.drop(columns=["logs_new_template", "logs_new_template_ratio"]),
        second.drop(columns=["logs_new_template", "logs_new_template_ratio"]),
    )


def test_bounded_state_round_trip(tmp_path: Path, telemetry: Telemetry) -> None:
    """max_clusters uses drain3's LRU cache (cachetools); it must persist and reload too."""
    state = tmp_path / "lru.bin"
    config = TemplateConfig(max_clusters=50)
    first = LogTemplateMiner(state, config)
    first.mine(telemetry.logs)
    first.save()
    second = LogTemplateMiner(state, config)
    assert not second.mine(telemetry.logs)["new_template"].any()
    assert len(second.templates()) == len(first.templates())


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "drain3.bin"
    state.write_bytes(b"this is not a drain3 snapshot")
    with pytest.raises(TemplateStateError, match=r"drain3\.bin cannot be read.*delete it"):
        LogTemplateMiner(state)


def test_in_memory_miner_saves_nothing() -> None:
    assert LogTemplateMiner().save() is None


def test_mining_needs_messages() -> None:
    with pytest.raises(SchemaError, match="'message' missing"):
        LogTemplateMiner().mine(pd.DataFrame({"text": ["x"]}))


def test_masking_groups_variable_parts_at_once() -> None:
    miner = LogTemplateMiner()
    a = miner.add("request 3f1e9a2b-7c1d-4e5f-8a9b-0c1d2e3f4a5b from 10.0.0.7:443 took 12ms")
    assert miner.template(a) == "request <UUID> from <IP> took <DURATION>"
    b = miner.add("request 0b1c2d3e-4f5a-4b7c-8d9e-0f1a2b3c4d5e from 10.0.9.1:8443 took 7.5s")
    assert a == b


# --------------------------------------------------------------------------- classes and levels


@pytest.mark.parametrize(
    ("message", "level", "expected"),
    [
        ("dial tcp 10.96.3.4:5432: connect: connection refused", "ERROR", {"error", "conn_refused"}),
        ("Error: connect ECONNREFUSED 127.0.0.1:6379", "ERROR", {"error", "conn_refused"}),
        ("Connection refused (os error 111)", "WARN", {"conn_refused"}),
        (
            "panic: runtime error: invalid memory address or nil pointer dereference",
            "ERROR",
            {"error", "panic"},
        ),
        ("goroutine 1 [running]:", "INFO", {"error", "panic"}),
        ("thread 'main' panicked at src/main.rs:12:5:", "INFO", {"error", "panic"}),
        ("Traceback (most recent call last):", "ERROR", {"error", "panic"}),
        ("fatal error: runtime: out of memory", "ERROR", {"error", "panic", "oom"}),
        ('Exception in thread "main" java.lang.OutOfMemoryError: Java heap space', "ERROR", {"error", "oom"}),
        (
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
            "",
            {"error", "panic", "oom"},  # node's crash, like Go's "fatal error:"
        ),
        ("Memory cgroup out of memory: Killed process 4242 (java)", "INFO", {"error", "oom"}),
        ("container was OOMKilled", "INFO", {"error", "oom"}),
        ("served 123 requests in the last 15m, p95=40ms", "INFO", set()),
        ("retrying request to cart:8080: context deadline exceeded", "WARN", set()),
        ("could not save the file", "ERROR", {"error"}),
        ("zoom level set to 3", "INFO", set()),
    ],
)
def test_classify_lines(message: str, level: str, expected: set[str]) -> None:
    flags = classify_lines(pd.Series([message]), pd.Series([level]) if level else None).iloc[0]
    assert {name.removeprefix("is_") for name, on in flags.items() if on} == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"level":"error","ts":1736071200.1,"msg":"boom"}', "ERROR"),
        ('{"severity": "WARNING", "message": "disk at 85%"}', "WARN"),
        ('{"level": 30, "msg": "pino info"}', "INFO"),
        ('{"level": 60, "msg": "pino fatal"}', "FATAL"),
        ('{"log": {"level": "debug"}, "message": "ecs"}', "DEBUG"),
        ('{"status": "error", "message": "datadog style"}', "ERROR"),
        ('{"status": 200, "method": "GET", "path": "/api/cart"}', "INFO"),  # an HTTP code, not a level
        ('{"status": 404, "path": "/x"}', "INFO"),
        ('{"severity": 3, "msg": "syslog numbers count down"}', "INFO"),
        ("E0105 10:00:00.000000       1 controller.go:42] sync failed", "ERROR"),
        ("I0105 10:00:00.000000       1 main.go:1] started", "INFO"),
        ('ts=2026-01-05T10:00:00Z caller=main.go:1 level=warn msg="slow"', "WARN"),
        ("2026-01-05T10:00:00.000Z\twarning\tenvoy config\tstream closed", "WARN"),
        ("2026-01-05 10:00:00,123 ERROR [main] com.example.App - failed", "ERROR"),
        ("[WARN] deprecated flag --foo", "WARN"),
        ("2026-01-05 10:20:30.000 UTC [88] FATAL:  sorry, too many clients already", "FATAL"),
        ("2026/01/05 10:00:00 [error] 12#12: *3 connect() failed", "ERROR"),
        ("ERROR:root:could not open file", "ERROR"),
        ("panic: assignment to entry in nil map", "FATAL"),
        ("Error: ErrImagePull", "ERROR"),
        ("dial tcp 10.0.0.1:5432: connect: connection refused", "ERROR"),
        ("retrying request to cart:8080: context deadline exceeded", "WARN"),
        ("served 12 requests in the last 15m, p95=40ms", "INFO"),
        ("Starting checkout server on :8080", "INFO"),
        ("", "INFO"),
        ("{not json", "INFO"),
        # the head line of an exception: CamelCase class names that error words miss
        ("KeyError: 'user_id'", "ERROR"),
        ('java.lang.NullPointerException: Cannot invoke "String.length()"', "ERROR"),
        ("Caused by: java.sql.SQLTransientConnectionException: HikariPool-1 - timeout", "ERROR"),
        ('Exception in thread "main" java.lang.IllegalStateException: closed', "ERROR"),
        ("MyErrorHandler registered for /api", "INFO"),
        # a logfmt level inside a quoted value is part of the message, not the line's level
        ('msg="switching level=debug for module x" level=error', "ERROR"),
        # numbers that are no bunyan/pino level, and JSON nested deeper than the parser goes
        ('{"level": -1, "msg": "x"}', "INFO"),
        ('{"lvl": -10, "msg": "request failed"}', "ERROR"),  # the words still speak
        ('{"level": NaN, "msg": "x"}', "INFO"),
        ('{"level": Infinity, "msg": "x"}', "INFO"),
        ('{"level": ' + "9" * 400 + "}", "FATAL"),  # beyond float range, still a number >= 60
        ('{"a": ' + "[" * 100_000, "INFO"),
    ],
)
def test_parse_level(line: str, expected: str) -> None:
    assert parse_level(line) == expected
    assert expected in LEVELS


def test_parsed_levels_agree_with_the_simulator(telemetry: Telemetry) -> None:
    parsed = telemetry.logs["message"].map(parse_level)
    simulated = telemetry.logs["level"]
    assert (parsed[simulated == "INFO"] == "INFO").all()
    assert (parsed[simulated == "WARN"] == "WARN").all()
    assert parsed[simulated == "ERROR"].isin(["ERROR", "FATAL"]).all()


# --------------------------------------------------------------------------- features


def test_counts_per_window() -> None:
    logs = _logs(
        ("2026-01-05T10:00:00Z", "INFO", "served 5 requests in the last 15m, p95=40ms"),
        ("2026-01-05T10:00:30Z", "ERROR", "dial tcp 10.0.0.1:5432: connect: connection refused"),
        ("2026-01-05T10:00:31Z", "ERROR", "panic: runtime error: index out of range [3] with length 3"),
        ("2026-01-05T10:01:00Z", "ERROR", "fatal error: runtime: out of memory"),
        ("2026-01-05T10:01:00.001Z", "INFO", "served 7 requests in the last 15m, p95=41ms"),
    )
    other = _logs(("2026-01-05T10:00:10Z", "WARN", "slow request took 900ms"), pod="api-2")
    features = log_features(LogTemplateMiner().mine(pd.concat([logs, other], ignore_index=True)), "1min")
    assert list(features.columns) == [*KEY_COLUMNS, *LOG_FEATURES]
    assert str(features["timestamp"].dtype) == "datetime64[ns, UTC]"
    got = features.set_index(["pod", features["timestamp"].dt.strftime("%H:%M:%S.%f")])[list(LOG_FEATURES)]
    # Windows are (t - step, t], labelled by their end: 10:00:00 exactly is in the 10:00 window,
    # 10:00:30 in the 10:01 one, and 10:01:00.001 in the 10:02 one.
    expected = pd.DataFrame(
        [
            ("api-1", "10:00:00.000000", 1, 0, 0, 0, 0, 1, 1.0),
            ("api-1", "10:01:00.000000", 3, 3, 2, 1, 1, 3, 1.0),
            ("api-1", "10:02:00.000000", 1, 0, 0, 0, 0, 1, 1.0),
            ("api-2", "10:01:00.000000", 1, 0, 0, 0, 0, 1, 1.0),
        ],
        columns=["pod", "timestamp", *LOG_FEATURES],
    ).set_index(["pod", "timestamp"])
    pd.testing.assert_frame_equal(got.sort_index(), expected.astype(np.float64), check_names=False)


def test_counts_per_wider_window(telemetry: Telemetry) -> None:
    mined = LogTemplateMiner().mine(telemetry.logs)
    features = log_features(mined, "15min")
    assert (features["timestamp"].dt.minute % 15 == 0).all()
    assert features["logs_total"].sum() == len(telemetry.logs)
    assert features["logs_error"].sum() == (telemetry.logs["level"] == "ERROR").sum()
    assert features["logs_oom"].sum() == 1
    assert features["logs_conn_refused"].sum() == features["logs_panic"].sum() - 1 > 0
    assert not features.duplicated(list(KEY_COLUMNS)).any()


def test_features_of_no_lines() -> None:
    features = log_features(LogTemplateMiner().mine(_logs()))
    assert features.empty
    assert list(features.columns) == [*KEY_COLUMNS, *LOG_FEATURES]


def test_features_need_mined_logs(telemetry: Telemetry) -> None:
    with pytest.raises(SchemaError, match="LogTemplateMiner.mine"):
        log_features(telemetry.logs)
