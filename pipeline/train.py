"""The training engine: device, precision, clipping, early stopping. No MLflow here.

The whole training set is moved to the device once and mini-batches are gathered by index,
which on small models is several times faster than a per-sample DataLoader.
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
from pipeline.model import StackedLSTMForecaster
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


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


@dataclass
class TrainResult:
    model: StackedLSTMForecaster
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    device: str = "cpu"
    samples_per_s: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(
    model: StackedLSTMForecaster,
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
    x_train, y_train = _to_device(train, device)
    x_val, y_val = _to_device(val, device)
    model.to(device).fit_scale(x_train)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    result, best = TrainResult(model=model, device=str(device)), BestWeights(model)
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        tic = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, x_train, y_train, config)
        schedule.step()
        val_loss = evaluate_loss(model, x_val, y_val, config.batch_size)
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


class BestWeights:
    """Keeps a copy of the weights of the epoch with the lowest validation loss."""

    def __init__(self, model: StackedLSTMForecaster) -> None:
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


def _to_device(windows: WindowSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(windows.inputs)).to(device),
        torch.from_numpy(np.ascontiguousarray(windows.targets)).to(device),
    )


def _train_epoch(
    model: StackedLSTMForecaster,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
) -> float:
    model.train()
    order = torch.randperm(len(x), device=x.device)
    total = 0.0
    for start in range(0, len(x), config.batch_size):
        batch = order[start : start + config.batch_size]
        with _autocast(x.device):
            loss = scaled_mse(model, model(x[batch]), y[batch])
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()}: lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)


@torch.no_grad()
def evaluate_loss(
    model: StackedLSTMForecaster, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> float:
    """Mean squared error in units of each channel's training scale."""
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        with _autocast(x.device):
            pred = model(x[start : start + batch_size])
        total += scaled_mse(model, pred, y[start : start + batch_size]).item() * len(pred)
    return total / len(x)


def scaled_mse(
    model: StackedLSTMForecaster, pred: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """MSE after dividing by the channel scale, so every channel weighs the same."""
    return torch.mean(((pred.float() - target) / model.scale) ** 2)


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


@torch.no_grad()
def predict(model: StackedLSTMForecaster, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Forecasts ``(N, H, C)`` for inputs ``(N, L, C)``, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        model(torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size])).to(device))
        for i in range(0, len(inputs), batch_size)
    ]
    if not outputs:
        return np.empty((0, model.config.horizon, model.config.n_channels), dtype=np.float32)
    return torch.cat(outputs).float().cpu().numpy()
