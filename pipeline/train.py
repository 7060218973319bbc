"""The training engine: device, precision, clipping, early stopping. No MLflow here.

The series values are moved to the device once and every mini-batch is gathered from them by
index (``starts[:, None] + arange(L + H)``): no per-sample DataLoader, and no copy of each
window, which matters at lookback 720.
Progress is reported through ``on_epoch`` (the train flow logs it to MLflow) and the logger.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline import RollcastError
from pipeline.model import Forecaster
from pipeline.windows import WindowSet

logger = logging.getLogger(__name__)


class TrainingError(RollcastError):
    """Training cannot start or cannot go on (no data, a diverged loss)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global L2 norm of the gradients
    patience: int = 5  # epochs without a better validation loss before stopping
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    loss: str = "mse"  # or "l1", which is less swayed by spikes
    schedule: str = "cosine"  # or "halving": the rate halves every epoch (DLinear's recipe)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


@dataclass
class TrainResult:
    model: Forecaster
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    device: str = "cpu"
    samples_per_s: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Training windows sampled to set the model's per-channel scale.
SCALE_SAMPLE = 4096


def fit(
    model: Forecaster,
    train: WindowSet,
    val: WindowSet,
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` with early stopping on ``val``; return the best model."""
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(
            f"need training and validation windows, got {len(train)} and {len(val)}: "
            "ingest more history or shorten lookback/horizon"
        )
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    train_on, val_on = OnDevice(train, device), OnDevice(val, device)
    model.to(device).fit_scale(train_on.batch(train_on.sample(SCALE_SAMPLE))[0])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = _schedule(optimizer, config)
    result, best = TrainResult(model=model, device=str(device)), BestWeights(model)
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        tic = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, train_on, config)
        schedule.step()
        val_loss = evaluate_loss(model, val_on, config.batch_size, config.loss)
        stats = EpochStats(epoch, train_loss, val_loss, time.perf_counter() - tic)
        _report(stats, config.epochs, on_epoch)
        result.history.append(stats)
        if best.stale_after(stats) >= config.patience:
            logger.info(
                "early stop at epoch %d: no better validation loss since %d", epoch, best.epoch
            )
            break
    best.restore()
    result.best_epoch, result.best_val_loss = best.epoch, best.val_loss
    result.samples_per_s = len(train) * len(result.history) / (time.perf_counter() - started)
    return result


def _schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "halving":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)


class BestWeights:
    """Keeps a copy of the weights of the epoch with the lowest validation loss."""

    def __init__(self, model: Forecaster) -> None:
        self.model, self.epoch, self.val_loss = model, 0, float("inf")
        self._state = copy.deepcopy(model.state_dict())

    def stale_after(self, stats: EpochStats) -> int:
        """Record an epoch; return how many epochs have passed without improvement."""
        if stats.val_loss < self.val_loss:
            self.epoch, self.val_loss = stats.epoch, stats.val_loss
            self._state = copy.deepcopy(self.model.state_dict())
        return stats.epoch - self.epoch

    def restore(self) -> None:
        self.model.load_state_dict(self._state)


class OnDevice:
    """A :class:`WindowSet` whose values live on the device; batches are gathered by index."""

    def __init__(self, windows: WindowSet, device: torch.device) -> None:
        self.values = torch.from_numpy(np.ascontiguousarray(windows.values)).to(device)
        self.starts = torch.from_numpy(windows.starts).to(device)
        self.offsets = torch.arange(windows.lookback + windows.horizon, device=device)
        self.lookback = windows.lookback

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, count: int) -> torch.Tensor:
        return torch.randperm(len(self), device=self.starts.device)[:count]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, L, C)`` and targets ``(B, H, C)`` of the windows at ``index``."""
        windows = self.values[self.starts[index, None] + self.offsets]  # (B, L+H, C)
        return windows[:, : self.lookback], windows[:, self.lookback :]


def _train_epoch(
    model: Forecaster, optimizer: torch.optim.Optimizer, train: OnDevice, config: TrainConfig
) -> float:
    model.train()
    order = train.sample(len(train))
    total = 0.0
    for start in range(0, len(train), config.batch_size):
        x, y = train.batch(order[start : start + config.batch_size])
        with _autocast(x.device):
            loss = scaled_loss(model, model(x), y, config.loss)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()}: lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += loss.item() * len(x)
    return total / len(train)


@torch.no_grad()
def evaluate_loss(
    model: Forecaster, windows: OnDevice, batch_size: int, loss: str = "mse"
) -> float:
    """Mean loss in units of each channel's training scale."""
    model.eval()
    total = 0.0
    for start in range(0, len(windows), batch_size):
        index = torch.arange(
            start, min(start + batch_size, len(windows)), device=windows.starts.device
        )
        x, y = windows.batch(index)
        with _autocast(x.device):
            pred = model(x)
        total += scaled_loss(model, pred, y, loss).item() * len(x)
    return total / len(windows)


def scaled_loss(
    model: Forecaster, pred: torch.Tensor, target: torch.Tensor, loss: str
) -> torch.Tensor:
    """MSE (or L1) after dividing by the channel scale, so every channel weighs the same."""
    error = (pred.float() - target) / model.scale
    return torch.mean(error.abs() if loss == "l1" else error**2)


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 needs no loss scaling and halves LSTM time on recent GPUs; CPU stays in fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _report(stats: EpochStats, epochs: int, on_epoch: Callable[[EpochStats], None] | None) -> None:
    logger.info(
        "epoch %d/%d  train %.4f  val %.4f  (%.1fs)",
        stats.epoch,
        epochs,
        stats.train_loss,
        stats.val_loss,
        stats.seconds,
    )
    if on_epoch is not None:
        on_epoch(stats)
