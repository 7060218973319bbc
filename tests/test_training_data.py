"""Training data of series with recurring closed periods: trained on their open steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.open_steps import OpenHours
from pipeline.records import RecordPolicy
from pipeline.training_data import (
    NO_OPEN_HOURS,
    TrainingData,
    frames_to_rows,
    prepare_training_data,
)
from pipeline.windows import build_window_sets

MONDAY = pd.Timestamp("2024-01-01", tz="UTC")
BUSINESS = "mon-fri 08:00-22:00"
SPAN = 889  # the issue's: a lookback of 864 and a horizon of 25, on 5-minute steps
OPEN_PER_DAY = 14 * 12


def business_hours(series: str, weeks: int = 5, seed: int = 0) -> pd.DataFrame:
    """5-minute steps 08:00-22:00 on weekdays, none at night or at weekends: a daily cycle."""
    grid = pd.date_range(MONDAY, periods=weeks * 7 * 288, freq="5min")
    steps = grid[(grid.day_of_week < 5) & (grid.hour >= 8) & (grid.hour < 22)]
    minutes = (steps.hour - 8) * 60 + steps.minute
    noise = np.random.default_rng(seed).normal(0, 0.05, len(steps))
    return pd.DataFrame(
        {"series": series, "ts": steps, "load": np.sin(np.pi * minutes / 840) + noise}
    )


def around_the_clock(series: str, weeks: int = 5) -> pd.DataFrame:
    steps = pd.date_range(MONDAY, periods=weeks * 7 * 288, freq="5min")
    return pd.DataFrame({"series": series, "ts": steps, "load": np.arange(len(steps), dtype=float)})


def prepare(frames: list[pd.DataFrame], gap_policy: str = "auto") -> TrainingData:
    rows = frames_to_rows(frames)
    return prepare_training_data(rows, RecordPolicy(), None, 3, SPAN, gap_policy)


def test_a_business_hours_series_trains_on_its_open_steps() -> None:
    data = prepare([business_hours("a"), business_hours("b", seed=1)])

    assert data.skipped == {} and sorted(data.series) == ["a", "b"]
    assert data.contract.open_hours == BUSINESS
    frame = data.series["a"]
    assert len(frame) == 25 * OPEN_PER_DAY and not frame["load"].isna().any()
    assert set(frame.index.day_of_week) == {0, 1, 2, 3, 4}
    train, val = build_window_sets(data.series, ["load"], SPAN - 25, 25, 0.2)
    assert len(train) and len(val)
    times = train.times
    assert times is not None and OpenHours.from_text(BUSINESS).is_open(times).all()
    first, last = times[train.starts], times[train.starts + SPAN - 1]
    assert (last - first > 2 * 86_400_000).any()  # windows run across the weekend


def test_on_every_step_a_business_hours_series_is_skipped_as_before() -> None:
    data = prepare([business_hours("a")], gap_policy="continuous")

    assert data.contract.open_hours is None and not data.series
    assert data.skipped["a"].startswith(f"no stretch of {SPAN} steps without a gap over 3")


def test_a_series_observed_around_the_clock_keeps_every_step() -> None:
    data = prepare([around_the_clock("a")])

    assert data.contract.open_hours is None and list(data.series) == ["a"]
    assert len(data.series["a"]) == 5 * 7 * 288


@pytest.mark.parametrize("series", [around_the_clock("a"), around_the_clock("a", weeks=1)])
def test_requiring_open_hours_leaves_out_series_without_them(series: pd.DataFrame) -> None:
    data = prepare([series], gap_policy="open_hours")

    assert not data.series and data.skipped == {"a": NO_OPEN_HOURS}
