import numpy as np
import pandas as pd
import pytest

from aiops.features import (
    FEATURE_VERSION,
    FeatureConfig,
    FeatureContract,
    build_features,
    contract_for,
    feature_names,
    infer_step_seconds,
    load_features,
    save_features,
    signals_for,
)
from aiops.schema import KEY_COLUMNS, SchemaError
from tests.conftest import make_metrics

CFG = FeatureConfig(windows=(3,), lags=(1, 2), step_seconds=60.0)


def one_series(values):
    df = make_metrics(n_steps=len(values), pods=("p",))
    df["cpu_usage_cores"] = np.asarray(values, dtype=float)
    return df.drop(columns=["request_rate"])


def test_hand_computed_values():
    feats = build_features(one_series([1, 2, 4, 8, 16]), CFG)
    s = "cpu_usage_cores"
    np.testing.assert_allclose(feats[f"{s}__mean_3"], [1, 1.5, 7 / 3, 14 / 3, 28 / 3])
    np.testing.assert_allclose(
        feats[f"{s}__std_3"],
        [
            np.nan,
            np.std([1, 2], ddof=1),
            np.std([1, 2, 4], ddof=1),
            np.std([2, 4, 8], ddof=1),
            np.std([4, 8, 16], ddof=1),
        ],
    )
    np.testing.assert_allclose(feats[f"{s}__lag_2"], [np.nan, np.nan, 1, 2, 4])
    np.testing.assert_allclose(feats[f"{s}__diff_1"], [np.nan, 1, 2, 4, 8])
    np.testing.assert_allclose(feats[f"{s}__slope_3"], [np.nan, np.nan, np.nan, 7 / 180, 14 / 180])
    # z of row 3 (value 8) against the previous 3 rows [1, 2, 4]
    prev = np.array([1, 2, 4.0])
    assert feats[f"{s}__z_3"].iloc[3] == pytest.approx((8 - prev.mean()) / prev.std(ddof=1), rel=1e-6)


def test_features_are_causal():
    """Changing the future must not change any feature of the past."""
    base = one_series(np.arange(30.0))
    changed = base.copy()
    changed.loc[20:, "cpu_usage_cores"] = 1000.0
    a, b = build_features(base, CFG), build_features(changed, CFG)
    pd.testing.assert_frame_equal(a.iloc[:20], b.iloc[:20])
    assert not a.iloc[20:].equals(b.iloc[20:])


def test_entities_do_not_leak_into_each_other():
    df = make_metrics(n_steps=10, pods=("a", "b"))
    alone = build_features(df[df["pod"] == "a"], CFG)
    together = build_features(df, CFG)
    pd.testing.assert_frame_equal(
        together[together["pod"] == "a"].reset_index(drop=True), alone.reset_index(drop=True)
    )


def test_output_layout_and_utilisation():
    df = make_metrics(n_steps=6)
    df["cpu_limit_cores"] = 2.0
    feats = build_features(df, CFG)
    signals = signals_for(df)
    assert "cpu_limit_cores" not in signals and "cpu_utilisation" in signals
    assert list(feats.columns) == [*KEY_COLUMNS, *feature_names(signals, CFG)]
    np.testing.assert_allclose(feats["cpu_utilisation"], feats["cpu_usage_cores"] / 2.0)
    assert len(feats) == len(df)
    assert all(feats[c].dtype == np.float64 for c in feats.columns if c not in KEY_COLUMNS)


def test_float32_metrics_give_the_features_of_their_float64_values():
    """Utilisation is divided in float64, as the online paths divide it, whatever the ingest's dtype."""
    df = make_metrics(n_steps=12)
    df["cpu_limit_cores"] = 3.0
    narrow = df.assign(
        **{c: df[c].astype("float32") for c in ("cpu_usage_cores", "request_rate", "cpu_limit_cores")}
    )
    wide = narrow.assign(
        **{c: narrow[c].astype("float64") for c in ("cpu_usage_cores", "request_rate", "cpu_limit_cores")}
    )
    pd.testing.assert_frame_equal(build_features(narrow, CFG), build_features(wide, CFG), check_exact=True)


def test_zero_limit_means_undefined_utilisation():
    df = make_metrics(n_steps=4, pods=("p",))
    df["cpu_limit_cores"] = 0.0
    assert build_features(df, CFG)["cpu_utilisation"].isna().all()


def test_flat_history_z_is_capped():
    feats = build_features(one_series([1, 1, 1, 1, 5]), CFG)
    assert feats["cpu_usage_cores__z_3"].iloc[-1] == 50.0


def test_contract_roundtrip_and_enforcement(tmp_path):
    feats = build_features(make_metrics(n_steps=8), CFG)
    contract = contract_for(feats, CFG)
    assert FeatureContract.from_json(contract.to_json()) == contract
    assert contract.transform_version == FEATURE_VERSION
    assert contract.matrix(feats).shape == (len(feats), len(contract.feature_names))
    with pytest.raises(SchemaError, match="missing from the input"):
        contract.matrix(feats.drop(columns=["request_rate__mean_3"]))
    # column order in the input does not matter, the contract's order wins
    shuffled = feats[list(reversed(feats.columns))]
    np.testing.assert_array_equal(contract.matrix(shuffled), contract.matrix(feats))


@pytest.mark.parametrize(("column", "empty"), [("timestamp", pd.NaT), ("pod", None), ("node", np.nan)])
def test_a_row_without_its_time_or_entity_breaks_the_contract(column, empty):
    """Before, the forecaster failed on such a row in pandas' words and the forest scored it."""
    feats = build_features(make_metrics(n_steps=30), CFG)
    contract = contract_for(feats, CFG)
    feats.loc[feats.index[7], column] = empty
    with pytest.raises(
        SchemaError, match=rf"key column '{column}' is empty in 1 row\(s\), the first at position 7"
    ):
        contract.check(feats)


def test_save_load_and_step_inference(tmp_path):
    df = make_metrics(n_steps=8, step="5min")
    assert infer_step_seconds(df) == 300.0
    feats = build_features(df, CFG)
    save_features(feats, CFG, tmp_path / "f")
    loaded, cfg = load_features(tmp_path / "f")
    assert cfg == CFG
    pd.testing.assert_frame_equal(loaded, feats)
    with pytest.raises(SchemaError, match="holds no feature table"):
        load_features(tmp_path)


@pytest.mark.parametrize("bad", [dict(windows=(1,)), dict(windows=()), dict(lags=(0,)), dict(step_seconds=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        FeatureConfig(**bad)


def test_missing_keys_rejected():
    with pytest.raises(SchemaError, match="key column"):
        build_features(make_metrics().drop(columns=["node"]))


# --------------------------------------------------------------------------- warm-up, stalls

TWO = FeatureConfig(windows=(3, 8), lags=(1,), step_seconds=60.0)


def test_z_needs_half_a_window_of_history():
    """A z-score of a new pod's second row against one sample would be noise turned into evidence."""
    feats = build_features(one_series(np.arange(1.0, 21.0) + np.sin(np.arange(20))), TWO)
    z8 = feats["cpu_usage_cores__z_8"].to_numpy()
    assert np.isnan(z8[:4]).all()  # 4 previous rows are needed (half of 8)
    assert np.isfinite(z8[4:]).all()


def test_run_counts_exact_repeats():
    feats = build_features(one_series([1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4]), CFG)
    np.testing.assert_array_equal(feats["cpu_usage_cores__run"], [0, 0, 1, 2, 0, 1, 2, 3, 3, 3, 3, 3, 0])


def test_run_is_missing_where_the_sample_is():
    values = np.array([1, 1, np.nan, 1, 1])
    run = build_features(one_series(values), CFG)["cpu_usage_cores__run"].to_numpy()
    np.testing.assert_array_equal(run[[0, 1, 3, 4]], [0, 1, 0, 1])
    assert np.isnan(run[2])


def _noisy(n: int, seed: int = 0) -> np.ndarray:
    return 10 + np.random.default_rng(seed).normal(size=n)


def test_flat_marks_a_stall_and_nothing_else():
    values = _noisy(60)
    values[30:45] = values[29]  # a stuck exporter repeats its last sample
    flat = build_features(one_series(values), TWO)["cpu_usage_cores__flat"].to_numpy()
    # From the first short window inside the stall until half the long window's stds are 0.
    np.testing.assert_array_equal(flat[31:35], -3.0)
    assert np.nanmin(flat[:30]) > -1.5 and np.nanmin(flat[48:]) > -1.5
    assert np.all((flat[np.isfinite(flat)] <= 0) & (flat[np.isfinite(flat)] >= -3))


def test_flat_ignores_the_aftermath_of_a_jump():
    """After a level shift the long window is loud; the median of short stds is not fooled."""
    values = _noisy(80)
    values[40:] += 50.0
    flat = build_features(one_series(values), TWO)["cpu_usage_cores__flat"].to_numpy()
    assert np.nanmin(flat[44:]) > -1.5


def test_flat_is_neutral_for_a_series_that_never_moves():
    flat = build_features(one_series(np.zeros(20)), TWO)["cpu_usage_cores__flat"].to_numpy()
    np.testing.assert_array_equal(flat[np.isfinite(flat)], 0.0)


def test_new_features_are_causal():
    base = one_series(_noisy(50))
    changed = base.copy()
    changed.loc[30:, "cpu_usage_cores"] = 5.0  # a stall in the future
    a, b = build_features(base, TWO), build_features(changed, TWO)
    pd.testing.assert_frame_equal(a.iloc[:30], b.iloc[:30])
    assert (b["cpu_usage_cores__run"].iloc[31:] > 0).all()


def test_a_short_history_gives_the_features_of_a_long_one():
    """What serving computes from a request's few rows equals what training computed from all.

    A signal that fell from ~0.8 to ~1e-8 kept pandas' running-sum rounding error: its std read
    0 in the long history and ~1e-8 in the short one, and its z-score differed tenfold.
    """
    from aiops.features import rolling_std

    rng = np.random.default_rng(3)
    x = np.r_[0.8 + 0.1 * rng.random(500), 1e-8 * (1 + rng.random(200))]
    for window, least in ((5, 2), (30, 15)):
        full = rolling_std(x, window, least)[-100:]
        tail = rolling_std(x[-150:], window, least)[-100:]
        np.testing.assert_allclose(full, tail, rtol=1e-9)
        expected = pd.Series(x[-150:]).rolling(window, min_periods=least).std().to_numpy()[-100:]
        np.testing.assert_allclose(tail, expected, rtol=1e-6)  # a short history: pandas is exact
    gaps = np.r_[1.0, np.nan, 3.0, np.nan, np.nan, 6.0]
    np.testing.assert_allclose(
        rolling_std(gaps, 3, 2), pd.Series(gaps).rolling(3, min_periods=2).std().to_numpy(), equal_nan=True
    )


def test_a_two_row_window_builds():
    frame = build_features(make_metrics(n_steps=12), FeatureConfig(windows=(2, 4)))
    assert frame["cpu_usage_cores__z_2"].notna().any()


def test_a_missing_sample_is_an_empty_step_whether_sent_as_nan_or_left_out():
    metrics = make_metrics(n_steps=40)
    hole = (metrics["pod"] == "api-1") & metrics["timestamp"].dt.minute.between(12, 21)
    as_nan = metrics.copy()
    as_nan.loc[hole, ["cpu_usage_cores", "request_rate"]] = np.nan
    left_out = metrics[~hole]
    expected = (
        build_features(as_nan)
        .set_index(list(KEY_COLUMNS))
        .loc[build_features(left_out).set_index(list(KEY_COLUMNS)).index]
    )
    got = build_features(left_out).set_index(list(KEY_COLUMNS))
    pd.testing.assert_frame_equal(got, expected)
    # Without the hole, rows are steps as before (nothing to re-grid).
    pd.testing.assert_frame_equal(
        build_features(metrics), build_features(metrics.sample(frac=1, random_state=1))
    )


def test_a_later_off_grid_sample_does_not_move_the_features_of_earlier_rows():
    """One sample 20 s off the grid, later on, used to switch the whole entity to row mode and
    drop its earlier holes: features of the past changed when the future arrived."""
    metrics = make_metrics(n_steps=60, pods=("api-1",))
    metrics = metrics.drop(index=metrics.index[20]).reset_index(drop=True)  # a hole at minute 20
    cut = pd.Timestamp("2026-01-05T00:50:00Z")
    past = build_features(metrics[metrics["timestamp"] < cut])
    extra = metrics[metrics["timestamp"] == pd.Timestamp("2026-01-05T00:55:00Z")].assign(
        timestamp=lambda f: f["timestamp"] + pd.Timedelta("20s")
    )
    later = build_features(pd.concat([metrics, extra], ignore_index=True))
    pd.testing.assert_frame_equal(later[later["timestamp"] < cut].reset_index(drop=True), past)
    # and the hole still counts as an empty step: the lag after it has nothing to look back to
    after_hole = past.loc[past["timestamp"] == pd.Timestamp("2026-01-05T00:21:00Z"), "cpu_usage_cores__lag_1"]
    assert after_hole.isna().all()
