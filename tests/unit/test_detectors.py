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
    time_to_exhaustion,
    workload_of,
)
from aiops.detectors.isolation_forest import IsolationForestConfig, IsolationForestDetector
from aiops.detectors.lstm_autoencoder import LstmAutoencoderDetector, LstmConfig, resolve_device
from aiops.features import build_features, contract_for
from aiops.schema import row_labels
from aiops.split import time_split
from aiops.training import choose_threshold, train_detector, train_ensemble
from tests.conftest import labels_frame, make_label


@pytest.fixture(scope="module")
def parts(small_telemetry):
    feats = build_features(small_telemetry.metrics)
    return time_split(feats, 0.2, 0.3), contract_for(feats), small_telemetry.labels


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
    # each row's score depends on its own value and the training-period forecast only
    untouched = np.setdiff1d(np.arange(len(test)), rows)
    np.testing.assert_array_equal(base[untouched], after[untouched])


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
    assert lstm.trained_on == resolve_device("auto") == "cpu"


def test_cuda_request_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        resolve_device("cuda")


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
