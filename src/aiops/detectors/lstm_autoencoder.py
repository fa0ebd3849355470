"""LSTM autoencoder over sliding windows of each entity's signals (PyTorch).

A window of the last ``window`` steps (30 minutes by default: long enough to hold a rise
and its context) is encoded into a small state and decoded back; the anomaly score of a
row is the reconstruction error of its own step, the window's last, so a score at *t* uses
rows up to *t* only.

Each signal's squared error is divided by its typical training error before the errors are
averaged, so a signal the network reconstructs poorly even in normal operation (a noisy
one) does not drown the others. An entity's first ``window - 1`` rows have no full window
behind them (a pod that just started, or the first rows of a scored frame): they are padded
with the entity's first row for the network, and score 0 (no opinion). Training uses full
windows only.

The network sees ``log1p`` of the signals: health signals centred on their training
medians (their level is the evidence), traffic-driven signals centred on each window's own
median (their shape over the last half hour is the evidence; their level is judged by the
forecasting detector against the daily and weekly cycle, so a workload that has grown since
training is not anomalous here for that alone). Each is scaled by the larger of the IQR of
its centred training values and a twentieth of their 0.1%-99.9% range: a ratio that is
almost always ~0 (CPU throttling, say) has a tiny IQR, and scaling by it alone would turn a
busy afternoon's 1e-3 into ten "standard" units. Training uses fixed seeds and runs on a GPU
when one is present (``device="auto"``). The trained network is exported as TorchScript (it
takes prepared windows), so the predictor runs it without this module's training code.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aiops.features import HEALTH_SIGNALS, FeatureContract
from aiops.schema import ENTITY_KEYS, TIMESTAMP

log = logging.getLogger(__name__)

#: Floor of a signal's typical squared error (in scaled units) when normalising errors.
_MIN_ERROR_SCALE = 1e-2


@dataclass(frozen=True)
class LstmConfig:
    """Settings of :class:`LstmAutoencoderDetector`.

    Attributes:
        window: Steps per window.
        hidden: LSTM hidden size.
        latent: Size of the bottleneck.
        epochs: Passes over the training windows.
        batch_size: Windows per optimiser step.
        max_windows: Training windows drawn (evenly spaced) to bound the cost.
        learning_rate: Adam learning rate.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        seed: Seed of initialisation and shuffling.
    """

    window: int = 30
    hidden: int = 32
    latent: int = 16
    epochs: int = 5
    batch_size: int = 256
    max_windows: int = 4000
    learning_rate: float = 3e-3
    device: str = "auto"
    seed: int = 0

    def params(self) -> dict[str, Any]:
        """Flat settings for tracking."""
        return {f"lstm_{k}": v for k, v in asdict(self).items()}


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but no GPU is visible to torch")
    return device


def _network(n_signals: int, cfg: LstmConfig) -> Any:
    import torch
    from torch import nn

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.LSTM(n_signals, cfg.hidden, batch_first=True)
            self.bottleneck = nn.Linear(cfg.hidden, cfg.latent)
            self.expand = nn.Linear(cfg.latent, cfg.hidden)
            self.decoder = nn.LSTM(cfg.hidden, cfg.hidden, batch_first=True)
            self.output = nn.Linear(cfg.hidden, n_signals)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h, _) = self.encoder(x)
            z = torch.tanh(self.bottleneck(h[-1]))
            seed = self.expand(z).unsqueeze(1).repeat(1, x.shape[1], 1)
            decoded, _ = self.decoder(seed)
            return self.output(decoded)

    return Autoencoder()


@dataclass
class LstmAutoencoderDetector:
    """Reconstruction error of the latest step of each entity's sliding window."""

    config: LstmConfig = field(default_factory=LstmConfig)
    signals: tuple[str, ...] = ()
    center: np.ndarray | None = None
    scale: np.ndarray | None = None
    absolute: np.ndarray | None = None
    error_scale: np.ndarray | None = None
    history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    trained_on: str = ""
    kind: str = "lstm_autoencoder"
    _scripted: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ data

    def _layout(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The signals in (entity, time) order, the frame's rows in that order, entity ages.

        Signals are ``log1p``-transformed (every canonical metric is non-negative; a doubling is
        then the same step at any level); the age of a row is its distance from its entity's
        first row in ``frame``.
        """
        order = frame.sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable").index
        rows = frame.index.get_indexer(order)
        values = frame.loc[order, list(self.signals)].to_numpy(dtype=np.float64)
        age = frame.loc[order].groupby(list(ENTITY_KEYS), sort=False).cumcount().to_numpy()
        return np.log1p(np.clip(values, 0.0, None)), rows, age

    def _windows(self, values: np.ndarray, age: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Raw windows ``(len(positions), window, n_signals)`` ending at the given ordered rows.

        Steps before an entity's first row repeat that first row.
        """
        w = self.config.window
        steps = positions[:, None] - (w - 1) + np.arange(w)[None, :]
        first = (positions - age[positions])[:, None]
        return values[np.maximum(steps, first)]

    def _prepared(self, windows: np.ndarray) -> np.ndarray:
        """Centre, scale and cap windows: the network's input.

        Health signals (:data:`~aiops.features.HEALTH_SIGNALS`) are centred on their training
        medians: their level is the evidence. Traffic-driven signals are centred on each
        window's own median, so the network sees the *shape* of their last half hour and a
        workload that has grown since training is not anomalous for that alone (the
        forecasting detector judges traffic levels against the daily and weekly cycle).
        """
        assert self.scale is not None and self.center is not None and self.absolute is not None
        own = _window_medians(windows)
        x = (windows - np.where(self.absolute, self.center, own)) / self.scale
        # Missing samples become "typical" (0) and outliers are capped, so one broken sample
        # cannot dominate the loss.
        return np.clip(np.nan_to_num(x, nan=0.0), -10, 10).astype(np.float32)

    def _last_step_errors(self, values: np.ndarray, age: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of the last step of the windows ending at ``positions``."""
        import torch

        errors = np.empty((len(positions), values.shape[1]), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(positions), 4096):
                batch = self._prepared(self._windows(values, age, positions[start : start + 4096]))
                recon = self._scripted(torch.from_numpy(batch)).numpy()
                errors[start : start + 4096] = (recon[:, -1] - batch[:, -1]) ** 2
        return errors

    # ------------------------------------------------------------------ fit / score

    def fit(self, train: pd.DataFrame, contract: FeatureContract) -> LstmAutoencoderDetector:
        """Train on the training period's full windows (labels are never seen)."""
        import torch

        cfg = self.config
        self.signals = tuple(s for s in contract.signals if s in train)
        if not self.signals:
            raise ValueError("the feature contract names no signal for the LSTM autoencoder")
        values, _, age = self._layout(train.reset_index(drop=True))
        self.absolute = np.array([s in HEALTH_SIGNALS for s in self.signals])
        positions = np.flatnonzero(age >= cfg.window - 1)
        if positions.size == 0:
            positions = np.arange(len(values))  # no entity has a full window: train on padded ones
        positions = positions[:: max(1, len(positions) // cfg.max_windows)]
        raw = self._windows(values, age, positions)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing signal
            self.center = np.nan_to_num(np.nanmedian(values, axis=0), nan=0.0)
            own = np.nanmedian(raw, axis=1, keepdims=True)
            centred = (raw - np.where(self.absolute, self.center, own)).reshape(-1, len(self.signals))
            low, q1, q3, high = np.nanpercentile(centred, [0.1, 25, 75, 99.9], axis=0)
        spread = np.nan_to_num(np.maximum(q3 - q1, (high - low) / 20), nan=0.0)
        self.scale = np.where(spread > 1e-9, spread, 1.0)
        windows = self._prepared(raw)

        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        net = _network(len(self.signals), cfg).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        data = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
        started = time.perf_counter()
        self.history = []
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(rng.permutation(len(data))).to(device)
            total = 0.0
            for start in range(0, len(data), cfg.batch_size):
                batch = data[order[start : start + cfg.batch_size]]
                loss = torch.mean((net(batch) - batch) ** 2)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            self.history.append(total / len(data))
            log.info("lstm epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, self.history[-1])
        self.train_seconds = time.perf_counter() - started
        self.trained_on = device
        self._scripted = torch.jit.script(net.cpu().eval())
        # Typical error per signal on the training windows; the floor keeps a signal that is
        # reconstructed perfectly (a counter that stays at 0) from turning noise into alarms.
        typical = np.mean(self._last_step_errors(values, age, positions), axis=0)
        self.error_scale = np.maximum(typical, _MIN_ERROR_SCALE)
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Mean over signals of the latest step's squared error relative to the training error.

        Rows without a full window of their entity's history in ``frame`` score 0.
        """
        if self._scripted is None or self.error_scale is None:
            raise RuntimeError("the detector is not fitted; call fit() first")
        frame = frame.reset_index(drop=True)
        values, rows, age = self._layout(frame)
        positions = np.flatnonzero(age >= self.config.window - 1)
        scores = np.zeros(len(frame))
        if positions.size:
            errors = self._last_step_errors(values, age, positions) / self.error_scale
            scores[rows[positions]] = errors.mean(axis=1)
        return scores

    # ------------------------------------------------------------------ export

    def torchscript_bytes(self) -> bytes:
        """The trained network as TorchScript (loadable with ``torch.jit.load``)."""
        import torch

        buffer = io.BytesIO()
        torch.jit.save(self._scripted, buffer)
        return buffer.getvalue()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scripted"] = self.torchscript_bytes() if self._scripted is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import torch

        blob = state.get("_scripted")
        state["_scripted"] = torch.jit.load(io.BytesIO(blob)) if blob else None
        self.__dict__.update(state)


def _window_medians(windows: np.ndarray) -> np.ndarray:
    """Each window's median per signal, ``(n, 1, signals)``, ignoring missing samples.

    ``np.nanmedian`` over a short axis goes through masked arrays, several times slower than
    ``np.median``; without a missing sample both give the same medians, so the NaN-aware one
    runs only on batches that hold one.
    """
    if not np.isnan(windows).any():
        return np.median(windows, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing signal in a window
        return np.nanmedian(windows, axis=1, keepdims=True)
