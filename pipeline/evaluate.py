"""Metrics and baselines, on arrays ``(N, H, C)``. Imports only numpy and torch (via the model).

Errors are measured in units of each channel's training scale (``scale``), so channels of
different magnitudes weigh the same and figures are comparable across datasets.

>>> inputs = np.array([[[1.0], [2.0], [3.0], [4.0]]])  # (1, L=4, C=1)
>>> repeat_last(inputs, horizon=2)[0, :, 0].tolist()
[4.0, 4.0]
>>> seasonal_naive(inputs, horizon=3, season=2)[0, :, 0].tolist()
[3.0, 4.0, 3.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.forecast import predict
from pipeline.model import Forecaster
from pipeline.windows import WindowSet


def mse(pred: np.ndarray, target: np.ndarray, scale: np.ndarray | float = 1.0) -> float:
    return float(np.mean(((pred - target) / scale) ** 2))


def mae(pred: np.ndarray, target: np.ndarray, scale: np.ndarray | float = 1.0) -> float:
    return float(np.mean(np.abs((pred - target) / scale)))


def repeat_last(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """Every future step equals the last observed one."""
    return np.repeat(inputs[:, -1:, :], horizon, axis=1)


def seasonal_naive(inputs: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Every future step equals the value one season earlier, repeating the last season.

    Raises ``ValueError`` when the lookback is shorter than one season.
    """
    if inputs.shape[1] < season:
        raise ValueError(
            f"seasonal naive needs lookback >= season ({season}), got {inputs.shape[1]}"
        )
    last_season = inputs[:, -season:, :]
    repeats = -(-horizon // season)  # ceiling division
    return np.tile(last_season, (1, repeats, 1))[:, :horizon, :]


@dataclass(frozen=True)
class Scorecard:
    """Validation errors of a forecaster beside the two naive baselines, on the same windows."""

    mse: float
    mae: float
    seasonal_naive_mse: float
    repeat_last_mse: float

    def as_metrics(self, prefix: str = "val_") -> dict[str, float]:
        return {
            f"{prefix}mse": self.mse,
            f"{prefix}mae": self.mae,
            f"{prefix}seasonal_naive_mse": self.seasonal_naive_mse,
            f"{prefix}repeat_last_mse": self.repeat_last_mse,
        }


def score(
    pred: np.ndarray, inputs: np.ndarray, targets: np.ndarray, scale: np.ndarray, season: int
) -> Scorecard:
    """Score forecasts ``pred`` of ``targets`` against both baselines built from ``inputs``."""
    horizon = targets.shape[1]
    return Scorecard(
        mse=mse(pred, targets, scale),
        mae=mae(pred, targets, scale),
        seasonal_naive_mse=mse(seasonal_naive(inputs, horizon, season), targets, scale),
        repeat_last_mse=mse(repeat_last(inputs, horizon), targets, scale),
    )


def score_forecaster(model: Forecaster, windows: WindowSet, season: int) -> Scorecard:
    """Forecast every window with ``model`` and score it beside the baselines."""
    pred = predict(model, windows.inputs)
    scale = model.scale.detach().cpu().numpy()
    return score(pred, windows.inputs, windows.targets, scale, season)
