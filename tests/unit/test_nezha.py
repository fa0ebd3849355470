import json
from pathlib import Path

import pandas as pd
import pytest

from aiops.ingest import check_source, load_telemetry
from aiops.nezha import day_folders, load_nezha
from aiops.schema import SchemaError, row_labels
from tests.conftest import retimed, shared_absent

NEZHA = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "nezha"
COLUMNS = (
    "Time,TimeStamp,PodName,CpuUsage(m),CpuUsageRate(%),MemoryUsage(Mi),MemoryUsageRate(%),PodWorkload(Ops)"
)


def write_day(root: Path, faults: dict, pods=("web-1", "db-1"), minutes=30, timestamp_offset_s=0) -> Path:
    day = root / "2022-01-01"
    (day / "metric").mkdir(parents=True)
    for pod in pods:
        lines = [COLUMNS]
        for m in range(minutes):
            t = pd.Timestamp("2022-01-01T10:00:19.5Z") + pd.Timedelta(minutes=m)
            ts = int(t.timestamp()) + timestamp_offset_s
            lines.append(
                f"{t.strftime('%Y-%m-%d %H:%M:%S.%f')}000 +0000 UTC m=+{m * 60}.1,{ts},{pod},"
                f"{5 + m % 3},{(5 + m % 3) / 50 * 100},100,50,{10 + m}"
            )
        (day / "metric" / f"{pod}_metric.csv").write_text("\n".join(lines) + "\n")
    (day / "fault_list.json").write_text(json.dumps(faults))
    return day


def fault(time, pod="web-1", kind="cpu_contention", timestamp=None):
    ts = timestamp if timestamp is not None else int(pd.Timestamp(time, tz="UTC").timestamp())
    return {"inject_time": time, "inject_timestamp": str(ts), "inject_pod": pod, "inject_type": kind}


def test_small_day_maps_to_the_canonical_schema(tmp_path):
    write_day(tmp_path, {"10": [fault("2022-01-01 10:05:40")]})
    tel = load_nezha(tmp_path)
    m = tel.metrics
    assert set(m["pod"]) == {"web-1", "db-1"} and (m["timestamp"].dt.second == 0).all()
    assert m["cpu_usage_cores"].iloc[0] == pytest.approx(0.005)
    assert m["cpu_limit_cores"].iloc[0] == pytest.approx(0.05)  # usage / usage-rate
    assert m["memory_working_set_bytes"].iloc[0] == 100 * 2**20
    [label] = tel.labels.to_dict("records")
    assert label["start"] == pd.Timestamp("2022-01-01T10:05:40Z") and label["end"] - label[
        "start"
    ] == pd.Timedelta("3min")
    # the window covers the rows measured at 10:06, 10:07 and 10:08 on the faulty pod only
    flagged = m[row_labels(m, tel.labels)]
    assert list(flagged["timestamp"].dt.minute) == [6, 7, 8] and set(flagged["pod"]) == {"web-1"}


def test_faults_align_on_wall_clock_strings_when_unix_times_are_off(tmp_path):
    # metrics' TimeStamp and inject_timestamp both 2 h off: the strings still agree
    write_day(
        tmp_path, {"10": [fault("2022-01-01 10:05:40", timestamp=1641031540 + 7200)]}, timestamp_offset_s=7200
    )
    assert load_nezha(tmp_path).labels["start"].iloc[0] == pd.Timestamp("2022-01-01T10:05:40Z")


def test_the_study_repositorys_fault_list_name_is_read_too(tmp_path):
    day = write_day(tmp_path, {"10": [fault("2022-01-01 10:05:40")]})
    (day / "fault_list.json").rename(day / "2022-01-01-fault_list.json")  # as in IntelligentDDS/Nezha
    assert len(load_nezha(tmp_path).labels) == 1
    assert len(load_nezha(day).labels) == 1  # the day folder itself
    (day / "2022-01-02-fault_list.json").write_text("{}")
    with pytest.raises(SchemaError, match="several fault lists"):
        load_nezha(tmp_path)


def test_an_underscore_prefixed_fault_list_is_read_and_an_unlabelled_day_is_named(tmp_path, caplog):
    day = write_day(tmp_path / "a", {"10": [fault("2022-01-01 10:05:40")]})
    (day / "fault_list.json").rename(day / "2022-01-01_fault_list.json")
    assert len(load_nezha(day).labels) == 1
    unlabelled = tmp_path / "a" / "2022-01-02"
    (unlabelled / "metric").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="aiops.nezha"):
        assert [d.name for d in day_folders(tmp_path / "a")] == ["2022-01-01"]
    assert "2022-01-02 has metric/ but no fault_list.json" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"inject_time": "2022-01-01 10:05:40"}], "got a JSON list"),
        ({"10": "cpu_contention"}, "hour '10' holds str, expected a list of faults"),
        ({"10": ["web-1"]}, "is not an object"),
    ],
)
def test_a_malformed_fault_list_is_a_clear_error(tmp_path, content, message):
    day = write_day(tmp_path, {})
    (day / "fault_list.json").write_text(json.dumps(content))
    with pytest.raises(SchemaError, match=message):
        load_nezha(tmp_path)


def test_an_hour_without_faults_may_be_null(tmp_path):
    day = write_day(tmp_path, {"10": [fault("2022-01-01 10:05:40")]})
    (day / "fault_list.json").write_text(json.dumps({"09": None, "10": [fault("2022-01-01 10:05:40")]}))
    assert len(load_nezha(tmp_path).labels) == 1


def test_rows_whose_time_does_not_parse_are_dropped_with_a_warning(tmp_path, caplog):
    day = write_day(tmp_path, {})
    path = day / "metric" / "web-1_metric.csv"
    lines = path.read_text().splitlines()
    # a header line repeated where two files were joined, and Go's zero time
    zero = retimed(lines[5], "0001-01-01 00:00:00 +0000 UTC")
    path.write_text("\n".join([*lines[:5], lines[0], zero, *lines[5:]]) + "\n")
    with caplog.at_level("WARNING", logger="aiops.nezha"):
        m = load_nezha(tmp_path).metrics
    assert "2 of 32 rows have a Time that does not parse" in caplog.text
    web = m[m["pod"] == "web-1"]
    assert len(web) == 30 and web["cpu_usage_cores"].notna().all()  # the columns read as numbers again
    # a column where most rows do not parse is not a Nezha time column
    path.write_text("\n".join([lines[0], *(("x" + line) for line in lines[1:])]) + "\n")
    with pytest.raises(SchemaError, match="cannot parse Time value"):
        load_nezha(tmp_path)


def test_a_row_with_a_far_off_time_is_an_error_not_a_grid_of_decades(tmp_path):
    day = write_day(tmp_path, {})
    path = day / "metric" / "web-1_metric.csv"
    lines = path.read_text().splitlines()
    lines[3] = retimed(lines[3], "1970-01-01 00:00:00.1 +0000 UTC")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match="web-1_metric.csv spans 1970-01-01 .* a row with a wrong Time"):
        load_nezha(tmp_path)


def test_fault_outside_the_recording_is_an_error(tmp_path):
    write_day(tmp_path, {"18": [fault("2022-01-01 18:00:00")]})
    with pytest.raises(SchemaError, match="outside its metrics"):
        load_nezha(tmp_path)


def test_fault_on_unknown_pod_and_broken_files(tmp_path):
    write_day(tmp_path, {"10": [fault("2022-01-01 10:05:00", pod="ghost")]})
    with pytest.raises(SchemaError, match="'ghost' which has no metric file"):
        load_nezha(tmp_path)
    with pytest.raises(SchemaError, match="no recorded day"):
        load_nezha(tmp_path / "2022-01-01" / "metric")
    (tmp_path / "2022-01-01" / "fault_list.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_nezha(tmp_path)


def test_gaps_become_nan_rows(tmp_path):
    day = write_day(tmp_path, {})
    path = day / "metric" / "web-1_metric.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:10] + lines[12:]) + "\n")  # drop two minutes
    m = load_nezha(tmp_path).metrics
    web = m[m["pod"] == "web-1"]
    assert len(web) == 30 and web["cpu_usage_cores"].isna().sum() == 2


def test_source_selection_is_explicit():
    with pytest.raises(ValueError, match="pass its folder as data_path"):
        check_source("nezha")
    with pytest.raises(ValueError, match="takes no data_path"):
        check_source("synthetic", "/data")
    with pytest.raises(ValueError, match="unknown telemetry source"):
        load_telemetry("prometheus-typo")


@pytest.mark.skipif(shared_absent(NEZHA.exists()), reason="shared Nezha data not found beside the repository")
def test_real_nezha_day_loads_with_every_fault_inside_its_pod():
    tel = load_nezha(NEZHA)
    faults = json.loads((NEZHA / "2022-08-22" / "fault_list.json").read_text())
    assert len(tel.labels) == sum(len(v) for v in faults.values())
    assert tel.metrics["pod"].nunique() == 10
    # the adservice file's TimeStamp column is corrupt; rows are timed by the Time strings instead
    ad = tel.metrics[tel.metrics["pod"].str.startswith("adservice")]
    assert ad["timestamp"].min() == pd.Timestamp("2022-08-22T03:51:00Z")
    assert row_labels(tel.metrics, tel.labels).sum() >= 3 * len(tel.labels) - 3


def test_go_time_strings_keep_their_offset():
    """Nezha's ``Time`` column is Go's time.String(): a numeric offset, a zone name, a clock reading."""
    import pandas as pd

    from aiops.nezha import _parse_time

    got = _parse_time(
        pd.Series(
            [
                "2022-08-22 03:51:19.607158889 +0000 UTC m=+0.113",
                "2022-08-22 11:51:19.5 +0800 CST m=+0.1",  # eight hours ahead of UTC
                "2022-08-22 03:51:19.5 -0700 MST",
                "2022-08-22 03:51:19",  # no offset: UTC
            ]
        )
    )
    assert got.tolist() == [
        pd.Timestamp("2022-08-22 03:51:19.607158889", tz="UTC"),
        pd.Timestamp("2022-08-22 03:51:19.5", tz="UTC"),
        pd.Timestamp("2022-08-22 10:51:19.5", tz="UTC"),
        pd.Timestamp("2022-08-22 03:51:19", tz="UTC"),
    ]


def test_a_day_given_twice_is_refused_not_deduplicated(tmp_path):
    """A second copy of a day (or of a pod's file) used to win silently, and its faults counted twice."""
    import shutil

    day = write_day(tmp_path, {"10": [fault("2022-01-01 10:05:40")]})
    shutil.copytree(day, tmp_path / "2022-01-01-copy")
    with pytest.raises(SchemaError, match=r"'db-1' has samples at .* in more than one file \(2022-01-01"):
        load_nezha(tmp_path)


def test_a_header_repeated_in_another_column_order_is_refused(tmp_path):
    day = write_day(tmp_path, {})
    path = day / "metric" / "web-1_metric.csv"
    lines = path.read_text().splitlines()
    names = lines[0].split(",")
    names[3], names[5] = names[5], names[3]  # CPU and memory swapped after the join
    path.write_text("\n".join([*lines[:5], ",".join(names), *lines[5:]]) + "\n")
    with pytest.raises(SchemaError, match="repeats its header on data row 5 with the columns in another"):
        load_nezha(tmp_path)


def test_an_empty_metric_file_and_an_empty_inject_time_name_themselves(tmp_path):
    day = write_day(tmp_path, {"10": [fault("", timestamp=0)]})
    with pytest.raises(SchemaError, match="the fault on 'web-1' has no readable inject_time"):
        load_nezha(tmp_path)
    (day / "fault_list.json").write_text("{}")
    (day / "metric" / "web-1_metric.csv").write_text("")
    with pytest.raises(SchemaError, match="web-1_metric.csv is empty"):
        load_nezha(tmp_path)


def test_settings_of_the_synthetic_source_are_refused_elsewhere(tmp_path):
    from aiops.ingest import SyntheticSource

    write_day(tmp_path, {})
    for settings in (SyntheticSource(concept_drift="workload_doubles"), SyntheticSource(start="2026-01-01")):
        with pytest.raises(ValueError, match="applies to the synthetic source only"):
            load_telemetry("nezha", str(tmp_path), settings)


def test_settings_of_the_prometheus_source_are_refused_elsewhere(tmp_path):
    """The ingest step would build no Prometheus range without a URL, and drop these silently."""
    from aiops.ingest import check_source
    from components.ingest import ingest_telemetry

    for given in ({"end": "1999-01-01T00:00Z"}, {"catalog": "/no/such/queries.yaml"}):
        with pytest.raises(ValueError, match="applies to the prometheus source only; source 'synthetic'"):
            check_source("synthetic", **given)
    out = type("Out", (), {"path": str(tmp_path / "t"), "metadata": {}})()
    with pytest.raises(ValueError, match="end='1999-01-01T00:00Z' applies to the prometheus source only"):
        ingest_telemetry.python_func(telemetry=out, source="synthetic", end="1999-01-01T00:00Z")
