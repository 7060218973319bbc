"""Prediction intervals around point forecasts: calibrated offline, kept calibrated online.

**Offline** (:func:`calibrate`): split conformal prediction per horizon step and channel. The
conformity score of a validation forecast is its error in its interval's *units*: how far
below and above the point one unit of radius reaches. For a point forecast both are the
window's :func:`spread` (the mean absolute step-to-step change of its lookback), so the score
is the absolute error over it and one global model's intervals are as wide as each series'
own movement, whatever its scale (normalized conformal scores: Papadopoulos et al. 2008; Lei
et al. 2018). For a quantile head they are each level's quantiles' distances from the median,
so the interval is the quantiles' band stretched or shrunk by the radius (a scaled form of
conformalized quantile regression: Romano, Patterson & Candès 2019). The radius of level
``l`` is the scores' ``ceil((n + 1) l) / n`` empirical quantile, so that on exchangeable data
an interval ``[point - radius * below, point + radius * above]`` covers at least ``l`` of new
values (Vovk, Gammerman & Shafer 2005). One radius per step: a 24-steps-ahead forecast gets a
wider interval than the next step's.

**Online** (:class:`OnlineRadius`): each radius tracks the misses it sees as the actuals arrive,
``radius += gain * calibrated * (miss - (1 - l))``: quantile tracking, the proportional part of
conformal PID control (Angelopoulos, Candès & Tibshirani 2023; a step-size form of Gibbs &
Candès 2021's adaptive conformal inference). Over any stretch, the miss rate is within about
``1 / (gain * T)`` of ``1 - l`` whatever the data do, so coverage comes back after a regime
change without retraining. The step is relative to the calibrated radius, so one gain suits
every scale. :func:`replay` applies it to a backtest's windows in the order a stream would
deliver their actuals: a window's interval uses only the errors of targets observed by its
origin.

numpy only; the shapes are ``L`` levels, ``N`` windows, ``H`` horizon steps, ``C`` target
channels. *Units* are a pair ``(below, above)`` broadcastable to ``(L, N, H, C)``, or the
window spreads ``(N, 1, C)`` alone for intervals symmetric around a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# How far below and above the point one unit of radius reaches: (below, above), each
# broadcastable to (L, N, H, C); or the spreads (N, 1, C) of symmetric intervals.
Units = tuple[np.ndarray, np.ndarray] | np.ndarray

# The coverage levels of the intervals published beside each forecast, and the most a model
# may have (each is an array in every forecast message).
DEFAULT_LEVELS = (0.8, 0.95)
MAX_LEVELS = 8
# The online step, as a share of the calibrated radius: at 0.05 a level-0.95 radius doubles
# after about 21 misses in a row, and moves by 0.25% of itself per covered value.
DEFAULT_GAIN = 0.05


# A window's spread is at least this share of its mean absolute level (and at least
# MIN_SPREAD), so a flat lookback still gets an interval the online step can widen.
FLAT_SPREAD = 1e-3
MIN_SPREAD = 1e-6


class IntervalError(ValueError):
    """Levels, a gain or a calibration that cannot give intervals; the message says which."""


def spread(inputs: np.ndarray) -> np.ndarray:
    """``(N, 1, C)``: each window's mean absolute change from step to step over its lookback
    ``(N, L, C)`` (NaNs left out), the unit its interval's radius is in.

    >>> spread(np.array([[[0.0], [2.0], [1.0]]]))[0, 0].tolist()
    [1.5]
    """
    change = np.nanmean(np.abs(np.diff(inputs, axis=1)), axis=1, keepdims=True)
    level = np.nanmean(np.abs(inputs), axis=1, keepdims=True)
    return np.maximum(np.nan_to_num(change), np.maximum(FLAT_SPREAD * level, MIN_SPREAD))


def check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """``levels`` sorted, each strictly between 0 and 1, none twice; raises
    :class:`IntervalError` otherwise.

    >>> check_levels((0.95, 0.8))
    (0.8, 0.95)
    """
    if not levels:
        raise IntervalError("give at least one interval level, such as 0.8")
    bad = [level for level in levels if not (isinstance(level, float | int) and 0 < level < 1)]
    if bad:
        raise IntervalError(f"interval levels must be between 0 and 1 (0.8 is 80%), not {bad}")
    if len(set(levels)) != len(levels):
        raise IntervalError(f"interval levels must differ, got {list(levels)}")
    return tuple(sorted(float(level) for level in levels))


def check_gain(gain: float) -> float:
    """``gain`` if it is from 0 (split conformal alone) to 1; raises :class:`IntervalError`."""
    if not (isinstance(gain, float | int) and 0 <= gain <= 1):
        raise IntervalError(f"the online interval gain must be from 0 to 1, not {gain!r}")
    return float(gain)


def both_ways(units: Units) -> tuple[np.ndarray, np.ndarray]:
    """``(below, above)`` of ``units``, each broadcastable to ``(L, N, H, C)``."""
    if isinstance(units, np.ndarray):
        return units[None], units[None]
    return units


@dataclass(frozen=True)
class Calibration:
    """Per level, horizon step and channel, the interval's radius in its units."""

    levels: tuple[float, ...]
    radius: np.ndarray  # (L, H, C)

    def bounds(self, point: np.ndarray, units: Units) -> tuple[np.ndarray, np.ndarray]:
        """The lower and upper bounds ``(L, N, H, C)`` around forecasts ``(N, H, C)`` of
        intervals of ``units``."""
        return bounds(self.radius, point, units)


def bounds(radius: np.ndarray, point: np.ndarray, units: Units) -> tuple[np.ndarray, np.ndarray]:
    """``(L, N, H, C)`` each: the bounds of radii ``(L, H, C)`` around points ``(N, H, C)``."""
    below, above = both_ways(units)
    reach = radius[:, None]
    return point[None] - reach * below, point[None] + reach * above


def calibrate(
    predictions: np.ndarray, targets: np.ndarray, units: Units, levels: tuple[float, ...]
) -> Calibration:
    """Split-conformal radii from validation forecasts and actuals ``(N, H, C)`` and their
    intervals' ``units``.

    NaN actuals are left out. With fewer windows than a level needs (``ceil((n + 1) l) > n``)
    the largest score is the radius, and the interval may cover less than ``l``.

    >>> preds, actual = np.zeros((9, 1, 1)), np.arange(1.0, 10.0).reshape(9, 1, 1)
    >>> calibrate(preds, actual, np.ones((9, 1, 1)), (0.5, 0.8)).radius[:, 0, 0].tolist()
    [5.0, 8.0]
    """
    levels = check_levels(levels)
    below, above = both_ways(units)
    error = targets - predictions  # (N, H, C)
    scores = np.maximum(-error / below, error / above)  # (1 or L, N, H, C)
    scores = np.broadcast_to(scores, (len(levels), *error.shape))
    n = np.sum(~np.isnan(error), axis=0)  # (H, C)
    if not n.all():
        raise IntervalError("no validation value to calibrate some horizon step on")
    ordered = np.sort(scores, axis=1)  # NaNs last
    radius = np.stack(
        [_score_of_rank(ordered[k], np.ceil((n + 1) * level), n) for k, level in enumerate(levels)]
    )
    return Calibration(levels, radius)


def _score_of_rank(ordered: np.ndarray, rank: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per (step, channel), the score of 1-based ``rank`` (at most ``n``) among sorted ones."""
    index = np.minimum(rank, n).astype(np.int64) - 1  # (H, C)
    return np.take_along_axis(ordered, index[None], axis=0)[0]


class OnlineRadius:
    """Radii that follow the misses of the forecasts they were published with.

    >>> online = OnlineRadius(Calibration((0.8,), np.ones((1, 2, 1))), gain=0.1)
    >>> online.observe(np.array([0]), np.array([[[True]]]))  # step 1 missed: widen it
    >>> online.radius[0, :, 0].round(3).tolist()
    [1.08, 1.0]
    """

    def __init__(self, calibration: Calibration, gain: float = DEFAULT_GAIN) -> None:
        check_gain(gain)
        self.calibration = calibration
        self.radius = calibration.radius.copy()
        self._miss_rate = 1 - np.asarray(calibration.levels)[:, None, None]  # (L, 1, 1)
        self._step = gain * calibration.radius  # (L, H, C)

    def observe(self, steps: np.ndarray, misses: np.ndarray) -> None:
        """Move the radii of horizon ``steps`` (K,) (0 is one step ahead) by whether each of
        their intervals missed ``(L, K, C)``; a step may appear more than once."""
        change = self._step[:, steps] * (misses - self._miss_rate)  # (L, K, C)
        np.add.at(self.radius.swapaxes(0, 1), steps, change.swapaxes(0, 1))  # by step, in place
        np.maximum(self.radius, 0, out=self.radius)


def replay(
    predictions: np.ndarray,
    targets: np.ndarray,
    units: Units,
    origins: np.ndarray,
    calibration: Calibration,
    gain: float = DEFAULT_GAIN,
) -> tuple[np.ndarray, np.ndarray]:
    """The bounds ``(L, N, H, C)`` a stream would have published for forecasts ``(N, H, C)``
    with intervals of ``units``, issued at ``origins`` (N,) (the step index of each window's
    last input, ascending), with the radii adapted online: window ``j``'s step ``h``
    (0-based) is observed at step ``origins[j] + h + 1``, and counts for every window issued
    then or later."""
    horizon = predictions.shape[1]
    below, above = both_ways(units)
    online = OnlineRadius(calibration, gain)
    lo = np.empty((len(calibration.levels), *predictions.shape))
    hi = np.empty_like(lo)
    due = np.searchsorted(origins, origins[:, None] + np.arange(1, horizon + 1))  # (N, H)
    order = np.argsort(due, axis=None, kind="stable")
    first = np.searchsorted(due.ravel()[order], np.arange(len(predictions) + 1))
    for i in range(len(predictions)):
        arrived = order[first[i] : first[i + 1]]
        if len(arrived):
            windows, steps = np.divmod(arrived, horizon)
            actual = targets[windows, steps]  # (K, C)
            missed = (actual < lo[:, windows, steps]) | (actual > hi[:, windows, steps])
            online.observe(steps, missed & ~np.isnan(actual))
        lo[:, i] = predictions[i] - online.radius * below[:, i]
        hi[:, i] = predictions[i] + online.radius * above[:, i]
    return lo, hi


def interval_metrics(
    lo: np.ndarray, hi: np.ndarray, targets: np.ndarray, levels: tuple[float, ...], suffix: str = ""
) -> dict[str, float]:
    """Per level: ``coverage`` (the share of actuals inside), ``width`` (mean) and ``winkler``
    (the interval score: width plus ``2 / (1 - l)`` times each miss's distance; Winkler 1972),
    and over every bound ``pinball`` (the mean quantile loss of each bound as the
    ``(1 - l) / 2`` and ``(1 + l) / 2`` quantiles). NaN actuals are left out."""
    seen = ~np.isnan(targets)
    y = targets[seen]
    metrics: dict[str, float] = {}
    pinball = []
    for k, level in enumerate(levels):
        low, high = lo[k][seen], hi[k][seen]
        alpha = 1 - level
        below, above = np.maximum(low - y, 0), np.maximum(y - high, 0)
        name = f"{level:g}{suffix}"
        metrics[f"coverage.{name}"] = float(np.mean((below == 0) & (above == 0)))
        metrics[f"width.{name}"] = float(np.mean(high - low))
        metrics[f"winkler.{name}"] = float(np.mean(high - low + 2 / alpha * (below + above)))
        pinball += [_pinball(low, y, alpha / 2), _pinball(high, y, 1 - alpha / 2)]
    metrics[f"pinball{suffix}"] = float(np.mean(pinball)) if pinball else math.nan
    return metrics


def _pinball(quantile: np.ndarray, y: np.ndarray, tau: float) -> float:
    """The mean quantile (pinball) loss of ``quantile`` as the ``tau`` quantile of ``y``."""
    diff = y - quantile
    return float(np.mean(np.maximum(tau * diff, (tau - 1) * diff)))
