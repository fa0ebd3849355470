"""LSTM autoencoder over sliding windows of each entity's signals (PyTorch).

A window of the last ``window`` steps (30 minutes by default: long enough to hold a rise
and its context) is encoded into a small state and decoded back; the anomaly score of a
row is the reconstruction error of its own step, the window's last, so a score at *t* uses
rows up to *t* only. The first rows of an entity are padded with its first row.

Signals are scaled robustly with training medians and IQRs. Training uses fixed seeds
and runs on a GPU when one is present (``device="auto"``). The trained network is exported
as TorchScript, so the predictor runs it without this module's training code.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aiops.features import FeatureContract
from aiops.schema import ENTITY_KEYS, TIMESTAMP

log = logging.getLogger(__name__)


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
    max_windows: int = 6000
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
    history: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    trained_on: str = ""
    kind: str = "lstm_autoencoder"
    _scripted: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ data

    def _scaled(self, frame: pd.DataFrame) -> np.ndarray:
        assert self.center is not None and self.scale is not None
        x = (frame.loc[:, list(self.signals)].to_numpy(dtype=np.float64) - self.center) / self.scale
        # Missing samples become "typical" (0 after scaling) and outliers are capped, so one
        # broken sample cannot dominate the loss.
        return np.clip(np.nan_to_num(x, nan=0.0), -10, 10).astype(np.float32)

    def _windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Return windows ending at each row (entity by entity) and the row positions."""
        w = self.config.window
        x = self._scaled(frame)
        order = frame.sort_values([*ENTITY_KEYS, TIMESTAMP], kind="stable").index
        positions = frame.index.get_indexer(order)
        windows, rows = [], []
        groups = frame.loc[order].groupby(list(ENTITY_KEYS), sort=False).indices
        for idx in groups.values():
            pos = positions[idx]
            series = x[pos]
            padded = np.concatenate([np.repeat(series[:1], w - 1, axis=0), series])
            view = np.lib.stride_tricks.sliding_window_view(padded, (w, series.shape[1]))[:, 0]
            windows.append(view)
            rows.append(pos)
        return np.concatenate(windows), np.concatenate(rows)

    # ------------------------------------------------------------------ fit / score

    def fit(self, train: pd.DataFrame, contract: FeatureContract) -> LstmAutoencoderDetector:
        """Train on the training period's windows (labels are never seen)."""
        import torch

        cfg = self.config
        self.signals = tuple(s for s in contract.signals if s in train)
        values = train.loc[:, list(self.signals)].to_numpy(dtype=np.float64)
        self.center = np.nanmedian(values, axis=0)
        iqr = np.nanpercentile(values, 75, axis=0) - np.nanpercentile(values, 25, axis=0)
        self.scale = np.where(iqr > 1e-12, iqr, np.maximum(np.abs(self.center), 1.0))
        windows, _ = self._windows(train.reset_index(drop=True))
        step = max(1, len(windows) // cfg.max_windows)
        windows = windows[::step]

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
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Mean squared reconstruction error of each row's own (latest) step."""
        import torch

        if self._scripted is None:
            raise RuntimeError("the detector is not fitted; call fit() first")
        frame = frame.reset_index(drop=True)
        windows, rows = self._windows(frame)
        errors = np.empty(len(frame))
        with torch.no_grad():
            for start in range(0, len(windows), 4096):
                batch = torch.from_numpy(np.ascontiguousarray(windows[start : start + 4096]))
                recon = self._scripted(batch).numpy()
                errors[rows[start : start + 4096]] = np.mean(
                    (recon[:, -1] - batch.numpy()[:, -1]) ** 2, axis=1
                )
        return errors

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
