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

    def as_metrics(self, prefix: str = "val_") -> dict[str, float]:
        return {
            f"{prefix}mse": self.mse,
            f"{prefix}mae": self.mae,
            f"{prefix}seasonal_naive_mse": self.seasonal_naive_mse,
            f"{prefix}repeat_last_mse": self.repeat_last_mse,
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
    """

    val_mse: float
    online_mse: float
    scored: int  # forecast values behind online_mse
    max_ratio: float
    min_scored: int

    @property
    def ratio(self) -> float:
        return self.online_mse / self.val_mse if self.val_mse > 0 else math.inf

    @property
    def retrain(self) -> bool:
        return self.scored >= self.min_scored and self.ratio > self.max_ratio

    def reason(self) -> str:
        figures = (
            f"online MSE {self.online_mse:.4g} over {self.scored} values is {self.ratio:.2f}x "
            f"the validation MSE {self.val_mse:.4g} (retrain above {self.max_ratio:g}x)"
        )
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


def score_forecaster(model: Forecaster, windows: WindowSet, season: int) -> Scorecard:
    """Forecast every window with ``model`` and score it beside the baselines."""
    pred = predict(model, windows.inputs)
    scale = model.scale.detach().cpu().numpy()
    return score(pred, windows.inputs, windows.targets, scale, season)
