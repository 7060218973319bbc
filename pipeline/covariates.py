"""Covariates: the future-known calendar features, the one function that turns timestamps into
model inputs.

Training, the backtest, serve and the MLflow pyfunc all call :func:`calendar_features` (through
:func:`window_calendar` where only each window's last timestamp is known), so a model sees the
same features for the same history wherever it runs. numpy and pandas only; the ``holidays``
package is imported only when a region is asked for.

Features, in :data:`CYCLES` order, each a sine and a cosine so that 23:59 sits next to 00:00:

* the time of day, the day of the week and the day of the year, in the model's time zone;
* with a holiday region (``"AU-VIC"``: a country code, then an optional subdivision), a last
  feature that is 1.0 on that region's public holidays and 0.0 on other days.

>>> noon = np.array([43_200_000])  # 1970-01-01 12:00 UTC, a Thursday
>>> features = calendar_features(noon)
>>> features.shape, [round(float(v), 3) for v in features[0, :2]]
((1, 6), [0.0, -1.0])
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from pipeline.open_steps import OpenHours, read_open_hours, steps_from
from pipeline.recipe import ForecasterConfig
from pipeline.windows import freq_to_ms

# The cycles encoded, each as (sin, cos): fraction of a day, of a week, of a year.
CYCLES = ("day", "week", "year")
DAY_MS = 86_400_000
DAYS_PER_YEAR = 365.2425
HOLIDAY = "holiday"


class CalendarError(ValueError):
    """A time zone or holiday region that does not exist."""


def feature_names(holidays: str | None = None) -> tuple[str, ...]:
    """The names of the features :func:`calendar_features` gives, in column order.

    >>> feature_names("AU-VIC")
    ('day_sin', 'day_cos', 'week_sin', 'week_cos', 'year_sin', 'year_cos', 'holiday')
    """
    cycles = tuple(f"{cycle}_{part}" for cycle in CYCLES for part in ("sin", "cos"))
    return cycles + ((HOLIDAY,) if holidays else ())


def calendar_features(
    ts_ms: np.ndarray, holidays: str | None = None, timezone: str = "UTC"
) -> np.ndarray:
    """Calendar features of timestamps: ``ts_ms`` of any shape ``S`` gives ``S + (F,)`` float32.

    ``ts_ms`` are epoch milliseconds; ``holidays`` a region such as ``"GB"`` or ``"AU-VIC"``;
    ``timezone`` an IANA name. Cost is linear in the number of timestamps. Raises
    :class:`CalendarError` for an unknown region or time zone.
    """
    flat = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    local = _local_times(flat, timezone)
    day = (local.hour * 3600 + local.minute * 60 + local.second).to_numpy() / 86_400.0
    week = (local.dayofweek.to_numpy() + day) / 7.0
    year = (local.dayofyear.to_numpy() - 1 + day) / DAYS_PER_YEAR
    angles = 2 * np.pi * np.stack([day, week, year], axis=-1)  # (N, 3)
    columns = [wave(angles[:, k]) for k in range(len(CYCLES)) for wave in (np.sin, np.cos)]
    if holidays:
        columns.append(_holiday_flags(local, holidays))
    features = np.stack(columns, axis=-1).astype(np.float32)  # (N, F)
    return features.reshape(*np.shape(ts_ms), features.shape[-1])


def window_times(
    origins_ms: np.ndarray,
    step_ms: int,
    lookback: int,
    horizon: int,
    hours: OpenHours | None = None,
) -> np.ndarray:
    """The timestamps of each window's lookback and horizon, from its last observed step.

    ``origins_ms`` ``(N,)`` gives ``(N, lookback + horizon)``: the window ends at its origin,
    and the horizon's steps follow it; on open steps only, with ``hours``.

    >>> window_times(np.array([100]), step_ms=10, lookback=3, horizon=2).tolist()
    [[80, 90, 100, 110, 120]]
    """
    offsets = np.arange(-(lookback - 1), horizon + 1, dtype=np.int64)
    return steps_from(origins_ms, step_ms, offsets, hours)


def window_calendar(
    origins_ms: np.ndarray,
    step_ms: int,
    span: tuple[int, int],
    holidays: str | None = None,
    timezone: str = "UTC",
    hours: OpenHours | None = None,
) -> np.ndarray:
    """Calendar features ``(N, L + H, F)`` of windows ending at ``origins_ms`` ``(N,)``, where
    ``span`` is ``(lookback, horizon)``, on open steps with ``hours``: what serve and the
    pyfunc give a model."""
    unique, index = np.unique(np.asarray(origins_ms, dtype=np.int64), return_inverse=True)
    times = window_times(unique, step_ms, *span, hours)  # a fleet's windows mostly share one
    return calendar_features(times, holidays, timezone)[index.reshape(-1)]


def check_calendar(holidays: str | None, timezone: str) -> None:
    """Raise :class:`CalendarError` unless the region and the time zone exist."""
    calendar_features(np.zeros(1, dtype=np.int64), holidays, timezone)


def _local_times(ts_ms: np.ndarray, timezone: str) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(ts_ms.astype("datetime64[ms]")).tz_localize("UTC")
    if timezone == "UTC":
        return times
    try:
        return times.tz_convert(timezone)
    except (KeyError, ValueError) as err:  # zoneinfo's unknown-key error is a KeyError
        raise CalendarError(f"unknown time zone {timezone!r}: use an IANA name") from err


def _holiday_flags(local: pd.DatetimeIndex, region: str) -> np.ndarray:
    """1.0 where the local date is a public holiday of ``region``."""
    days = local.normalize().tz_localize(None).to_numpy().astype("datetime64[D]")
    first, last = int(local.year.min()), int(local.year.max())
    known = _holiday_days(region, first, last)
    return np.isin(days, known).astype(np.float32)


@lru_cache(maxsize=64)
def _holiday_days(region: str, first_year: int, last_year: int) -> np.ndarray:
    """The public holidays of ``region`` from ``first_year`` to ``last_year``, as days."""
    import holidays as holiday_calendars  # only when a region is asked for

    country, _, subdivision = region.partition("-")
    try:
        calendar = holiday_calendars.country_holidays(
            country, subdiv=subdivision or None, years=range(first_year, last_year + 1)
        )
    except NotImplementedError as err:
        raise CalendarError(
            f"unknown holiday region {region!r}: use a country code such as 'GB', "
            "optionally with a subdivision, such as 'AU-VIC'"
        ) from err
    return np.array(sorted(calendar.keys()), dtype="datetime64[D]")


def rows_calendar(config: ForecasterConfig, times: np.ndarray | None) -> np.ndarray | None:
    """The calendar features ``(T, F)`` of rows at ``times`` ``(T,)`` that ``config``'s model
    reads (training gathers each window's from these); None when it reads none."""
    if not config.calendar:
        return None
    if times is None:
        raise CalendarError("this model reads calendar features, and the rows have no times")
    return calendar_features(times, config.holidays, config.timezone)


def windows_calendar(config: ForecasterConfig, origins_ms: np.ndarray | None) -> np.ndarray | None:
    """The calendar features ``(N, L + H, F)`` of windows whose last steps are ``origins_ms``
    ``(N,)``, for ``config``'s model; None when it reads none."""
    if not config.calendar:
        return None
    if origins_ms is None:
        raise CalendarError("this model reads calendar features: give each window's last time")
    span = (config.lookback, config.horizon)
    step_ms, hours = freq_to_ms(config.freq), read_open_hours(config.open_hours)
    return window_calendar(origins_ms, step_ms, span, config.holidays, config.timezone, hours)
