"""Calendar features: what they say of a timestamp, and that every path computes the same ones."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flows.cli import main
from pipeline.backtest import BacktestSpec, run_backtest
from pipeline.covariates import (
    CalendarError,
    calendar_features,
    feature_names,
    rows_calendar,
    windows_calendar,
)
from pipeline.forecast import forecast_frame, predict
from pipeline.model import build_forecaster, load_checkpoint, save_checkpoint
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import fit
from pipeline.windows import build_window_sets

HOUR_MS = 3_600_000
CONFIG = ForecasterConfig(
    channels=("load",),
    lookback=24,
    horizon=12,
    segment_len=6,
    hidden_size=16,
    calendar=True,
    holidays="GB",
)


def ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)


def features_at(text: str, **kwargs: str) -> dict[str, float]:
    values = calendar_features(np.array([ms(text)]), **kwargs)[0]
    return dict(zip(feature_names(kwargs.get("holidays")), values.tolist(), strict=True))


def test_each_cycle_is_a_point_on_a_circle() -> None:
    midnight_monday = features_at("2024-01-01T00:00Z")
    noon = features_at("2024-01-01T12:00Z")
    assert midnight_monday["day_cos"] == pytest.approx(1.0)
    assert noon["day_cos"] == pytest.approx(-1.0)
    # Monday 00:00 starts the week; the year starts on 1 January.
    assert (midnight_monday["week_sin"], midnight_monday["week_cos"]) == pytest.approx((0, 1))
    assert (midnight_monday["year_sin"], midnight_monday["year_cos"]) == pytest.approx((0, 1))
    # 23:59 sits next to 00:00, not a day away.
    late = features_at("2024-01-01T23:59Z")
    assert abs(late["day_cos"] - midnight_monday["day_cos"]) < 1e-3


def test_public_holidays_of_the_region_are_flagged() -> None:
    assert features_at("2024-12-25T10:00Z", holidays="GB")["holiday"] == 1.0
    assert features_at("2024-12-27T10:00Z", holidays="GB")["holiday"] == 0.0
    # Melbourne Cup day is a holiday in Victoria only.
    assert features_at("2024-11-05T02:00Z", holidays="AU-VIC")["holiday"] == 1.0
    assert features_at("2024-11-05T02:00Z", holidays="AU-NSW")["holiday"] == 0.0


def test_the_calendar_is_read_in_the_models_time_zone() -> None:
    # 13:00 UTC on 24 December is midnight, Christmas Day, in Melbourne (UTC+11 in summer).
    utc = features_at("2024-12-24T13:00Z", holidays="AU-VIC")
    local = features_at("2024-12-24T13:00Z", holidays="AU-VIC", timezone="Australia/Melbourne")
    assert (utc["holiday"], local["holiday"]) == (0.0, 1.0)
    assert local["day_cos"] == pytest.approx(1.0)


@pytest.mark.parametrize(("holidays", "timezone"), [("XX", "UTC"), (None, "Mars/Olympus")])
def test_an_unknown_region_or_zone_is_a_clear_error(holidays: str | None, timezone: str) -> None:
    with pytest.raises(CalendarError, match="unknown"):
        calendar_features(np.array([0]), holidays, timezone)


def hourly_series(n_steps: int, start: str = "2024-12-01T00:00Z") -> pd.DataFrame:
    index = pd.date_range(start, periods=n_steps, freq="1h", name="ts")
    hour = index.hour.to_numpy()
    weekend = index.dayofweek.to_numpy() >= 5
    return pd.DataFrame({"load": np.sin(2 * np.pi * hour / 24) + 2.0 * weekend}, index=index)


def test_training_and_serving_compute_the_same_features_for_a_window() -> None:
    train, _ = build_window_sets({"a": hourly_series(400)}, ["load"], 24, 12, 0.25)
    rows = rows_calendar(CONFIG, train.times)
    assert rows is not None
    gathered = rows[train.starts[:, None] + np.arange(24 + 12)]  # what training reads
    from_origins = windows_calendar(CONFIG, train.origins)  # what serve and the pyfunc read
    np.testing.assert_array_equal(gathered, from_origins)


def test_serving_reads_an_open_hours_windows_calendar_at_its_open_steps() -> None:
    every_hour = hourly_series(24 * 28)
    index = every_hour.index
    business = every_hour[(index.dayofweek < 5) & (index.hour >= 8) & (index.hour < 18)]
    config = replace(CONFIG, open_hours="mon-fri 08:00-18:00")
    train, _ = build_window_sets({"a": business}, ["load"], 24, 12, 0.25)
    rows = rows_calendar(config, train.times)
    assert rows is not None
    gathered = rows[train.starts[:, None] + np.arange(24 + 12)]  # the rows' own times
    np.testing.assert_array_equal(gathered, windows_calendar(config, train.origins))
    # Without the open hours the horizon would be read at night: the features differ.
    assert not np.array_equal(gathered, windows_calendar(CONFIG, train.origins))


def test_a_calendar_model_reads_the_horizons_calendar() -> None:
    model = build_forecaster(CONFIG, seed=0).eval()
    x = torch.zeros(1, CONFIG.lookback, 1)
    monday = torch.from_numpy(windows_calendar(CONFIG, np.array([ms("2024-12-23T11:00Z")])))
    christmas = torch.from_numpy(windows_calendar(CONFIG, np.array([ms("2024-12-24T23:00Z")])))
    assert not torch.allclose(model(x, monday), model(x, christmas))
    with pytest.raises(ValueError, match="calendar"):
        model(x)


def test_pyfunc_path_forecasts_what_the_window_set_forecasts(tmp_path: object) -> None:
    """The pyfunc (forecast_frame, from raw rows) and training's windows give one forecast."""
    series = hourly_series(200)
    model = build_forecaster(CONFIG, seed=0).eval()
    _, val = build_window_sets({"a": series}, ["load"], 24, 12, 0.2)
    last = val.subset(np.array([len(val) - 1]))
    history = series.iloc[: last.starts[0] + 24].reset_index()
    from_rows = forecast_frame(model, history)["load"].to_numpy()
    from_windows = predict(model, last.inputs, last.origins)[0, :, 0]
    np.testing.assert_allclose(from_rows, from_windows, rtol=1e-6)


def test_a_calendar_model_survives_its_checkpoint(tmp_path: pytest.TempPathFactory) -> None:
    model = build_forecaster(CONFIG, seed=0)
    path = save_checkpoint(model, tmp_path / "model.pt")  # type: ignore[operator]
    loaded = load_checkpoint(path)
    assert loaded.config == CONFIG
    origins = np.array([ms("2024-12-24T23:00Z")])
    x = np.zeros((1, 24, 1), np.float32)
    np.testing.assert_array_equal(predict(model, x, origins), predict(loaded, x, origins))


def test_the_calendar_lets_a_short_lookback_see_the_weekend() -> None:
    """A series that jumps at weekends, with a lookback of one day: only the calendar tells
    the model that a weekend is coming, so it validates far better with it."""
    series = {"a": hourly_series(24 * 7 * 12, start="2024-01-01T00:00Z")}
    train, val = build_window_sets(series, ["load"], 24, 24, 0.25)
    training = TrainConfig(max_steps=300, eval_every=50, patience=3, batch_size=64, seed=0)
    losses = {}
    for calendar in (False, True):
        config = replace(CONFIG, horizon=24, calendar=calendar, holidays=None)
        losses[calendar] = fit(build_forecaster(config, seed=0), train, val, training).best_val_loss
    assert losses[True] < 0.5 * losses[False]


def leading_indicator(n_steps: int, lead: int = 24, seed: int = 0) -> pd.DataFrame:
    """``load`` repeats, ``lead`` steps later, a random walk ``temp``: only the past of
    ``temp`` tells what ``load`` will do."""
    temp = np.cumsum(np.random.default_rng(seed).normal(size=n_steps + lead))
    index = pd.date_range("2024-01-01", periods=n_steps, freq="1h", name="ts")
    return pd.DataFrame({"temp": temp[lead:], "load": temp[:-lead]}, index=index)


def test_inputs_only_channels_inform_the_targets_and_are_not_forecast() -> None:
    series = {"a": leading_indicator(3000)}
    shape = {"lookback": 24, "horizon": 12, "segment_len": 6, "hidden_size": 32}
    training = TrainConfig(max_steps=300, eval_every=50, patience=3, batch_size=64, seed=0)
    losses = {}
    for channels in (("load",), ("temp", "load")):
        config = ForecasterConfig(channels=channels, targets=("load",), **shape)
        train, val = build_window_sets(series, channels, 24, 12, 0.25)
        columns = config.target_index
        train, val = train.forecasting(columns), val.forecasting(columns)
        model = build_forecaster(config, seed=0)
        losses[channels] = fit(model, train, val, training).best_val_loss
        assert predict(model, val.inputs[:3]).shape == (3, 12, 1)
    assert losses[("temp", "load")] < 0.5 * losses[("load",)]


def test_a_history_forecast_has_only_the_target_columns() -> None:
    config = ForecasterConfig(
        channels=("temp", "load"), targets=("load",), lookback=12, horizon=4, segment_len=4
    )
    history = leading_indicator(40).reset_index()
    out = forecast_frame(build_forecaster(config, seed=0), history)
    assert list(out.columns) == ["series", "ts", "step", "load"]


def test_a_target_that_is_not_a_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="targets"):
        build_forecaster(ForecasterConfig(channels=("load",), targets=("temp",), lookback=4))


def test_the_backtest_gives_the_calendar_the_datas_own_step() -> None:
    """A half-hourly file: its windows' calendars must step by 30 minutes, as its rows do
    (with the default hourly step the test split's calendar was read at twice its pace)."""
    index = pd.date_range("2024-01-01", periods=2000, freq="30min")
    frame = pd.DataFrame({"date": index, "OT": np.sin(np.arange(2000) * 2 * np.pi / 48)})
    spec = BacktestSpec(
        features="S",
        horizon=12,
        lookback=48,
        model_overrides={"calendar": True, "segment_len": 12, "hidden_size": 8},
        train_overrides={"max_steps": 2},
    )
    result = run_backtest(frame, "halfhourly", spec)
    config = ForecasterConfig.from_dict(result.metrics["model_config"])
    assert config.freq == "30min"


def test_the_backtest_command_forecasts_the_target_of_ms_with_a_calendar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "demand.csv"
    frame = leading_indicator(400).reset_index().rename(columns={"ts": "date", "load": "OT"})
    frame.to_csv(csv, index=False)
    options = ["--features", "MS", "--calendar", "--holidays", "GB", "--lookback", "24"]
    options += ["--horizon", "8", "--max-steps", "3", "--out", str(tmp_path / "out")]

    assert main(["backtest", "--data", str(csv), *options]) == 0
    predictions = np.load(tmp_path / "out" / "predictions.npy")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert predictions.shape[1:] == (8, 1)  # OT alone, though both columns were read
    assert metrics["model_config"]["calendar"] and metrics["model_config"]["targets"] == ["OT"]
    bad = ["--holidays", "XX", "--out", str(tmp_path / "bad")]
    assert main(["backtest", "--data", str(csv), *bad]) == 2
    assert "unknown holiday region 'XX'" in capsys.readouterr().err
