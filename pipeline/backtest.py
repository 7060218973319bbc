"""The long-horizon forecasting (LTSF) benchmark protocol and backtests. numpy, pandas, torch only.

The protocol, as the published ETT results use it (Informer, Autoformer, DLinear, PatchTST, SegRNN):

* **Borders.** ETTh: 12 / 4 / 4 months of hours, i.e. training targets in rows 0-8639,
  validation 8640-11519, test 11520-14399 (ETTm: four times as many rows). Any other CSV:
  70 / 10 / 20 % (the Autoformer convention). Validation and test inputs reach back ``L`` rows.
* **Scaling.** A standard scaler (mean, population std) fit on the training rows only;
  every metric is on that normalized scale.
* **Windows.** Stride 1 and none dropped: ETTh has ``2881 - H`` test windows.
* **Features.** ``M``: every channel in, every channel out. ``S``: the target (``OT``) alone.

Beyond the protocol (the ETT files have no gap, so their figures do not change):

* **Gaps.** The training path's policy: the scaler ignores missing cells, runs of up to
  ``max_gap`` missing steps of a channel are interpolated linearly, and a window that touches a
  longer gap is left out for every model alike.
* **Seasons.** Seasonal-naive's period is the candidate (a day, a week, a year of steps, the
  rows per open day or week) that forecasts the training rows best
  (:func:`pipeline.evaluate.choose_season`).
* **Seed ensembles.** ``ensemble=N`` averages N seeds' forecasts; ``"auto"`` trains
  :data:`pipeline.train.AUTO_MEMBERS` and keeps the mean only where it beats the first seed
  on validation (:func:`pipeline.train.fit_ensemble`, as the train flow does).
* **Validation folds.** Outside published borders the validation rows are taken in blocks
  spread over the latest rows before the test (:func:`val_blocks`), as the train flow does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import RollcastError
from pipeline.contract import DEFAULT_MAX_GAP
from pipeline.evaluate import (
    SeasonChoice,
    choose_season,
    mae,
    mse,
    repeat_last,
    seasonal_naive,
)
from pipeline.forecast import interval_units, point_forecasts, predict, predict_outputs
from pipeline.intervals import (
    DEFAULT_GAIN,
    DEFAULT_LEVELS,
    IntervalError,
    Units,
    calibrate,
    check_gain,
    check_levels,
    interval_metrics,
    replay,
    spread,
)
from pipeline.model import Forecaster, SeedEnsemble
from pipeline.recipe import TRAINING_NORM, ForecasterConfig, TrainConfig
from pipeline.train import EvalStats, TrainResult, best_val_mse, fit_config
from pipeline.windows import (
    MAX_VAL_FOLDS,
    VAL_FOLDS,
    WindowSet,
    format_timestamp,
    held_out_starts,
    infer_step_ms,
    step_to_freq,
    validation_blocks,
    window_starts,
)

logger = logging.getLogger(__name__)

ETTH_BORDERS = (8640, 11520, 14400)  # 12, 16 and 20 months of 30 days of hours
ETTM_STEPS_PER_HOUR = 4
TRAINED_MODELS = ("lstm", "dlinear")
NAIVE_MODELS = ("repeat_last", "seasonal_naive")
MODELS = TRAINED_MODELS + NAIVE_MODELS


class BacktestError(RollcastError):
    """A backtest that cannot run as asked (unknown model, too little data, bad features)."""


@dataclass(frozen=True)
class Borders:
    """End rows (exclusive) of the training, validation and test targets."""

    train_end: int
    val_end: int
    test_end: int
    # The literature's borders (ETT): validation is the one block they name, so figures stay
    # comparable with published ones; elsewhere it is cut into folds (:func:`val_blocks`).
    published: bool = False


def ltsf_borders(n_rows: int, dataset: str) -> Borders:
    """The fixed borders for ETT files, else a 70/10/20 split of ``n_rows``."""
    if dataset.startswith("ETTh"):
        return Borders(*ETTH_BORDERS, published=True)
    if dataset.startswith("ETTm"):
        train, val, test = (b * ETTM_STEPS_PER_HOUR for b in ETTH_BORDERS)
        return Borders(train, val, test, published=True)
    n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
    return Borders(n_train, n_rows - n_test, n_rows)


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)


def fit_scaler(values: np.ndarray, train_end: int) -> Scaler:
    """Mean and population std of the training rows only (what sklearn's StandardScaler does),
    of the cells observed: NaN cells are ignored. A channel with no training value gets NaN.

    >>> fit_scaler(np.array([[1.0], [np.nan], [3.0], [99.0]]), train_end=3).mean.tolist()
    [2.0]
    """
    train = values[:train_end].astype(np.float64)
    observed = np.isfinite(train).any(axis=0)
    mean = np.full(train.shape[1], np.nan)
    std = np.ones(train.shape[1])
    if observed.any():
        mean[observed] = np.nanmean(train[:, observed], axis=0)
        spread = np.nanstd(train[:, observed], axis=0)
        std[observed] = np.where(spread > 0, spread, 1.0)
    return Scaler(mean, std)


def fill_short_gaps(values: np.ndarray, max_gap: int) -> tuple[np.ndarray, int]:
    """A copy of ``values`` ``(T, C)`` with each run of 1 to ``max_gap`` NaN rows of a channel,
    between two observed ones, interpolated linearly along the rows; and the cells filled.

    Longer runs, and runs at either end, stay NaN. O(T · C).

    >>> filled, count = fill_short_gaps(np.array([[0.0], [np.nan], [2.0], [np.nan]]), 3)
    >>> filled[:, 0].tolist(), count
    ([0.0, 1.0, 2.0, nan], 1)
    """
    filled, count = values.copy(), 0
    for column in filled.T:  # a view: filled in place
        observed = np.flatnonzero(np.isfinite(column))
        run = np.diff(observed) - 1
        short = np.flatnonzero((run >= 1) & (run <= max_gap))
        if not len(short):
            continue
        lengths = run[short]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cells = np.repeat(observed[short] + 1, lengths) + offsets
        column[cells] = np.interp(cells, observed, column[observed])
        count += len(cells)
    return filled, count


def longest_gap(values: np.ndarray, columns: tuple[str, ...], times: np.ndarray | None) -> str:
    """Where the longest run of NaN rows of any channel lies, e.g. "59 steps of 'OT' from
    row 120", or "none". O(T · C).

    >>> longest_gap(np.array([[1.0, np.nan], [np.nan, np.nan], [1.0, 2.0]]), ("a", "b"), None)
    "2 steps of 'b' from row 0"
    """
    best = (0, 0, 0)  # (length, channel, first row)
    for c, column in enumerate(values.T):
        missing = np.concatenate([[False], np.isnan(column), [False]])
        edges = np.flatnonzero(np.diff(missing.astype(np.int8)))
        if len(edges):
            starts, ends = edges[::2], edges[1::2]
            i = int(np.argmax(ends - starts))
            best = max(best, (int(ends[i] - starts[i]), c, int(starts[i])))
    length, channel, row = best
    if not length:
        return "none"
    where = f"row {row}" if times is None else format_timestamp(int(times[row]))
    return f"{length} steps of {columns[channel]!r} from {where}"


@dataclass(frozen=True)
class Splits:
    train: WindowSet
    val: WindowSet
    test: WindowSet


def ltsf_splits(
    values: np.ndarray,
    borders: Borders,
    lookback: int,
    horizon: int,
    times: np.ndarray | None = None,
    folds: int = 1,
) -> Splits:
    """Stride-1 windows whose targets fall inside each part; inputs may reach back ``lookback``.

    With ``folds`` over 1 the validation targets are as many rows as the validation part, in
    blocks spread over the latest training and validation rows (:func:`val_blocks`), and the
    training targets are the other rows before the test. ``times`` ``(T,)`` (epoch ms of each
    row) gives the windows their calendar features.
    """
    span = lookback + horizon

    def windows(starts: np.ndarray) -> WindowSet:
        series = np.full(len(starts), "", dtype=object)
        return WindowSet(values, starts, lookback, horizon, series, times)

    blocks = val_blocks(borders, horizon, folds)
    train, val = held_out_starts(values[: borders.val_end], lookback, horizon, blocks)
    test = window_starts(values, borders.val_end - lookback, borders.test_end - span, span)
    return Splits(train=windows(train), val=windows(val), test=windows(test))


def val_blocks(borders: Borders, horizon: int, folds: int) -> np.ndarray:
    """The ``[start, end)`` rows of each validation block: the validation part whole for one
    fold, else as many rows in ``folds`` blocks (:func:`pipeline.windows.validation_blocks`)."""
    val_rows = borders.val_end - borders.train_end
    return validation_blocks(borders.val_end, val_rows, horizon, folds)


def spec_folds(spec: BacktestSpec, borders: Borders) -> int:
    """The validation folds of a spec: its own, else one on published borders and
    :data:`pipeline.windows.VAL_FOLDS` elsewhere."""
    if spec.val_folds is not None:
        return spec.val_folds
    return 1 if borders.published else VAL_FOLDS


def forecasting(splits: Splits, config: ForecasterConfig) -> Splits:
    """The splits with ``config``'s targets as the forecast columns."""
    columns = config.forecast_columns
    return Splits(*(part.forecasting(columns) for part in (splits.train, splits.val, splits.test)))


def select_features(frame: pd.DataFrame, features: str, target: str = "OT") -> pd.DataFrame:
    """``M``: every numeric column; ``S``: ``target`` alone; ``MS``: every numeric column in,
    ``target`` alone forecast (:func:`spec_config` makes it the model's one target)."""
    numeric = frame.select_dtypes("number")
    if features not in ("M", "S", "MS"):
        raise BacktestError(f"features must be 'M', 'S' or 'MS', not {features!r}")
    if features != "M" and target not in numeric.columns:
        raise BacktestError(f"target column {target!r} is not among {list(numeric.columns)}")
    return numeric[[target]] if features == "S" else numeric


@dataclass(frozen=True)
class BacktestSpec:
    features: str = "M"
    lookback: int | None = None  # None: the model's default, cut to fit the data
    horizon: int = 96
    model: str = "lstm"
    seed: int = 0
    target: str = "OT"
    split: str = "test"  # "val" scores on validation, for choosing settings without the test
    season: int | None = None  # seasonal-naive's period; None: chosen from the training rows
    max_gap: int = DEFAULT_MAX_GAP  # runs of up to this many missing steps are interpolated
    ensemble: int | str = 1  # seeds averaged (seed .. seed + N - 1), or "auto"
    val_folds: int | None = None  # validation blocks (spec_folds); None: the file's default
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    levels: tuple[float, ...] = DEFAULT_LEVELS  # interval coverage levels (pipeline.intervals)
    interval_gain: float = DEFAULT_GAIN  # the online adaptation's step (0: split conformal only)


@dataclass(frozen=True)
class Intervals:
    """The bounds serve would have published around the scored split's forecasts."""

    levels: tuple[float, ...]
    lo: np.ndarray  # (L, N, H, C), normalized like the predictions
    hi: np.ndarray


@dataclass(frozen=True)
class BacktestResult:
    predictions: np.ndarray  # (N, H, C) on the scored split, normalized
    targets: np.ndarray  # (N, H, C), the same windows' actual values
    first_targets: np.ndarray  # (N,) the row of each window's first target
    metrics: dict[str, Any]
    intervals: Intervals | None = None


# The DLinear paper's ETTh recipe, a baseline's own: L=336, Adam at lr 0.005 halved every pass,
# batch 32, at most 10 passes with patience 3.
DLINEAR_LOOKBACK = 336
DLINEAR_TRAINING: dict[str, Any] = {
    "learning_rate": 5e-3,
    "batch_size": 32,
    "max_steps": 1_000_000,
    "max_epochs": 10,
    "eval_every": None,
    "patience": 3,
    "schedule": "halving",
    "weight_decay": 0.0,
}


def default_lookback(model: str) -> int:
    """The longest lookback a backtest gives ``model``: Rollcast's default, DLinear's own."""
    return DLINEAR_LOOKBACK if model == "dlinear" else ForecasterConfig(channels=()).lookback


def spec_config(
    spec: BacktestSpec, borders: Borders, channels: tuple[str, ...], freq: str | None = None
) -> ForecasterConfig:
    """The model config a spec trains: its shape, the spec's lookback (or the model's default),
    sized to the training rows by the rule training uses (:meth:`ForecasterConfig.fitted`)."""
    shape = {"norm": TRAINING_NORM, **spec.model_overrides, "horizon": spec.horizon}
    shape["interval_levels"] = spec.levels  # a quantile head learns their quantiles
    if freq:
        shape["freq"] = freq
    if spec.features == "MS" and channels:
        shape["targets"] = (spec.target,)
    lookback = spec.lookback or default_lookback(spec.model)
    config = ForecasterConfig(channels, architecture=spec.model, **{**shape, "lookback": lookback})
    return config.fitted(borders.train_end)


def fitted_lookback(spec: BacktestSpec, borders: Borders) -> int:
    """The lookback :func:`spec_config` gives.

    >>> fitted_lookback(BacktestSpec(horizon=96), Borders(8640, 11520, 14400))
    720
    >>> fitted_lookback(BacktestSpec(horizon=192), Borders(1598, 1827, 2284))
    576
    """
    return spec_config(spec, borders, ()).lookback


@dataclass(frozen=True)
class BacktestData:
    """A CSV's chosen columns, scaled on the training rows, short gaps filled."""

    columns: tuple[str, ...]
    values: np.ndarray  # (T, C) float32, NaN where a gap over max_gap was left
    borders: Borders
    config: ForecasterConfig
    times: np.ndarray | None  # (T,) epoch ms of each row; None without a time column
    missing_cells: int  # NaN cells in the CSV's chosen columns
    interpolated_cells: int


def run_backtest(
    frame: pd.DataFrame,
    dataset: str,
    spec: BacktestSpec,
    on_eval: Callable[[EvalStats], None] | None = None,
) -> BacktestResult:
    """Run the protocol for one model on one CSV frame; score it on ``spec.split``.

    ``on_eval`` sees each validation while a model trains (a tuner prunes with it). Raises
    :class:`BacktestError` for an unknown model or ensemble, or when gaps or a short file
    leave no window to train or score on.
    """
    check_spec(spec)
    started = time.perf_counter()
    data = prepare_data(frame, dataset, spec)
    folds = spec_folds(spec, data.borders)
    spec = replace(spec, lookback=data.config.lookback, val_folds=folds)
    lookback = data.config.lookback
    whole = ltsf_splits(data.values, data.borders, lookback, spec.horizon, data.times, folds)
    splits = forecasting(whole, data.config)  # MS: the target alone is forecast and scored
    scored = splits.test if spec.split == "test" else splits.val
    require_windows(spec, splits, scored, data)
    if spec.model in NAIVE_MODELS:
        forecast, details = _naive(spec, data)
    else:
        config, season = trained_config(spec, data)
        forecast, details = _trained(spec, config, splits, on_eval)
        details.update(season)
    forecasted = forecast(scored)
    predictions, targets = forecasted.points, scored.targets
    intervals, interval_figures = _intervals(
        spec, forecast(splits.val), splits.val, scored, forecasted
    )
    metrics = {
        **_spec_metrics(spec, dataset),
        "mse": mse(predictions, targets),
        "mae": mae(predictions, targets),
        "windows": len(scored),
        "val_blocks": len(val_blocks(data.borders, spec.horizon, folds)),
        **_gap_metrics(spec, data, splits),
        **interval_figures,
        **details,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    first_targets = scored.starts + data.config.lookback
    return BacktestResult(predictions, targets, first_targets, metrics, intervals)


def _intervals(
    spec: BacktestSpec, val_forecast: Forecasted, val: WindowSet, scored: WindowSet,
    forecasted: Forecasted,
) -> tuple[Intervals, dict[str, Any]]:  # fmt: skip
    """Intervals around the scored split's forecasts: calibrated on the validation windows'
    forecasts (split conformal), then adapted as the scored split's actuals arrive in stream
    order (:func:`pipeline.intervals.replay`); the metrics of both."""
    calibration = calibrate(val_forecast.points, val.targets, val_forecast.units, spec.levels)
    predictions, units = forecasted.points, forecasted.units
    offline = calibration.bounds(predictions, units)
    origins = scored.starts + scored.lookback - 1
    lo, hi = replay(predictions, scored.targets, units, origins, calibration, spec.interval_gain)
    levels, targets = calibration.levels, scored.targets
    figures = {
        "interval_levels": list(levels),
        "interval_gain": spec.interval_gain,
        **interval_metrics(lo, hi, targets, levels),
        **interval_metrics(*offline, targets, levels, suffix=".offline"),
    }
    return Intervals(levels, lo, hi), figures


def check_spec(spec: BacktestSpec) -> None:
    """Refuse a model or an ensemble the backtest does not know, saying what it takes."""
    if spec.model not in MODELS:
        raise BacktestError(f"unknown model {spec.model!r}: choose one of {', '.join(MODELS)}")
    if spec.ensemble != "auto" and not (isinstance(spec.ensemble, int) and spec.ensemble >= 1):
        raise BacktestError(
            f"ensemble must be a number of seeds >= 1 or 'auto', not {spec.ensemble!r}"
        )
    if spec.val_folds is not None and not 1 <= spec.val_folds <= MAX_VAL_FOLDS:
        raise BacktestError(f"val_folds must be from 1 to {MAX_VAL_FOLDS}, not {spec.val_folds!r}")
    try:
        check_levels(spec.levels)
        check_gain(spec.interval_gain)
    except IntervalError as err:
        raise BacktestError(str(err)) from err


def prepare_data(frame: pd.DataFrame, dataset: str, spec: BacktestSpec) -> BacktestData:
    """The spec's columns of ``frame``, scaled on the training rows, gaps filled per policy.

    Raises :class:`BacktestError` when a channel has no value in the training rows.
    """
    table = select_features(frame, spec.features, spec.target)
    raw = table.to_numpy(dtype=np.float64)
    borders = ltsf_borders(len(raw), dataset)
    columns = tuple(str(c) for c in table.columns)
    scaler = fit_scaler(raw, borders.train_end)
    empty = [c for c, m in zip(columns, scaler.mean, strict=True) if not np.isfinite(m)]
    if empty:
        raise BacktestError(
            f"columns {empty} have no value in the first {borders.train_end} (training) rows: "
            "drop them or choose --features S with another --target"
        )
    values, interpolated = fill_short_gaps(scaler.transform(raw), spec.max_gap)
    times = frame_times(frame)
    config = spec_config(spec, borders, columns, data_freq(times))
    missing = int(np.isnan(raw).sum())
    return BacktestData(columns, values, borders, config, times, missing, interpolated)


def data_freq(times: np.ndarray | None) -> str | None:
    """The step of rows at ``times`` as a pandas frequency; None without times: the model's
    calendar reads each window's times from its last one and this step."""
    step_ms = None if times is None else infer_step_ms(times)
    return step_to_freq(step_ms) if step_ms else None


def require_windows(
    spec: BacktestSpec, splits: Splits, scored: WindowSet, data: BacktestData
) -> None:
    """Refuse a backtest with no window to score on, or (for a trained model) to train or
    validate on, naming the longest gap left; never NaN metrics or empty predictions."""
    needed = (
        {"scored": scored}
        if spec.model in NAIVE_MODELS
        else {"training": splits.train, "validation": splits.val, "scored": scored}
    )
    empty = [name for name, windows in needed.items() if not len(windows)]
    if not empty:
        return
    gap = longest_gap(data.values, data.columns, data.times)
    raise BacktestError(
        f"no {' or '.join(empty)} window of {spec.lookback} + {spec.horizon} steps in "
        f"{len(data.values)} rows: the longest gap left (over max_gap={spec.max_gap}) is {gap}. "
        "Fill the gap, raise max_gap, or shorten the lookback or horizon"
    )


def _spec_metrics(spec: BacktestSpec, dataset: str) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "model": spec.model,
        "features": spec.features,
        "lookback": spec.lookback,
        "horizon": spec.horizon,
        "seed": spec.seed,
        "split": spec.split,
        "val_folds": spec.val_folds,
    }


def _gap_metrics(spec: BacktestSpec, data: BacktestData, splits: Splits) -> dict[str, Any]:
    """The cells missing and filled, and the windows each split lost to longer gaps."""
    dropped = dropped_windows(len(data.values), data.borders, spec, splits)
    return {
        "missing_cells": data.missing_cells,
        "interpolated_cells": data.interpolated_cells,
        "max_gap": spec.max_gap,
        "windows_dropped_for_gaps": dropped[spec.split],
        "windows_dropped_by_split": dropped,
    }


def dropped_windows(
    rows: int, borders: Borders, spec: BacktestSpec, splits: Splits
) -> dict[str, int]:
    """Per split, the stride-1 windows :func:`ltsf_splits` would give ``rows`` rows without
    gaps, less those it gave (the ones that touch a gap over ``max_gap``)."""
    folds, lookback = spec.val_folds or 1, spec.lookback or 0
    whole = ltsf_splits(
        np.zeros((rows, 1), np.float32), borders, lookback, spec.horizon, None, folds
    )
    return {
        name: len(getattr(whole, name)) - len(getattr(splits, name))
        for name in ("train", "val", "test")
    }


def frame_times(frame: pd.DataFrame) -> np.ndarray | None:
    """Epoch milliseconds of each row, from the frame's first time column (None if it has none)."""
    times = frame.select_dtypes(include=["datetime", "datetimetz"])
    if times.empty:
        return None
    return times.iloc[:, 0].astype("datetime64[ms]").astype("int64").to_numpy()


def backtest_season(spec: BacktestSpec, data: BacktestData) -> SeasonChoice:
    """``spec.season``, else the period that forecasts the training rows best, at most a lookback.

    Raises :class:`BacktestError` when ``spec.season`` exceeds the lookback.
    """
    lookback = data.config.lookback
    if spec.season:
        if spec.season > lookback:
            raise BacktestError(
                f"season {spec.season} is longer than the lookback {lookback}: "
                "lengthen the lookback or shorten the season"
            )
        return SeasonChoice(spec.season, "given")
    train_end = data.borders.train_end
    times = None if data.times is None else data.times[:train_end]
    step_ms = None if data.times is None else infer_step_ms(data.times)
    columns = data.config.forecast_columns  # MS: the target's season
    values = data.values[:train_end] if columns is None else data.values[:train_end, list(columns)]
    return choose_season(values, step_ms, spec.horizon, times, lookback)


def trained_config(
    spec: BacktestSpec, data: BacktestData
) -> tuple[ForecasterConfig, dict[str, Any]]:
    """The config a trained model backtests with, and what its metrics record of the season:
    a network that reads one (``norm`` "season") carries :func:`backtest_season`'s period."""
    if not data.config.reads_season:
        return data.config, {}
    choice = backtest_season(spec, data)
    return data.config.with_season(choice.period), choice.as_metrics()


@dataclass(frozen=True)
class Forecasted:
    """A model's forecasts of some windows ``(N, H, C)`` and their intervals' units."""

    points: np.ndarray
    units: Units


Forecast = Callable[[WindowSet], Forecasted]


def symmetric(points: np.ndarray, windows: WindowSet) -> Forecasted:
    """Point forecasts of ``windows``, with intervals as wide as each window's spread."""
    return Forecasted(points, spread(windows.target_inputs))


def _naive(spec: BacktestSpec, data: BacktestData) -> tuple[Forecast, dict[str, Any]]:
    """A naive model's forecasts of any windows, and what its metrics record."""
    details: dict[str, Any] = {"steps": 0, "device": "cpu", "ensemble": 1}
    horizon = spec.horizon
    if spec.model == "repeat_last":
        details["model_config"] = {"architecture": spec.model}
        return lambda windows: symmetric(
            repeat_last(windows.target_inputs, horizon), windows
        ), details
    choice = backtest_season(spec, data)
    details["model_config"] = {"architecture": spec.model, "season": choice.period}

    def forecast(windows: WindowSet) -> Forecasted:
        return symmetric(seasonal_naive(windows.target_inputs, horizon, choice.period), windows)

    return forecast, {
        **details,
        **choice.as_metrics(),
    }


def _trained(
    spec: BacktestSpec,
    config: ForecasterConfig,
    splits: Splits,
    on_eval: Callable[[EvalStats], None] | None,
) -> tuple[Forecast, dict[str, Any]]:
    """Train the spec's seeds (:func:`pipeline.train.fit_ensemble`); the forecasts of the one
    or the mean kept, and the first seed's training figures."""
    train_config = _train_config(spec)
    result = fit_config(config, splits.train, splits.val, train_config, spec.ensemble, on_eval)
    model = result.model
    scored = splits.test if spec.split == "test" else splits.val

    def forecast(windows: WindowSet) -> Forecasted:
        outputs = predict_outputs(model, windows.inputs, windows.origins, train_config.batch_size)
        points = point_forecasts(model, outputs)
        return Forecasted(points, interval_units(model, windows.inputs, outputs))

    alone = {} if result.ensemble is None else {"mse_first_seed": _first_seed_mse(result, scored)}
    details = {
        "val_loss": result.best_val_loss,
        "val_mse": best_val_mse(result),
        "steps": result.steps,
        "best_step": result.best_step,
        "epochs": round(result.history[-1].epoch, 2),
        "device": result.device,
        "train_samples_per_s": round(result.samples_per_s, 1),
        "parameters": sum(p.numel() for p in _one_network(model).parameters()),
        **({"ensemble": 1} if result.ensemble is None else result.ensemble.figures()),
        **alone,
        **({} if result.norms is None else {"norm_val_mse": result.norms}),
        "model_config": model.config.to_dict(),
        "train_config": {**train_config.__dict__},
    }
    return forecast, details


def _one_network(model: Forecaster) -> Forecaster:
    """One network of a kept model: a seed ensemble's first member (its size is one seed's)."""
    return model.members[0] if isinstance(model, SeedEnsemble) else model  # type: ignore[return-value]


def _first_seed_mse(result: TrainResult, scored: WindowSet) -> float:
    """The scored split's MSE of the first seed's network alone, beside an ensemble's."""
    networks = result.model.networks if isinstance(result.model, SeedEnsemble) else [result.model]
    return mse(predict(networks[0], scored.inputs, scored.origins), scored.targets)


def _train_config(spec: BacktestSpec) -> TrainConfig:
    recipe = DLINEAR_TRAINING if spec.model == "dlinear" else {}
    return replace(TrainConfig(seed=spec.seed), **{**recipe, **spec.train_overrides})


def load_ltsf_csv(path: Path) -> pd.DataFrame:
    """A benchmark CSV: a date column first (parsed), then numeric columns, rows in time order."""
    if not path.exists():
        raise BacktestError(f"{path} does not exist")
    frame = pd.read_csv(path)
    date_column = "date" if "date" in frame.columns else frame.columns[0]
    return frame.assign(**{date_column: pd.to_datetime(frame[date_column])})
