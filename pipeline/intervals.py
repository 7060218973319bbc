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

**Online** (:class:`OnlineRadius`): the radii follow the misses of the intervals published as
the actuals arrive, by quantile tracking (the proportional part of conformal PID control:
Angelopoulos, Candès & Tibshirani 2023; a step-size form of Gibbs & Candès 2021's adaptive
conformal inference): each radius is its calibrated value times ``1 + own + fresh + whole``,
three terms that each move by a gain times ``miss - (1 - l)`` per actual:

* ``own``, per horizon step: that step's own misses (``0.6 * gain``);
* ``fresh``, shared by every step: the misses of the steps that arrive soonest, weighted
  ``exp(-h / 4)`` over steps ``h`` (``4 * gain`` per forecast's worth of actuals). A step ``h``
  ahead is scored only ``h + 1`` steps after its forecast, so its own radius adapts late and
  overshoots on stale misses; errors across steps are correlated, so the next steps' misses
  widen (or narrow) the far steps at once;
* ``whole``, shared by every step: every step's misses alike (``gain`` per forecast's worth of
  actuals). Over any stretch of ``T`` forecasts' actuals, the miss rate of all the intervals
  published is within about ``|change of whole| / (gain * T)`` of ``1 - l`` whatever the data
  do, so coverage comes back after a regime change without retraining.

The steps are relative to the calibrated radius, so one gain suits every scale. On the
generalization table's test splits (``benchmarks/coverage.py``) this holds coverage within 2
points of nominal in more cells than each step's own tracking alone did (the sub-daily series:
7 of 8 cells, from 4), at a mean width within a few percent of it.
:func:`replay` applies it to a backtest's windows in the order a stream would deliver their
actuals: a window's interval uses only the errors of targets observed by its origin.

numpy only; the shapes are ``L`` levels, ``N`` windows, ``H`` horizon steps, ``C`` target
channels. *Units* are a pair ``(below, above)`` broadcastable to ``(L, N, H, C)``, or the
window spreads ``(N, 1, C)`` alone for intervals symmetric around a point.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# How far below and above the point one unit of radius reaches: (below, above), each
# broadcastable to (L, N, H, C); or the spreads (N, 1, C) of symmetric intervals.
Units = tuple[np.ndarray, np.ndarray] | np.ndarray

# The coverage levels of the intervals published beside each forecast, and the most a model
# may have (each is an array in every forecast message).
DEFAULT_LEVELS = (0.8, 0.95)
MAX_LEVELS = 8
# The online step, as a share of the calibrated radius (OnlineRadius): at 0.05, one forecast's
# worth of actuals (one per step) that all missed widens every level-0.95 radius by about 27%
# of its calibrated value, and one that all covered narrows it by 1.4%.
DEFAULT_GAIN = 0.05


# OnlineRadius' terms, as multiples of the gain: a step's own radius; the share of every step
# moved by each forecast's actuals, soonest first (their weights fall by e every FRESH_STEPS
# steps ahead); the share moved by every actual alike.
OWN_GAIN, FRESH_GAIN, WHOLE_GAIN = 0.6, 4.0, 1.0
FRESH_STEPS = 4.0

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
    """``(L, N, H, C)`` each: the bounds of radii ``(L, H, C)``, or one set per point
    ``(L, N, H, C)``, around points ``(N, H, C)``."""
    below, above = both_ways(units)
    reach = radius[:, None] if radius.ndim == 3 else radius
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
    """Radii that follow the misses of the intervals they were published with.

    ``radius = calibrated * (1 + own + fresh + whole)`` (module docstring): ``own`` per level,
    step and channel; ``fresh`` and ``whole`` per level and channel, shared by every step.

    >>> online = OnlineRadius(Calibration((0.8,), np.ones((1, 2, 1))), gain=0.1)
    >>> online.observe(np.array([0]), np.array([[[True]]]))  # step 1 missed: widen both
    >>> online.radius[0, :, 0].round(3).tolist()
    [1.268, 1.22]
    """

    def __init__(self, calibration: Calibration, gain: float = DEFAULT_GAIN) -> None:
        check_gain(gain)
        self.calibration = calibration
        self.radius = calibration.radius.copy()
        levels, horizon, channels = calibration.radius.shape
        self._miss_rate = 1 - np.asarray(calibration.levels)[:, None, None]  # (L, 1, 1)
        soonest = np.exp(-np.arange(horizon) / FRESH_STEPS)
        # Per step, how far one actual's excess miss moves the shared share (H,).
        self._shared_gain = gain * (FRESH_GAIN * soonest / soonest.sum() + WHOLE_GAIN / horizon)
        self._own_gain = OWN_GAIN * gain
        self._own = np.zeros((levels, horizon, channels))  # (L, H, C)
        self._shared = np.zeros((levels, 1, channels))  # (L, 1, C): fresh + whole

    def observe(self, steps: np.ndarray, misses: np.ndarray) -> None:
        """Move the radii by whether each interval of horizon ``steps`` (K,) (0 is one step
        ahead) missed ``(L, K, C)``; a step may appear more than once, and the actuals of one
        call move the radii as they would one at a time (short of a radius held at 0)."""
        excess = misses - self._miss_rate  # (L, K, C)
        own = self._own.swapaxes(0, 1)  # by step, in place
        np.add.at(own, steps, self._own_gain * excess.swapaxes(0, 1))
        self._shared += np.einsum("k,lkc->lc", self._shared_gain[steps], excess)[:, None]
        share = 1 + self._shared + self._own
        # No radius below 0: a step's own term takes what the shared ones went under.
        np.maximum(self._own, -1 - self._shared, out=self._own)
        np.multiply(self.calibration.radius, np.maximum(share, 0), out=self.radius)


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
    for i, (windows, steps) in enumerate(arrivals(origins, horizon)):
        if len(windows):
            actual = targets[windows, steps]  # (K, C)
            missed = (actual < lo[:, windows, steps]) | (actual > hi[:, windows, steps])
            online.observe(steps, missed & ~np.isnan(actual))
        lo[:, i] = predictions[i] - online.radius * below[:, i]
        hi[:, i] = predictions[i] + online.radius * above[:, i]
    return lo, hi


def arrivals(origins: np.ndarray, horizon: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each window ``i`` in turn (``origins`` (N,), the step index of each window's last
    input, ascending), the ``(windows, steps)`` (K,) each of the actuals observed since window
    ``i - 1`` was issued and by window ``i``'s origin: window ``j``'s step ``h`` (0-based) is
    observed at step ``origins[j] + h + 1``."""
    due = np.searchsorted(origins, origins[:, None] + np.arange(1, horizon + 1))  # (N, H)
    order = np.argsort(due, axis=None, kind="stable")
    first = np.searchsorted(due.ravel()[order], np.arange(len(origins) + 1))
    for i in range(len(origins)):
        yield np.divmod(order[first[i] : first[i + 1]], horizon)


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
