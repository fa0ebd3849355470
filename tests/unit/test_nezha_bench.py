"""The Nezha benchmark: scoring definitions, the online detector's causality, the real day, the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops import nezha_bench as nb
from aiops.nezha import load_nezha_day_extras
from tests.conftest import retimed, shared_absent

NEZHA = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "nezha"
needs_nezha = pytest.mark.skipif(
    shared_absent(any(NEZHA.glob("*/fault_list.json"))),
    reason=f"Nezha benchmark data not found at {NEZHA} (the shared benchmarks folder is absent)",
)

START = pd.Timestamp("2022-01-01T10:00:19.5Z")
PODS = {"front": "front-6f7d8c9b5-abcde", "store": "store-5c9b7d6f4-fghij", "cache": "cache-7d8e9f5c6-klmno"}
EDGES = (("front", "store"), ("store", "cache"), ("front", "cache"))
POD_COLUMNS = (
    "Time,TimeStamp,PodName,CpuUsage(m),CpuUsageRate(%),MemoryUsage(Mi),MemoryUsageRate(%),"
    "PodServerLatencyP90(s),PodServerLatencyP95(s),PodServerLatencyP99(s),PodWorkload(Ops),PodSuccessRate(%)"
)


def go_time(t: pd.Timestamp, minute: int) -> str:
    """Nezha's Go-style time string."""
    return f"{t.strftime('%Y-%m-%d %H:%M:%S.%f')}000 +0000 UTC m=+{minute * 60}.1"


def fault(minute: float, pod: str, kind: str) -> dict[str, str]:
    t = pd.Timestamp("2022-01-01T10:00:00Z") + pd.Timedelta(minutes=minute)
    return {
        "inject_time": t.strftime("%Y-%m-%d %H:%M:%S"),
        "inject_timestamp": str(int(t.timestamp())),
        "inject_pod": PODS[pod],
        "inject_type": kind,
    }


#: Three faults of the synthetic day: CPU on store, network delay on cache, an exception in store
#: (it stops calling cache). Injected half a minute into the minute, as in the real recordings.
SYNTHETIC_FAULTS = [fault(40.5, "store", "cpu_contention"), fault(80.5, "cache", "network_delay")]
SYNTHETIC_FAULTS += [fault(120.5, "store", "exception")]


#: Minutes in which some requests to the entry service fail: the exception in store surfaces there.
SYNTHETIC_ERRORS = ((121, 123),)


def write_day(
    root: Path,
    minutes: int = 150,
    faults: list[dict] | None = None,
    seed: int = 0,
    errors: tuple[tuple[int, int], ...] = SYNTHETIC_ERRORS,
) -> Path:
    """A small day in the Nezha layout with mild noise and the effects of SYNTHETIC_FAULTS.

    ``front_service.csv`` reports the entry service's success rate: 100% except in ``errors``.
    """
    rng = np.random.default_rng(seed)
    day = root / "2022-01-01"
    (day / "metric").mkdir(parents=True)
    times = [START + pd.Timedelta(minutes=m) for m in range(minutes)]
    for service, pod in PODS.items():
        lines = [POD_COLUMNS]
        for m, t in enumerate(times):
            cpu = 20 + rng.normal(0, 1.5)
            if service == "store" and 41 <= m <= 43:
                cpu = 95.0  # CPU contention saturates the limit
            latency = 0.01 * math.exp(rng.normal(0, 0.1))
            lines.append(
                f"{go_time(t, m)},{int(t.timestamp())},{pod},{cpu / 100 * 200:.4f},{cpu:.4f},100,50,"
                f"{latency * 0.8:.5f},{latency:.5f},{latency * 1.5:.5f},{5 + rng.normal(0, 0.3):.3f},0"
            )
        (day / "metric" / f"{pod}_metric.csv").write_text("\n".join(lines) + "\n")
    header = "time,timestamp," + ",".join(f"{a}_{b}" for a, b in EDGES)
    source, destination = [header], [header]
    for m, t in enumerate(times):
        dst = [0.005 * math.exp(rng.normal(0, 0.1)) for _ in EDGES]
        src = [d * 1.2 for d in dst]
        if 81 <= m <= 83:  # network delay on cache: its callers see it, its own sidecar does not
            src = [s + 0.3 if b == "cache" else s for s, (_, b) in zip(src, EDGES, strict=True)]
        cells_src = [f"{v:.5f}" for v in src]
        cells_dst = [f"{v:.5f}" for v in dst]
        if 121 <= m <= 123:  # exception in store: it fails before calling cache
            i = EDGES.index(("store", "cache"))
            cells_src[i] = cells_dst[i] = ""
        stamp = f"{go_time(t, m)},{int(t.timestamp())}"
        source.append(stamp + "," + ",".join(cells_src))
        destination.append(stamp + "," + ",".join(cells_dst))
    (day / "metric" / "source_50.csv").write_text("\n".join(source) + "\n")
    (day / "metric" / "destination_50.csv").write_text("\n".join(destination) + "\n")
    front = ["Time,TimeStamp,ServiceName,SuccessRate(%),LatencyP50(s)"]
    for m, t in enumerate(times):
        failing = any(first <= m <= last for first, last in errors)
        front.append(f"{go_time(t, m)},{int(t.timestamp())},Front,{92.5 if failing else 100},0.01")
    (day / "metric" / "front_service.csv").write_text("\n".join(front) + "\n")
    graph = ["Source,Target,Weight", *(f"{a},{b},1" for a, b in EDGES), "cache,10.0.0.7,1"]
    (day / "metric" / "dependency.csv").write_text("\n".join(graph) + "\n")
    listed = SYNTHETIC_FAULTS if faults is None else faults
    (day / "fault_list.json").write_text(json.dumps({"10": listed}))
    return day


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_day(tmp_path_factory.mktemp("nezha"))


# --------------------------------------------------------------------------- scoring definitions


def handmade(alarms: dict[str, list[tuple[str, str, float, str]]], faults: list[tuple[str, str, str]]):
    """A day of 120 minutes and a detection whose scores are given as (first, last, value, family)."""
    grid = pd.date_range("2022-01-01T10:00Z", periods=120, freq="1min", name="timestamp")
    day = nb.NezhaDay(
        name="hand",
        grid=grid,
        pods={},
        extras=load_nezha_day_extras("/nonexistent"),
        faults=pd.DataFrame(
            {
                "pod": [f[0] for f in faults],
                "start": pd.to_datetime([f[1] for f in faults], utc=True),
                "fault_type": [f[2] for f in faults],
            }
        ),
    )
    evidence = {pod: {"cpu": np.zeros(120), "network": np.zeros(120)} for pod in ("A", "B", "C")}
    for pod, runs in alarms.items():
        for first, last, value, family in runs:
            i, j = (
                grid.get_loc(pd.Timestamp(f"2022-01-01T{first}Z")),
                grid.get_loc(pd.Timestamp(f"2022-01-01T{last}Z")),
            )
            evidence[pod][family][i : j + 1] = value
    score = {pod: np.maximum(f["cpu"], f["network"]) for pod, f in evidence.items()}
    cpu_pct = {pod: np.where(f["cpu"] > 0, 95.0, 20.0) for pod, f in evidence.items()}
    cpu_z = {pod: f["cpu"].copy() for pod, f in evidence.items()}
    detection = nb.DayDetection("hand", grid, evidence, score, cpu_pct, cpu_z, threshold=4.0)
    detection.alarms = nb.find_alarms(detection)
    return day, detection


def test_metrics_on_a_hand_made_case():
    day, detection = handmade(
        {
            "A": [
                ("10:07", "10:09", 9.0, "cpu"),
                ("10:31", "10:31", 9.0, "cpu"),
                ("10:56", "10:56", 9.0, "cpu"),
            ],
            "B": [("10:06", "10:06", 5.0, "network"), ("10:32", "10:33", 5.0, "network")]
            + [("11:20", "11:24", 6.0, "network")],
            "C": [("10:02", "10:02", 6.0, "cpu")],
        },
        [
            ("A", "2022-01-01 10:05:30", "cpu_contention"),  # alarms at 10:06 (B) and 10:07 (A)
            ("B", "2022-01-01 10:30:10", "network_delay"),  # A outranks B, and A's kind is wrong
            ("A", "2022-01-01 10:50:00", "exception"),  # the alarm at 10:56 is too late
        ],
    )
    scored = nb.score_day(day, detection)
    first, second, third = scored.faults
    assert first["detected"] and first["delay_s"] == 30.0 and first["rank"] == 1 and first["n_flagged"] == 2
    assert first["predicted_kind"] == "resource" and first["kind_correct"]
    assert (
        second["detected"] and second["delay_s"] == 50.0 and second["rank"] == 2 and second["top_pod"] == "A"
    )
    assert second["predicted_kind"] == "resource" and second["kind_correct"] is False
    assert not third["detected"] and third["rank"] is None and third["delay_s"] is None
    # 10:02 (C) lies more than a minute before the first injection; 11:20 (B) after every window.
    # 10:56 is too late to detect the third fault but inside its window (up to 8 min): not false.
    assert scored.false_alarms == 2
    # fault windows cover 9 + 9 + 10 grid minutes; alarms outside them: 10:02 and 11:20..11:24
    assert scored.quiet_minutes == 120 - 28 and scored.busy_minutes == 6 and scored.minutes == 120

    summary = nb.summarise(scored.faults, scored.false_alarms, 2.0, scored.quiet_minutes, scored.busy_minutes)
    assert summary["detection_recall"] == pytest.approx(2 / 3)
    assert summary["recall_by_kind"] == {"resource": 1.0, "network": 1.0, "application": 0.0}
    assert summary["false_alarms_per_hour"] == 1.0
    assert summary["alarm_minutes_share"] == pytest.approx(6 / 92)
    assert summary["median_delay_s"] == 40.0
    assert summary["localization_top1"] == 0.5 and summary["localization_top3"] == 1.0
    assert summary["kind_accuracy"] == 0.5


def test_the_strict_reading_counts_an_onset_only_if_its_row_was_sampled_after_the_injection():
    # Fault on A at 10:05:30; A's alarm starts on the 10:05 row. Sampled at 10:05:20 that row
    # precedes the injection: the headline (the minute's row counts) detects the fault with
    # delay 0, the strict reading does not.
    day, detection = handmade(
        {"A": [("10:05", "10:07", 9.0, "cpu")]}, [("A", "2022-01-01 10:05:30", "cpu_contention")]
    )
    day.sampled["A"] = pd.Series(day.grid + pd.Timedelta(seconds=20), index=day.grid)
    [fault] = nb.score_day(day, detection).faults
    assert fault["detected"] and fault["delay_s"] == 0.0
    assert not fault["detected_strict"] and fault["delay_strict_s"] is None
    summary = nb.summarise([fault], 0, 2.0, 100, 0)
    assert summary["detection_recall"] == 1.0 and summary["strict"]["detection_recall"] == 0.0
    # Sampled 40 s into the minute, the same row comes 10 s after the injection: both count.
    day.sampled["A"] = pd.Series(day.grid + pd.Timedelta(seconds=40), index=day.grid)
    [fault] = nb.score_day(day, detection).faults
    assert fault["detected_strict"] and fault["delay_strict_s"] == 10.0
    # Without a known sampling time the onset counts from its minute (10:05:00): not after 10:05:30.
    day.sampled.clear()
    assert not nb.score_day(day, detection).faults[0]["detected_strict"]


def test_minutes_no_pod_recorded_are_not_recorded_time():
    """An outage of the recording is neither hours of recording nor quiet minutes."""
    day, detection = handmade(
        {"C": [("10:02", "10:02", 6.0, "cpu")]}, [("A", "2022-01-01 10:30:00", "cpu_contention")]
    )
    column = np.where(np.arange(120) < 60, 50.0, np.nan)  # the last hour was not recorded
    day.pods = {pod: pd.DataFrame({"CpuUsageRate(%)": column}, index=day.grid) for pod in ("A", "B", "C")}
    scored = nb.score_day(day, detection)
    assert scored.minutes == 60
    assert scored.quiet_minutes == 60 - 10  # the fault window 10:29..10:38 lies in the recorded hour
    assert (
        nb.summarise(
            scored.faults, scored.false_alarms, scored.minutes / 60, scored.quiet_minutes, scored.busy_minutes
        )["false_alarms_per_hour"]
        == 1.0
    )


def test_an_alarm_that_never_ends_shows_in_the_alarm_minutes_share():
    day, detection = handmade(
        {"C": [("10:20", "11:59", 6.0, "cpu")]}, [("A", "2022-01-01 10:05:30", "cpu_contention")]
    )
    scored = nb.score_day(day, detection)
    assert scored.false_alarms == 1 and not scored.faults[0]["detected"]
    # one onset, but 100 of the 111 minutes outside the fault window (10:05..10:13) are alarmed
    assert scored.quiet_minutes == 111 and scored.busy_minutes == 100


def test_a_fault_type_without_a_kind_is_scored_as_unclassified():
    day, detection = handmade(
        {"A": [("10:06", "10:08", 6.0, "cpu")], "B": [("10:31", "10:33", 6.0, "network")]},
        [("A", "2022-01-01 10:05:30", "disk_full"), ("B", "2022-01-01 10:30:10", "network_delay")],
    )
    scored = nb.score_day(day, detection)
    unclassified, network = scored.faults
    assert unclassified["kind"] == nb.UNCLASSIFIED and unclassified["detected"]
    assert unclassified["rank"] == 1 and unclassified["kind_correct"] is None
    summary = nb.summarise(scored.faults, scored.false_alarms, 2.0, scored.quiet_minutes, scored.busy_minutes)
    assert summary["detection_recall"] == 1.0 and summary["localization_top1"] == 1.0
    assert summary["recall_by_kind"] == {
        "resource": None,
        "network": 1.0,
        "application": None,
        nb.UNCLASSIFIED: 1.0,
    }
    assert network["predicted_kind"] == "network" and network["kind_correct"] is True
    assert summary["kind_accuracy"] == 1.0  # judged on the one fault that has a kind


def test_an_unknown_fault_type_is_benchmarked_with_a_warning(tmp_path, caplog):
    target = write_day(tmp_path, minutes=20, faults=[fault(10, "store", "disk_full")])
    with caplog.at_level("WARNING", logger="aiops.nezha_bench"):
        report = nb.run_nezha_benchmark(target)
    assert "disk_full" in caplog.text and "have no kind" in caplog.text
    assert [f["kind"] for f in report.faults] == [nb.UNCLASSIFIED]
    assert nb.UNCLASSIFIED in report.to_json()["summary"]["recall_by_kind"]


def test_summary_of_nothing_is_none_not_a_flattering_number():
    summary = nb.summarise([], 0, 0.0, 0, 0)
    assert summary["detection_recall"] is None and summary["false_alarms_per_hour"] is None
    assert summary["recall_by_kind"] == {"resource": None, "network": None, "application": None}


def test_alarm_episodes_merge_short_gaps_and_end_after_quiet_minutes():
    _, detection = handmade(
        {
            "A": [
                ("10:10", "10:11", 9.0, "cpu"),
                ("10:13", "10:13", 9.0, "cpu"),
                ("10:20", "10:20", 9.0, "cpu"),
            ]
        },
        [],
    )
    alarms = detection.alarms
    assert list(alarms["start"].dt.strftime("%H:%M")) == ["10:10", "10:20"]  # one quiet minute: same alarm
    assert list(alarms["end"].dt.strftime("%H:%M")) == ["10:13", "10:20"]
    assert list(alarms.columns) == list(nb.ALARM_COLUMNS)


# --------------------------------------------------------------------------- statistics


def test_online_robust_z_is_causal_and_relearns_level_shifts():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, size=(200, 1))
    x[100:] += 20  # a lasting level shift
    z = nb.online_robust_z(x, np.array([0.1]), window=30, min_history=3, learn_cutoff=4, relearn_after=5)
    assert np.isnan(z[:3]).all() and not np.isnan(z[3:]).any()
    assert z[100, 0] > 10  # the shift is flagged ...
    assert abs(z[199, 0]) < 4  # ... and becomes the new normal
    changed = x.copy()
    changed[150:] = 1e6
    z_changed = nb.online_robust_z(
        changed, np.array([0.1]), window=30, min_history=3, learn_cutoff=4, relearn_after=5
    )
    np.testing.assert_array_equal(z[:150], z_changed[:150])


def test_a_short_fault_is_not_learned_into_the_baseline():
    x = np.full((60, 1), 10.0) + np.tile([0.0, 1.0], 30)[:, None]
    x[20:26] = 100.0  # the fault lasts 6 rows, longer than half of a 10-row window
    kwargs = {"window": 10, "min_history": 3}
    learned = nb.online_robust_z(x, np.array([0.5]), **kwargs)
    skipped = nb.online_robust_z(x, np.array([0.5]), learn_cutoff=4, relearn_after=15, **kwargs)
    assert skipped[25, 0] > 50 and learned[25, 0] < 5  # without exclusion the fault becomes "normal"


def test_laplace_decades():
    assert nb.laplace_decades(np.array([0.0, -3.0, np.nan]))[:3].tolist() == [0.0, 0.0, 0.0]
    z = 6.0
    assert nb.laplace_decades(np.array([z]))[0] == pytest.approx(
        -math.log10(0.5 * math.exp(-math.sqrt(2) * z))
    )


def test_silence_decades_counts_a_run_against_the_base_rate():
    present = np.ones(100, dtype=bool)
    present[70:73] = False
    active = np.ones(100, dtype=bool)
    out = nb.silence_decades(present, active, window=60)
    rate = 1 / 62  # no silent minute among 60 active ones (Laplace's rule)
    assert out[70:73] == pytest.approx([-k * math.log10(rate) for k in (1, 2, 3)])
    assert out[:70].max() == 0 and out[73:].max() == 0
    idle = active.copy()
    idle[70:73] = False  # the caller got no requests either: no evidence
    assert nb.silence_decades(present, idle, window=60).max() == 0


def test_a_run_that_proves_significant_is_not_learned_at_all():
    event = np.zeros(120, dtype=bool)
    event[30:33] = True  # crosses the cutoff in its second minute (2 x 1.505 decades)
    event[90:93] = True
    out = nb.rare_run_decades(event, np.ones(120, dtype=bool), window=60, learn_cutoff=3.0)
    first = -math.log10(1 / 32)  # 30 quiet minutes before it
    assert out[30:33] == pytest.approx([first, 2 * first, 3 * first])
    # The second run's history (minutes 30..89) holds the first run; none of its minutes counts,
    # not even its first one, whose own evidence (1.5 decades) stayed below the cutoff.
    assert out[90] == pytest.approx(-math.log10(1 / 59))


def test_a_run_that_outlasts_relearn_after_becomes_the_new_normal():
    observed = np.ones(300, dtype=bool)
    always = np.ones(300, dtype=bool)  # e.g. a success rate a recording reports as 0 all day
    rules = {"window": 60, "learn_cutoff": 3.0, "min_history": 3}
    stuck = nb.rare_run_decades(always, observed, **rules, relearn_after=15)
    # No history when the run starts: no evidence; after 15 minutes it is learned as normal, and
    # each later stretch counts against a base rate near 1 (at most 15 x -log10(16/17) decades).
    assert stuck[:15].tolist() == [0.0] * 15
    assert stuck.max() == pytest.approx(-15 * math.log10(16 / 17))

    shift = np.zeros(300, dtype=bool)
    shift[100:] = True  # a condition that starts after 100 quiet minutes and stays
    out = nb.rare_run_decades(shift, observed, **rules, relearn_after=15)
    first = -math.log10(1 / 62)
    assert out[100:115] == pytest.approx([k * first for k in range(1, 16)])  # an alarm, at first
    # After 15 minutes the run is learned: counting restarts against a base rate that holds it.
    assert out[115] == pytest.approx(-math.log10(16 / 62))
    assert out[200:].max() < 0.2  # an hour later the event is the norm
    never = nb.rare_run_decades(shift, observed, **rules)
    assert never[-1] == pytest.approx(200 * first)  # never relearned: one run, a permanent alarm


def test_the_entry_service_is_named_by_front_service_or_is_the_call_graph_root(caplog):
    def extras(name: str | None, dependencies=(("a", "b"), ("b", "c"))):
        front = None if name is None else pd.DataFrame({"ServiceName": [name], "SuccessRate(%)": [100.0]})
        return nb.NezhaDayExtras(dependencies, None, None, front)

    services = {"a", "b", "c"}
    assert nb._entry_service(extras("A"), services, [], services) == "a"
    assert nb._entry_service(extras("Gateway"), services, [], services) == "a"  # the only root
    two_roots = extras("Gateway", (("a", "c"), ("b", "c")))
    assert nb._entry_service(two_roots, services, [], services) is None
    assert nb._entry_service(extras(None), services, [], services) is None
    mixed = extras("A")
    mixed.front_service.loc[1] = ["B", 100.0]  # rows of two services: which minute is whose?
    assert nb._entry_service(mixed, services, [], services) is None
    # A root without pod metrics (a load generator) hands over to its only callee...
    assert nb._entry_service(extras("Frontend"), services, [], {"b", "c"}) == "b"
    # ... and a root that calls several services names no entry (which would it be?).
    fan_out = extras("Frontend", (("load", "a"), ("load", "b")))
    with caplog.at_level("WARNING", logger="aiops.nezha_bench"):
        assert nb._entry_service(fan_out, {"load", "a", "b"}, [], {"a", "b"}) is None
    assert "the entry service load has no pod metrics" in caplog.text


def test_errors_at_the_entry_localise_to_it_unless_a_callee_explains_them(tmp_path):
    faults = [*SYNTHETIC_FAULTS, fault(100.5, "front", "return")]
    day = nb.load_day(write_day(tmp_path, faults=faults, errors=((101, 103), (121, 123))))
    detection = nb.detect_day(day)
    by_pod_and_type = {(f["pod"], f["fault_type"]): f for f in nb.score_day(day, detection).faults}
    front = by_pod_and_type[(PODS["front"], "return")]
    assert (
        front["detected"] and front["top_pod"] == PODS["front"] and front["predicted_kind"] == "application"
    )
    errors = detection.evidence[PODS["front"]]["errors"]
    assert errors[103] >= detection.threshold  # the third minute of failing requests
    # store's exception (minute 120.5) also fails requests at the entry, but store is itself
    # anomalous then: the entry's error evidence is discounted and store stays first.
    assert 0 < errors[121:124].max() < detection.threshold
    assert by_pod_and_type[(PODS["store"], "exception")]["top_pod"] == PODS["store"]


def test_a_success_rate_stuck_below_100_all_day_raises_no_alarm(tmp_path):
    """A recording whose entry success rate reads 0 in every minute (not measured) must not alarm."""
    day = nb.load_day(write_day(tmp_path, errors=((0, 149),)))
    detection = nb.detect_day(day)
    assert detection.evidence[PODS["front"]]["errors"].max() < 1.0
    report = nb.score_day(day, detection)
    assert [(f["detected"], f["rank"]) for f in report.faults] == [(True, 1), (True, 1), (True, 1)]
    assert report.false_alarms == 0 and report.busy_minutes == 0
    assert PODS["front"] not in set(detection.alarms.get("pod", []))


def test_threshold_grows_with_the_number_of_tests():
    settings = nb.NezhaBenchSettings()
    assert nb.alarm_threshold(40, settings) == pytest.approx(-math.log10(0.3 / 2400))
    assert nb.alarm_threshold(184, settings) > nb.alarm_threshold(40, settings)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_history"):
        nb.NezhaBenchSettings(min_history=0)
    with pytest.raises(ValueError, match="false_alarms_per_hour"):
        nb.NezhaBenchSettings(false_alarms_per_hour=0)


# --------------------------------------------------------------------------- detector on a synthetic day


def truncate(day: nb.NezhaDay, minutes: int) -> nb.NezhaDay:
    grid = day.grid[:minutes]
    extras = day.extras

    def cut(table):
        return None if table is None else table.loc[grid]

    return dataclasses.replace(
        day,
        grid=grid,
        pods={p: t.loc[grid] for p, t in day.pods.items()},
        extras=dataclasses.replace(
            extras,
            edge_source=cut(extras.edge_source),
            edge_destination=cut(extras.edge_destination),
            front_service=cut(extras.front_service),
        ),
    )


def test_detects_localises_and_classifies_the_synthetic_faults(synthetic):
    report = nb.run_nezha_benchmark(synthetic)
    assert [(f["detected"], f["rank"], f["predicted_kind"]) for f in report.faults] == [
        (True, 1, "resource"),
        (True, 1, "network"),
        (True, 1, "application"),
    ]
    assert report.summary["false_alarms_per_hour"] == 0.0 and report.summary["alarm_minutes_share"] == 0.0


def test_future_data_does_not_change_past_alarms(synthetic):
    day = nb.load_day(synthetic)
    full = nb.detect_day(day)
    cut = 100
    past = nb.detect_day(truncate(day, cut))
    for pod in full.score:
        np.testing.assert_array_equal(full.score[pod][:cut], past.score[pod])
    settled = day.grid[cut - 1 - nb.DEFAULT_SETTINGS.end_after_min]
    done = full.alarms[full.alarms["end"] < settled].reset_index(drop=True)
    pd.testing.assert_frame_equal(done, past.alarms[past.alarms["end"] < settled].reset_index(drop=True))
    assert len(done) >= 2  # the CPU and network faults before minute 100


def test_a_pod_recreated_under_a_new_name_changes_nothing_before_it_and_carries_nothing_after(
    synthetic, tmp_path
):
    """A pod deleted at minute 135 and replaced by a new one: pods recorded later in the day must
    not raise the alarm level of the minutes before them, and neither pod is scored while it is
    not running (the call graph's evidence of a service goes to its running pods only)."""
    day = write_day(tmp_path)
    old = day / "metric" / f"{PODS['store']}_metric.csv"
    table = pd.read_csv(old)
    renamed = "store-5c9b7d6f4-zzzzz"
    table.iloc[:135].to_csv(old, index=False)
    table.iloc[135:].assign(PodName=renamed).to_csv(day / "metric" / f"{renamed}_metric.csv", index=False)

    base, split = nb.detect_day(nb.load_day(synthetic)), nb.detect_day(nb.load_day(day))
    np.testing.assert_array_equal(split.thresholds[:135], base.thresholds[:135])
    for pod in PODS.values():
        np.testing.assert_array_equal(split.score[pod][:135], base.score[pod][:135])
    assert not split.score[renamed][:135].any()  # not running yet
    assert not split.score[PODS["store"]][135 + nb.DEFAULT_SETTINGS.present_for_min :].any()  # gone
    assert nb.run_nezha_benchmark(day).faults == nb.run_nezha_benchmark(synthetic).faults


def test_a_pod_runs_from_its_first_row_until_present_for_min_after_its_latest():
    recorded = np.zeros(30, dtype=bool)
    recorded[[3, 4, 6]] = True  # rows at minutes 3, 4 and 6 (5 missed)
    alive = nb.running(recorded, present_for_min=10)
    assert np.flatnonzero(alive).tolist() == list(range(3, 17))  # 6 + 10 = 16 is the last


def test_a_day_without_sampling_times_reads_running_pods_off_their_rows(tmp_path):
    day_folder = write_day(tmp_path)
    old = day_folder / "metric" / f"{PODS['store']}_metric.csv"
    pd.read_csv(old).iloc[:100].to_csv(old, index=False)  # the store pod is gone after minute 99
    day = nb.load_day(day_folder)
    bare = dataclasses.replace(day, sampled={})
    full, from_rows = nb.detect_day(day), nb.detect_day(bare)
    for pod in full.score:
        np.testing.assert_array_equal(full.score[pod], from_rows.score[pod])
    assert full.score[PODS["store"]][:100].any()  # scored while it ran ...
    gone = 100 + nb.DEFAULT_SETTINGS.present_for_min
    assert not from_rows.score[PODS["store"]][gone:].any()  # ... and not after it stopped


def test_a_pod_file_without_metric_values_is_a_warning(tmp_path, caplog):
    day = write_day(tmp_path)
    path = day / "metric" / f"{PODS['cache']}_metric.csv"
    pd.read_csv(path)[["Time", "TimeStamp", "PodName"]].to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        nb.run_nezha_benchmark(day)
    assert "holds no metric values" in caplog.text and "call graph's data alone" in caplog.text


def test_an_irrelevant_extra_column_changes_nothing(synthetic, tmp_path):
    copy = write_day(tmp_path)
    for path in (copy / "metric").glob("*_metric.csv"):
        table = pd.read_csv(path)
        table["SomethingElse"] = np.arange(len(table)) % 7
        table.to_csv(path, index=False)
    base, extra = nb.run_nezha_benchmark(synthetic), nb.run_nezha_benchmark(copy)
    assert base.faults == extra.faults
    pd.testing.assert_frame_equal(base.alarms, extra.alarms)


def test_pods_without_cpu_columns_are_scored_on_their_other_signals(tmp_path):
    day = write_day(tmp_path)
    for path in (day / "metric").glob("*_metric.csv"):
        pd.read_csv(path).drop(columns=["CpuUsage(m)", "CpuUsageRate(%)"]).to_csv(path, index=False)
    report = nb.run_nezha_benchmark(day)
    assert len(report.alarms) > 0  # alarms were raised, and classified, on pods without CPU
    assert {f["predicted_kind"] for f in report.faults if f["detected"]} <= {
        "network",
        "application",
        "resource",
    }


def test_empty_optional_files_are_read_as_absent(synthetic, tmp_path, caplog):
    day = write_day(tmp_path)
    (day / "metric" / "front_service.csv").write_text(
        "Time,TimeStamp,ServiceName,SuccessRate(%),LatencyP50(s)\n"
    )
    (day / "metric" / "dependency.csv").write_text("")
    with caplog.at_level(logging.WARNING):
        report = nb.run_nezha_benchmark(day)
    assert "front_service.csv holds no rows" in caplog.text and "dependency.csv holds no rows" in caplog.text
    assert len(report.faults) == len(nb.run_nezha_benchmark(synthetic).faults)


def test_pods_map_to_the_longest_service_name():
    services = {"ts-order", "ts-order-other", "front"}
    mapping = nb._service_of(
        ["ts-order-other-5d-x1", "ts-order-7f-x2", "frontend-1-2", "front-1-2"], services
    )
    assert mapping == {
        "ts-order-other-5d-x1": "ts-order-other",
        "ts-order-7f-x2": "ts-order",
        "frontend-1-2": None,
        "front-1-2": "front",
    }


# --------------------------------------------------------------------------- broken folders


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_day", "no recorded day"),
        ("bad_json", "not valid JSON"),
        ("unknown_pod", "has no metric file"),
        ("outside", "lies outside its metrics"),
        ("no_signals", "is this a Nezha recording"),
        ("no_time", "a fault has no inject_time"),
    ],
)
def test_broken_folders_give_clear_errors(tmp_path, breakage, message):
    if breakage == "no_day":
        (tmp_path / "empty").mkdir()
        target = tmp_path / "empty"
    else:
        faults = {
            "unknown_pod": [{**fault(10, "store", "cpu_contention"), "inject_pod": "ghost-1-2"}],
            "outside": [fault(60 * 24, "store", "cpu_contention")],
            "no_time": [{**fault(10, "store", "cpu_contention"), "inject_time": ""}],
        }.get(breakage, [])
        target = write_day(tmp_path, minutes=20, faults=faults)
        if breakage == "bad_json":
            (target / "fault_list.json").write_text("{not json")
        if breakage == "no_signals":
            for path in (target / "metric").glob("*_metric.csv"):
                path.write_text("Time,PodName\n2022-01-01 10:00:00.1 +0000 UTC,x\n")
    with pytest.raises(nb.NezhaBenchError, match=message):
        nb.run_nezha_benchmark(target)


# --------------------------------------------------------------------------- JSON and CLI


REQUIRED_SUMMARY = {
    "detection_recall",
    "recall_by_kind",
    "false_alarms_per_hour",
    "alarm_minutes_share",
    "median_delay_s",
    "localization_top1",
    "localization_top3",
    "kind_accuracy",
}
FAULT_FIELDS = {
    "day",
    "pod",
    "fault_type",
    "kind",
    "inject_time",
    "detected",
    "delay_s",
    "rank",
    "predicted_kind",
}


def test_json_shape(synthetic):
    payload = json.loads(json.dumps(nb.run_nezha_benchmark(synthetic).to_json()))
    assert {"summary", "faults"} <= set(payload)
    assert set(payload["summary"]) >= REQUIRED_SUMMARY
    assert set(payload["summary"]["recall_by_kind"]) == {"resource", "network", "application"}
    assert len(payload["faults"]) == 3 and all(set(f) >= FAULT_FIELDS for f in payload["faults"])
    assert payload["settings"]["false_alarms_per_hour"] == nb.DEFAULT_SETTINGS.false_alarms_per_hour


def test_cli_writes_json_alarms_and_a_table(synthetic, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    output, alarms = tmp_path / "out" / "nezha.json", tmp_path / "alarms.csv"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "nezha",
            "--data",
            str(synthetic.parent),
            "--output",
            str(output),
            "--alarms-out",
            str(alarms),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "detection_recall" in result.output and "cpu_contention" in result.output
    payload = json.loads(output.read_text())
    assert payload["summary"]["detection_recall"] == 1.0
    table = pd.read_csv(alarms)
    assert list(table.columns) == list(nb.ALARM_COLUMNS) and len(table) >= 3
    assert pd.to_datetime(table["start"], utc=True).notna().all()


def test_several_days_get_a_summary_each(synthetic, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    shutil.copytree(synthetic, tmp_path / "2022-01-01")
    shutil.copytree(synthetic, tmp_path / "2022-01-02")
    faults = json.loads((tmp_path / "2022-01-02" / "fault_list.json").read_text())
    faults["10"] = faults["10"][:1]  # the second day keeps only its first fault
    (tmp_path / "2022-01-02" / "fault_list.json").write_text(json.dumps(faults))
    output = tmp_path / "nezha.json"
    result = CliRunner().invoke(app, ["benchmark", "nezha", "--data", str(tmp_path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    days = json.loads(output.read_text())["days"]
    assert [(d["day"], d["summary"]["n_faults"]) for d in days] == [("2022-01-01", 3), ("2022-01-02", 1)]
    # Faults the second day no longer lists make its alarms at them false alarms of that day only.
    assert days[0]["summary"]["false_alarms_per_hour"] == 0.0 < days[1]["summary"]["false_alarms_per_hour"]
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("day ") and "alarm share" in line)
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["2022-01-01", "2022-01-02"]


def test_a_day_that_cannot_be_scored_is_skipped_and_reported_not_fatal(synthetic, tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    shutil.copytree(synthetic, tmp_path / "2022-01-01")
    shutil.copytree(synthetic, tmp_path / "2022-01-02")
    faults = json.loads((tmp_path / "2022-01-02" / "fault_list.json").read_text())
    for item in faults["10"]:  # eight hours early: nothing lines up with the metrics
        item["inject_time"] = str(pd.Timestamp(item["inject_time"]) - pd.Timedelta(hours=8))
    (tmp_path / "2022-01-02" / "fault_list.json").write_text(json.dumps(faults))
    output = tmp_path / "nezha.json"
    result = CliRunner().invoke(app, ["benchmark", "nezha", "--data", str(tmp_path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    payload = json.loads(output.read_text())
    assert [d["day"] for d in payload["days"]] == ["2022-01-01"]
    [skipped] = payload["skipped_days"]
    assert skipped["day"] == "2022-01-02" and "lies outside its metrics" in skipped["reason"]
    assert payload["summary"]["n_faults"] == len(SYNTHETIC_FAULTS)
    assert "SKIPPED 2022-01-02" in result.output
    # a day with two fault lists (which one?) is skipped in the same way
    shutil.copytree(synthetic, tmp_path / "2022-01-04")
    (tmp_path / "2022-01-04" / "fault_list.json").rename(tmp_path / "2022-01-04" / "a-fault_list.json")
    shutil.copy(tmp_path / "2022-01-04" / "a-fault_list.json", tmp_path / "2022-01-04" / "b-fault_list.json")
    report = nb.run_nezha_benchmark(tmp_path)
    assert [d["day"] for d in report.skipped_days] == ["2022-01-02", "2022-01-04"]
    assert "several fault lists" in report.skipped_days[1]["reason"]
    shutil.rmtree(tmp_path / "2022-01-04")
    # One day alone that cannot be scored is still an error, and so is a folder of only such days.
    with pytest.raises(nb.NezhaBenchError, match="lies outside its metrics"):
        nb.run_nezha_benchmark(tmp_path / "2022-01-02")
    shutil.rmtree(tmp_path / "2022-01-01")
    shutil.copytree(tmp_path / "2022-01-02", tmp_path / "2022-01-03")
    with pytest.raises(nb.NezhaBenchError, match="no day under .* can be scored; 2022-01-02: "):
        nb.run_nezha_benchmark(tmp_path)


def test_a_row_with_a_far_off_time_is_an_error_not_a_longer_day(tmp_path):
    day = write_day(tmp_path, minutes=20, faults=[])
    path = next((day / "metric").glob("*_metric.csv"))
    lines = path.read_text().splitlines()
    # one row from 1970: a grid from there would need gigabytes and dilute the false-alarm rate
    lines[3] = retimed(lines[3], "1970-01-01 00:00:00.1 +0000 UTC")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(nb.NezhaBenchError, match="spans 1970-01-01 .* a row with a wrong Time"):
        nb.run_nezha_benchmark(day)


def test_one_odd_fault_is_scored_with_a_warning_not_a_failed_day(tmp_path, caplog):
    ghost = {**fault(60.5, "cache", "network_delay"), "inject_pod": "cache-9-recreated"}
    day = write_day(tmp_path, faults=[*SYNTHETIC_FAULTS, ghost])
    with caplog.at_level("WARNING", logger="aiops.nezha_bench"):
        report = nb.run_nezha_benchmark(day)
    assert "'cache-9-recreated' which has no metric file" in caplog.text
    odd = next(f for f in report.faults if f["pod"] == "cache-9-recreated")
    assert odd["rank"] is None and report.summary["n_faults"] == 4  # counted, never ranked first


def test_cli_reports_a_broken_folder(tmp_path):
    from typer.testing import CliRunner

    from aiops.cli import app

    result = CliRunner().invoke(
        app, ["benchmark", "nezha", "--data", str(tmp_path), "--output", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 2 and "no recorded day" in result.output
    assert not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------- the real development day


@needs_nezha
def test_the_real_day_meets_the_targets(tmp_path):
    report = nb.run_nezha_benchmark(NEZHA)
    summary = report.summary
    assert summary["n_faults"] > 0 and all(day["faults"] > 0 for day in report.days)
    assert summary["false_alarms_per_hour"] <= 1.0 and summary["alarm_minutes_share"] <= 0.05
    assert summary["recall_by_kind"]["resource"] >= 0.95 and summary["recall_by_kind"]["network"] >= 0.6
    assert summary["detection_recall"] >= 0.8 and summary["localization_top1"] >= 0.7
    report.write_alarms(tmp_path / "alarms.csv")
    assert len(pd.read_csv(tmp_path / "alarms.csv")) == len(report.alarms)
