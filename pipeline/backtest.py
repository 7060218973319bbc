"""The long-horizon forecasting (LTSF) benchmark protocol and backtests. numpy, pandas, torch only.

The protocol, as the published ETT results use it (Informer, Autoformer, DLinear, PatchTST, SegRNN):

* **Borders.** ETTh: 12 / 4 / 4 months of hours, i.e. training targets in rows 0-8639,
  validation 8640-11519, test 11520-14399 (ETTm: four times as many rows). Any other CSV:
  70 / 10 / 20 % (the Autoformer convention). Validation and test inputs reach back ``L`` rows.
* **Scaling.** A standard scaler (mean, population std) fit on the training rows only;
  every metric is on that normalized scale.
* **Windows.** Stride 1 and none dropped: ETTh has ``2881 - H`` test windows.
* **Features.** ``M``: every channel in, every channel out. ``S``: the target (``OT``) alone.
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
from pipeline.evaluate import default_season, mae, mse, repeat_last, seasonal_naive
from pipeline.forecast import predict
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import EvalStats, fit
from pipeline.windows import WindowSet, infer_step_ms, window_starts

logger = logging.getLogger(__name__)

ETTH_BORDERS = (8640, 11520, 14400)  # 12, 16 and 20 months of 30 days of hours
ETTM_STEPS_PER_HOUR = 4
# The seasonal-naive period when the data has no timestamps to infer it from (hourly: a day).
DAILY_SEASON = 24
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


def ltsf_borders(n_rows: int, dataset: str) -> Borders:
    """The fixed borders for ETT files, else a 70/10/20 split of ``n_rows``."""
    if dataset.startswith("ETTh"):
        return Borders(*ETTH_BORDERS)
    if dataset.startswith("ETTm"):
        return Borders(*(b * ETTM_STEPS_PER_HOUR for b in ETTH_BORDERS))
    n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
    return Borders(n_train, n_rows - n_test, n_rows)


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)


def fit_scaler(values: np.ndarray, train_end: int) -> Scaler:
    """Mean and population std of the training rows only (what sklearn's StandardScaler does)."""
    train = values[:train_end].astype(np.float64)
    return Scaler(train.mean(axis=0), np.where(train.std(axis=0) > 0, train.std(axis=0), 1.0))


@dataclass(frozen=True)
class Splits:
    train: WindowSet
    val: WindowSet
    test: WindowSet


def ltsf_splits(values: np.ndarray, borders: Borders, lookback: int, horizon: int) -> Splits:
    """Stride-1 windows whose targets fall inside each part; inputs may reach back ``lookback``."""
    span = lookback + horizon

    def part(first_target: int, end: int) -> WindowSet:
        starts = window_starts(values, first_target - lookback, end - span, span)
        return WindowSet(values, starts, lookback, horizon, np.full(len(starts), "", dtype=object))

    return Splits(
        train=part(lookback, borders.train_end),
        val=part(borders.train_end, borders.val_end),
        test=part(borders.val_end, borders.test_end),
    )


def select_features(frame: pd.DataFrame, features: str, target: str = "OT") -> pd.DataFrame:
    """``M``: every numeric column; ``S``: ``target`` alone."""
    numeric = frame.select_dtypes("number")
    if features == "M":
        return numeric
    if features == "S":
        if target not in numeric.columns:
            raise BacktestError(f"target column {target!r} is not among {list(numeric.columns)}")
        return numeric[[target]]
    raise BacktestError(f"features must be 'M' or 'S', not {features!r}")


@dataclass(frozen=True)
class BacktestSpec:
    features: str = "M"
    lookback: int | None = None  # None: the model's default, cut to fit the data
    horizon: int = 96
    model: str = "lstm"
    seed: int = 0
    target: str = "OT"
    split: str = "test"  # "val" scores on validation, for choosing settings without the test
    season: int | None = None  # seasonal-naive's period; None: a day of the data's steps
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BacktestResult:
    predictions: np.ndarray  # (N, H, C) on the scored split, normalized
    targets: np.ndarray  # (N, H, C), the same windows' actual values
    first_targets: np.ndarray  # (N,) the row of each window's first target
    metrics: dict[str, Any]


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
    spec: BacktestSpec, borders: Borders, channels: tuple[str, ...]
) -> ForecasterConfig:
    """The model config a spec trains: its shape, the spec's lookback (or the model's default),
    sized to the training rows by the rule training uses (:meth:`ForecasterConfig.fitted`)."""
    shape = {**spec.model_overrides, "horizon": spec.horizon}
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


def run_backtest(
    frame: pd.DataFrame,
    dataset: str,
    spec: BacktestSpec,
    on_eval: Callable[[EvalStats], None] | None = None,
) -> BacktestResult:
    """Run the protocol for one model on one CSV frame; score it on ``spec.split``.

    ``on_eval`` sees each validation while a model trains (a tuner prunes with it).
    """
    if spec.model not in MODELS:
        raise BacktestError(f"unknown model {spec.model!r}: choose one of {', '.join(MODELS)}")
    started = time.perf_counter()
    table = select_features(frame, spec.features, spec.target)
    raw = table.to_numpy(dtype=np.float64)
    borders = ltsf_borders(len(raw), dataset)
    config = spec_config(spec, borders, tuple(table.columns))
    lookback = config.lookback
    spec = replace(spec, lookback=lookback)
    values = fit_scaler(raw, borders.train_end).transform(raw)
    splits = ltsf_splits(values, borders, lookback, spec.horizon)
    scored = splits.test if spec.split == "test" else splits.val
    if spec.model in NAIVE_MODELS:
        season = spec.season or data_season(frame)
        predictions, details = _naive(spec, scored, season), _naive_details(spec, season)
    else:
        predictions, details = _trained(spec, config, splits, scored, on_eval)
    targets = scored.targets
    metrics = {
        "dataset": dataset,
        "model": spec.model,
        "features": spec.features,
        "lookback": lookback,
        "horizon": spec.horizon,
        "seed": spec.seed,
        "split": spec.split,
        "mse": mse(predictions, targets),
        "mae": mae(predictions, targets),
        "windows": len(scored),
        **details,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    return BacktestResult(predictions, targets, scored.starts + lookback, metrics)


def data_season(frame: pd.DataFrame) -> int:
    """A day of the frame's steps, from its first time column (a week for daily data)."""
    times = frame.select_dtypes(include=["datetime", "datetimetz"])
    if times.empty:
        return DAILY_SEASON
    step_ms = infer_step_ms(times.iloc[:, 0].astype("datetime64[ms]").astype("int64").to_numpy())
    return default_season(step_ms) if step_ms else DAILY_SEASON


def _naive(spec: BacktestSpec, test: WindowSet, season: int) -> np.ndarray:
    if spec.model == "repeat_last":
        return repeat_last(test.inputs, spec.horizon)
    return seasonal_naive(test.inputs, spec.horizon, season)


def _naive_details(spec: BacktestSpec, season: int) -> dict[str, Any]:
    seasons = {"season": season} if spec.model == "seasonal_naive" else {}
    config = {"architecture": spec.model, **seasons}
    return {"steps": 0, "device": "cpu", "model_config": config}


def _trained(
    spec: BacktestSpec,
    config: ForecasterConfig,
    splits: Splits,
    scored: WindowSet,
    on_eval: Callable[[EvalStats], None] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    recipe = DLINEAR_TRAINING if spec.model == "dlinear" else {}
    train_config = replace(TrainConfig(seed=spec.seed), **{**recipe, **spec.train_overrides})
    model = build_forecaster(config, seed=spec.seed)
    result = fit(model, splits.train, splits.val, train_config, on_eval)
    predictions = predict(model, scored.inputs, batch_size=train_config.batch_size)
    details = {
        "val_loss": result.best_val_loss,
        "steps": result.steps,
        "best_step": result.best_step,
        "epochs": round(result.history[-1].epoch, 2),
        "device": result.device,
        "train_samples_per_s": round(result.samples_per_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_config": config.to_dict(),
        "train_config": {**train_config.__dict__},
    }
    return predictions, details


def load_ltsf_csv(path: Path) -> pd.DataFrame:
    """A benchmark CSV: a date column first (parsed), then numeric columns, rows in time order."""
    if not path.exists():
        raise BacktestError(f"{path} does not exist")
    frame = pd.read_csv(path)
    date_column = "date" if "date" in frame.columns else frame.columns[0]
    return frame.assign(**{date_column: pd.to_datetime(frame[date_column])})
