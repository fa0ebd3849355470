"""Detector behaviour: directional, invariance, causality and export tests."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from aiops.detectors.ensemble import EnsembleDetector, surprise
from aiops.detectors.forecast import (
    ArimaForecaster,
    ForecastConfig,
    ForecastDetector,
    ProphetForecaster,
    forecast_errors,
    signal_unit,
    time_to_exhaustion,
    workload_of,
)
from aiops.detectors.isolation_forest import IsolationForestConfig, IsolationForestDetector
from aiops.detectors.lstm_autoencoder import (
    LstmAutoencoderDetector,
    LstmConfig,
    _window_medians,
    resolve_device,
)
from aiops.evaluation import evaluate
from aiops.features import build_features, contract_for
from aiops.model import DetectorBundle
from aiops.schema import row_labels
from aiops.split import time_split
from aiops.training import (
    EventF1Scorer,
    _plateau_middle,
    choose_threshold,
    step_metrics,
    train_detector,
    train_ensemble,
)
from tests.conftest import labels_frame, make_label


@pytest.fixture(scope="module")
def parts(small_telemetry):
    feats = build_features(small_telemetry.metrics)
    return time_split(feats, 0.2, 0.3), contract_for(feats), small_telemetry.labels


@pytest.fixture(scope="module")
def validation_events(parts):
    """The validation rows, their row truth and their :class:`EventF1Scorer`."""
    split, _, labels = parts
    val = split.validation.reset_index(drop=True)
    return val, row_labels(val, labels), EventF1Scorer.of(val, labels)


def _seasonal(days: int = 4, step: str = "5min", seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    ts = pd.Series(pd.date_range("2026-01-05", periods=days * 288, freq=step, tz="UTC"))
    hours = ts.dt.hour + ts.dt.minute / 60
    rng = np.random.default_rng(seed)
    return ts, 100 + 40 * np.sin(2 * np.pi * (hours - 8) / 24) + rng.normal(0, 2, len(ts))


# --------------------------------------------------------------------------- isolation forest


def test_isolation_forest_scores_injected_rows_higher(parts):
    split, contract, labels = parts
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=60)).fit(split.train, contract)
    frame = pd.concat([split.validation, split.test], ignore_index=True)
    truth = row_labels(frame, labels)
    scores = det.score(frame)
    assert truth.any()
    assert np.median(scores[truth]) > np.median(scores[~truth])


def test_isolation_forest_ignores_irrelevant_columns(parts):
    split, contract, _ = parts
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=30)).fit(split.train, contract)
    noisy = split.test.assign(unrelated=np.random.default_rng(1).normal(size=len(split.test)))
    np.testing.assert_array_equal(det.score(split.test), det.score(noisy))


def test_isolation_forest_health_view_ignores_traffic_levels(parts):
    """A workload that has grown since training is the forecaster's business, not the forest's."""
    split, contract, _ = parts
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=30)).fit(split.train, contract)
    assert "request_rate" not in det.input_names and "stall" in det.input_names
    busier = split.test.copy()
    for column in ("request_rate", "network_rx_bytes_per_s", "cpu_usage_cores", "latency_p95_seconds"):
        busier[column] *= 1.5
    np.testing.assert_array_equal(det.score(split.test), det.score(busier))


def test_isolation_forest_sees_a_stuck_exporter(small_telemetry):
    metrics = small_telemetry.metrics.copy()
    pod = metrics["pod"].iloc[-1]
    rows = metrics.index[metrics["pod"] == pod][-60:-40]
    metrics.loc[rows, "request_rate"] = metrics.loc[rows[0] - 1, "request_rate"]  # frozen sample
    feats = build_features(metrics)
    split = time_split(feats, 0.2, 0.3)
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=100)).fit(
        split.train, contract_for(feats)
    )
    test = split.test.reset_index(drop=True)
    stuck = (test["pod"] == pod).to_numpy() & (test["request_rate__run"] >= 5).to_numpy()
    scores = det.score(test)
    assert stuck.sum() >= 10
    assert np.median(scores[stuck]) > np.quantile(scores[~stuck], 0.99)


def test_a_signal_not_recorded_in_training_is_no_stall_signal(small_telemetry):
    """``restarts`` sits at 0 (a repeat on almost every row); missing through training, it has
    no repeat share, and its first normal rows afterwards must not read as a stuck exporter."""
    metrics = small_telemetry.metrics.copy()
    times = np.sort(metrics["timestamp"].unique())
    metrics["restarts"] = metrics["restarts"].where(metrics["timestamp"] >= times[int(0.75 * len(times))])
    feats = build_features(metrics)
    split = time_split(feats, 0.2, 0.3)
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=50)).fit(
        split.train, contract_for(feats)
    )
    assert "restarts" not in det.stall_signals
    validation, test = det.score(split.validation), det.score(split.test)
    assert np.mean(test >= np.quantile(validation, 0.99)) < 0.1


def test_a_validation_period_shorter_than_the_lstm_window_is_refused_not_a_zero_threshold(parts):
    """Every validation row would score the LSTM's 'no opinion' 0; a 0 threshold alarms on all."""
    from aiops.training import train_detector

    split, _, _ = parts
    short = split.validation[
        split.validation["timestamp"] < split.validation["timestamp"].min() + pd.Timedelta("20min")
    ]
    with pytest.raises(ValueError, match=r"100.0% of the validation rows score 0.*full window of 30 steps"):
        train_detector("lstm_autoencoder", split.train, short, LstmConfig(window=30, epochs=1, seed=0))


def test_empty_frames_get_clear_answers(parts):
    from aiops.training import train_detector

    split, _, _ = parts
    bundle = train_detector(
        "isolation_forest", split.train, split.validation, IsolationForestConfig(n_estimators=10)
    )
    assert bundle.score(split.test.iloc[:0]).shape == (0,)  # no rows, no scores (not an sklearn error)
    with pytest.raises(ValueError, match="the training split is empty"):
        train_detector("lstm_autoencoder", split.train.iloc[:0], split.validation, LstmConfig(epochs=1))


def test_isolation_forest_views(parts):
    split, contract, _ = parts
    det = IsolationForestDetector(IsolationForestConfig(n_estimators=10, features="all")).fit(
        split.train, contract
    )
    assert det.input_names == contract.feature_names
    with pytest.raises(ValueError, match="unknown feature view"):
        IsolationForestDetector(IsolationForestConfig(features="everything")).fit(split.train, contract)


# --------------------------------------------------------------------------- forecasting


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("checkout-7d9f8c6b5-x2kq4", "checkout"),
        ("redis-0", "redis-0"),
        ("node-exporter-x7k2p", "node-exporter"),
        ("frontend-579b9bff58-t2dbm", "frontend"),
    ],
)
def test_workload_of(pod, workload):
    assert workload_of(pod) == workload


@pytest.mark.parametrize("forecaster", [ProphetForecaster, ArimaForecaster])
def test_forecasters_predict_a_daily_cycle(forecaster):
    ts, y = _seasonal()
    cut = 3 * 288
    model = forecaster().fit(ts[:cut], y[:cut])
    out = model.predict(ts[cut:].reset_index(drop=True))
    mape = np.mean(np.abs(out["yhat"].to_numpy() - y[cut:]) / y[cut:])
    assert mape < 0.05
    inside = (y[cut:] >= out["lower"].to_numpy()) & (y[cut:] <= out["upper"].to_numpy())
    assert inside.mean() > 0.9


@pytest.fixture(scope="module")
def three_days():
    """Three clean simulated days: a forecaster needs more than one cycle of history."""
    from aiops.simulate import ClusterSpec, simulate_cluster

    feats = build_features(
        simulate_cluster(ClusterSpec(duration="3D", deployments_per_namespace=1, seed=4)).metrics
    )
    return time_split(feats, 0.15, 0.2), contract_for(feats)


def test_forecast_detector_flags_a_level_shift_and_is_causal(three_days):
    split, contract = three_days
    det = ForecastDetector(ForecastConfig(forecaster="prophet", signals=("request_rate",))).fit(
        split.train, contract
    )
    test = split.test.reset_index(drop=True)
    base = det.score(test)
    shifted = test.copy()
    rows = shifted.index[shifted["pod"] == shifted["pod"].iloc[0]][-20:]
    shifted.loc[rows, "request_rate"] *= 3
    after = det.score(shifted)
    assert np.median(after[rows] - base[rows]) > 3.0  # several forecast sigmas further out
    # causal: rows before the change keep their scores
    earlier = (test["timestamp"] < test.loc[rows, "timestamp"].min()).to_numpy()
    np.testing.assert_array_equal(base[earlier], after[earlier])
    # later rows of other pods move only through the level correction, a robust median
    others = np.setdiff1d(np.flatnonzero(~earlier), rows)
    assert np.max(np.abs(after[others] - base[others])) < 0.5


def test_signal_unit_is_a_quarter_of_the_typical_positive_value():
    assert signal_unit(np.array([0.0, 0.1, 0.2, 0.3, np.nan])) == pytest.approx(0.05)
    assert signal_unit(np.array([0.0, np.nan])) == 1.0  # nothing positive: plain log1p


def test_a_latency_shift_is_judged_in_proportion_to_the_latency(three_days):
    """Latency in seconds lives far below 1, where log1p is flat: the signal's unit undoes that."""
    split, contract = three_days
    config = ForecastConfig(forecaster="arima", signals=("latency_p95_seconds",), persistence=1)
    det = ForecastDetector(config).fit(split.train, contract)
    assert 0.0 < det.unit("latency_p95_seconds") < 0.5 * split.train["latency_p95_seconds"].median()
    test = split.test.reset_index(drop=True)
    shifted = test.copy()
    rows = shifted.index[shifted["pod"] == shifted["pod"].iloc[0]][-20:]
    shifted.loc[rows, "latency_p95_seconds"] *= 1.5
    gain = np.median(det.score(shifted)[rows] - det.score(test)[rows])
    plain = ForecastDetector(config).fit(split.train, contract)
    plain.units = {}  # a detector saved before units: log1p of seconds
    plain_gain = np.median(plain.score(shifted)[rows] - plain.score(test)[rows])
    assert gain > 3.0 and gain > 1.5 * plain_gain, (gain, plain_gain)


def _weekly(days: int, seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    """A daily cycle that drops to 60% on Saturdays and Sundays, from Monday 2026-01-05."""
    ts, y = _seasonal(days=days, seed=seed)
    weekend = (ts.dt.dayofweek >= 5).to_numpy()
    return ts, np.where(weekend, 0.6, 1.0) * y


@pytest.mark.parametrize("forecaster", [ProphetForecaster, ArimaForecaster])
def test_forecasters_learn_the_weekend_from_a_week_of_history(forecaster):
    ts, y = _weekly(days=14)
    cut = 9 * 288  # Monday to Tuesday of the next week: one weekend seen
    model = forecaster().fit(ts[:cut], y[:cut])
    assert model.weekly
    out = model.predict(ts[cut:].reset_index(drop=True))
    weekend = (ts[cut:].dt.dayofweek >= 5).to_numpy()
    ape = np.abs(out["yhat"].to_numpy() - y[cut:]) / y[cut:]
    assert ape[weekend].mean() < 0.08 and ape[~weekend].mean() < 0.08


def test_no_weekly_cycle_from_less_than_a_week():
    ts, y = _weekly(days=6)
    assert not ProphetForecaster().fit(ts, y).weekly


def test_prophet_predicts_in_the_order_asked():
    ts, y = _seasonal(days=3)
    model = ProphetForecaster().fit(ts, y)
    instants = ts.iloc[[700, 10, 400]].reset_index(drop=True)
    forward = model.predict(instants.sort_values().reset_index(drop=True))["yhat"].to_numpy()
    np.testing.assert_allclose(model.predict(instants)["yhat"].to_numpy(), forward[[2, 0, 1]])


def test_level_correction_absorbs_a_workload_wide_drift(three_days):
    """Traffic 30% above the training forecast for every pod: the trailing median takes it in."""
    split, contract = three_days
    test = split.test.reset_index(drop=True)
    grown = test.assign(request_rate=test["request_rate"] * 1.3)
    late = (grown["timestamp"] >= grown["timestamp"].min() + pd.Timedelta("3h")).to_numpy()
    scores = {}
    for window in ("6h", ""):
        config = ForecastConfig(
            forecaster="arima", signals=("request_rate",), level_window=window, persistence=1
        )
        det = ForecastDetector(config).fit(split.train, contract)
        scores[window] = det.score(grown)
        errors = forecast_errors(det, grown, np.ones(len(grown), dtype=bool))
        assert (errors["mape"] < 10) if window else (errors["mape"] > 15)
        assert {"mape_request_rate", "smape_request_rate", "wape_request_rate", "wape"} <= set(errors)
    assert np.median(scores["6h"][late]) < 0.5 * np.median(scores[""][late])


def test_persistence_accumulates_a_lasting_deviation(three_days):
    split, contract = three_days
    test = split.test.reset_index(drop=True)
    fitted = {
        k: ForecastDetector(ForecastConfig(forecaster="arima", signals=("request_rate",), persistence=k)).fit(
            split.train, contract
        )
        for k in (1, 5)
    }
    model = next(iter(fitted[5].models.values()))
    rows = test.index[test["pod"] == test["pod"].iloc[0]][-30:]
    nudged = test.copy()
    nudged.loc[rows, "request_rate"] *= np.exp(2.0 * model.sigma)  # two sigmas: within the noise
    single, lasting = fitted[1].score(nudged), fitted[5].score(nudged)
    assert np.median(lasting[rows[5:]]) > 1.5 * np.median(single[rows[5:]])
    # the running mean is causal too: rows before the nudge do not move
    earlier = (test["timestamp"] < test.loc[rows, "timestamp"].min()).to_numpy()
    np.testing.assert_array_equal(fitted[5].score(test)[earlier], lasting[earlier])


@pytest.mark.parametrize("forecaster", ["arima", "prophet"])
def test_time_to_exhaustion(forecaster):
    ts = pd.Series(pd.date_range("2026-01-05", periods=3 * 96, freq="15min", tz="UTC"))
    used = 50 + np.arange(len(ts)) * 0.1 + np.random.default_rng(0).normal(0, 1, len(ts))  # +9.6 a day
    eta = time_to_exhaustion(ts, used, limit=100.0, horizon="7D", forecaster=forecaster)
    truth = ts.iloc[0] + pd.Timedelta(minutes=15) * 500  # 50 more units at 0.1 per step
    assert eta is not None and abs((eta - truth).total_seconds()) < 12 * 3600  # two days ahead, +-12 h
    flat = np.full(len(ts), 10.0) + np.random.default_rng(1).normal(0, 0.1, len(ts))
    assert time_to_exhaustion(ts, flat, limit=100.0, forecaster=forecaster) is None


# --------------------------------------------------------------------------- LSTM autoencoder


@pytest.fixture(scope="module")
def lstm(parts):
    split, contract, _ = parts
    return LstmAutoencoderDetector(LstmConfig(window=10, epochs=2, hidden=8, latent=4, max_windows=3000)).fit(
        split.train, contract
    )


def test_lstm_is_causal(lstm, parts):
    split, *_ = parts
    test = split.test.reset_index(drop=True)
    pod = test["pod"].iloc[0]
    rows = test.index[test["pod"] == pod]
    changed = test.copy()
    changed.loc[rows[-10:], "request_rate"] *= 5
    a, b = lstm.score(test), lstm.score(changed)
    np.testing.assert_allclose(a[rows[:-10]], b[rows[:-10]])
    assert (b[rows[-10:]] > a[rows[-10:]]).any()


def test_lstm_pickles_through_torchscript(lstm, parts):
    import io

    import torch

    split, *_ = parts
    clone = pickle.loads(pickle.dumps(lstm))
    np.testing.assert_allclose(clone.score(split.test), lstm.score(split.test), rtol=1e-6)
    scripted = torch.jit.load(io.BytesIO(lstm.torchscript_bytes()))
    assert scripted(torch.zeros(1, 10, len(lstm.signals))).shape == (1, 10, len(lstm.signals))
    assert lstm.trained_on == resolve_device("auto")  # cuda where a GPU is visible, else cpu


def test_lstm_has_no_opinion_without_a_full_window(lstm, parts):
    split, *_ = parts
    test = split.test.reset_index(drop=True)
    scores = lstm.score(test)
    age = test.sort_values(["pod", "timestamp"]).groupby("pod").cumcount().reindex(test.index).to_numpy()
    assert np.all(scores[age < lstm.config.window - 1] == 0.0)
    assert np.all(scores[age >= lstm.config.window - 1] > 0.0)


def test_window_medians_ignore_missing_samples_as_nanmedian_does():
    windows = np.random.default_rng(5).lognormal(size=(40, 30, 6)).astype(np.float32)
    np.testing.assert_array_equal(_window_medians(windows), np.median(windows, axis=1, keepdims=True))
    windows[3, :7, 2] = np.nan
    windows[9, :, 4] = np.nan  # a signal missing for the whole window: its median is NaN
    got = _window_medians(windows)
    with pytest.warns(RuntimeWarning, match="All-NaN"):
        expected = np.nanmedian(windows, axis=1, keepdims=True)
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[9, 0, 4]) and not np.isnan(got[3, 0, 2])


def test_lstm_judges_traffic_by_shape_not_level(lstm, parts):
    """A pod carrying 50% more traffic throughout looks the same; a health signal's level counts."""
    split, *_ = parts
    test = split.test.reset_index(drop=True)
    base = lstm.score(test)
    busier = lstm.score(test.assign(request_rate=test["request_rate"] * 1.5))
    np.testing.assert_allclose(busier, base, rtol=0.02, atol=1e-6)
    failing = lstm.score(test.assign(error_ratio=test["error_ratio"] + 0.5))
    assert np.median(failing[base > 0]) > 10 * np.median(base[base > 0])


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------- ensemble and thresholds


def test_surprise_is_monotone_and_bounded():
    reference = np.sort(np.random.default_rng(0).normal(size=999))
    values = surprise(reference, np.array([-10.0, 0.0, 2.0, 10.0]))
    assert np.all(np.diff(values) >= 0)
    assert values[0] == pytest.approx(0.0) and values[-1] == pytest.approx(3.0)


class _Const:
    def __init__(self, column):
        self.column = column

    def score(self, frame):
        return frame[self.column].to_numpy(dtype=float)


def test_ensemble_weights_and_errors():
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100.0)[::-1]})
    ens = EnsembleDetector({"a": _Const("a"), "b": _Const("b")}, weights={"a": 1.0, "b": 0.0}).calibrate(
        frame
    )
    np.testing.assert_allclose(ens.score(frame), surprise(ens.reference["a"], frame["a"].to_numpy()))
    with pytest.raises(ValueError, match="unknown member"):
        EnsembleDetector({"a": _Const("a")}, weights={"z": 1.0}).calibrate(frame)


def test_surprise_treats_nan_as_no_evidence_and_inf_as_the_largest_float():
    from aiops.detectors.ensemble import surprise

    reference = np.sort(np.r_[np.random.default_rng(2).normal(size=300), 0.0, 0.0, 1.5, 1.5, np.inf])
    points = np.r_[reference, reference + 1e-9, [np.nan, np.inf, -np.inf, -0.0, 1e308, -1e308]]
    fixed = np.nan_to_num(points, nan=-np.inf)  # the definition: NaN -> -inf, +-inf -> +-max
    above = len(reference) - np.searchsorted(reference, fixed, side="left")
    np.testing.assert_array_equal(
        surprise(reference, points), -np.log10((above + 1.0) / (len(reference) + 1.0))
    )


def test_ensemble_max_and_precomputed_scores():
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100.0)[::-1]})
    ens = EnsembleDetector({"a": _Const("a"), "b": _Const("b")}, combine="max").calibrate(frame)
    parts = ens.member_surprise(frame)
    np.testing.assert_allclose(ens.score(frame), np.maximum(parts["a"], parts["b"]))
    given = EnsembleDetector({"a": _Const("a"), "b": _Const("b")}, combine="max").calibrate(
        frame, {"a": frame["a"].to_numpy()}
    )
    np.testing.assert_array_equal(given.reference["a"], ens.reference["a"])
    with pytest.raises(ValueError, match="unknown combine rule"):
        EnsembleDetector({"a": _Const("a")}, combine="median").calibrate(frame)
    with pytest.raises(ValueError, match="3 validation scores"):
        EnsembleDetector({"a": _Const("a")}).calibrate(frame, {"a": np.zeros(3)})


def test_ensemble_any_alarms_when_an_included_member_passes_its_own_threshold():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"a": rng.normal(size=500), "b": rng.exponential(size=500), "c": rng.random(500)})
    members = {name: _Const(name) for name in frame}
    thresholds = {"a": 2.0, "b": 4.0, "c": 0.5}
    ens = EnsembleDetector(
        members, weights={"a": 1.0, "b": 1.0, "c": 0.0}, member_thresholds=thresholds, combine="any"
    ).calibrate(frame)
    new = pd.DataFrame(
        {"a": rng.normal(size=400) * 2, "b": rng.exponential(size=400) * 2, "c": rng.random(400)}
    )
    score = ens.score(new)
    member_alarm = (new["a"] >= 2.0) | (new["b"] >= 4.0)
    assert member_alarm.any() and not member_alarm.all()
    assert (score[member_alarm.to_numpy()] >= 1.0).all()  # a member alarm is an ensemble alarm at 1
    # ... and only a member alarm: a score just under a member's threshold shares the threshold's
    # surprise (the surprise is a step function of the score), and must still stay under 1
    assert (score[~member_alarm.to_numpy()] < 1.0).all()
    levels = ens.alarm_levels()
    parts = ens.member_surprise(new)
    below = {"a": new["a"].to_numpy() < 2.0, "b": new["b"].to_numpy() < 4.0}
    ratios = {name: parts[name] / levels[name] for name in below}
    assert any((ratios[n][below[n]] >= 1.0).any() for n in below), "no score fell between reference points"
    capped = {n: np.where(below[n], np.minimum(r, np.nextafter(1.0, 0.0)), r) for n, r in ratios.items()}
    np.testing.assert_allclose(score, np.maximum(capped["a"], capped["b"]))  # c never counts
    with pytest.raises(ValueError, match="needs member thresholds"):
        EnsembleDetector(members, combine="any").calibrate(frame).score(frame)


def test_event_scorer_matches_evaluate(parts, validation_events):
    labels = parts[2]
    val, truth, scorer = validation_events
    rng = np.random.default_rng(0)
    for _ in range(3):
        scores = rng.random(len(val)) + truth * rng.random()
        for threshold in np.quantile(scores, [0.9, 0.99, 0.999]):
            expected = evaluate(val, scores >= threshold, labels).metrics["event_f1"]
            assert scorer.f1(scores, threshold) == pytest.approx(expected, abs=1e-12)


def test_threshold_floor_keeps_the_any_rule_at_or_above_the_members_own_thresholds(validation_events):
    val, truth, scorer = validation_events
    # Labelled rows score 0.9-1.0, the rest below 0.95: the free choice lands under 1.
    rng = np.random.default_rng(1)
    scores = np.where(truth, 0.9 + 0.1 * rng.random(len(val)), 0.95 * rng.random(len(val)))
    free_f1, free = scorer.best_threshold(scores)
    assert free < 1.0
    floored_f1, floored = scorer.best_threshold(scores, floor=1.0)
    assert floored == 1.0 and floored_f1 == scorer.f1(scores, 1.0) <= free_f1  # 1 itself is a candidate
    above = scores + 1.0  # every candidate above the floor: the floor changes nothing
    assert scorer.best_threshold(above, floor=1.0) == scorer.best_threshold(above)


def test_ties_go_to_the_middle_of_the_longest_plateau():
    assert _plateau_middle(np.array([0.2, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.4])) == (2, 4, 7)
    assert _plateau_middle(np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.2])) == (2, 3, 5)  # the longer run wins
    assert _plateau_middle(np.array([0.1, 0.9, 0.9, 0.3])) == (1, 2, 3)  # even length: the upper middle
    assert _plateau_middle(np.array([0.1, 0.3, 0.9])) == (2, 2, 3)
    assert _plateau_middle(np.array([0.7])) == (0, 0, 1)


def test_best_threshold_keeps_a_margin_on_both_sides_of_a_flat_f1(validation_events):
    val, truth, scorer = validation_events
    # Every labelled row far above every normal one: F1 is 1 from the loudest normal row up
    # to the quietest window's peak, and the pick lies well inside that range.
    rng = np.random.default_rng(2)
    scores = np.where(truth, 10.0 + rng.random(len(val)), rng.random(len(val)))
    f1, threshold, tied_from, tied_to = scorer.best_threshold_range(scores)
    assert (f1, threshold) == scorer.best_threshold(scores) and f1 == 1.0
    lowest = scores[~truth].max()
    highest = min(scores[rows].max() for rows in scorer.window_rows)
    assert lowest < tied_from < threshold < tied_to <= highest
    # The reported range is exactly the candidates that tie.
    candidates = scorer.candidates(scores)
    tied = [t for t in candidates if scorer.f1(scores, t) == 1.0]
    assert tied == [t for t in candidates if tied_from <= t <= tied_to] and len(tied) >= 3


def _bundle(detector, contract, threshold=1.0):
    return DetectorBundle(detector=detector, contract=contract, threshold=threshold)


def test_select_weights_drops_a_member_that_only_adds_noise(parts, monkeypatch):
    from aiops import training

    split, contract, labels = parts
    val = split.validation.reset_index(drop=True)
    rng = np.random.default_rng(0)
    truth = row_labels(val, labels)
    val = val.assign(good=truth * 3.0 + rng.random(len(val)), noise=rng.random(len(val)))
    members = {"good": _bundle(_Const("good"), contract), "noise": _bundle(_Const("noise"), contract)}
    windows = len(EventF1Scorer.of(val, labels).window_rows)
    assert 0 < windows < training.MIN_SELECTION_WINDOWS
    # too few labelled windows to choose on: equal weights, and the metadata says why
    kept = train_ensemble(members, val, labels, threshold_policy="event_f1", select_weights=True)
    assert kept.detector.weights == {"good": 1.0, "noise": 1.0}
    assert kept.meta["selection_skipped_windows"] == windows

    monkeypatch.setattr(training, "MIN_SELECTION_WINDOWS", 1)
    bundle = train_ensemble(members, val, labels, threshold_policy="event_f1", select_weights=True)
    assert bundle.detector.weights["noise"] == 0.0 and bundle.detector.weights["good"] > 0
    assert bundle.meta["good.member_validation_event_f1"] == pytest.approx(1.0)  # kept by selection
    assert bundle.detector.combine == "any"  # tried first; nothing beats it by a window's worth
    assert bundle.meta["good.member_alarm_surprise"] == bundle.detector.alarm_levels()["good"]
    assert bundle.meta["selection_validation_event_f1"] == pytest.approx(1.0)
    assert bundle.meta["validation_event_f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="select_weights"):
        train_ensemble(members, val, labels, threshold_policy="quantile", select_weights=True)
    with pytest.raises(ValueError, match="select_weights"):
        train_ensemble(
            members, val, labels, weights={"good": 1.0}, threshold_policy="event_f1", select_weights=True
        )


def test_event_f1_policy_sets_the_members_alarm_thresholds_too(parts):
    """An alarm budget over-alarms when validation holds fewer anomalous rows; event_f1 does not."""
    split, contract, labels = parts
    val = split.validation.reset_index(drop=True)
    truth = row_labels(val, labels)
    assert 0 < truth.mean() < 0.05  # fewer anomalous rows than a 5% alarm budget
    rng = np.random.default_rng(1)
    val = val.assign(good=truth * 3.0 + rng.random(len(val)))
    quantile = float(np.quantile(val["good"], 0.95))
    members = {"good": _bundle(_Const("good"), contract, threshold=quantile)}
    members["good"].meta["threshold_quantile"] = 0.95  # as train_detector records its budget

    budget = train_ensemble(members, val, labels, threshold_policy="quantile")
    assert budget.detector.member_thresholds == {"good": quantile}
    assert budget.meta["good.threshold_quantile"] == 0.95
    assert (val["good"] >= quantile)[~truth].any()  # the budget's threshold alarms on normal rows

    bundle = train_ensemble(members, val, labels, threshold_policy="event_f1")
    threshold = bundle.detector.member_thresholds["good"]
    assert threshold > quantile and not (val["good"] >= threshold)[~truth].any()
    # the member's record says where its new threshold sits, not the budget it replaced
    assert bundle.meta["good.threshold_quantile"] == pytest.approx(float(np.mean(val["good"] < threshold)))
    assert bundle.meta["good.member_validation_event_f1"] == pytest.approx(1.0)
    assert bundle.detector.combine == "any" and bundle.threshold >= 1.0  # never below its members'


def test_threshold_policies(parts):
    split, _, labels = parts
    scores = np.random.default_rng(0).random(len(split.validation))
    threshold, basis = choose_threshold(scores, split.validation, labels, "quantile", 0.9)
    assert threshold == pytest.approx(np.quantile(scores, 0.9)) and basis["threshold_quantile"] == 0.9
    with pytest.raises(ValueError, match="needs labelled windows"):
        choose_threshold(scores, split.validation, labels_frame(), "event_f1")
    with pytest.raises(ValueError, match="unknown threshold policy"):
        choose_threshold(scores, split.validation, labels, "oracle")


def test_event_f1_policy_uses_only_validation_labels(parts):
    split, _, labels = parts
    val = split.validation.reset_index(drop=True)
    row = val.iloc[len(val) // 2]
    window = labels_frame(
        make_label(row["pod"], str(row["timestamp"]), str(row["timestamp"] + pd.Timedelta("10min")))
    )
    window["cluster"], window["namespace"] = row["cluster"], row["namespace"]
    scores = np.zeros(len(val))
    inside = row_labels(val, window)
    scores[inside] = 5.0
    threshold, basis = choose_threshold(scores, val, window, "event_f1")
    assert 0 < threshold <= 5.0 and basis["validation_event_f1"] == pytest.approx(1.0)
    # windows in the training and test periods (none of them scored, all of them "missed" if
    # counted) change nothing: the choice sees the validation period's labels only
    elsewhere = []
    for frame in (split.train.reset_index(drop=True), split.test.reset_index(drop=True)):
        other = frame.iloc[len(frame) // 2]
        label = labels_frame(
            make_label(other["pod"], str(other["timestamp"]), str(other["timestamp"] + pd.Timedelta("10min")))
        )
        label["cluster"], label["namespace"] = other["cluster"], other["namespace"]
        elsewhere.append(label)
    assert choose_threshold(scores, val, pd.concat([window, *elsewhere], ignore_index=True), "event_f1") == (
        threshold,
        basis,
    )


def test_train_ensemble_end_to_end(parts):
    split, _, labels = parts
    members = {
        "isolation_forest": train_detector(
            "isolation_forest", split.train, split.validation, IsolationForestConfig(n_estimators=20)
        ),
        "forecast": train_detector(
            "forecast",
            split.train,
            split.validation,
            ForecastConfig(forecaster="arima", signals=("request_rate",)),
        ),
    }
    bundle = train_ensemble(
        members, split.validation, labels, threshold_policy="quantile", alarm_quantile=0.98
    )
    assert bundle.detector.member_thresholds == {k: v.threshold for k, v in members.items()}
    assert np.mean(bundle.score(split.validation) >= bundle.threshold) == pytest.approx(0.02, abs=0.01)
    with pytest.raises(ValueError, match="at least one member"):
        train_ensemble({}, split.validation, labels)


def test_arima_reads_far_instants_off_its_calendar_regression_without_stepping(monkeypatch):
    """Beyond FAR_HORIZON the ARMA part has died out: the shortcut equals stepping all the way."""
    from aiops.detectors import forecast

    index = pd.date_range("2026-01-05", periods=3 * 24 * 60, freq="1min", tz="UTC")
    rng = np.random.default_rng(0)
    values = 100 + 30 * np.sin(2 * np.pi * np.arange(len(index)) / 1440) + rng.normal(0, 5, len(index))
    model = forecast.ArimaForecaster().fit(pd.Series(index), values)
    probe = pd.Series([model._end + pd.Timedelta(d) for d in ("20D", "20D 6h", "3h", "1h")])
    shortcut = model.predict(probe)
    monkeypatch.setattr(forecast, "FAR_HORIZON", "400D")
    stepped = model.predict(probe)
    pd.testing.assert_frame_equal(shortcut, stepped, rtol=1e-6)
    monkeypatch.undo()
    # A request stamped near the end of the accepted range is answered, not stepped to.
    [far] = model.predict(pd.Series([pd.Timestamp("2199-06-01", tz="UTC")]))["yhat"].tolist()
    assert 80 < far < 120


def test_forecast_errors_weigh_a_nearly_idle_minute_by_its_size(three_days):
    """A forecast 5% off everywhere, and a few minutes at almost no traffic forecast at twice
    that: MAPE jumps, WAPE (and the errors' sizes) barely move, and all use the same instants."""
    split, contract = three_days
    test = split.test.reset_index(drop=True)
    det = ForecastDetector(ForecastConfig(forecaster="arima", signals=("request_rate",))).fit(
        split.train, contract
    )
    normal = np.ones(len(test), dtype=bool)
    base = forecast_errors(det, test, normal)
    instants = np.sort(test["timestamp"].unique())[:5]
    idle = test.assign(request_rate=test["request_rate"].where(~test["timestamp"].isin(instants), 1e-3))
    spiked = forecast_errors(det, idle, normal)
    assert spiked["mape"] > 3 * base["mape"]
    assert spiked["wape"] < 1.2 * base["wape"]


@pytest.mark.parametrize("config", [IsolationForestConfig(), ForecastConfig(), LstmConfig()])
def test_every_setting_of_a_detector_is_tracked(config):
    """Two models trained with different settings must not log the same parameters."""
    from dataclasses import fields

    tracked = config.params()
    prefix = next(iter(tracked)).split("_", 1)[0] + "_"
    assert sorted(tracked) == sorted(prefix + f.name for f in fields(config))


def test_step_metrics_show_the_lstm_training_time():
    class _Trained(_Const):
        train_seconds = 1.5
        history = [0.4, 0.2]

    contract = contract_for(pd.DataFrame({"cpu_usage_cores": [1.0]}))
    meta = {"fit_seconds": 2.0, "train_rows": 10}
    bundle = DetectorBundle(_Trained("x"), contract, threshold=2.0, meta=meta)
    assert step_metrics(bundle) == {
        "threshold": 2.0,
        "fit_seconds": 2.0,
        "train_rows": 10.0,
        "train_seconds": 1.5,
        "final_train_loss": 0.2,
    }
