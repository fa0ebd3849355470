"""Forecasting detector: expected value with an interval per workload, anomalies from residuals.

Pods come and go (every rollout renames them), so a per-pod forecaster would rarely see
more than a day of history. The forecaster therefore learns each *workload's* typical pod
(the mean over its pods at each instant: a Deployment's pods share one traffic pattern)
from the training period, and every pod row is scored by how far it lies outside that
forecast's interval. Forecasts are made only from training data, so a score at time t never
uses data after t.

Two forecasters share one interface: Prophet (default; daily and weekly seasonality, trend)
and ARIMA with Fourier seasonal regressors (statsmodels SARIMAX), which is lighter.
The same forecasters answer capacity questions: :func:`time_to_exhaustion`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from aiops.features import FeatureContract
from aiops.schema import TIMESTAMP

log = logging.getLogger(__name__)

#: ``<deployment>-<pod-template hash>-<suffix>`` or ``<daemonset>-<suffix>``. Kubernetes draws
#: both from a vowel-free alphabet (k8s.io/apimachinery rand.SafeEncodeString), which is what
#: tells ``node-exporter-x7k2p`` (a DaemonSet) from ``node-<hash>-<suffix>``.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_NAME = re.compile(rf"^(?P<workload>.+?)(?:-{_SAFE}{{6,10}})?-{_SAFE}{{5}}$")
_Z_99 = 2.5758  # two-sided 99% normal quantile: the interval the forecasters report
DEFAULT_SIGNALS = ("request_rate", "cpu_usage_cores", "memory_working_set_bytes", "latency_p95_seconds")


def workload_of(pod: str) -> str:
    """Return the workload (Deployment/StatefulSet) a pod name belongs to."""
    match = _POD_NAME.match(pod)
    return match.group("workload") if match else pod


class Forecaster(Protocol):
    """Fit on one series; predict mean and a 99% interval at given instants."""

    def fit(self, ts: pd.Series, y: np.ndarray) -> Forecaster:
        """Fit on UTC timestamps ``ts`` and values ``y`` (NaN allowed)."""
        ...

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """Return ``yhat``, ``lower``, ``upper`` for each instant in ``ts``."""
        ...


def _naive(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).dt.tz_localize(None)


class ProphetForecaster:
    """Prophet with daily and weekly seasonality; a 99% uncertainty interval.

    Fitted on ``log1p(y)``: every canonical metric is non-negative and its daily swing is
    proportional to its level, so the log scale keeps forecasts positive and makes the
    seasonality multiplicative.
    """

    def __init__(
        self, interval_width: float = 0.99, seed: int = 0, changepoint_prior_scale: float = 0.005
    ) -> None:
        # A stiff trend: a few days of history cannot tell a trend change from a busy afternoon.
        self.changepoint_prior_scale = changepoint_prior_scale
        self.interval_width = interval_width
        self.seed = seed
        self._model: Any = None

    def fit(self, ts: pd.Series, y: np.ndarray) -> ProphetForecaster:
        """Fit Prophet (its Stan optimiser is quiet and deterministic for a seed)."""
        from prophet import Prophet

        for noisy in ("prophet", "cmdstanpy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        span_days = (ts.max() - ts.min()).total_seconds() / 86400
        self._model = Prophet(
            interval_width=self.interval_width,
            daily_seasonality=True,
            weekly_seasonality=span_days >= 14,  # a weekly term needs two weeks to be identifiable
            yearly_seasonality=False,
            uncertainty_samples=200,
            changepoint_prior_scale=self.changepoint_prior_scale,
        )
        values = np.log1p(np.clip(np.asarray(y, dtype=float), 0, None))
        frame = pd.DataFrame({"ds": _naive(ts).to_numpy(), "y": values}).dropna()
        self._model.fit(frame, seed=self.seed) if _accepts_seed() else self._model.fit(frame)
        return self

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """Forecast at ``ts``."""
        np.random.seed(self.seed)  # Prophet samples its uncertainty interval with the global RNG
        out = self._model.predict(pd.DataFrame({"ds": _naive(ts).to_numpy()}))
        return pd.DataFrame({name: np.expm1(out[col].to_numpy()) for name, col in _PROPHET_COLUMNS.items()})


_PROPHET_COLUMNS = {"yhat": "yhat", "lower": "yhat_lower", "upper": "yhat_upper"}


def _accepts_seed() -> bool:
    import inspect

    from prophet import Prophet

    return "seed" in inspect.signature(Prophet.fit).parameters


class ArimaForecaster:
    """ARIMA(p, 0, q) on a resampled series with daily Fourier terms as regressors."""

    def __init__(
        self,
        order: tuple[int, int, int] = (1, 0, 1),
        harmonics: int = 3,
        resample: str = "5min",
        trend: str = "c",
    ) -> None:
        self.order = order
        self.trend = trend
        self.harmonics = harmonics
        self.resample = resample
        self._result: Any = None
        self._end: pd.Timestamp | None = None

    def _fourier(self, ts: pd.DatetimeIndex) -> np.ndarray:
        seconds = (ts - pd.Timestamp("1970-01-01", tz="UTC")).total_seconds().to_numpy()
        phase = 2 * np.pi * seconds / 86400.0
        cols = [f(k * phase) for k in range(1, self.harmonics + 1) for f in (np.sin, np.cos)]
        return np.column_stack(cols)

    def fit(self, ts: pd.Series, y: np.ndarray) -> ArimaForecaster:
        """Fit SARIMAX on the series resampled to ``resample``."""
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        series = pd.Series(np.asarray(y, dtype=float), index=pd.DatetimeIndex(ts))
        series = series.resample(self.resample).mean().interpolate()
        with warnings.catch_warnings():
            # statsmodels warns about start parameters and slow convergence on near-deterministic
            # series; the fit is still usable and the interval reflects its quality.
            warnings.simplefilter("ignore")
            self._result = SARIMAX(
                series.to_numpy(), exog=self._fourier(series.index), order=self.order, trend=self.trend
            ).fit(disp=False)
        self._end = series.index[-1]
        return self

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """Forecast forward from the end of training, then read off each instant."""
        if self._end is None:
            raise RuntimeError("fit the forecaster first")
        index = pd.DatetimeIndex(ts)
        step = pd.Timedelta(self.resample)
        last = max(index.max(), self._end + step)
        grid = pd.date_range(self._end + step, last.ceil(self.resample), freq=self.resample)
        forecast = self._result.get_forecast(len(grid), exog=self._fourier(grid))
        interval = forecast.conf_int(alpha=0.01)
        table = pd.DataFrame(
            {"yhat": forecast.predicted_mean, "lower": interval[:, 0], "upper": interval[:, 1]}, index=grid
        )
        # In-sample instants get the fitted values (one-step predictions use only the past).
        fitted = pd.Series(
            self._result.fittedvalues,
            index=pd.date_range(end=self._end, periods=len(self._result.fittedvalues), freq=self.resample),
        )
        sigma = float(np.sqrt(self._result.scale)) * _Z_99
        past = pd.DataFrame({"yhat": fitted, "lower": fitted - sigma, "upper": fitted + sigma})
        table = pd.concat([past, table])
        positions = table.index.get_indexer(index.floor(self.resample), method="nearest")
        return table.iloc[positions].reset_index(drop=True)


FORECASTERS = {"prophet": ProphetForecaster, "arima": ArimaForecaster}


def _without_outliers(values: np.ndarray, window: int = 61, max_z: float = 5.0) -> np.ndarray:
    """Blank out samples far from a centred rolling median before fitting.

    The training period is not clean: it holds anomalies of its own, and a forecaster that
    learns them (a spike pulling Prophet's trend, say) forecasts them again. Centred windows
    are fine here: this only prepares training data, it never scores anything.
    """
    series = pd.Series(values)
    median = series.rolling(window, center=True, min_periods=5).median()
    mad = (series - median).abs().rolling(window, center=True, min_periods=5).median()
    scale = 1.4826 * mad.clip(lower=1e-9 + 0.01 * series.abs().median())
    outlier = ((series - median).abs() / scale) > max_z
    return series.mask(outlier).to_numpy()


@dataclass(frozen=True)
class ForecastConfig:
    """Settings of :class:`ForecastDetector`.

    Attributes:
        forecaster: ``prophet`` or ``arima``.
        signals: Signals to forecast (those present are used).
        min_sigma_ratio: Floor of the residual scale as a share of the typical level, so a
            near-constant series does not turn noise into huge scores.
        seed: Seed of the forecaster's sampling.
    """

    forecaster: str = "prophet"
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    min_sigma_ratio: float = 0.02
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """Flat settings for tracking."""
        return {"fc_forecaster": self.forecaster, "fc_signals": ",".join(self.signals)}


@dataclass
class _Model:
    forecaster: Any
    sigma_floor: float


@dataclass
class ForecastDetector:
    """Residual z-scores against per-workload forecasts; score = max over signals."""

    config: ForecastConfig = field(default_factory=ForecastConfig)
    models: dict[tuple[str, str], _Model] = field(default_factory=dict)
    signals: tuple[str, ...] = ()
    kind: str = "forecast"

    def _groups(self, frame: pd.DataFrame) -> pd.Series:
        return frame["cluster"] + "/" + frame["namespace"] + "/" + frame["pod"].map(workload_of)

    def fit(self, train: pd.DataFrame, contract: FeatureContract) -> ForecastDetector:
        """Fit one forecaster per (workload, signal) on the training period."""
        if self.config.forecaster not in FORECASTERS:
            raise ValueError(
                f"unknown forecaster '{self.config.forecaster}'; choose from {sorted(FORECASTERS)}"
            )
        self.signals = tuple(s for s in self.config.signals if s in contract.signals and s in train)
        if not self.signals:
            raise ValueError(f"none of the forecast signals {self.config.signals} is in the features")
        groups = self._groups(train)
        for (group, signal), series in self._workload_series(train, groups).items():
            values = _without_outliers(series.to_numpy())
            if np.isfinite(values).sum() < 60:
                continue  # under an hour of history: nothing to forecast from
            forecaster = FORECASTERS[self.config.forecaster]()
            if isinstance(forecaster, ProphetForecaster):
                forecaster.seed = self.config.seed
            forecaster.fit(series.index.to_series(), values)
            level = float(np.nanmedian(np.abs(values))) or 1.0
            self.models[(group, signal)] = _Model(forecaster, self.config.min_sigma_ratio * level)
        if not self.models:
            raise ValueError("no workload has an hour of training history to forecast from")
        return self

    def _workload_series(self, frame: pd.DataFrame, groups: pd.Series) -> dict[tuple[str, str], pd.Series]:
        out = {}
        keyed = frame.assign(_group=groups.to_numpy())
        for signal in self.signals:
            table = keyed.groupby(["_group", TIMESTAMP])[signal].mean()
            for group in table.index.get_level_values(0).unique():
                out[(group, signal)] = table.loc[group]
        return out

    def forecast(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Return, per signal, ``yhat``/``lower``/``upper`` aligned with ``frame``'s rows (NaN if unknown)."""
        groups = self._groups(frame).to_numpy()
        out = {}
        for signal in self.signals:
            table = pd.DataFrame(np.nan, index=frame.index, columns=["yhat", "lower", "upper", "floor"])
            for group in np.unique(groups):
                model = self.models.get((group, signal))
                if model is None:
                    continue
                rows = frame.index[groups == group]
                # Sorted: Prophet returns its forecast in time order whatever the input order.
                instants = frame.loc[rows, TIMESTAMP].drop_duplicates().sort_values()
                predicted = model.forecaster.predict(instants.reset_index(drop=True))
                predicted.index = instants.to_numpy()
                aligned = predicted.reindex(frame.loc[rows, TIMESTAMP].to_numpy())
                table.loc[rows, ["yhat", "lower", "upper"]] = aligned[["yhat", "lower", "upper"]].to_numpy()
                table.loc[rows, "floor"] = model.sigma_floor
            out[signal] = table
        return out

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Max over signals of |value - forecast| / sigma (0 where no forecast exists)."""
        scores = np.zeros(len(frame))
        for signal, table in self.forecast(frame).items():
            sigma = np.maximum(
                (table["upper"] - table["lower"]).to_numpy() / (2 * _Z_99), table["floor"].to_numpy()
            )
            z = np.abs(frame[signal].to_numpy() - table["yhat"].to_numpy()) / sigma
            scores = np.fmax(scores, np.nan_to_num(z, nan=0.0))
        return scores


def forecast_errors(detector: ForecastDetector, frame: pd.DataFrame, normal: np.ndarray) -> dict[str, float]:
    """MAPE and sMAPE (percent) of the workload forecasts on normal rows, per signal and overall.

    Errors are computed on the workload series (the mean over its pods at each instant),
    which is what the forecaster predicts.
    """
    normal_frame = frame[np.asarray(normal, dtype=bool)]
    forecasts = detector.forecast(normal_frame)
    groups = detector._groups(normal_frame)
    result: dict[str, float] = {}
    mapes, smapes = [], []
    for signal, table in forecasts.items():
        joined = pd.DataFrame(
            {
                "g": groups.to_numpy(),
                "t": normal_frame[TIMESTAMP].to_numpy(),
                "y": normal_frame[signal].to_numpy(),
                "yhat": table["yhat"].to_numpy(),
            }
        ).dropna()
        series = joined.groupby(["g", "t"]).agg(y=("y", "mean"), yhat=("yhat", "first"))
        y, yhat = series["y"].to_numpy(), series["yhat"].to_numpy()
        keep = np.abs(y) > 1e-12
        if not keep.any():
            continue
        mape = float(np.mean(np.abs(y[keep] - yhat[keep]) / np.abs(y[keep])) * 100)
        smape = float(np.mean(2 * np.abs(y - yhat) / (np.abs(y) + np.abs(yhat) + 1e-12)) * 100)
        result[f"mape_{signal}"], result[f"smape_{signal}"] = mape, smape
        mapes.append(mape)
        smapes.append(smape)
    if mapes:
        result["mape"], result["smape"] = float(np.mean(mapes)), float(np.mean(smapes))
    return result


def time_to_exhaustion(
    ts: pd.Series,
    values: np.ndarray,
    limit: float,
    horizon: str = "7D",
    step: str = "15min",
    forecaster: str = "prophet",
) -> pd.Timestamp | None:
    """When will this resource run out? The first instant the forecast reaches ``limit``.

    Args:
        ts: UTC timestamps of the history.
        values: The resource's usage (e.g. disk bytes used, memory working set).
        limit: Capacity (same unit).
        horizon: How far ahead to look.
        step: Resolution of the answer.
        forecaster: ``prophet`` or ``arima``.

    Returns:
        The first future instant whose forecast is at or above ``limit``, or ``None`` when the
        resource lasts beyond the horizon.
    """
    if forecaster not in FORECASTERS:
        raise ValueError(f"unknown forecaster '{forecaster}'; choose from {sorted(FORECASTERS)}")
    # Capacity is about the trend: ARIMA gets a linear time trend here (detection keeps a constant).
    model = ArimaForecaster(trend="ct") if forecaster == "arima" else ProphetForecaster()
    model.fit(ts.reset_index(drop=True), np.asarray(values, dtype=float))
    start = pd.Timestamp(ts.max())
    future = pd.Series(pd.date_range(start + pd.Timedelta(step), start + pd.Timedelta(horizon), freq=step))
    predicted = model.predict(future)
    hits = np.flatnonzero(predicted["yhat"].to_numpy() >= limit)
    return pd.Timestamp(future.iloc[hits[0]]) if hits.size else None
