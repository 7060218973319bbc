"""Metrics and baselines, on point forecasts ``(N, H, C)`` (what :func:`forecast.predict` gives).

Imports numpy, and the core modules that load torch and pandas (forecast, model, windows).

Errors are measured in units of each channel's training scale (``scale``), so channels of
different magnitudes weigh the same and figures are comparable across datasets.

>>> inputs = np.array([[[1.0], [2.0], [3.0], [4.0]]])  # (1, L=4, C=1)
>>> repeat_last(inputs, horizon=2)[0, :, 0].tolist()
[4.0, 4.0]
>>> seasonal_naive(inputs, horizon=3, season=2)[0, :, 0].tolist()
[3.0, 4.0, 3.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.forecast import interval_bounds, interval_units, point_forecasts, predict_outputs
from pipeline.intervals import calibrate, interval_metrics
from pipeline.model import Forecaster
from pipeline.windows import WindowSet, channel_scale, split_point


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


def mse_by_horizon(
    pred: np.ndarray, target: np.ndarray, scale: np.ndarray | float = 1.0
) -> tuple[float, ...]:
    """The MSE at each step ahead: ``H`` values for forecasts ``(N, H, C)``.

    >>> mse_by_horizon(np.zeros((2, 3, 1)), np.array([[[0.0], [1.0], [2.0]]] * 2))
    (0.0, 1.0, 4.0)
    """
    return tuple(float(v) for v in np.mean(((pred - target) / scale) ** 2, axis=(0, 2)))


@dataclass(frozen=True)
class Scorecard:
    """Validation errors of a forecaster beside the two naive baselines, on the same windows.

    The ``*_by_horizon`` errors are the MSEs at each step ahead (1 to H); empty when not scored.
    """

    mse: float
    mae: float
    seasonal_naive_mse: float
    repeat_last_mse: float
    mse_by_horizon: tuple[float, ...] = ()
    seasonal_naive_mse_by_horizon: tuple[float, ...] = ()
    # The intervals' coverage, width, Winkler and pinball scores (pipeline.intervals); empty
    # for a model without calibrated intervals.
    intervals: dict[str, float] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "val_") -> dict[str, float]:
        return {
            f"{prefix}mse": self.mse,
            f"{prefix}mae": self.mae,
            f"{prefix}seasonal_naive_mse": self.seasonal_naive_mse,
            f"{prefix}repeat_last_mse": self.repeat_last_mse,
            **{f"{prefix}{name}": value for name, value in self.intervals.items()},
        }

    def by_horizon(self, prefix: str = "val_") -> dict[str, tuple[float, ...]]:
        """The errors at each step ahead, by metric name, as logged stepped by horizon."""
        return {
            f"{prefix}mse_by_horizon": self.mse_by_horizon,
            f"{prefix}seasonal_naive_mse_by_horizon": self.seasonal_naive_mse_by_horizon,
        }


@dataclass(frozen=True)
class Verdict:
    """Whether a challenger takes the champion alias, why, and by what margins.

    A margin is the relative MSE gain: 0.1 means 10% lower MSE than the other; negative loses.
    """

    promoted: bool
    reason: str
    margin_vs_seasonal_naive: float
    margin_vs_champion: float | None

    def as_metrics(self) -> dict[str, float]:
        margins = {"margin_vs_seasonal_naive": self.margin_vs_seasonal_naive}
        if self.margin_vs_champion is not None:
            margins["margin_vs_champion"] = self.margin_vs_champion
        return margins


@dataclass(frozen=True)
class DriftCheck:
    """Serve's online MSE of the champion against its validation MSE (the same units).

    >>> check = DriftCheck(val_mse=0.2, online_mse=0.9, scored=500, max_ratio=2.0, min_scored=100)
    >>> check.retrain, round(check.ratio, 2)
    (True, 4.5)
    >>> DriftCheck(0.2, 0.9, scored=50, max_ratio=2.0, min_scored=100).retrain
    False
    >>> collapsed = DriftCheck(0.2, 0.3, 500, 2.0, 100, {0.8: 0.55}, max_coverage_drop=0.15)
    >>> collapsed.retrain, collapsed.collapsed
    (True, [0.8])
    """

    val_mse: float
    online_mse: float
    scored: int  # forecast values behind online_mse
    max_ratio: float
    min_scored: int
    # The published intervals' online coverage per level, over about the same values; retrain
    # when one is more than ``max_coverage_drop`` below its level.
    coverage: Mapping[float, float] = field(default_factory=dict)
    max_coverage_drop: float = 1.0

    @property
    def ratio(self) -> float:
        return self.online_mse / self.val_mse if self.val_mse > 0 else math.inf

    @property
    def collapsed(self) -> list[float]:
        """The levels whose coverage fell more than ``max_coverage_drop`` below them."""
        return [lvl for lvl, share in self.coverage.items() if share < lvl - self.max_coverage_drop]

    @property
    def retrain(self) -> bool:
        drifted = self.ratio > self.max_ratio or bool(self.collapsed)
        return self.scored >= self.min_scored and drifted

    def reason(self) -> str:
        figures = (
            f"online MSE {self.online_mse:.4g} over {self.scored} values is {self.ratio:.2f}x "
            f"the validation MSE {self.val_mse:.4g} (retrain above {self.max_ratio:g}x)"
        )
        if self.coverage:
            shares = ", ".join(f"{share:.0%} at {lvl:.0%}" for lvl, share in self.coverage.items())
            figures += f"; intervals cover {shares} (retrain {self.max_coverage_drop:.0%} below)"
        if self.scored < self.min_scored:
            return f"too few values scored to judge ({self.min_scored} needed): {figures}"
        return f"{'drift: retraining' if self.retrain else 'no drift'}: {figures}"


def judge(card: Scorecard, champion_mse: float | None, gate: bool = True) -> Verdict:
    """The promotion gate, on one set of validation windows.

    The challenger must have a finite MSE, beat seasonal-naive (unless ``gate`` is off) and beat
    the champion, if there is a comparable one with a finite MSE.

    >>> card = Scorecard(mse=0.8, mae=0.5, seasonal_naive_mse=1.0, repeat_last_mse=1.2)
    >>> judge(card, champion_mse=None).reason
    'beats seasonal-naive, no comparable champion'
    >>> judge(card, champion_mse=0.5).reason
    'does not beat the champion'
    >>> round(judge(card, champion_mse=0.9).margin_vs_seasonal_naive, 3)
    0.2
    """
    vs_naive = _margin(card.mse, card.seasonal_naive_mse)
    vs_champion = None
    if champion_mse is not None and math.isfinite(champion_mse):
        vs_champion = _margin(card.mse, champion_mse)
    if not math.isfinite(card.mse):
        return Verdict(False, "the challenger's MSE is not finite", vs_naive, vs_champion)
    if gate and not card.mse < card.seasonal_naive_mse:
        return Verdict(False, "does not beat seasonal-naive", vs_naive, vs_champion)
    if vs_champion is not None and not vs_champion > 0:
        return Verdict(False, "does not beat the champion", vs_naive, vs_champion)
    passed = "beats seasonal-naive" if gate else "gate off"
    against = "and the champion" if vs_champion is not None else "no comparable champion"
    return Verdict(True, f"{passed}, {against}", vs_naive, vs_champion)


def _margin(mse_value: float, baseline: float) -> float:
    """The relative gain over ``baseline``; NaN where it means nothing (a zero or inf baseline)."""
    if not (math.isfinite(mse_value) and math.isfinite(baseline)) or baseline <= 0:
        return math.nan
    return (baseline - mse_value) / baseline


def default_season(step_ms: int) -> int:
    """The seasonal-naive period in steps: a day of steps, a week of days, a year of weeks
    or months; 1 (repeat the last value) when none fits.

    >>> default_season(3_600_000), default_season(1_800_000), default_season(86_400_000)
    (24, 48, 7)
    >>> default_season(7 * 86_400_000), default_season(31 * 86_400_000)
    (52, 12)
    """
    day_ms = 86_400_000
    if step_ms < day_ms and day_ms % step_ms == 0:
        return day_ms // step_ms
    if step_ms == day_ms:
        return 7
    if step_ms == 7 * day_ms:
        return 52
    if 28 * day_ms <= step_ms <= 31 * day_ms:  # a month (the median spacing of monthly data)
        return 12
    return 1


def score(
    pred: np.ndarray, inputs: np.ndarray, targets: np.ndarray, scale: np.ndarray, season: int
) -> Scorecard:
    """Score forecasts ``pred`` of ``targets`` against both baselines built from ``inputs``."""
    horizon = targets.shape[1]
    naive = seasonal_naive(inputs, horizon, season)
    return Scorecard(
        mse=mse(pred, targets, scale),
        mae=mae(pred, targets, scale),
        seasonal_naive_mse=mse(naive, targets, scale),
        repeat_last_mse=mse(repeat_last(inputs, horizon), targets, scale),
        mse_by_horizon=mse_by_horizon(pred, targets, scale),
        seasonal_naive_mse_by_horizon=mse_by_horizon(naive, targets, scale),
    )


def score_forecaster(
    model: Forecaster, windows: WindowSet, season: int, outputs: np.ndarray | None = None
) -> Scorecard:
    """Score ``model``'s forecasts of every window beside the baselines; with its intervals'
    figures when it is calibrated. ``outputs``: its outputs for the windows, if already made."""
    if outputs is None:
        outputs = predict_outputs(model, windows.inputs, windows.origins)
    pred = point_forecasts(model, outputs)
    scale = model.scale.detach().cpu().numpy()
    card = score(pred, windows.target_inputs, windows.targets, scale, season)
    calibration = model.calibration
    if calibration is None:
        return card
    lo, hi = interval_bounds(model, calibration, windows.inputs, outputs)
    figures = interval_metrics(lo, hi, windows.targets, calibration.levels)
    return replace(card, intervals=figures)


def calibrate_forecaster(model: Forecaster, windows: WindowSet) -> np.ndarray:
    """Calibrate ``model``'s intervals on its forecasts of ``windows`` (split conformal per
    horizon step and channel, :func:`pipeline.intervals.calibrate`) and keep them in it;
    returns its outputs for the windows (:func:`pipeline.forecast.predict_outputs`)."""
    outputs = predict_outputs(model, windows.inputs, windows.origins)
    units = interval_units(model, windows.inputs, outputs)
    pred = point_forecasts(model, outputs)
    calibration = calibrate(pred, windows.targets, units, model.config.interval_levels)
    model.calibrate_intervals(calibration)
    return outputs


# --- choosing the seasonal-naive period from the data ---------------------------------------------

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
YEAR_MS = 31_557_600_000  # 365.25 days: a year of steps need not be a whole number of days
# The step assumed without timestamps: the LTSF files are hourly.
ASSUMED_STEP_MS = 3_600_000
# A period is a candidate only if the training rows hold this many of it plus a horizon.
MIN_PERIODS = 2
# Forecast cells scored per candidate at most (~32 MB of float64): past it, origins are
# subsampled evenly, so the cost stops growing with the rows.
MAX_SCORED_CELLS = 4_000_000
# Weekdays count from Monday: the epoch (1970-01-01) was a Thursday.
EPOCH_WEEKDAY = 3


@dataclass(frozen=True)
class SeasonChoice:
    """The seasonal-naive period chosen from the data, among named candidates, with their scores.

    ``scores`` are seasonal-naive MSEs (in the units of the values given) on the same
    training windows; empty when too little data to score (``name`` is then ``"default"``).
    """

    period: int  # steps
    name: str  # "day", "week", "year", "open_day", "open_week", "default" or "given"
    candidates: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, object]:
        """``season``, ``season_name``, the candidates and one ``season_mse.<name>`` each."""
        scores = {f"season_mse.{name}": value for name, value in self.scores.items()}
        return {
            "season": self.period,
            "season_name": self.name,
            "season_candidates": dict(self.candidates),
            **scores,
        }


def calendar_periods(step_ms: int | None) -> dict[str, int]:
    """A day, a week and a year of steps, where the step fits them (hourly without a step).

    >>> calendar_periods(1_800_000)
    {'day': 48, 'week': 336, 'year': 17532}
    >>> calendar_periods(86_400_000), calendar_periods(31 * 86_400_000)
    ({'week': 7, 'year': 365}, {'year': 12})
    """
    step = step_ms or ASSUMED_STEP_MS
    periods = {}
    for name, span_ms in (("day", DAY_MS), ("week", WEEK_MS)):
        if span_ms % step == 0 and span_ms // step >= 2:
            periods[name] = span_ms // step
    if 28 * DAY_MS <= step <= 31 * DAY_MS:  # monthly data: the median spacing of months
        periods["year"] = 12
    elif round(YEAR_MS / step) >= 2:
        periods["year"] = round(YEAR_MS / step)
    return periods


def open_periods(times: np.ndarray, step_ms: int) -> dict[str, int]:
    """Rows per open day and per open week, where closed periods recur (business hours).

    The typical (median) count of rows on the calendar days (weeks) that hold any; offered
    only where it is short of a full day (week) of steps, i.e. most days skip some hours.
    ``times`` ``(T,)`` epoch ms, read as wall-clock time. O(T log T) (a sort).

    >>> hour = 3_600_000
    >>> weekdays = [d * 86_400_000 + h * hour for d in range(4, 18) if d % 7 not in (2, 3)
    ...             for h in range(8, 18)]  # 8:00-17:00, Monday to Friday
    >>> open_periods(np.array(weekdays), hour)
    {'open_day': 10, 'open_week': 50}
    """
    day = times // DAY_MS
    full = {"open_day": DAY_MS // step_ms, "open_week": WEEK_MS // step_ms}
    typical = {
        "open_day": int(np.median(np.unique(day, return_counts=True)[1])),
        "open_week": int(np.median(np.unique((day + EPOCH_WEEKDAY) // 7, return_counts=True)[1])),
    }
    return {name: n for name, n in typical.items() if 2 <= n < full[name]}


def season_candidates(
    n_rows: int,
    step_ms: int | None,
    horizon: int,
    times: np.ndarray | None = None,
    max_period: int | None = None,
) -> dict[str, int]:
    """The named periods worth scoring on ``n_rows`` training rows: each fits ``MIN_PERIODS``
    times plus a horizon in them and, with ``max_period`` (a lookback), into one lookback.

    >>> season_candidates(2000, 3_600_000, horizon=24)
    {'day': 24, 'week': 168}
    >>> season_candidates(2000, 3_600_000, horizon=24, max_period=96)
    {'day': 24}
    """
    periods = calendar_periods(step_ms)
    if times is not None and step_ms and len(times):
        periods.update(open_periods(times, step_ms))
    longest = min(max_period or n_rows, (n_rows - horizon) // MIN_PERIODS)
    chosen: dict[str, int] = {}
    for name, period in periods.items():
        if 2 <= period <= longest and period not in chosen.values():
            chosen[name] = period
    return chosen


def seasonal_naive_errors(
    values: np.ndarray, origins: np.ndarray, horizon: int, season: int
) -> np.ndarray:
    """Seasonal-naive MSE of each forecast made at ``origins`` (the row of its first target).

    ``values`` ``(T, C)``; a forecast of row ``o + k`` is row ``o - season + k % season``
    (the last season, repeated), as :func:`seasonal_naive` gives. NaN where a value used is
    NaN. Returns ``(N,)``; O(N · H · C).

    >>> values = np.array([[1.0], [2.0], [1.0], [2.0], [1.0], [5.0]])
    >>> seasonal_naive_errors(values, np.array([2, 4]), horizon=2, season=2).tolist()
    [0.0, 4.5]
    """
    steps = np.arange(horizon)
    targets = values[origins[:, None] + steps]  # (N, H, C)
    naive = values[origins[:, None] - season + steps % season]
    return np.mean((targets.astype(np.float64) - naive) ** 2, axis=(1, 2))


def choose_season(
    values: np.ndarray | Sequence[np.ndarray],
    step_ms: int | None,
    horizon: int,
    times: np.ndarray | None = None,
    max_period: int | None = None,
) -> SeasonChoice:
    """The seasonal-naive period that forecasts the training data best, among a day, a week
    and a year of steps and, where closed periods recur, the rows per open day and week.

    ``values``: the training part ``(T, C)``, scaled (channels weigh alike), NaN where missing;
    or one such array per series (no forecast crosses two). ``step_ms``: None without
    timestamps (hourly is assumed). ``times`` ``(T,)`` epoch ms of a single array's rows, for
    the open-period candidates. Every candidate is scored on the same forecasts: origins a
    horizon apart, after the longest candidate, those with a NaN in any candidate's values
    left out (the longest candidate is dropped while none is left). Cost: O(T · C), capped at
    ``MAX_SCORED_CELLS`` per candidate. With no candidate that fits, the day-of-steps default
    (:func:`default_season`), or 1 if it exceeds ``max_period``.

    >>> t = np.arange(24 * 7 * 6)
    >>> weekly = (np.sin(2 * np.pi * t / 24) * (1 + (t // 24 % 7 >= 5)))[:, None]
    >>> choice = choose_season(weekly, 3_600_000, horizon=24)
    >>> choice.name, choice.period, round(choice.scores["week"], 6), choice.scores["day"] > 0
    ('week', 168, 0.0, True)
    """
    parts = [values] if isinstance(values, np.ndarray) else list(values)
    longest = max((len(part) for part in parts), default=0)
    candidates = season_candidates(longest, step_ms, horizon, times, max_period)
    stacked, codes = _stack_series(parts)
    while candidates:
        scores = _score_candidates(stacked, codes, horizon, candidates)
        if scores:
            best = min(scores, key=lambda name: scores[name])
            return SeasonChoice(candidates[best], best, candidates, scores)
        candidates.pop(max(candidates, key=lambda name: candidates[name]))
    fallback = default_season(step_ms or ASSUMED_STEP_MS)
    return SeasonChoice(fallback if fallback <= (max_period or fallback) else 1, "default")


def _stack_series(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Series back to back ``(T, C)`` and each row's series code ``(T,)``."""
    if not parts:
        return np.empty((0, 0)), np.empty(0, dtype=np.int64)
    codes = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    return np.concatenate(parts), codes


def _score_candidates(
    values: np.ndarray, codes: np.ndarray, horizon: int, candidates: dict[str, int]
) -> dict[str, float]:
    """Each candidate's mean seasonal-naive MSE on the forecasts all can make (empty if none)."""
    longest = max(candidates.values())
    origins = np.arange(longest, len(values) - horizon + 1, max(horizon, 1))
    origins = origins[codes[origins - longest] == codes[origins + horizon - 1]]  # one series
    most = max(1, MAX_SCORED_CELLS // max(1, horizon * values.shape[1]))
    if len(origins) > most:
        origins = origins[np.linspace(0, len(origins) - 1, most).astype(np.int64)]
    errors = {n: seasonal_naive_errors(values, origins, horizon, p) for n, p in candidates.items()}
    scored = np.logical_and.reduce([np.isfinite(e) for e in errors.values()])
    if not scored.any():
        return {}
    return {name: float(np.mean(e[scored])) for name, e in errors.items()}


def series_season(
    series: Mapping[str, pd.DataFrame],
    channels: Sequence[str],
    step_ms: int | None,
    horizon: int,
    val_fraction: float,
    max_period: int | None = None,
) -> SeasonChoice:
    """:func:`choose_season` on the training part of each regularized series (the steps before
    its validation split, as :func:`pipeline.windows.build_window_sets` cuts it), each channel in
    units of its spread over every series. Copies the training values once: O(T · C).

    >>> t = np.arange(24 * 30)
    >>> frames = {"a": pd.DataFrame({"x": np.sin(2 * np.pi * t / 24)}), "b": pd.DataFrame(
    ...     {"x": np.cos(2 * np.pi * t / 24)})}
    >>> series_season(frames, ["x"], 3_600_000, 24, 0.2, max_period=96).name
    'day'
    """
    scale = channel_scale(series, channels)
    parts = [
        frame[list(channels)].to_numpy(np.float64)[: split_point(len(frame), val_fraction)] / scale
        for frame in series.values()
    ]
    return choose_season(parts, step_ms, horizon, max_period=max_period)
