"""The plots MLflow runs show: training loss, forecasts against actuals, a search's trials.

Plain matplotlib on the Agg backend (no display on servers and CI); :mod:`pipeline.runs` logs
them. Each function returns a new figure; the caller closes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from pipeline.forecast import predict
from pipeline.model import Forecaster
from pipeline.train import TrainResult
from pipeline.windows import WindowSet

if TYPE_CHECKING:  # Optuna is loaded by the search alone
    from pipeline.tuning import SearchResult

logger = logging.getLogger(__name__)

# Validation windows drawn in the forecast-vs-actual plot.
PLOTTED_WINDOWS = 4


def loss_figure(result: TrainResult) -> plt.Figure:
    """Training and validation loss at each validation, the best step marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [s.step for s in result.history]
    ax.plot(steps, [s.train_loss for s in result.history], label="train")
    ax.plot(steps, [s.val_loss for s in result.history], label="validation")
    ax.axvline(result.best_step, color="grey", linestyle=":", label="best validation")
    ax.set(xlabel="optimizer step", ylabel="loss (scaled)", yscale="log", title="Training loss")
    ax.legend()
    fig.tight_layout()
    return fig


def forecast_figure(model: Forecaster, val: WindowSet) -> plt.Figure:
    """Forecast vs actual for a few validation windows, first channel, in the data's units."""
    picks = np.linspace(0, len(val) - 1, num=min(PLOTTED_WINDOWS, len(val))).astype(int)
    shown = val.subset(picks)
    preds = predict(model.cpu(), shown.inputs)
    lookback, horizon = val.lookback, val.horizon
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.2 * len(picks)), squeeze=False)
    for ax, i, pred in zip(axes[:, 0], range(len(picks)), preds, strict=True):
        ax.plot(range(lookback), shown.inputs[i, :, 0], color="black", label="history")
        future = range(lookback, lookback + horizon)
        ax.plot(future, shown.targets[i, :, 0], color="black", linestyle="--", label="actual")
        ax.plot(future, pred[:, 0], color="tab:orange", label="forecast")
        ax.set_title(f"{shown.series[i]} — {model.config.channels[0]}", fontsize=9)
    axes[-1, 0].set_xlabel(f"step ({model.config.freq})")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def search_figure(result: SearchResult) -> plt.Figure:
    """Each trial's validation MSE in order, pruned trials hollow, the best one marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for record in (r for r in result.trials if np.isfinite(r.val_mse)):
        filled = record.state == "complete"
        ax.scatter(
            record.number,
            record.val_mse,
            facecolors="C0" if filled else "none",
            edgecolors="C0",
        )
    ax.scatter(result.best.number, result.best.val_mse, color="C3", marker="*", s=150)
    ax.set(xlabel="trial", ylabel="validation MSE", yscale="log", title="Search (hollow: pruned)")
    fig.tight_layout()
    return fig
