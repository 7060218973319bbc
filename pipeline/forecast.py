"""Inference: the one place a model turns recent history into forecasts. numpy, pandas, torch only.

Serve, evaluation, backtests and the MLflow pyfunc all forecast through :func:`predict`, and the
two that start from raw observations (the serve loop and :func:`forecast_frame`) build their
windows with the same :class:`~pipeline.windows.RollingWindow`, made by :func:`new_window` from
the model's own config. So the stream server and the registered model give the same forecast for
the same history, gaps and duplicates included: each step is floored to the model's frequency,
the first observation of a step wins, gaps of up to the model's ``max_gap`` steps are
interpolated and a longer one starts the window again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import RollcastError, intervals
from pipeline.covariates import windows_calendar
from pipeline.intervals import Calibration, Units
from pipeline.model import Forecaster
from pipeline.open_steps import read_open_hours, steps_from
from pipeline.recipe import ForecasterConfig
from pipeline.windows import SERIES, TS, RollingWindow, format_timestamp, freq_to_ms

# Series id given to a history frame that has no ``series`` column.
SINGLE_SERIES = "series"
# The number formats a model may forecast in: bfloat16 halves the cost of a forecast on a chip
# with native bfloat16 arithmetic (weights and sums stay float32; BENCHMARKS.md: the same MSE to
# five digits); "auto" takes it where the chip has it.
PRECISIONS = ("float32", "bfloat16", "auto")


class ForecastError(RollcastError):
    """A history that cannot be forecast (too short, or missing the model's channels)."""


@dataclass(frozen=True)
class LoadedForecaster:
    """A model ready to forecast, with the registered name and version that published it."""

    name: str
    version: str
    model: Forecaster


def interval_bounds(
    model: Forecaster, calibration: Calibration, inputs: np.ndarray, outputs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The intervals ``(L, N, H, C)`` of ``model``'s calibrated radii around its forecasts of
    windows ``inputs`` ``(N, L, C_in)``, from its outputs (:func:`predict_outputs`). The pyfunc,
    training and the plots take them from here; serve, whose radii move online, from
    :func:`pipeline.intervals.bounds` of :func:`interval_units`."""
    points = point_forecasts(model, outputs)
    return calibration.bounds(points, interval_units(model, inputs, outputs))


def interval_units(model: Forecaster, inputs: np.ndarray, outputs: np.ndarray) -> Units:
    """How far below and above each forecast one unit of radius reaches (its head says:
    :meth:`pipeline.model.PointHead.units`), for windows ``inputs`` ``(N, L, C_in)``."""
    return model.units(outputs, target_spreads(model, inputs))


def target_spreads(model: Forecaster, inputs: np.ndarray) -> np.ndarray:
    """``(N, 1, C)``: the spread (:func:`pipeline.intervals.spread`) of the forecast channels
    of windows ``inputs`` ``(N, L, C_in)``."""
    targets = inputs if model.target_columns is None else inputs[..., model.target_columns]
    return intervals.spread(targets)


def predict(
    model: Forecaster,
    inputs: np.ndarray,
    origins_ms: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Point forecasts ``(N, H, C)`` for inputs ``(N, L, C)``, on the model's device.

    ``origins_ms`` ``(N,)`` is the time of each window's last step: a model that reads calendar
    features gets them from it (:func:`pipeline.covariates.windows_calendar`).
    """
    return point_forecasts(model, predict_outputs(model, inputs, origins_ms, batch_size))


def point_forecasts(model: Forecaster, outputs: np.ndarray) -> np.ndarray:
    """The point forecasts ``(N, H, C)`` of outputs of :func:`predict_outputs`: the one place an
    output becomes points (the model's head says how)."""
    return model.point(torch.from_numpy(outputs)).numpy()


def predict_outputs(
    model: Forecaster,
    inputs: np.ndarray,
    origins_ms: np.ndarray | None = None,
    batch_size: int = 1024,
    precision: torch.dtype = torch.float32,
) -> np.ndarray:
    """The model's outputs for inputs ``(N, L, C)``, as :func:`predict` takes them: points
    ``(N, H, C)``, or a quantile head's quantiles ``(N, H, C, Q)``; its matrix products in
    ``precision`` (float32 or bfloat16, :func:`resolve_precision`)."""
    model.eval()
    device = next(model.parameters(), model.scale).device
    outputs = []
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size])).to(device)
        origins = None if origins_ms is None else origins_ms[i : i + batch_size]
        calendar = windows_calendar(model.config, origins)
        known = None if calendar is None else torch.from_numpy(calendar).to(device)
        lower = torch.autocast(device.type, torch.bfloat16, precision == torch.bfloat16)
        with torch.inference_mode(), lower:  # forecasts, never trained through
            outputs.append(model(x, known))
    if not outputs:
        config = model.config
        shape = (0, config.horizon, len(config.target_names), model.output_head.n_outputs)
        return np.empty(shape[:3] if shape[3] == 1 else shape, dtype=np.float32)
    return torch.cat(outputs).float().cpu().numpy()


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The number format of ``name`` (:data:`PRECISIONS`); "auto" is bfloat16 on a GPU that has
    it or a CPU with native bfloat16 dot products (AVX512-BF16 or AMX), else float32."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name != "auto":
        return torch.bfloat16 if name == "bfloat16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:  # not Linux: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def new_window(config: ForecasterConfig, grace_steps: int = 0) -> RollingWindow:
    """An empty rolling window shaped and gap-filled the way ``config``'s model expects: on
    the model's open steps, when it was trained on open hours."""
    return RollingWindow(
        config.lookback,
        config.n_channels,
        freq_to_ms(config.freq),
        config.max_gap,
        grace_steps,
        read_open_hours(config.open_hours),
    )


@dataclass(frozen=True)
class LatestWindows:
    """The newest whole window of each series in a history."""

    series: list[str]
    issued_at_ms: list[int]  # the last observed step of each series
    windows: np.ndarray  # (S, L, C)


def latest_windows(history: pd.DataFrame, config: ForecasterConfig) -> LatestWindows:
    """Replay each series of ``history`` (``series``, ``ts``, channels) through a rolling window.

    ``ts`` may be ISO-8601 text or datetimes; rows missing a channel value, or holding one that
    is not finite in float32, are skipped, as serve dead-letters them. Raises
    :class:`ForecastError` when a series does not end in ``lookback`` steps without a gap longer
    than ``max_gap``.
    """
    missing = [c for c in config.channels if c not in history.columns]
    if missing:
        raise ForecastError(f"the history has no column for channels {missing}")
    frame = history if SERIES in history.columns else history.assign(**{SERIES: SINGLE_SERIES})
    stamps = pd.to_datetime(frame[TS], utc=True).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    values = frame[list(config.channels)].to_numpy(dtype=np.float64)
    finite = (np.abs(values) <= np.finfo(np.float32).max).all(axis=1)  # False for NaN too
    usable = frame.assign(**{TS: stamps})[finite]
    usable = usable.sort_values(TS, kind="stable")  # time order; the first of a step wins
    series, issued_at_ms, windows = [], [], []
    for series_id, rows in usable.groupby(SERIES, sort=True):
        values = rows[list(config.channels)].to_numpy(dtype=np.float32)
        last_ms, window = _replay(str(series_id), rows[TS].to_numpy(), values, config)
        series.append(str(series_id))
        issued_at_ms.append(last_ms)
        windows.append(window)
    shape = (0, config.lookback, config.n_channels)
    stacked = np.stack(windows) if windows else np.empty(shape, np.float32)
    return LatestWindows(series, issued_at_ms, stacked)


def _replay(
    series_id: str, stamps: np.ndarray, values: np.ndarray, config: ForecasterConfig
) -> tuple[int, np.ndarray]:
    window = new_window(config)
    for ts_ms, row in zip(stamps.tolist(), values, strict=True):
        window.append(ts_ms, row)
    placed = window.placed()
    if not placed or placed[-1].window is None:
        raise ForecastError(
            f"series {series_id!r} does not end in {config.lookback} steps of {config.freq} "
            f"without a gap of more than {config.max_gap} steps"
        )
    return placed[-1].ts_ms, placed[-1].window


def forecast_frame(model: Forecaster, history: pd.DataFrame) -> pd.DataFrame:
    """Forecast every series of a history frame: a row per series and step ahead.

    Columns out: ``series``, ``ts`` (ISO-8601 text), ``step`` (1..horizon), the channels
    forecast (the model's targets) and, for a model with calibrated intervals, each channel's
    bounds at each level: ``<channel>_lo_<level>`` and ``<channel>_hi_<level>`` (``OT_lo_0.8``),
    the ones serve publishes for the same history.
    """
    config = model.config
    latest = latest_windows(history, config)
    issued_at_ms = np.array(latest.issued_at_ms, np.int64)
    outputs = predict_outputs(model, latest.windows, issued_at_ms)
    preds = point_forecasts(model, outputs)  # (S, H, C)
    times = model_steps(config, issued_at_ms, np.arange(1, config.horizon + 1))  # (S, H)
    rows = [
        {
            SERIES: series_id,
            TS: format_timestamp(ts_ms),
            "step": h + 1,
            **dict(zip(config.target_names, pred[h], strict=True)),
        }
        for series_id, step_times, pred in zip(latest.series, times.tolist(), preds, strict=True)
        for h, ts_ms in enumerate(step_times)
    ]
    frame = pd.DataFrame(rows, columns=[SERIES, TS, "step", *config.target_names])
    calibration = model.calibration
    if calibration is None:
        return frame
    lo, hi = interval_bounds(model, calibration, latest.windows, outputs)  # (L, S, H, C)
    for k, level in enumerate(calibration.levels):
        for c, channel in enumerate(config.target_names):
            frame[f"{channel}_lo_{level:g}"] = lo[k, :, :, c].ravel()  # series, then step
            frame[f"{channel}_hi_{level:g}"] = hi[k, :, :, c].ravel()
    return frame


def model_steps(
    config: ForecasterConfig, origins_ms: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """The times ``(N, K)`` of the steps ``offsets`` from each origin on ``config``'s steps:
    on its open steps when it was trained on open hours."""
    step_ms, hours = freq_to_ms(config.freq), read_open_hours(config.open_hours)
    return steps_from(origins_ms, step_ms, offsets, hours)


def example_history(config: ForecasterConfig) -> pd.DataFrame:
    """One series of ``lookback`` flat steps: the smallest history :func:`forecast_frame` takes."""
    times = model_steps(config, np.zeros(1, np.int64), np.arange(config.lookback))[0]
    return pd.DataFrame(
        {
            SERIES: "example",
            TS: [format_timestamp(ts_ms) for ts_ms in times.tolist()],
            **{channel: 0.0 for channel in config.channels},
        }
    )
