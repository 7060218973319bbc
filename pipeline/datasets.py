"""Sources of observations: the synthetic sensor fleet and CSV replay (ETT and the like).

Both produce a long frame (``series``, ``ts``, one column per channel) that
:func:`frame_to_observations` turns into observations in time order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import RollcastError
from pipeline.records import Observation
from pipeline.windows import SERIES, TS, channel_columns

HOURS_PER_DAY = 24
HOURS_PER_WEEK = 168
# A gap needs a step before and after it; shorter series are sent whole.
MIN_STEPS_FOR_GAPS = 8


class DatasetError(RollcastError):
    """A data file that cannot be read as a time series."""


@dataclass(frozen=True)
class FleetSpec:
    """A fleet of hourly sensors with daily and weekly seasonality, trend, noise and gaps."""

    n_series: int = 8
    n_steps: int = 2000  # per series
    start: str = "2024-01-01T00:00:00Z"
    freq: str = "1h"
    gaps_per_series: int = 3  # each removes 1-2 steps: short enough to be interpolated
    seed: int = 0


def synthetic_fleet(spec: FleetSpec) -> pd.DataFrame:
    """The fleet as a long frame with channels ``load`` and ``temp``, gaps already removed."""
    rng = np.random.default_rng(spec.seed)
    hours = np.arange(spec.n_steps, dtype=np.float64)
    stamps = pd.date_range(spec.start, periods=spec.n_steps, freq=spec.freq)
    frames = [
        _sensor(f"sensor-{i:03d}", hours, stamps, rng, spec.gaps_per_series)
        for i in range(spec.n_series)
    ]
    return pd.concat(frames, ignore_index=True)


def _sensor(
    series_id: str, hours: np.ndarray, stamps: pd.DatetimeIndex, rng: np.random.Generator, gaps: int
) -> pd.DataFrame:
    daily = np.sin(2 * np.pi * (hours / HOURS_PER_DAY + rng.uniform()))
    weekly = np.sin(2 * np.pi * (hours / HOURS_PER_WEEK + rng.uniform()))
    level, trend = rng.uniform(20, 60), rng.uniform(-2, 2) / len(hours)
    load = level + rng.uniform(4, 10) * daily + rng.uniform(1, 4) * weekly + trend * hours
    temp = 15 + 5 * np.roll(daily, 3) + 0.5 * weekly
    frame = pd.DataFrame(
        {
            SERIES: series_id,
            TS: stamps,
            "load": load + rng.normal(0, 0.5, len(hours)),
            "temp": temp + rng.normal(0, 0.3, len(hours)),
        }
    )
    if len(hours) < MIN_STEPS_FOR_GAPS:
        return frame
    starts = rng.integers(1, len(hours) - 3, size=gaps)
    dropped = [step for s in starts for step in range(s, s + rng.integers(1, 3))]
    return frame.drop(index=dropped)


def load_csv(path: Path, series_id: str | None = None) -> pd.DataFrame:
    """A CSV with a date column (``date`` or the first one) and numeric columns, as a long frame.

    Non-numeric columns other than the date are ignored. Naive dates are taken as UTC.
    """
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    raw = pd.read_csv(path)
    date_column = "date" if "date" in raw.columns else raw.columns[0]
    try:
        stamps = pd.to_datetime(raw[date_column], utc=True)
    except (ValueError, TypeError) as err:
        raise DatasetError(f"{path}: column {date_column!r} is not a date: {err}") from err
    numeric = raw.drop(columns=[date_column]).select_dtypes("number")
    if numeric.empty:
        raise DatasetError(f"{path} has no numeric columns besides {date_column!r}")
    return numeric.assign(**{SERIES: series_id or path.stem, TS: stamps})[
        [SERIES, TS, *numeric.columns]
    ]


def frame_to_observations(frame: pd.DataFrame, limit: int | None = None) -> Iterator[Observation]:
    """Observations in time order (series interleaved as a live fleet would send them)."""
    ordered = frame.sort_values([TS, SERIES], kind="stable")
    if limit is not None:
        ordered = ordered.head(limit)
    channels = channel_columns(frame)
    ts_ms = ordered[TS].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    values = ordered[channels].to_numpy(dtype=np.float64)
    for series_id, ts, row in zip(ordered[SERIES].to_numpy(), ts_ms, values, strict=True):
        present = {c: float(v) for c, v in zip(channels, row, strict=True) if np.isfinite(v)}
        yield Observation(series=str(series_id), ts_ms=int(ts), values=present)
