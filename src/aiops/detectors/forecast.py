"""Forecasting detector: expected value with an interval per workload, anomalies from residuals.

Pods come and go (every rollout renames them), so a per-pod forecaster would rarely see
more than a day of history. The forecaster therefore learns each *workload's* typical pod
(the mean over its pods at each instant: a Deployment's pods share one traffic pattern)
from the training period, and every pod row is scored by how far it lies from that forecast,
in robust standard deviations of the training residuals.

Residuals live on the log scale: every canonical metric is non-negative and varies in
proportion to its level, so ``log1p(value / unit) - log1p(forecast / unit)`` has about the same
spread at night and at the daily peak, and a pod at three times its forecast is as surprising as
one at a third of it. Each signal's ``unit`` is a quarter of its typical training value
(:func:`signal_unit`): without it ``log1p`` would be nearly linear on signals far below 1
(latencies in seconds, CPU in cores), where a 50% latency rise looked like noise.

A forecast made once from the training period drifts as the horizon grows (a trend
mis-estimated by a little, a rollout that moves a workload's memory baseline). The detector
therefore corrects each workload's forecast by the median of its own residuals over a
trailing window (``level_window``, default six hours) that ends *before* the instant being
scored: an online level correction, causal by construction, and robust to anomalies shorter
than half the window. The score at time t uses the training-period model, the rows of the
scored frame before t and the row's own value, never anything later.

Two forecasters share one interface: Prophet (default; daily seasonality, plus weekly
seasonality and a weekend level once training covers a week, linear trend) and ARIMA with
Fourier seasonal regressors (statsmodels SARIMAX), which is lighter. The same forecasters
answer capacity questions: :func:`time_to_exhaustion`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from aiops.features import FeatureContract
from aiops.schema import ENTITY_KEYS, TIMESTAMP

log = logging.getLogger(__name__)

#: ``<deployment>-<pod-template hash>-<suffix>`` or ``<daemonset>-<suffix>``. Kubernetes draws
#: both from a vowel-free alphabet (k8s.io/apimachinery rand.SafeEncodeString), which is what
#: tells ``node-exporter-x7k2p`` (a DaemonSet) from ``node-<hash>-<suffix>``.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_NAME = re.compile(rf"^(?P<workload>.+?)(?:-{_SAFE}{{6,10}})?-{_SAFE}{{5}}$")
_Z_99 = 2.5758  # two-sided 99% normal quantile: the interval the forecasters report
_MAD_TO_SIGMA = 1.4826
#: Training must cover this many days before a weekly cycle is fitted (one of each weekday).
WEEKLY_MIN_DAYS = 7.0
DEFAULT_SIGNALS = (
    "request_rate",
    "cpu_usage_cores",
    "memory_working_set_bytes",
    "latency_p95_seconds",
    "network_rx_bytes_per_s",
    "network_tx_bytes_per_s",
)


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


def _span_days(ts: pd.Series) -> float:
    return float((ts.max() - ts.min()).total_seconds() / 86400) if len(ts) else 0.0


def _weekend(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """1.0 on Saturdays and Sundays (UTC), else 0.0."""
    return (pd.DatetimeIndex(ts).dayofweek >= 5).astype(float)


def _robust_sigma(residuals: np.ndarray, floor: float) -> float:
    """``1.4826 * MAD`` of the finite residuals, at least ``floor``."""
    finite = residuals[np.isfinite(residuals)]
    if finite.size == 0:
        return floor
    mad = float(np.median(np.abs(finite - np.median(finite))))
    return max(_MAD_TO_SIGMA * mad, floor)


class ProphetForecaster:
    """Prophet with daily (and, from a week of history, weekly) seasonality; a 99% interval.

    Fitted on ``log1p(y)``: every canonical metric is non-negative and its daily swing is
    proportional to its level, so the log scale keeps forecasts positive and makes the
    seasonality multiplicative. Prophet's default ``absmax`` scaling divides by the largest
    value, which on the log of a byte count (about 19) makes a 5% wiggle look like nothing
    and lets the trend chase it; ``minmax`` scaling keeps the priors relative to the range.

    Once the history covers a week, a weekly cycle and a weekend level (a regressor that is 1
    on Saturdays and Sundays) are fitted: traffic of business services steps down at the
    weekend, a step that a few weekly Fourier terms would smear over Friday and Monday.

    The series is averaged to ``resample`` buckets before fitting (minute data adds cost, not
    information, to a model of daily and weekly cycles). The interval is the in-sample residual
    spread: Prophet's own interval is dominated by simulated trend changes, which grow without
    bound far from the training period.

    ``log=False`` fits the raw values (capacity forecasts: a log-scale trend extrapolates a
    linear fill exponentially).
    """

    def __init__(
        self,
        interval_width: float = 0.99,
        seed: int = 0,
        changepoint_prior_scale: float = 0.005,
        resample: str = "5min",
        log: bool = True,
    ) -> None:
        self.log = log
        # A stiff trend: a few days of history cannot tell a trend change from a busy afternoon.
        self.changepoint_prior_scale = changepoint_prior_scale
        self.interval_width = interval_width
        self.seed = seed
        self.resample = resample
        self.weekly = False
        self._sigma = 0.0
        self._model: Any = None

    def _frame(self, ts: pd.Series) -> pd.DataFrame:
        ds = pd.Series(_naive(ts).to_numpy())
        frame = pd.DataFrame({"ds": ds})
        if self.weekly:
            frame["weekend"] = _weekend(ds)
        return frame

    def fit(self, ts: pd.Series, y: np.ndarray) -> ProphetForecaster:
        """Fit Prophet (its Stan optimiser is quiet and deterministic for a seed)."""
        from prophet import Prophet

        for noisy in ("prophet", "cmdstanpy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        values = np.asarray(y, dtype=float)
        values = np.log1p(np.clip(values, 0, None)) if self.log else values
        series = pd.Series(values, index=pd.DatetimeIndex(_naive(ts).to_numpy())).dropna()
        if self.resample:
            series = series.resample(self.resample).mean().dropna()
        if len(series) < 2:
            raise ValueError(f"need at least 2 finite samples to fit a forecast, got {len(series)}")
        self.weekly = _span_days(series.index.to_series()) >= WEEKLY_MIN_DAYS
        self._model = Prophet(
            interval_width=self.interval_width,
            daily_seasonality=True,
            weekly_seasonality=self.weekly,
            yearly_seasonality=False,
            uncertainty_samples=0,
            changepoint_prior_scale=self.changepoint_prior_scale,
            scaling="minmax",
        )
        if self.weekly:
            self._model.add_regressor("weekend")
        frame = self._frame(series.index.to_series()).assign(y=series.to_numpy())
        self._model.fit(frame, seed=self.seed) if _accepts_seed() else self._model.fit(frame)
        fitted = self._model.predict(self._frame(series.index.to_series()))["yhat"].to_numpy()
        self._sigma = _robust_sigma(series.to_numpy() - fitted, floor=1e-6)
        return self

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """Forecast at ``ts`` (in the order given)."""
        if self._model is None:
            raise RuntimeError("fit the forecaster first")
        ts = pd.Series(pd.to_datetime(ts, utc=True)).reset_index(drop=True)
        order = np.argsort(ts.to_numpy(), kind="stable")
        # Prophet answers in time order whatever the input order; put its rows back in ours.
        mean = np.empty(len(ts))
        mean[order] = self._model.predict(self._frame(ts.iloc[order]))["yhat"].to_numpy()
        half = _normal_quantile(self.interval_width) * self._sigma
        back = np.expm1 if self.log else np.asarray
        return pd.DataFrame({"yhat": back(mean), "lower": back(mean - half), "upper": back(mean + half)})


def _normal_quantile(interval_width: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + interval_width / 2))


def _accepts_seed() -> bool:
    import inspect

    from prophet import Prophet

    return "seed" in inspect.signature(Prophet.fit).parameters


#: How far past its training data an ARIMA forecast is stepped through; beyond, see
#: :meth:`ArimaForecaster.predict`.
FAR_HORIZON = "14D"


class ArimaForecaster:
    """Regression on seasonal Fourier terms with ARMA(p, q) errors, on ``log1p(y)``.

    Daily Fourier terms always; from a week of history also weekly ones and a weekend level
    (see :class:`ProphetForecaster`, whose log scale this shares: seasonality that scales with
    the level is additive there). The mean is a regressor (a column of ones), not SARIMAX's
    ``trend="c"``: that constant sits in the AR recursion, and once the AR coefficient drifts
    to 1 the forecast follows the last value instead of the seasonal mean.

    ``trend=True`` adds a linear time regressor and ``log=False`` fits the raw values: what a
    capacity forecast wants (a disk fills linearly; a log-scale trend would extrapolate it
    exponentially).
    """

    def __init__(
        self,
        order: tuple[int, int, int] = (1, 0, 1),
        harmonics: int = 3,
        resample: str = "5min",
        weekly_harmonics: int = 2,
        trend: bool = False,
        log: bool = True,
    ) -> None:
        self.order = order
        self.trend = trend
        self.log = log
        self.harmonics = harmonics
        self.weekly_harmonics = weekly_harmonics
        self.resample = resample
        self.weekly = False
        self._result: Any = None
        self._end: pd.Timestamp | None = None
        self._origin_days = 0.0

    def _exog(self, ts: pd.DatetimeIndex) -> np.ndarray:
        seconds = (ts - pd.Timestamp("1970-01-01", tz="UTC")).total_seconds().to_numpy()
        phase = 2 * np.pi * seconds / 86400.0
        cols = [np.ones(len(ts))]
        if self.trend:
            cols.append(seconds / 86400.0 - self._origin_days)
        cols += [f(k * phase) for k in range(1, self.harmonics + 1) for f in (np.sin, np.cos)]
        if self.weekly:
            week = phase / 7.0
            cols += [f(k * week) for k in range(1, self.weekly_harmonics + 1) for f in (np.sin, np.cos)]
            cols.append(_weekend(ts))
        return np.column_stack(cols)

    def fit(self, ts: pd.Series, y: np.ndarray) -> ArimaForecaster:
        """Fit SARIMAX on ``log1p`` of the series resampled to ``resample``."""
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        values = np.asarray(y, dtype=float)
        values = np.log1p(np.clip(values, 0, None)) if self.log else values
        series = pd.Series(values, index=pd.DatetimeIndex(pd.to_datetime(ts, utc=True)))
        series = series.resample(self.resample).mean().interpolate().dropna()
        if len(series) < 2:
            raise ValueError(f"need at least 2 finite samples to fit a forecast, got {len(series)}")
        origin = series.index[0] - pd.Timestamp("1970-01-01", tz="UTC")
        self._origin_days = origin.total_seconds() / 86400.0
        self.weekly = _span_days(series.index.to_series()) >= WEEKLY_MIN_DAYS
        with warnings.catch_warnings():
            # statsmodels warns about start parameters and slow convergence on near-deterministic
            # series; the fit is still usable and the interval reflects its quality.
            warnings.simplefilter("ignore")
            self._result = SARIMAX(
                series.to_numpy(), exog=self._exog(series.index), order=self.order, trend="n"
            ).fit(disp=False)
        self._end = series.index[-1]
        return self

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """Forecast forward from the end of training, then read off each instant.

        The state-space forecast steps through every ``resample`` step up to the instant asked
        for, so a year ahead costs seconds and gigabytes. Beyond ``FAR_HORIZON`` the ARMA part
        has died out (a stationary model, ``d == 0``), and what is left is the regression on the
        calendar terms with the forecast's long-run interval: instants that far out are read off
        that directly, without stepping.
        """
        if self._end is None:
            raise RuntimeError("fit the forecaster first")
        index = pd.DatetimeIndex(pd.to_datetime(ts, utc=True))
        step = pd.Timedelta(self.resample)
        last = max(index.max(), self._end + step).ceil(self.resample)
        stationary = self.order[1] == 0
        if stationary:
            last = min(last, self._end + pd.Timedelta(FAR_HORIZON))
        grid = pd.date_range(self._end + step, last, freq=self.resample)
        forecast = self._result.get_forecast(len(grid), exog=self._exog(grid))
        interval = np.asarray(forecast.conf_int(alpha=0.01))
        table = pd.DataFrame(
            {"yhat": forecast.predicted_mean, "lower": interval[:, 0], "upper": interval[:, 1]}, index=grid
        )
        far = pd.DatetimeIndex(index.floor(self.resample).unique()).sort_values()
        far = far[far > grid[-1]]
        if stationary and len(far):
            beta = np.asarray(self._result.params)[: self._result.model.k_exog]
            mean = self._exog(far) @ beta
            half = (interval[-1, 1] - interval[-1, 0]) / 2.0  # the interval has converged by then
            table = pd.concat(
                [table, pd.DataFrame({"yhat": mean, "lower": mean - half, "upper": mean + half}, index=far)]
            )
        # In-sample instants get the fitted values (one-step predictions use only the past).
        fitted = pd.Series(
            self._result.fittedvalues,
            index=pd.date_range(end=self._end, periods=len(self._result.fittedvalues), freq=self.resample),
        )
        sigma = float(np.sqrt(self._result.scale)) * _Z_99
        past = pd.DataFrame({"yhat": fitted, "lower": fitted - sigma, "upper": fitted + sigma})
        table = pd.concat([past, table])
        table = np.expm1(table) if self.log else table
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
        min_sigma_ratio: Floor of the residual scale on the log scale (0.02 is about 2% of the
            level), so a near-constant series does not turn noise into huge scores.
        level_window: Trailing window of the online level correction (a pandas offset such as
            ``6h``); empty turns the correction off.
        persistence: Rows of the causal running mean of each pod's residuals that is scored
            next to the residual itself (1 turns it off): a deviation that lasts is evidence
            even when each row alone is within the noise.
        seed: Seed of the forecaster's fit.
    """

    forecaster: str = "prophet"
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    min_sigma_ratio: float = 0.02
    level_window: str = "6h"
    persistence: int = 5
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """Flat settings for tracking: every field, so two models with different settings differ here."""
        return {f"fc_{k}": ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: Instants of history the level correction needs before it moves the forecast.
_LEVEL_MIN_INSTANTS = 30


@dataclass
class _Model:
    """The forecaster of one (workload, signal) and the spread of pod residuals around it."""

    forecaster: Any
    sigma: float  # robust std of log1p(pod value/unit) - log1p(corrected forecast/unit), training period
    sigma_mean: float = 0.0  # robust std of the running mean of those residuals (persistence)


@dataclass
class ForecastDetector:
    """Residual z-scores (log scale) against per-workload forecasts; score = max over signals."""

    config: ForecastConfig = field(default_factory=ForecastConfig)
    models: dict[tuple[str, str], _Model] = field(default_factory=dict)
    signals: tuple[str, ...] = ()
    kind: str = "forecast"
    #: Per signal, the unit residuals are taken in: ``log1p(value / unit)`` (see :func:`signal_unit`).
    #: Detectors saved before units existed have none and use 1, the plain ``log1p`` they used.
    units: dict[str, float] = field(default_factory=dict)

    def unit(self, signal: str) -> float:
        """The signal's unit (1.0 for a detector saved without units)."""
        return float(getattr(self, "units", {}).get(signal, 1.0))

    def _logged(self, values: np.ndarray, signal: str) -> np.ndarray:
        return _log(np.asarray(values, dtype=float) / self.unit(signal))

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
        self.units = {signal: signal_unit(train[signal].to_numpy()) for signal in self.signals}
        self.models = {}
        for (group, signal), series in self._workload_series(train, groups).items():
            values = _without_outliers(series.to_numpy())
            if np.isfinite(values).sum() < 60:
                continue  # under an hour of history: nothing to forecast from
            forecaster = FORECASTERS[self.config.forecaster]()
            if isinstance(forecaster, ProphetForecaster):
                forecaster.seed = self.config.seed
            forecaster.fit(series.index.to_series(), values)
            self.models[(group, signal)] = _Model(forecaster, self.config.min_sigma_ratio)
        if not self.models:
            raise ValueError("no workload has an hour of training history to forecast from")
        # The spread of *pod* rows around the corrected workload forecast, in-sample and robust
        # (the training period holds anomalies of its own).
        train = train.reset_index(drop=True)
        groups = groups.reset_index(drop=True)
        for signal, (mean, _) in self._log_forecast(train).items():
            residual = self._logged(train[signal].to_numpy(), signal) - mean
            running = self._running_mean(train, residual)
            for (group, name), model in self.models.items():
                if name == signal:
                    rows = (groups == group).to_numpy()
                    model.sigma = _robust_sigma(residual[rows], floor=self.config.min_sigma_ratio)
                    model.sigma_mean = _robust_sigma(running[rows], floor=self.config.min_sigma_ratio / 2)
        return self

    def _running_mean(self, frame: pd.DataFrame, residual: np.ndarray) -> np.ndarray:
        """Causal mean of each entity's last ``persistence`` residuals (NaN until there are as many)."""
        k = self.config.persistence
        if k <= 1:
            return np.full(len(frame), np.nan)
        keys = frame[list(ENTITY_KEYS)].astype(str).agg("/".join, axis=1)
        order = np.lexsort((frame[TIMESTAMP].to_numpy(), keys.to_numpy()))
        ordered = pd.Series(residual[order])
        entity = pd.Series(keys.to_numpy()[order])
        running = ordered.groupby(entity.to_numpy(), sort=False).rolling(k, min_periods=k).mean()
        out = np.empty(len(frame))
        out[order] = running.reset_index(level=0, drop=True).sort_index().to_numpy()
        return out

    def _workload_series(self, frame: pd.DataFrame, groups: pd.Series) -> dict[tuple[str, str], pd.Series]:
        out = {}
        keyed = frame.assign(_group=groups.to_numpy())
        for signal in self.signals:
            table = keyed.groupby(["_group", TIMESTAMP])[signal].mean()
            for group in table.index.get_level_values(0).unique():
                out[(group, signal)] = table.loc[group]
        return out

    def _log_forecast(self, frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per signal: corrected forecast on the ``log1p(x / unit)`` scale and residual sigma, by row.

        NaN where the row's workload has no model for the signal.
        """
        groups = self._groups(frame).to_numpy()
        stamps = pd.DatetimeIndex(pd.to_datetime(frame[TIMESTAMP], utc=True)).as_unit("ns").asi8
        out = {}
        for signal in self.signals:
            mean = np.full(len(frame), np.nan)
            sigma = np.full(len(frame), np.nan)
            values = self._logged(frame[signal].to_numpy(), signal)
            for group in np.unique(groups):
                model = self.models.get((group, signal))
                if model is None:
                    continue
                rows = np.flatnonzero(groups == group)
                codes, position = np.unique(stamps[rows], return_inverse=True)
                instants = pd.DatetimeIndex(pd.to_datetime(codes, utc=True))
                predicted = model.forecaster.predict(pd.Series(instants))["yhat"].to_numpy()
                base = self._logged(predicted, signal)
                level = self._level(instants, values[rows] - base[position], position)
                mean[rows] = base[position] + level[position]
                sigma[rows] = model.sigma
            out[signal] = (mean, sigma)
        return out

    def _level(self, instants: pd.DatetimeIndex, residual: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Online level correction per instant: median workload residual over the trailing window.

        The window ends before the instant (``closed="left"``), so the correction at t uses only
        rows before t; a median over hours ignores anomalies shorter than half the window.
        """
        if not self.config.level_window:
            return np.zeros(len(instants))
        per_instant = np.bincount(position, weights=np.nan_to_num(residual), minlength=len(instants))
        counts = np.bincount(position, weights=np.isfinite(residual), minlength=len(instants))
        mean = pd.Series(np.where(counts > 0, per_instant / np.maximum(counts, 1), np.nan), index=instants)
        level = mean.rolling(
            self.config.level_window, closed="left", min_periods=_LEVEL_MIN_INSTANTS
        ).median()
        return level.fillna(0.0).to_numpy()

    def forecast(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Return, per signal, ``yhat``/``lower``/``upper`` aligned with ``frame``'s rows (NaN if unknown).

        ``yhat`` is the workload forecast after the online level correction (which uses the
        rows of ``frame`` before each instant); the interval is 99% of the pod residuals.
        """
        out = {}
        for signal, (mean, sigma) in self._log_forecast(frame).items():
            unit = self.unit(signal)
            out[signal] = pd.DataFrame(
                {
                    "yhat": unit * np.expm1(mean),
                    "lower": unit * np.expm1(mean - _Z_99 * sigma),
                    "upper": unit * np.expm1(mean + _Z_99 * sigma),
                },
                index=frame.index,
            )
        return out

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Max over signals of the residual z-score and of the running-mean z-score.

        The residual z-score is ``|log1p(value/unit) - log1p(forecast/unit)| / sigma``; the running-mean
        one divides the mean of the pod's last ``persistence`` residuals by its own training
        spread. 0 where no forecast exists.
        """
        scores = np.zeros(len(frame))
        groups = self._groups(frame).to_numpy()
        for signal, (mean, sigma) in self._log_forecast(frame).items():
            residual = self._logged(frame[signal].to_numpy(), signal) - mean
            scores = np.fmax(scores, np.nan_to_num(np.abs(residual) / sigma, nan=0.0))
            if self.config.persistence > 1:
                sigma_mean = np.full(len(frame), np.nan)
                for group in np.unique(groups):
                    model = self.models.get((group, signal))
                    if model is not None and model.sigma_mean > 0:
                        sigma_mean[groups == group] = model.sigma_mean
                running = np.abs(self._running_mean(frame, residual)) / sigma_mean
                scores = np.fmax(scores, np.nan_to_num(running, nan=0.0))
        return scores


#: A signal's unit is this share of its median positive training value.
UNIT_SHARE = 0.25


def signal_unit(values: np.ndarray) -> float:
    """The unit a signal's residuals are taken in: a quarter of its median positive value.

    ``log1p(x)`` is a log only for ``x`` well above 1: on latencies in seconds or CPU in cores
    it is nearly linear, so a latency at 1.5 times its forecast was as surprising at night as a
    few milliseconds of noise. ``log1p(x / unit)`` with a unit a little below the signal's
    typical level is close to a log over the range the signal lives in, for every signal alike
    (bytes per second as well as seconds), yet flattens towards 0, where a log would turn the
    noise of a nearly idle pod into large ratios (a twentieth of the median did that: more
    false alarms at night). 1.0 when the signal has no positive value.
    """
    finite = np.asarray(values, dtype=float)
    positive = finite[np.isfinite(finite) & (finite > 0)]
    return float(UNIT_SHARE * np.median(positive)) if positive.size else 1.0


def _log(values: np.ndarray) -> np.ndarray:
    """``log1p`` of non-negative values (negative forecasts are clipped to 0); NaN stays NaN."""
    return np.log1p(np.clip(np.asarray(values, dtype=float), 0.0, None))


def forecast_errors(detector: ForecastDetector, frame: pd.DataFrame, normal: np.ndarray) -> dict[str, float]:
    """MAPE, sMAPE and WAPE (percent) of the workload forecasts on normal rows, per signal and overall.

    Errors are computed on the workload series (the mean over its pods at each instant),
    which is what the forecaster predicts, all three over the same instants (those with a
    non-zero actual value). MAPE divides each error by its own actual value, so a few nearly
    idle minutes (0.01 requests/s forecast at 0.02) can dominate it; WAPE (the sum of absolute
    errors over the sum of absolute actual values) weighs each instant by its size and stays
    readable there. The overall figures are means over the signals.
    """
    normal_frame = frame[np.asarray(normal, dtype=bool)]
    forecasts = detector.forecast(normal_frame)
    groups = detector._groups(normal_frame)
    result: dict[str, float] = {}
    mapes, smapes, wapes = [], [], []
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
        y, yhat = y[keep], yhat[keep]
        error = np.abs(y - yhat)
        mape = float(np.mean(error / np.abs(y)) * 100)
        smape = float(np.mean(2 * error / (np.abs(y) + np.abs(yhat))) * 100)
        wape = float(error.sum() / np.abs(y).sum() * 100)
        result[f"mape_{signal}"], result[f"smape_{signal}"], result[f"wape_{signal}"] = mape, smape, wape
        mapes.append(mape)
        smapes.append(smape)
        wapes.append(wape)
    if mapes:
        result["mape"], result["smape"] = float(np.mean(mapes)), float(np.mean(smapes))
        result["wape"] = float(np.mean(wapes))
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
    model = ArimaForecaster(trend=True, log=False) if forecaster == "arima" else ProphetForecaster(log=False)
    model.fit(ts.reset_index(drop=True), np.asarray(values, dtype=float))
    start = pd.Timestamp(ts.max())
    future = pd.Series(pd.date_range(start + pd.Timedelta(step), start + pd.Timedelta(horizon), freq=step))
    predicted = model.predict(future)
    hits = np.flatnonzero(predicted["yhat"].to_numpy() >= limit)
    return pd.Timestamp(future.iloc[hits[0]]) if hits.size else None
