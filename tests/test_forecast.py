"""Inference from raw history: the same windows, gaps and duplicates as the serve loop makes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.forecast import (
    ForecastError,
    example_history,
    forecast_frame,
    latest_windows,
    new_window,
    predict_outputs,
    resolve_precision,
)
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.windows import format_timestamp

LOOKBACK, HORIZON, HOUR_MS = 4, 2, 3_600_000
CONFIG = ForecasterConfig(
    channels=("load",), lookback=LOOKBACK, horizon=HORIZON, architecture="dlinear", max_gap=2
)


def history(series: str, steps: list[int], values: list[float] | None = None) -> pd.DataFrame:
    values = [float(s) for s in steps] if values is None else values
    return pd.DataFrame(
        {
            "series": series,
            "ts": [format_timestamp(s * HOUR_MS) for s in steps],
            "load": values,
        }
    )


def test_a_short_gap_is_interpolated_as_the_stream_server_does() -> None:
    latest = latest_windows(history("a", [0, 1, 2, 5]), CONFIG)  # steps 3 and 4 missing

    assert latest.series == ["a"] and latest.issued_at_ms == [5 * HOUR_MS]
    np.testing.assert_allclose(latest.windows[0, :, 0], [2.0, 3.0, 4.0, 5.0])


def test_the_first_observation_of_a_step_wins() -> None:
    rows = pd.concat([history("a", [0, 1, 2, 3]), history("a", [3], [99.0])])
    late_in_step = history("a", [2], [50.0]).assign(ts="1970-01-01T02:30:00Z")

    latest = latest_windows(pd.concat([rows, late_in_step]), CONFIG)

    np.testing.assert_array_equal(latest.windows[0, :, 0], [0.0, 1.0, 2.0, 3.0])


def test_rows_are_replayed_in_time_order_whatever_the_frame_order() -> None:
    shuffled = history("a", [0, 1, 2, 3]).iloc[[2, 0, 3, 1]]

    latest = latest_windows(shuffled, CONFIG)

    np.testing.assert_array_equal(latest.windows[0, :, 0], [0.0, 1.0, 2.0, 3.0])


def test_a_long_gap_needs_lookback_new_steps() -> None:
    restarted = history("a", [0, 1, 2, 3, 7, 8, 9])  # 3 missing steps > max_gap 2

    with pytest.raises(ForecastError, match="'a' does not end in 4 steps"):
        latest_windows(restarted, CONFIG)
    latest = latest_windows(history("a", [0, 1, 2, 3, 7, 8, 9, 10]), CONFIG)
    np.testing.assert_array_equal(latest.windows[0, :, 0], [7.0, 8.0, 9.0, 10.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e39, -1e308])
def test_rows_serve_would_dead_letter_are_skipped(bad: float) -> None:
    rows = history("a", [0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, bad])

    latest = latest_windows(rows, CONFIG)

    assert latest.issued_at_ms == [3 * HOUR_MS]
    assert np.isfinite(latest.windows).all()


def test_a_history_without_the_models_channel_is_a_clear_error() -> None:
    with pytest.raises(ForecastError, match=r"channels \['load'\]"):
        latest_windows(history("a", [0, 1, 2, 3]).rename(columns={"load": "temp"}), CONFIG)


def test_forecast_frame_gives_each_series_horizon_steps_after_its_last_step() -> None:
    torch.manual_seed(0)
    model = build_forecaster(CONFIG).eval()
    rows = pd.concat([history("b", [10, 11, 12, 13]), history("a", [0, 1, 2, 3])])

    out = forecast_frame(model, rows)

    assert out["series"].tolist() == ["a", "a", "b", "b"]
    assert out["step"].tolist() == [1, 2, 1, 2]
    assert out["ts"].tolist() == [format_timestamp(h * HOUR_MS) for h in (4, 5, 14, 15)]
    assert out["load"].notna().all()


def test_the_example_history_is_the_smallest_input_that_forecasts() -> None:
    model = build_forecaster(CONFIG).eval()

    out = forecast_frame(model, example_history(CONFIG))

    assert len(out) == HORIZON


def test_windows_follow_the_models_gap_policy() -> None:
    window = new_window(CONFIG)
    for step in (0, 1, 2, 4):
        window.append(step * HOUR_MS, np.array([float(step)], np.float32))

    placed = window.placed()

    assert placed[-1].window is not None
    np.testing.assert_array_equal(placed[-1].window[:, 0], [1.0, 2.0, 3.0, 4.0])


def test_a_model_trained_on_open_hours_keeps_its_window_whole_across_a_weekend() -> None:
    config = ForecasterConfig(
        channels=("load",),
        lookback=LOOKBACK,
        horizon=HORIZON,
        architecture="dlinear",
        max_gap=2,
        open_hours="mon-fri 09:00-17:00",
    )
    friday_16, monday = 4 * 24 + 16, 7 * 24  # hours after Monday 1970-01-05 00:00
    steps = [s + 4 * 24 for s in (friday_16 - 1, friday_16, monday + 9, monday + 10)]

    latest = latest_windows(history("a", steps), config)
    every_step = new_window(CONFIG)
    for s in steps:
        every_step.append(s * HOUR_MS, np.array([float(s)]))

    assert latest.issued_at_ms == [steps[-1] * HOUR_MS]
    np.testing.assert_array_equal(latest.windows[0, :, 0], steps)
    assert not every_step.is_whole  # the weekend is a gap on every step


def test_bfloat16_forecasts_are_float32_ones_to_about_three_digits() -> None:
    torch.manual_seed(0)
    config = ForecasterConfig(("load",), lookback=48, horizon=12, hidden_size=32, segment_len=12)
    model = build_forecaster(config).eval()
    windows = np.cumsum(np.random.default_rng(0).normal(size=(64, 48, 1)), axis=1) + 100
    windows = windows.astype(np.float32)

    exact = predict_outputs(model, windows)
    lower = predict_outputs(model, windows, precision=torch.bfloat16)

    residual = exact - windows[:, -1:, :]  # what the network adds to the last value
    assert not np.array_equal(lower, exact)  # the setting reaches the arithmetic
    assert np.abs(lower - exact).max() < 0.02 * np.abs(residual).max()


@pytest.mark.parametrize(
    ("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_a_precision_is_named_or_refused(name: str, dtype: torch.dtype) -> None:
    assert resolve_precision(name, torch.device("cpu")) is dtype
    assert resolve_precision("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="float32, bfloat16, auto"):
        resolve_precision("float16", torch.device("cpu"))
