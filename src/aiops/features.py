"""The one feature transform used by training, the feature store and the predictor.

Every feature at time *t* uses only samples at or before *t* of the same entity
(causal), so the same code can score a live stream and no future leaks into a
training row. Windows count rows, which is right because ingest aligns every
entity to a regular step grid and keeps gaps as explicit ``NaN`` rows.

Per signal ``s`` (each present metric except the limits, plus the derived
``cpu_utilisation`` and ``memory_utilisation``) the transform emits:

* ``s`` – the value itself;
* ``s__mean_<w>``, ``s__std_<w>`` – rolling mean and standard deviation over
  the last ``w`` rows;
* ``s__z_<w>`` – the value's z-score against the *previous* ``w`` rows, so a
  spike is not hidden by its own contribution to the window; missing until at
  least half the window (and 3 rows) of history exists, because a standard
  deviation of two samples turns a new pod's first rows into huge z-scores;
* ``s__lag_<k>`` – the value ``k`` rows earlier;
* ``s__diff_1`` – change since the previous row;
* ``s__slope_<w>`` – per-second rate of change over ``w`` rows (what a leak or
  a filling disk looks like);
* ``s__flat`` (when there are at least two windows) – ``log10`` of the rolling
  standard deviation over the shortest window relative to its median over the
  longest window before, capped at 0 (louder than usual is the z-score's job)
  and floored at -3: how much quieter the signal has gone than its own recent
  history. A stuck exporter repeating its last sample drives it to -3 within a
  few rows, while a live signal's noise keeps it near 0;
* ``s__run`` – how many rows in a row the value has repeated its predecessor
  exactly (0 when it changed, capped at the longest window): the other face of
  a stuck exporter, exact where a rolling standard deviation of tiny values is
  not.

Bump :data:`FEATURE_VERSION` whenever the output for the same input changes;
models record it in their feature contract and the predictor refuses a
mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP, SchemaError, metric_columns

FEATURE_VERSION = "2"

#: Capacities are context, not behaviour: they only enter through utilisation.
_EXCLUDED_SIGNALS = frozenset({"cpu_limit_cores", "memory_limit_bytes"})
_DERIVED = {
    "cpu_utilisation": ("cpu_usage_cores", "cpu_limit_cores"),
    "memory_utilisation": ("memory_working_set_bytes", "memory_limit_bytes"),
}
#: Signals whose normal range does not follow traffic: restart and error rates, saturation
#: and fill ratios. Traffic-driven signals (requests, bytes, CPU, latency) move with the
#: daily and weekly cycle and grow with the business; detectors that judge absolute levels
#: without a model of that cycle (a forest, an autoencoder) look at these signals' levels only.
HEALTH_SIGNALS: tuple[str, ...] = (
    "restarts",
    "error_ratio",
    "network_errors_per_s",
    "network_drops_per_s",
    "cpu_throttled_ratio",
    "memory_utilisation",
    "disk_usage_ratio",
)
_EPS = 1e-9
_Z_CAP = 50.0
_FLAT_FLOOR = -3.0  # log10 of the short/long std ratio of a series that stopped moving


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the transform; they are part of the feature contract.

    Attributes:
        windows: Rolling window lengths, in rows (steps).
        lags: Lags, in rows.
        step_seconds: Length of one step, used to turn differences into rates.

    """

    windows: tuple[int, ...] = (5, 30)
    lags: tuple[int, ...] = (1,)
    step_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.windows or min(self.windows) < 2:
            raise ValueError(f"windows must be at least 2 rows long, got {self.windows}")
        if any(k < 1 for k in self.lags):
            raise ValueError(f"lags must be positive, got {self.lags}")
        if self.step_seconds <= 0:
            raise ValueError(f"step_seconds must be positive, got {self.step_seconds}")


@dataclass(frozen=True)
class FeatureContract:
    """What a model expects as input: ordered names, dtypes, transform version.

    The contract travels with every model; the predictor enforces it.
    """

    feature_names: tuple[str, ...]
    signals: tuple[str, ...]
    config: FeatureConfig = field(default_factory=FeatureConfig)
    transform_version: str = FEATURE_VERSION
    dtype: str = "float64"

    def to_json(self) -> str:
        """Serialise to JSON (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureContract:
        """Parse :meth:`to_json` output."""
        raw = json.loads(text)
        cfg = raw.pop("config")
        config = FeatureConfig(
            windows=tuple(cfg["windows"]), lags=tuple(cfg["lags"]), step_seconds=float(cfg["step_seconds"])
        )
        return cls(
            feature_names=tuple(raw["feature_names"]),
            signals=tuple(raw["signals"]),
            config=config,
            transform_version=raw["transform_version"],
            dtype=raw["dtype"],
        )

    def check(self, features: pd.DataFrame) -> None:
        """Raise :class:`SchemaError` when a contract feature, or a row's time or entity, is missing."""
        # Keys travel with the features: sequence and forecasting detectors need the entity and time.
        missing = [c for c in (*KEY_COLUMNS, *self.feature_names) if c not in features.columns]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise SchemaError(
                f"{len(missing)} feature(s) of the model's contract missing from the input: {shown}; "
                f"build features with aiops.features.build_features (transform version "
                f"{self.transform_version})"
            )
        # A row without its time or entity cannot be placed in its series: the forecaster and the
        # LSTM fail on it in their own words, the forest would score it as if nothing were wrong.
        for column in KEY_COLUMNS:
            empty = features[column].isna().to_numpy()
            if empty.any():
                raise SchemaError(
                    f"key column '{column}' is empty in {int(empty.sum())} row(s), the first at position "
                    f"{int(np.flatnonzero(empty)[0])}; every row needs its {TIMESTAMP} and entity "
                    f"({', '.join(ENTITY_KEYS)}; '' for an entity key that does not apply)"
                )

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        """Return the model input matrix in contract order.

        Raises:
            SchemaError: When a feature is missing.

        """
        self.check(features)
        return features.loc[:, list(self.feature_names)].to_numpy(dtype=np.float64)


def signals_for(metrics: pd.DataFrame) -> list[str]:
    """Return the signals the transform derives features from, in stable order."""
    present = metric_columns(metrics)
    signals = [c for c in present if c not in _EXCLUDED_SIGNALS]
    signals += [name for name, (num, den) in _DERIVED.items() if num in present and den in present]
    return signals


def feature_names(signals: Sequence[str], config: FeatureConfig = FeatureConfig()) -> list[str]:
    """Return the ordered feature names the transform emits for ``signals``."""
    names: list[str] = []
    for s in signals:
        names.append(s)
        for w in config.windows:
            names += [f"{s}__mean_{w}", f"{s}__std_{w}", f"{s}__z_{w}"]
        names += [f"{s}__lag_{k}" for k in config.lags]
        names.append(f"{s}__diff_1")
        names += [f"{s}__slope_{w}" for w in config.windows]
        if len(config.windows) > 1:
            names.append(f"{s}__flat")
        names.append(f"{s}__run")
    return names


def _entity_features(values: pd.DataFrame, config: FeatureConfig) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for s in values.columns:
        x = values[s]
        out[s] = x.to_numpy()
        previous = x.shift(1)
        for w in config.windows:
            roll = x.rolling(w, min_periods=1)
            out[f"{s}__mean_{w}"] = roll.mean().to_numpy()
            out[f"{s}__std_{w}"] = rolling_std(x.to_numpy(), w, min_periods=2)
            least = min(w, max(3, w // 2))
            prev_mean = previous.rolling(w, min_periods=least).mean().to_numpy()
            z = pd.Series((x.to_numpy() - prev_mean) / (rolling_std(previous.to_numpy(), w, least) + _EPS))
            # A flat history (std 0) would turn float noise into 1e9; cap the evidence instead.
            out[f"{s}__z_{w}"] = np.clip(z.to_numpy(), -_Z_CAP, _Z_CAP)
        for k in config.lags:
            out[f"{s}__lag_{k}"] = x.shift(k).to_numpy()
        out[f"{s}__diff_1"] = (x - previous).to_numpy()
        for w in config.windows:
            out[f"{s}__slope_{w}"] = ((x - x.shift(w)) / (w * config.step_seconds)).to_numpy()
        if len(config.windows) > 1:
            out[f"{s}__flat"] = _flatness(x, min(config.windows), max(config.windows))
        out[f"{s}__run"] = _repeats(x, max(config.windows))
    return out


def _repeats(x: pd.Series, cap: int) -> np.ndarray:
    """Rows in a row (up to ``cap``) whose value equals the previous row's exactly; NaN where missing."""
    same = (x == x.shift(1)).to_numpy()
    # Count the run of True ending at each row: position minus the position of the last False.
    index = np.arange(len(same))
    last_change = np.maximum.accumulate(np.where(same, -1, index))
    run = np.minimum(index - last_change, cap).astype(float)
    return np.where(x.isna().to_numpy(), np.nan, run)


def rolling_std(x: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """Sample std of the last ``window`` values (NaN skipped), NaN with fewer than ``min_periods``.

    Computed window by window, not with pandas' running sums: those keep the rounding error of
    large values that left the window long ago, so a signal that fell from 0.8 to 1e-8 read a
    std of 0 (and a z-score off by an order of magnitude) in a long history, and the right
    value in the short one a request carries. Training and serving must agree.
    """
    values = np.asarray(x, dtype=np.float64)
    n = len(values)
    if n == 0:
        return np.zeros(0)
    padded = np.concatenate([np.full(window - 1, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    count = np.count_nonzero(~np.isnan(windows), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(windows, axis=1) / count
        squares = np.nansum((windows - mean[:, None]) ** 2, axis=1)
        std = np.sqrt(squares / (count - 1))
    std[count < max(min_periods, 2)] = np.nan
    return std


def _flatness(x: pd.Series, short: int, long: int) -> np.ndarray:
    """``log10`` of the short rolling std over its own median in the ``long`` rows before; ``[-3, 0]``.

    The reference is a *median* of past short-window stds, so the aftermath of a jump (which
    inflates a long-window std for ``long`` rows) does not look like the signal went quiet. A
    series that never moves (a counter that stays at 0) has no noise to lose and gets 0 (no
    evidence) rather than -3.
    """
    short_std = pd.Series(rolling_std(x.to_numpy(), short, min_periods=short), index=x.index)
    reference = short_std.shift(1).rolling(long, min_periods=max(2, long // 2)).median().to_numpy()
    current = short_std.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        # Rolling sums leave float dust (~1e-17) where a window is exactly constant.
        moving = reference > _EPS * (1.0 + np.abs(x.to_numpy()))
        ratio = np.where(moving, np.log10(np.maximum(current, 0.0) / reference), 0.0)
    ratio = np.clip(np.nan_to_num(ratio, nan=0.0, neginf=_FLAT_FLOOR), _FLAT_FLOOR, 0.0)
    return np.where(np.isnan(current) | np.isnan(reference), np.nan, ratio)


def build_features(metrics: pd.DataFrame, config: FeatureConfig = FeatureConfig()) -> pd.DataFrame:
    """Compute the feature table for a canonical metrics table.

    Windows and lags count steps of ``config.step_seconds``, not rows: a sample missing from
    an entity's rows is an empty step, as a NaN row for it would be.

    Args:
        metrics: Metrics in the canonical schema (see :mod:`aiops.schema`).
        config: Transform settings.

    Returns:
        A frame with the key columns followed by :func:`feature_names` columns
        (float64), one row per input row, sorted by entity then time.

    Raises:
        SchemaError: When key columns are missing or no usable signal is present.

    """
    missing = [c for c in KEY_COLUMNS if c not in metrics.columns]
    if missing:
        raise SchemaError(f"features: key column(s) {missing} missing; validate the metrics first")
    signals = signals_for(metrics)
    if not signals:
        raise SchemaError("features: no metric columns to derive features from")

    frame = metrics.sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable").reset_index(drop=True)
    base = frame[[c for c in signals if c not in _DERIVED]].astype("float64")
    for name, (num, den) in _DERIVED.items():
        if name in signals:
            # Zero or missing limits mean "unlimited": utilisation is undefined, not infinite.
            # In float64 whatever the ingest's dtype, as the signals above and the online paths.
            den_values = frame[den].astype("float64").where(frame[den] > 0)
            base[name] = frame[num].astype("float64") / den_values
    base = base[signals]

    names = feature_names(signals, config)
    stamps = pd.DatetimeIndex(frame[TIMESTAMP]).as_unit("ns").asi8
    reach = max(config.windows) + max(config.lags, default=1) + 2
    parts = []
    for _, idx in frame.groupby(list(ENTITY_KEYS), sort=False).indices.items():
        values = base.iloc[idx].reset_index(drop=True)
        slots = _grid_slots(stamps[idx], config.step_seconds, reach)
        if slots is None:
            cols = _entity_features(values, config)
        else:
            # Missing samples become empty steps, so windows and lags count time, not rows.
            grid = pd.DataFrame(np.nan, index=pd.RangeIndex(int(slots[-1]) + 1), columns=values.columns)
            grid.iloc[slots] = values.to_numpy()
            cols = {name: column[slots] for name, column in _entity_features(grid, config).items()}
        parts.append(pd.DataFrame(cols, index=idx))
    feats = pd.concat(parts).sort_index()[names].astype("float64")
    return pd.concat([frame[list(KEY_COLUMNS)], feats], axis=1)


def _grid_slots(stamps: np.ndarray, step_seconds: float, reach: int) -> np.ndarray | None:
    """Positions of an entity's sorted samples on its step grid, when samples are missing.

    ``None`` when nothing is missing (every row is the next step). Two samples that fall on the
    same step (off-grid timestamps) are taken as consecutive steps, there and only there: a
    slot depends on the samples before it alone, so rows appended later never move the
    features of earlier ones. A hole longer than ``reach`` steps (the farthest any feature
    looks back) is shortened to it: beyond that, more empty steps change no feature.
    """
    if len(stamps) < 2:
        return None
    steps = np.maximum(np.rint(np.diff(stamps) / (step_seconds * 1e9)).astype(np.int64), 1)
    if (steps == 1).all():
        return None
    return np.r_[0, np.cumsum(np.minimum(steps, reach + 1))]


def contract_for(features: pd.DataFrame, config: FeatureConfig = FeatureConfig()) -> FeatureContract:
    """Return the contract describing a table produced by :func:`build_features`."""
    names = tuple(c for c in features.columns if c not in KEY_COLUMNS)
    signals = tuple(n for n in names if "__" not in n)
    return FeatureContract(feature_names=names, signals=signals, config=config)


def infer_step_seconds(metrics: pd.DataFrame) -> float:
    """Return the sampling step: the most common gap between an entity's consecutive rows.

    Raises:
        SchemaError: When no entity has two rows.

    """
    ordered = metrics.sort_values([*ENTITY_KEYS, TIMESTAMP])
    gaps = ordered.groupby(list(ENTITY_KEYS), sort=False)[TIMESTAMP].diff().dropna()
    if gaps.empty:
        raise SchemaError("features: cannot infer the step; no entity has two samples")
    return float(gaps.mode().iloc[0].total_seconds())


_FEATURES_FILE = "features.parquet"
_CONFIG_FILE = "feature_config.json"


def save_features(features: pd.DataFrame, config: FeatureConfig, folder: str | Path) -> Path:
    """Write a feature table with the transform settings that produced it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    features.to_parquet(out / _FEATURES_FILE, index=False)
    (out / _CONFIG_FILE).write_text(json.dumps({**asdict(config), "transform_version": FEATURE_VERSION}))
    return out


def load_features(folder: str | Path) -> tuple[pd.DataFrame, FeatureConfig]:
    """Read a folder written by :func:`save_features`.

    Raises:
        SchemaError: When the folder is not a feature table or was built by another transform version.

    """
    root = Path(folder)
    if not (root / _FEATURES_FILE).exists() or not (root / _CONFIG_FILE).exists():
        raise SchemaError(f"{root} holds no feature table ({_FEATURES_FILE} + {_CONFIG_FILE})")
    raw = json.loads((root / _CONFIG_FILE).read_text())
    version = raw.pop("transform_version")
    if version != FEATURE_VERSION:
        raise SchemaError(
            f"{root} was built by feature transform v{version}; this code is v{FEATURE_VERSION}"
        )
    config = FeatureConfig(
        windows=tuple(raw["windows"]), lags=tuple(raw["lags"]), step_seconds=float(raw["step_seconds"])
    )
    return pd.read_parquet(root / _FEATURES_FILE), config
