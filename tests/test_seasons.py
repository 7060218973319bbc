"""Choosing seasonal-naive's period from the data: candidates, scores, the backtest, the gate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.backtest import BacktestSpec, run_backtest
from pipeline.evaluate import choose_season, season_candidates, seasonal_naive
from pipeline.recipe import ForecasterConfig
from pipeline.training import plan_season

HALF_HOUR = 1_800_000
FIVE_MINUTES = 300_000


def demand(weeks: int, seed: int = 0) -> pd.DataFrame:
    """Half-hourly demand: a daily profile, lower at weekends, with noise."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=weeks * 7 * 48, freq="30min")
    hour = dates.hour + dates.minute / 60
    weekend = dates.dayofweek >= 5
    profile = 10 + 5 * np.sin(2 * np.pi * (hour - 6) / 24) + 3 * (hour >= 17) * (hour <= 21)
    load = profile * np.where(weekend, 0.6, 1.0) + rng.normal(0, 0.2, len(dates))
    return pd.DataFrame({"date": dates, "OT": load})


def test_a_week_of_half_hours_is_chosen_when_weekends_differ() -> None:
    frame = demand(weeks=10)
    values = frame[["OT"]].to_numpy()

    choice = choose_season(values, HALF_HOUR, horizon=336, max_period=720)

    assert (choice.name, choice.period) == ("week", 336)
    assert choice.candidates == {"day": 48, "week": 336}
    assert choice.scores["week"] < choice.scores["day"]


def test_the_backtest_forecasts_a_week_ahead_with_last_weeks_values() -> None:
    frame = demand(weeks=10)
    common = {"lookback": 720, "horizon": 336, "model": "seasonal_naive"}

    chosen = run_backtest(frame, "demand", BacktestSpec("S", **common)).metrics
    daily = run_backtest(frame, "demand", BacktestSpec("S", season=48, **common)).metrics

    assert (chosen["season"], chosen["season_name"]) == (336, "week")
    assert chosen["season_mse.week"] < chosen["season_mse.day"]
    assert chosen["mse"] < daily["mse"]
    assert daily["season_name"] == "given"


def business_hours(weeks: int) -> pd.DataFrame:
    """5-minute readings 8:00 to 22:00 on weekdays only: 169 rows a day, 845 a week."""
    dates = pd.date_range("2024-01-01", periods=weeks * 7 * 288, freq="5min")
    minutes = dates.hour * 60 + dates.minute
    dates = dates[(dates.dayofweek < 5) & (minutes >= 8 * 60) & (minutes <= 22 * 60)]
    rng = np.random.default_rng(1)
    trade = np.sin(np.pi * (dates.hour + dates.minute / 60 - 8) / 14) * (1 + dates.dayofweek / 4)
    return pd.DataFrame({"date": dates, "OT": trade + rng.normal(0, 0.05, len(dates))})


def test_rows_per_open_day_and_week_are_candidates_for_business_hours() -> None:
    frame = business_hours(weeks=8)
    times = frame["date"].astype("datetime64[ms]").astype("int64").to_numpy()

    candidates = season_candidates(len(frame), FIVE_MINUTES, 24, times, max_period=900)
    choice = choose_season(frame[["OT"]].to_numpy(), FIVE_MINUTES, 24, times, max_period=900)

    assert candidates == {"day": 288, "open_day": 169, "open_week": 845}
    assert choice.name == "open_week"  # each weekday has its own level
    assert choice.scores["open_week"] < choice.scores["open_day"] < choice.scores["day"]


def test_missing_values_leave_their_forecasts_out_of_every_score() -> None:
    values = demand(weeks=10)[["OT"]].to_numpy()
    holed = values.copy()
    for start in range(700, len(holed), 900):  # gaps longer than interpolation fills
        holed[start : start + 10] = np.nan

    choice = choose_season(holed, HALF_HOUR, horizon=48, max_period=720)

    assert choice.name == "week"
    assert all(np.isfinite(score) for score in choice.scores.values())
    # Where every forecast touches a gap, nothing can be scored: the default, not NaN.
    assert choose_season(np.where(values > 0, np.nan, 0.0), HALF_HOUR, 48).name == "default"


def test_too_little_data_falls_back_to_a_day_of_steps() -> None:
    choice = choose_season(np.zeros((60, 1)), 3_600_000, horizon=24)

    assert (choice.period, choice.name, choice.scores) == (24, "default", {})
    assert choose_season(np.zeros((60, 1)), 3_600_000, 24, max_period=12).period == 1


def test_no_forecast_crosses_from_one_series_into_the_next() -> None:
    t = np.arange(24 * 10)
    level = np.sin(2 * np.pi * t / 24)[:, None]

    choice = choose_season([level, level + 100.0], 3_600_000, horizon=24)

    assert choice.scores["day"] == pytest.approx(0.0, abs=1e-20)


def test_the_score_is_seasonal_naives_own_mse() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(24 * 8, 2))
    horizon, day = 24, 24

    choice = choose_season(values, 3_600_000, horizon)

    origins = np.arange(day, len(values) - horizon + 1, horizon)  # the longest candidate: a day
    inputs = np.stack([values[o - day : o] for o in origins])
    targets = np.stack([values[o : o + horizon] for o in origins])
    expected = np.mean((seasonal_naive(inputs, horizon, day) - targets) ** 2)
    assert choice.candidates == {"day": 24} and choice.scores["day"] == pytest.approx(expected)


@pytest.mark.parametrize("given", [None, 48])
def test_the_training_gate_chooses_the_season_on_the_training_part(given: int | None) -> None:
    frame = demand(weeks=10).set_index("date")
    settings = SimpleNamespace(
        model=SimpleNamespace(season=given), train=SimpleNamespace(val_fraction=0.2)
    )
    data = SimpleNamespace(series={"site": frame})
    config = ForecasterConfig(channels=("OT",), lookback=720, horizon=336, freq="30min")

    choice = plan_season(settings, data, config)  # type: ignore[arg-type]

    assert (choice.period, choice.name) == ((336, "week") if given is None else (48, "given"))
