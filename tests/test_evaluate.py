"""Metrics and naive baselines on hand-made ``(N, L, C)`` arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluate import mae, mse, repeat_last, score, score_forecaster, seasonal_naive
from pipeline.model import StackedLSTMForecaster
from pipeline.recipe import ForecasterConfig
from pipeline.windows import WindowSet


def ramp(lookback: int, n_channels: int = 1) -> np.ndarray:
    """One window ``(1, L, C)``: channel ``c`` holds ``1, 2, ..., L`` times ``10 ** c``."""
    steps = np.arange(1, lookback + 1, dtype=np.float64)
    return np.stack([steps * 10**c for c in range(n_channels)], axis=-1)[None]


def test_repeat_last_repeats_each_windows_last_step() -> None:
    inputs = np.array(
        [
            [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]],
            [[5.0, -1.0], [4.0, -2.0], [7.0, -3.0]],
        ]
    )

    out = repeat_last(inputs, horizon=4)

    assert out.shape == (2, 4, 2)
    assert out[0].tolist() == [[3.0, 30.0]] * 4
    assert out[1].tolist() == [[7.0, -3.0]] * 4


@pytest.mark.parametrize(
    ("lookback", "season", "horizon", "expected"),
    [
        # Step T+h takes the value at T+h-season (repeating the last season as needed).
        pytest.param(6, 4, 2, [3.0, 4.0], id="season-longer-than-horizon"),
        pytest.param(6, 2, 5, [5.0, 6.0, 5.0, 6.0, 5.0], id="season-shorter-than-horizon"),
        pytest.param(4, 4, 6, [1.0, 2.0, 3.0, 4.0, 1.0, 2.0], id="season-equal-to-lookback"),
        pytest.param(5, 1, 3, [5.0, 5.0, 5.0], id="season-one-is-repeat-last"),
        pytest.param(6, 3, 3, [4.0, 5.0, 6.0], id="season-equal-to-horizon"),
    ],
)
def test_seasonal_naive_repeats_the_last_season(
    lookback: int, season: int, horizon: int, expected: list[float]
) -> None:
    out = seasonal_naive(ramp(lookback), horizon=horizon, season=season)

    assert out.shape == (1, horizon, 1)
    assert out[0, :, 0].tolist() == expected


def test_seasonal_naive_treats_channels_independently() -> None:
    out = seasonal_naive(ramp(6, n_channels=2), horizon=3, season=2)

    assert out[0].tolist() == [[5.0, 50.0], [6.0, 60.0], [5.0, 50.0]]


def test_seasonal_naive_needs_a_full_season_of_lookback() -> None:
    with pytest.raises(ValueError, match="lookback >= season"):
        seasonal_naive(ramp(3), horizon=2, season=4)


def test_mse_and_mae_in_units_of_channel_scale() -> None:
    target = np.zeros((1, 1, 2))
    pred = np.array([[[2.0, -4.0]]])

    assert mse(pred, target) == (2.0**2 + 4.0**2) / 2
    assert mae(pred, target) == (2.0 + 4.0) / 2
    # Each channel's error divided by its own scale: both become 1.
    scale = np.array([2.0, 4.0])
    assert mse(pred, target, scale) == 1.0
    assert mae(pred, target, scale) == 1.0
    assert mse(pred, target, 2.0) == (1.0 + 4.0) / 2


def test_score_of_a_perfect_forecast_is_zero_beside_the_baselines() -> None:
    inputs = ramp(8, n_channels=2)
    targets = ramp(12, n_channels=2)[:, 8:]  # the ramp goes on
    scale = np.array([1.0, 10.0])

    card = score(targets.copy(), inputs, targets, scale, season=4)

    assert card.mse == 0.0
    assert card.mae == 0.0
    assert card.repeat_last_mse == mse(repeat_last(inputs, 4), targets, scale)
    assert card.seasonal_naive_mse == mse(seasonal_naive(inputs, 4, 4), targets, scale)
    assert card.repeat_last_mse > 0
    assert card.as_metrics() == {
        "val_mse": 0.0,
        "val_mae": 0.0,
        "val_seasonal_naive_mse": card.seasonal_naive_mse,
        "val_repeat_last_mse": card.repeat_last_mse,
    }


def test_seasonal_naive_is_perfect_on_a_periodic_series() -> None:
    period = np.array([1.0, 5.0, 2.0])
    series = np.tile(period, 5)[:, None]  # (15, 1)
    inputs, targets = series[None, :9], series[None, 9:]

    card = score(targets, inputs, targets, np.ones(1), season=3)

    assert card.seasonal_naive_mse == 0.0
    assert card.repeat_last_mse > 0


def test_score_forecaster_of_a_repeat_last_network() -> None:
    # With norm="last" and a zeroed head the network forecasts exactly the last value.
    config = ForecasterConfig(
        channels=("x",), lookback=6, horizon=3, hidden_size=4, num_layers=1, segment_len=1
    )
    model = StackedLSTMForecaster(config)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    rng = np.random.default_rng(0)
    values = rng.normal(size=(90, 1)).astype(np.float32)  # 10 disjoint windows of 6 + 3 steps
    windows = WindowSet(values, np.arange(10) * 9, 6, 3, np.full(10, "a", dtype=object))

    card = score_forecaster(model, windows, season=2)

    assert card.mse == pytest.approx(card.repeat_last_mse)
    assert card.mse > 0
