"""The plots MLflow runs show: training loss, forecasts against actuals, a search's trials.

Plain matplotlib on the Agg backend (no display on servers and CI); :mod:`pipeline.runs` logs
them. Each function returns a new figure; the caller closes it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from pipeline.forecast import interval_bounds, point_forecasts, predict_outputs
from pipeline.model import Forecaster
from pipeline.train import TrainResult
from pipeline.windows import WindowSet

if TYPE_CHECKING:  # Optuna is loaded by the search alone
    from pipeline.tuning import SearchResult

logger = logging.getLogger(__name__)

# Validation windows drawn in the forecast-vs-actual plot.
PLOTTED_WINDOWS = 4
# Horizons of history drawn before each forecast: enough to see the season it continues, few
# enough that the forecast is a quarter of the plot, not the last 3% of a long lookback.
HISTORY_HORIZONS = 3


def loss_figure(result: TrainResult) -> plt.Figure:
    """Training and validation loss at each validation, the best step marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [s.step for s in result.history]
    ax.plot(steps, [s.train_loss for s in result.history], label="train")
    ax.plot(steps, [s.val_loss for s in result.history], label="validation")
    ax.axvline(result.best_step, color="grey", linestyle=":", label="best validation")
    losses = [v for s in result.history for v in (s.train_loss, s.val_loss) if math.isfinite(v)]
    scale = "log" if losses and min(losses) > 0 else "linear"  # a perfect fit's zero loss
    ax.set(xlabel="optimizer step", ylabel="loss (scaled)", yscale=scale, title="Training loss")
    ax.legend()
    fig.tight_layout()
    return fig


def forecast_figure(model: Forecaster, val: WindowSet) -> plt.Figure:
    """Forecast vs actual for a few validation windows, first channel, in the data's units.

    Each panel shows the last ``HISTORY_HORIZONS`` horizons of history (at most the lookback),
    then the horizon's actuals and forecast; x is in steps from the last observed one.
    """
    picks = np.linspace(0, len(val) - 1, num=min(PLOTTED_WINDOWS, len(val))).astype(int)
    shown = val.subset(picks)
    outputs = predict_outputs(model.cpu(), shown.inputs, shown.origins)
    preds = point_forecasts(model, outputs)
    bands = _bands(model, outputs, shown)
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.4 * len(picks)), squeeze=False)
    for ax, i, pred in zip(axes[:, 0], range(len(picks)), preds, strict=True):
        _draw_bands(ax, bands, i)
        _draw_window(ax, shown.target_inputs[i, :, 0], shown.targets[i, :, 0], pred[:, 0])
        ax.set_title(f"{shown.series[i]}: validation window {picks[i]}", fontsize=9)
        ax.set_ylabel(model.config.channels[0])
    axes[-1, 0].set_xlabel(f"steps from the last observed value (1 step = {model.config.freq})")
    fig.suptitle(f"Validation forecasts, {val.horizon} steps ahead")
    handles, labels = axes[0, 0].get_legend_handles_labels()  # one legend, above the panels
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.96), ncol=len(labels))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


Bands = tuple[tuple[float, ...], np.ndarray, np.ndarray] | None  # levels, lo, hi (L, N, H, C)


def _bands(model: Forecaster, outputs: np.ndarray, shown: WindowSet) -> Bands:
    """The intervals of the model's ``outputs`` when it is calibrated (a fan chart), else
    None."""
    calibration = model.calibration
    if calibration is None:
        return None
    lo, hi = interval_bounds(model, calibration, shown.inputs, outputs)
    return calibration.levels, lo, hi


def _draw_bands(ax: plt.Axes, bands: Bands, i: int) -> None:
    """Window ``i``'s intervals, first channel, widest (palest) first."""
    if bands is None:
        return
    levels, lo, hi = bands
    steps = np.arange(1, lo.shape[2] + 1)
    for k in reversed(range(len(levels))):
        alpha = 0.15 + 0.2 * k / max(len(levels) - 1, 1)
        label = f"{levels[k]:.0%} interval"
        ax.fill_between(
            steps,
            lo[k, i, :, 0],
            hi[k, i, :, 0],
            color="tab:orange",
            alpha=alpha,
            lw=0,
            label=label,
        )


def _draw_window(ax: plt.Axes, history: np.ndarray, actual: np.ndarray, pred: np.ndarray) -> None:
    """One window: history ``(L,)`` cut to a few horizons, then actuals and forecast ``(H,)``."""
    horizon = len(actual)
    kept = history[-HISTORY_HORIZONS * horizon :]
    past = np.arange(1 - len(kept), 1)  # the last observed value at 0
    future = np.arange(1, horizon + 1)
    ax.plot(past, kept, color="black", linewidth=1, label="history")
    # The actuals and forecast start from the last observed value, so the lines join.
    ax.plot(np.r_[0, future], np.r_[kept[-1], actual], color="tab:blue", label="actual")
    ax.plot(np.r_[0, future], np.r_[kept[-1], pred], color="tab:orange", label="forecast")
    ax.axvspan(0, horizon, color="tab:orange", alpha=0.08, label="horizon")
    ax.set_xlim(past[0], horizon)
    ax.grid(alpha=0.3)


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
