"""Request decoding: what is accepted, and what each bad request is told (no model, no server)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from aiops.features import FeatureConfig, build_features, contract_for
from aiops.schema import KEY_COLUMNS
from serving.codec import (
    RequestDecoder,
    Tensor,
    contract_id,
    describe_mismatch,
    iso_timestamps,
    parse_timestamps,
)
from serving.errors import NotConfiguredError, RequestError
from tests.conftest import make_metrics
from tests.serving.conftest import instances, telemetry_rows, v2_inputs, vectors

CONFIG = FeatureConfig(windows=(3,), lags=(1,))


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return build_features(make_metrics(n_steps=10), CONFIG)


@pytest.fixture(scope="module")
def decoder(features) -> RequestDecoder:
    return RequestDecoder(contract_for(features, CONFIG), max_rows=len(features))


def tensors(frame: pd.DataFrame, names: tuple[str, ...]) -> list[Tensor]:
    return [Tensor(t["name"], t["datatype"], t["shape"], t["data"]) for t in v2_inputs(frame, names)]


def test_v1_instances_decode_in_contract_order(decoder, features):
    rows = features.iloc[[5, 17]]
    decoded = decoder.v1({"instances": instances(rows)})
    np.testing.assert_array_equal(decoded.batch.features, rows.loc[:, list(decoder.names)].to_numpy())
    assert decoded.batch.entities[2].tolist() == rows["pod"].tolist()
    assert iso_timestamps(decoded.batch.timestamps) == [r["timestamp"] for r in instances(rows)]
    assert decoded.options.top_k == 5 and decoded.kind == "instances"


def test_iso_timestamps_use_milliseconds_only_where_needed():
    seconds = np.array([1_767_225_600, 1_767_225_660], dtype=np.int64) * 1_000_000_000
    assert iso_timestamps(seconds) == ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"]
    assert iso_timestamps(seconds + np.array([0, 250_000_000])) == [
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:01:00.250Z",
    ]
    assert iso_timestamps(seconds[::-1]) == ["2026-01-01T00:01:00Z", "2026-01-01T00:00:00Z"]  # memoised


def test_v1_key_order_inside_an_object_does_not_matter(decoder, features):
    row = instances(features.iloc[[5]])[0]
    shuffled = dict(reversed(list(row.items())))
    a, b = decoder.v1({"instances": [row]}), decoder.v1({"instances": [shuffled]})
    np.testing.assert_array_equal(a.batch.features, b.batch.features)


def test_warm_up_rows_with_missing_features_are_accepted(decoder, features):
    first = features.iloc[[0]]  # no lag, no window yet
    assert first.loc[:, list(decoder.names)].isna().any(axis=None)
    decoded = decoder.v1({"instances": instances(first)})
    assert np.isnan(decoded.batch.features).any()


def test_timestamps_accept_offsets_naive_utc_and_unix_seconds(decoder, features):
    row = instances(features.iloc[[5]])[0]
    expected = decoder.v1({"instances": [row]}).batch.timestamps
    as_offset = {**row, "timestamp": pd.Timestamp(row["timestamp"]).tz_convert("Europe/Paris").isoformat()}
    as_naive = {**row, "timestamp": row["timestamp"].rstrip("Z")}
    as_seconds = {**row, "timestamp": pd.Timestamp(row["timestamp"]).timestamp()}
    for variant in (as_offset, as_naive, as_seconds):
        np.testing.assert_array_equal(decoder.v1({"instances": [variant]}).batch.timestamps, expected)


def _bad_instance(features: pd.DataFrame, change) -> dict:
    row = instances(features.iloc[[5]])[0]
    change(row)
    return {"instances": [row]}


def _first_feature(features: pd.DataFrame) -> str:
    return [c for c in features.columns if "__" in c][0]


def _run_feature(features: pd.DataFrame) -> str:
    return [c for c in features.columns if c.endswith("__run")][0]


@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (lambda f: [1, 2], "must be a JSON object"),
        (lambda f: {}, "exactly one of 'instances'"),
        (lambda f: {"instances": [], "telemetry": []}, "got instances, telemetry"),
        (lambda f: {"instances": {}}, "must be a list"),
        (lambda f: {"instances": []}, "is empty"),
        (lambda f: {"instances": [{"a": 1.0}, [1.0, 2.0]]}, "instances[1] must be an object"),
        (lambda f: {"instances": instances(pd.concat([f, f.head(1)]))}, "over this server's limit of 20"),
        (lambda f: _bad_instance(f, lambda r: r.pop(_first_feature(f))), "1 missing"),
        (
            lambda f: _bad_instance(f, lambda r: r.update(cpu_temperature=1.0)),
            "1 unknown ('cpu_temperature')",
        ),
        (lambda f: _bad_instance(f, lambda r: r.pop("pod")), "missing ('pod')"),
        (
            lambda f: _bad_instance(f, lambda r: r.update({_first_feature(f): "0.5"})),
            "must be a number or null, got str",
        ),
        (lambda f: _bad_instance(f, lambda r: r.update({_first_feature(f): True})), "got bool"),
        (lambda f: _bad_instance(f, lambda r: r.update({_first_feature(f): 1e400})), "is infinite"),
        (
            lambda f: _bad_instance(f, lambda r: r.update({_run_feature(f): -5.0})),
            "of row 0 is -5; a run length counts repeated samples and cannot be negative",
        ),
        (
            lambda f: _bad_instance(f, lambda r: r.update({k: None for k in r if k not in KEY_COLUMNS})),
            "has no feature value",
        ),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp="yesterday")), "ISO 8601"),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp=None)), "got NoneType"),
        # Outside int64 nanoseconds (1677-2262): a 400 that says so, not a crash (500).
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp="9999-01-01T00:00:00Z")), "ISO 8601"),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp="0001-01-01T00:00:00")), "ISO 8601"),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp=9.3e9)), "from 1970-01-01 to 2199-12-31"),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp=10**400)), "finite Unix seconds"),
        # Inside pandas' range but where the forecasters overflow (their origin, their prefetch).
        (
            lambda f: _bad_instance(f, lambda r: r.update(timestamp="1700-01-01T00:00:00Z")),
            "timestamp 1700-01-01T00:00:00+00:00 of row 0 is outside",
        ),
        (
            lambda f: _bad_instance(f, lambda r: r.update(timestamp="2262-04-11T20:00:00Z")),
            "is outside from 1970-01-01 to 2199-12-31 UTC",
        ),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp=-9.0e9)), "is outside from 1970"),
        (lambda f: _bad_instance(f, lambda r: r.update(timestamp=1_767_225_600_123)), "milliseconds"),
        (lambda f: _bad_instance(f, lambda r: r.update(pod=7)), "'pod' must be a string"),
        (lambda f: {**_bad_instance(f, lambda r: None), "parameters": {"top_k": -1}}, "'top_k'"),
        (
            lambda f: {**_bad_instance(f, lambda r: None), "parameters": {"rows": "all"}},
            "telemetry input only",
        ),
        (lambda f: b"{not json", "not valid JSON"),
    ],
)
def test_bad_v1_requests_say_what_was_expected(decoder, features, make_body, message):
    with pytest.raises(RequestError, match=re.escape(message)):
        decoder.v1(make_body(features))


def test_v1_feature_vectors_decode_like_objects(decoder, features):
    rows = features.iloc[[5, 17, 19]]
    objects = decoder.v1({"instances": instances(rows)})
    positional = decoder.v1(
        {"instances": vectors(rows, decoder.names), "parameters": {"contract_id": decoder.contract_id}}
    )
    np.testing.assert_array_equal(positional.batch.features, objects.batch.features)
    np.testing.assert_array_equal(positional.batch.timestamps, objects.batch.timestamps)
    for a, b in zip(positional.batch.entities, objects.batch.entities, strict=True):
        np.testing.assert_array_equal(a, b)
    assert positional.kind == "instances"


def test_v1_contract_pins_apply_to_objects_and_take_the_contract_endpoints_list(decoder, features):
    rows = features.iloc[[5, 6]]
    for form in (instances(rows), vectors(rows, decoder.names)):
        decoder.v1({"instances": form, "parameters": {"feature_names": list(decoder.names)}})
        decoder.v1({"instances": form, "parameters": {"contract_id": decoder.contract_id}})
        with pytest.raises(RequestError, match="built for contract 0123"):
            decoder.v1({"instances": form, "parameters": {"contract_id": "0123456789abcdef"}})
        with pytest.raises(RequestError, match=re.escape("instances: feature_names")):
            decoder.v1({"instances": form, "parameters": {"feature_names": list(decoder.names)[::-1]}})


def _bad_vectors(decoder, features, change) -> dict:
    rows = vectors(features.iloc[[5, 6]], decoder.names)
    body = {"instances": rows}
    change(body, rows)
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, r: r[1].pop(), "instances[1]: a feature vector needs"),
        (lambda b, r: r[1].append(0.0), "got {width_plus_one} values"),
        (lambda b, r: r.append({"timestamp": "2026-01-01T00:00:00Z"}), "instances[2]: a feature vector"),
        (lambda b, r: r[0].__setitem__(len(KEY_COLUMNS), "0.5"), "must be a number or null, got str"),
        (lambda b, r: r[1].__setitem__(-1, True), "got bool"),
        (lambda b, r: r[0].__setitem__(0, "yesterday"), "ISO 8601"),
        (lambda b, r: r[0].__setitem__(3, 7), "'pod' must be a string"),
        (lambda b, r: b.update(parameters={"contract_id": "0123456789abcdef"}), "built for contract 0123"),
        (lambda b, r: b.update(parameters={"feature_names": "a,b"}), "instances: feature_names"),
        (lambda b, r: b.update(parameters={"feature_names": {}}), "a list of strings, got dict"),
        (lambda b, r: b.update(parameters={"contract_id": 123}), "'contract_id' must be a string, got int"),
        (lambda b, r: r.append(7), "got int"),
        (lambda b, r: r.append([1.0]), "got 1 value:"),
        (
            lambda b, r: r[1].__setitem__(3, None),
            "'pod' must be a string ('' where it does not apply), got NoneType (first in row 1)",
        ),
    ],
)
def test_bad_v1_feature_vectors_say_what_was_expected(decoder, features, change, message):
    width = len(KEY_COLUMNS) + len(decoder.names)
    message = message.replace("{width_plus_one}", str(width + 1))
    with pytest.raises(RequestError, match=re.escape(message)) as caught:
        decoder.v1(_bad_vectors(decoder, features, change))
    if "feature vector needs" in message:
        assert f"needs {width} values" in str(caught.value) and decoder.contract_id in str(caught.value)


def test_timestamps_of_mixed_types_name_the_mix(decoder, features):
    rows = instances(features.iloc[[5, 6]])
    rows[1]["timestamp"] = pd.Timestamp(rows[1]["timestamp"]).timestamp()
    with pytest.raises(RequestError, match=re.escape("(all rows alike), got float and str")):
        decoder.v1({"instances": rows})


def test_describe_mismatch_names_misordering():
    assert "position 1 holds 'c'" in describe_mismatch(["a", "c", "b"], ["a", "b", "c"])
    assert "1 duplicated" in describe_mismatch(["a", "b", "b"], ["a", "b"])


def test_entities_lookup_is_a_clear_not_configured(decoder):
    with pytest.raises(NotConfiguredError, match="not configured"):
        decoder.v1({"entities": [{"cluster": "c1", "namespace": "shop", "pod": "api-1", "node": "node-0"}]})


def test_telemetry_scores_the_latest_row_of_each_entity(decoder, features):
    metrics = make_metrics(n_steps=10)
    decoded = decoder.v1({"telemetry": telemetry_rows(metrics)})
    batch = decoded.batch
    assert len(batch) == len(metrics) and batch.n_targets == 2
    latest = features.groupby("pod").tail(1)
    scored = batch.features[batch.targets]
    np.testing.assert_allclose(
        scored[np.argsort(batch.entities[2][batch.targets])],
        latest.sort_values("pod").loc[:, list(decoder.names)].to_numpy(),
    )
    every = decoder.v1({"telemetry": telemetry_rows(metrics), "parameters": {"rows": "all"}})
    assert every.batch.n_targets == len(metrics) and every.options.rows == "all"


def test_one_pods_telemetry_without_a_series_scores_as_it_would_in_a_batch(decoder):
    """A pod without HTTP traffic has no request rate at all; alone, its rows are still scored."""
    metrics = make_metrics(n_steps=10)
    metrics.loc[metrics["pod"] == "api-2", "request_rate"] = np.nan
    batch = decoder.v1({"telemetry": telemetry_rows(metrics), "parameters": {"rows": "all"}}).batch
    alone_rows = metrics[metrics["pod"] == "api-2"]
    alone = decoder.v1({"telemetry": telemetry_rows(alone_rows), "parameters": {"rows": "all"}}).batch
    in_batch = batch.features[batch.entities[2] == "api-2"]
    np.testing.assert_array_equal(alone.features, in_batch)  # NaN in the same places
    assert np.isnan(alone.features[:, list(decoder.names).index("request_rate")]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows[3].pop("request_rate"), "telemetry[3] does not have the columns of telemetry[0]"),
        (
            lambda rows: rows[3].update(gpu_temp=1.0),
            "telemetry[3] does not have the columns of telemetry[0]: it adds 'gpu_temp'",
        ),
        (lambda rows: rows[2].update(request_rate=10**400), "beyond float range"),
        (lambda rows: [r.pop("cpu_usage_cores") for r in rows], "signal(s) 'cpu_usage_cores'"),
        (lambda rows: rows[2].update(request_rate=-5.0), "below 0"),
        (lambda rows: rows[2].update(request_rate="fast"), "must hold numbers or null"),
        (lambda rows: [r.update(gpu_watts=1.0) for r in rows], "unknown column"),
        (lambda rows: rows.append(dict(rows[0])), "duplicate row"),
    ],
)
def test_bad_telemetry_is_rejected_with_the_schema_message(decoder, change, message):
    rows = telemetry_rows(make_metrics(n_steps=4))
    change(rows)
    with pytest.raises(RequestError, match=re.escape(message)):
        decoder.v1({"telemetry": rows})


def test_v2_tensors_decode_like_v1_instances(decoder, features):
    rows = features.iloc[[5, 17, 19]]
    v1 = decoder.v1({"instances": instances(rows)}).batch
    v2 = decoder.v2(tensors(rows, decoder.names), {"top_k": 2})
    np.testing.assert_array_equal(v2.batch.features, v1.features)
    np.testing.assert_array_equal(v2.batch.timestamps, v1.timestamps)
    assert v2.options.top_k == 2


def test_v2_feature_names_and_contract_id_are_checked(decoder, features):
    rows = features.iloc[[5]]
    good = tensors(rows, decoder.names)
    named = Tensor(**{**good[0].__dict__, "parameters": {"feature_names": ",".join(decoder.names)}})
    decoder.v2([named, *good[1:]], None)
    swapped = list(decoder.names)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    misordered = Tensor(**{**good[0].__dict__, "parameters": {"feature_names": ",".join(swapped)}})
    with pytest.raises(RequestError, match="misordered: position 0"):
        decoder.v2([misordered, *good[1:]], None)
    stale = Tensor(**{**good[0].__dict__, "parameters": {"contract_id": "0123456789abcdef"}})
    with pytest.raises(RequestError, match=contract_id(decoder.contract)):
        decoder.v2([stale, *good[1:]], None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop(0), "1 missing ('features')"),
        (lambda t: t.pop(), "1 missing ('node')"),
        (lambda t: t.append(t[1]), "appears twice"),
        (
            lambda t: t.__setitem__(0, Tensor("features", "FP64", [1, 3], [1.0, 2.0, 3.0])),
            "the model expects [n, ",
        ),
        (lambda t: t.__setitem__(0, Tensor("features", "BYTES", t[0].shape, t[0].data)), "must be FP64"),
        (lambda t: t.__setitem__(0, Tensor("features", "FP64", t[0].shape, t[0].data[:-1])), "does not fill"),
        # numpy would read these as numbers; v1 refuses them, so does v2.
        (
            lambda t: t.__setitem__(0, Tensor("features", "FP64", t[0].shape, [str(v) for v in t[0].data])),
            "must be numbers or null, got str",
        ),
        (
            lambda t: t.__setitem__(0, Tensor("features", "FP64", t[0].shape, [True] * len(t[0].data))),
            "got bool",
        ),
        (
            lambda t: t.__setitem__(0, Tensor("features", "FP64", t[0].shape, [None, "1", *t[0].data[2:]])),
            "got str",
        ),
        # a boolean among floats: numpy would promote it to 1.0 without a trace
        (
            lambda t: t.__setitem__(0, Tensor("features", "FP64", t[0].shape, [0.5, True, *t[0].data[2:]])),
            "got bool",
        ),
        (
            lambda t: t.__setitem__(
                0, Tensor("features", "FP64", t[0].shape, [[0.5, False, *t[0].data[2:]]])
            ),
            "got bool",
        ),
        (
            lambda t: t.__setitem__(1, Tensor("timestamp", "BYTES", [2], ["2026-01-05T00:00:00Z"] * 2)),
            "expected 1",
        ),
        (lambda t: t.append(Tensor("extra", "FP64", [1], [0.0])), "1 unknown ('extra')"),
    ],
)
def test_bad_v2_inputs_say_what_was_expected(decoder, features, change, message):
    inputs = tensors(features.iloc[[5]], decoder.names)
    change(inputs)
    with pytest.raises(RequestError, match=re.escape(message)):
        decoder.v2(inputs, None)


def test_v2_telemetry_is_one_json_object_per_element(decoder):
    rows = telemetry_rows(make_metrics(n_steps=10))
    decoded = decoder.v2([Tensor("telemetry", "BYTES", [len(rows)], [json.dumps(r) for r in rows])], None)
    assert decoded.kind == "telemetry" and decoded.batch.n_targets == 2
    with pytest.raises(RequestError, match="not a JSON object"):
        decoder.v2([Tensor("telemetry", "BYTES", [1], ["{oops"])], None)
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RequestError, match="not a JSON object"):
        decoder.v2([Tensor("telemetry", "BYTES", [1], [deep])], None)
    with pytest.raises(RequestError, match="not valid JSON"):
        decoder.v1(deep.encode())


def test_telemetry_entities_are_told_apart_by_their_keys_not_a_joined_string(decoder):
    """Two entities whose keys joined with a separator would read the same stay two."""
    rows = telemetry_rows(make_metrics(n_steps=6, pods=("api-1",)))
    a = [{**r, "cluster": "c", "namespace": "ns\x1fx"} for r in rows]
    b = [{**r, "cluster": "c\x1fns", "namespace": "x"} for r in rows]
    assert decoder.v1({"telemetry": a + b}).batch.n_targets == 2


def test_sub_millisecond_timestamps_come_back_as_sent():
    base = np.int64(1_767_225_600) * 1_000_000_000
    assert iso_timestamps(np.array([base + 250_000, base + 750_000])) == [
        "2026-01-01T00:00:00.000250Z",
        "2026-01-01T00:00:00.000750Z",
    ]
    assert iso_timestamps(np.array([base + 1])) == ["2026-01-01T00:00:00.000000001Z"]


def test_nanosecond_timestamps_are_read_to_the_nanosecond():
    """datetime.fromisoformat (the fast path) would cut them to microseconds, and merge two samples."""
    sent = ["2026-01-05T05:57:00.123456100Z", "2026-01-05T05:57:00.123456900", "2026-01-05T05:57:00.5Z"]
    parsed = parse_timestamps(sent, "instances")
    assert iso_timestamps(parsed) == [
        "2026-01-05T05:57:00.123456100Z",
        "2026-01-05T05:57:00.123456900Z",
        "2026-01-05T05:57:00.500000000Z",
    ]


def test_a_sample_sent_twice_is_refused_as_in_telemetry(decoder, features):
    """Rows are each other's history (the LSTM's window): a repeated sample would be an extra step."""
    rows = instances(features.iloc[[5, 6, 5]])
    with pytest.raises(
        RequestError, match=re.escape("instances: row 2 repeats the entity and timestamp of row 0")
    ):
        decoder.v1({"instances": rows})
    with pytest.raises(RequestError, match="inputs: row 2 repeats"):
        decoder.v2(tensors(features.iloc[[5, 6, 5]], decoder.names), None)
    decoder.v1({"instances": instances(features.iloc[[5, 6]])})  # distinct samples pass
