"""Open hours: the schedule's text form, open-step counts, and detection from generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.open_steps import (
    DAY_MS,
    WEEK_MS,
    OpenHours,
    OpenHoursError,
    detect_open_hours,
    read_open_hours,
)
from pipeline.stats import OnlineError

MONDAY_MS = int(pd.Timestamp("2024-01-01", tz="UTC").value // 10**6)  # a Monday
HOUR_MS = 3_600_000
FIVE_MIN_MS = 300_000
BUSINESS = "mon-fri 08:00-22:00"


def at(day: int, hour: float) -> int:
    """Epoch ms of ``hour`` o'clock on day ``day`` after Monday 2024-01-01 (0: that Monday)."""
    return MONDAY_MS + day * DAY_MS + int(hour * HOUR_MS)


def schedule_ts(
    weeks: int, step_ms: int = FIVE_MIN_MS, days: int = 5, hours: tuple[int, int] = (8, 22)
) -> np.ndarray:
    """Every step of ``weeks`` weeks from Monday 2024-01-01 on the first ``days`` weekdays,
    between ``hours`` (UTC)."""
    grid = MONDAY_MS + np.arange(weeks * WEEK_MS // step_ms, dtype=np.int64) * step_ms
    times = pd.to_datetime(grid, unit="ms", utc=True)
    keep = (times.day_of_week < days) & (times.hour >= hours[0]) & (times.hour < hours[1])
    return grid[np.asarray(keep)]


def without(ts: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """``ts`` with a random ``share`` of its readings lost."""
    return ts[np.random.default_rng(seed).random(len(ts)) >= share]


# --- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        BUSINESS,
        "mon-fri 00:00-24:00",
        "mon-thu 09:30-17:00; fri 09:30-13:00",
        "mon-fri 08:00-12:00,13:00-17:00; sat 09:00-12:00",
        "tue 00:00-24:00; sun 06:00-18:00",
    ],
)
def test_open_hours_read_back_from_their_text(text: str) -> None:
    hours = OpenHours.from_text(text)

    assert hours.to_text() == text
    assert OpenHours.from_text(hours.to_text()) == hours
    assert OpenHours.from_mask(hours.mask(FIVE_MIN_MS)) == hours


def test_day_lists_ranges_and_whole_days_read_as_one_schedule() -> None:
    spelled = OpenHours.from_text("mon,tue,wed 00:00-24:00; thu-fri")

    assert spelled == OpenHours.from_text("mon-fri 00:00-24:00")
    assert OpenHours.from_text("sat-mon 10:00-11:00").to_text() == (
        "mon 10:00-11:00; sat-sun 10:00-11:00"
    )


@pytest.mark.parametrize(
    "text", ["", "mon-fri 8-22", "monday 08:00-22:00", "mon 22:00-08:00", "mon 08:00-25:00"]
)
def test_unreadable_open_hours_say_how_to_write_them(text: str) -> None:
    with pytest.raises(OpenHoursError, match=r"e\.g\."):
        OpenHours.from_text(text)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (at(0, 8), True),  # Monday 08:00 opens
        (at(0, 7.99), False),
        (at(0, 21.99), True),
        (at(0, 22), False),  # 22:00 is closed: ranges are half-open
        (at(4, 12), True),  # Friday
        (at(5, 12), False),  # Saturday
        (at(6, 12), False),  # Sunday
    ],
)
def test_is_open_follows_the_weekly_schedule_in_utc(ts: int, expected: bool) -> None:
    hours = OpenHours.from_text(BUSINESS)

    assert hours.is_open(np.array([ts])).tolist() == [expected]
    assert hours.is_open_at(ts) is expected


@pytest.mark.parametrize(
    ("a", "b", "step_ms", "expected"),
    [
        (at(0, 21.5), at(1, 8), HOUR_MS, 0),  # a night is no gap
        (at(4, 21.5), at(7, 8), HOUR_MS, 0),  # nor a weekend
        (at(0, 9), at(0, 12), HOUR_MS, 2),  # 10:00 and 11:00 missing
        (at(0, 20), at(1, 10), HOUR_MS, 3),  # 21:00, then 08:00 and 09:00
        (at(4, 21 + 55 / 60), at(7, 8), FIVE_MIN_MS, 0),
        (at(0, 21 + 50 / 60), at(1, 8 + 10 / 60), FIVE_MIN_MS, 3),  # 21:55, 08:00, 08:05
        (at(0, 12), at(0, 12), HOUR_MS, 0),
        (at(0, 12), at(0, 9), HOUR_MS, 0),  # backwards: nothing between
    ],
)
def test_open_steps_between_counts_only_open_steps(
    a: int, b: int, step_ms: int, expected: int
) -> None:
    hours = OpenHours.from_text(BUSINESS)

    assert hours.open_steps_between(a, b, step_ms).item() == expected


def test_open_steps_between_is_vectorised_and_agrees_with_a_count_of_each_step() -> None:
    hours = OpenHours.from_text("mon-fri 08:00-12:00,13:00-17:00; sat 09:00-12:00")
    rng = np.random.default_rng(3)
    a = MONDAY_MS + rng.integers(0, 3 * WEEK_MS // FIVE_MIN_MS, 200) * FIVE_MIN_MS
    b = a + rng.integers(0, 800, 200) * FIVE_MIN_MS

    counted = hours.open_steps_between(a, b, FIVE_MIN_MS)

    expected = [
        int(hours.is_open(np.arange(x + FIVE_MIN_MS, y, FIVE_MIN_MS)).sum())
        for x, y in zip(a.tolist(), b.tolist(), strict=True)
    ]
    assert counted.tolist() == expected


@pytest.mark.parametrize("phase_ms", [0, 60_000])
def test_open_indices_of_open_steps_are_consecutive_and_invert(phase_ms: int) -> None:
    hours = OpenHours.from_text(BUSINESS)
    grid = schedule_ts(2) + phase_ms

    index = hours.open_index(grid, FIVE_MIN_MS, phase_ms)

    assert (np.diff(index) == 1).all()
    np.testing.assert_array_equal(hours.open_time(index, FIVE_MIN_MS, phase_ms), grid)


def test_next_open_skips_the_night_and_the_weekend() -> None:
    hours = OpenHours.from_text(BUSINESS)

    friday_evening = hours.next_open(at(4, 21 + 50 / 60), FIVE_MIN_MS, 3)
    both = hours.next_open(np.array([at(0, 9), at(4, 21.5)]), HOUR_MS, 2)

    assert friday_evening.tolist() == [at(4, 21 + 55 / 60), at(7, 8), at(7, 8 + 5 / 60)]
    assert both.tolist() == [[at(0, 10), at(0, 11)], [at(7, 8), at(7, 9)]]


def test_a_step_that_does_not_divide_a_week_is_refused() -> None:
    with pytest.raises(OpenHoursError, match="does not divide a week"):
        OpenHours.from_text(BUSINESS).open_steps_between(0, DAY_MS, 11 * HOUR_MS)


def test_a_model_configs_open_hours_are_read_once() -> None:
    assert read_open_hours(None) is None
    assert read_open_hours(BUSINESS) is read_open_hours(BUSINESS)


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "step_ms", "expected"),
    [
        (schedule_ts(4), FIVE_MIN_MS, BUSINESS),
        (schedule_ts(6, HOUR_MS, hours=(9, 17)), HOUR_MS, "mon-fri 09:00-17:00"),
        (without(schedule_ts(4), 0.2), FIVE_MIN_MS, BUSINESS),  # lost readings stay open
        (schedule_ts(4, HOUR_MS, hours=(0, 24)), HOUR_MS, "mon-fri 00:00-24:00"),  # trading
        (schedule_ts(8, DAY_MS, hours=(0, 24)), DAY_MS, "mon-fri 00:00-24:00"),  # trading days
        (schedule_ts(4, days=6, hours=(6, 20)), FIVE_MIN_MS, "mon-sat 06:00-20:00"),
    ],
    ids=["business", "office-hourly", "lossy", "trading-hourly", "trading-daily", "six-days"],
)
def test_detection_finds_recurring_closed_periods(
    ts: np.ndarray, step_ms: int, expected: str
) -> None:
    hours = detect_open_hours(ts, step_ms)

    assert hours is not None and hours.to_text() == expected


def test_a_holiday_does_not_close_its_weekday() -> None:
    ts = schedule_ts(4)
    holiday = (ts >= at(9, 0)) & (ts < at(10, 0))  # Wednesday of the second week

    hours = detect_open_hours(ts[~holiday], FIVE_MIN_MS)

    assert hours is not None and hours.to_text() == BUSINESS


@pytest.mark.parametrize(
    ("ts", "step_ms"),
    [
        (np.arange(MONDAY_MS, at(28, 0), HOUR_MS), HOUR_MS),  # around the clock
        (without(np.arange(MONDAY_MS, at(28, 0), FIVE_MIN_MS), 0.3), FIVE_MIN_MS),
        (without(np.arange(MONDAY_MS, at(21, 0), HOUR_MS), 0.5, seed=1), HOUR_MS),
        (schedule_ts(1), FIVE_MIN_MS),  # a week: a closure cannot be told from an outage
        (np.array([MONDAY_MS]), HOUR_MS),
        (np.empty(0, np.int64), HOUR_MS),
    ],
    ids=["24/7", "24/7-lossy", "24/7-half-lost", "too-short", "one-reading", "empty"],
)
def test_data_observed_around_the_clock_has_no_open_hours(ts: np.ndarray, step_ms: int) -> None:
    assert detect_open_hours(ts, step_ms) is None


def test_an_outage_of_a_few_days_is_no_closed_period() -> None:
    ts = np.arange(MONDAY_MS, at(35, 0), FIVE_MIN_MS)
    outage = (ts >= at(10, 3)) & (ts < at(13, 15))

    assert detect_open_hours(ts[~outage], FIVE_MIN_MS) is None


def test_detection_pools_the_series_of_a_fleet() -> None:
    full = schedule_ts(4)
    no_wednesdays = full[pd.to_datetime(full, unit="ms", utc=True).day_of_week != 2]
    ts = np.concatenate([no_wednesdays, full[500:], [MONDAY_MS]])  # and a one-reading series
    bounds = np.array([0, len(no_wednesdays), len(ts) - 1, len(ts)])

    alone = detect_open_hours(no_wednesdays, FIVE_MIN_MS)
    pooled = detect_open_hours(ts, FIVE_MIN_MS, bounds)

    assert alone is not None and alone.to_text() == "mon-tue 08:00-22:00; thu-fri 08:00-22:00"
    assert pooled is not None and pooled.to_text() == BUSINESS


def test_a_forecast_issued_on_friday_is_scored_against_mondays_actuals() -> None:
    hours = OpenHours.from_text("mon-fri 00:00-24:00")
    online = OnlineError(horizon=2, step_ms=DAY_MS, hours=hours)
    friday, monday, tuesday = 8 * DAY_MS, 11 * DAY_MS, 12 * DAY_MS  # 1970-01-09, -12, -13
    scoring = (friday, np.array([[1.0], [2.0]]), None, "")  # no intervals
    assert online.score(scoring, monday, np.array([1.5]))  # the first step: one left
    assert not online.score(scoring, tuesday, np.array([2.0]))  # the second: fully scored
    online.settle()
    assert online.mae() == [0.5, 0.0]
