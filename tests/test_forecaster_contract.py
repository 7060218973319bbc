"""One contract every forecaster keeps, whatever its architecture or options.

Serve, evaluation and backtests treat forecasters alike: ``(B, L, C)`` values in, ``(B, H, C)``
float32 forecasts out in the data's own units, rebuilt exactly from a checkpoint, reproducible
under a seed, finite on a flat signal, and run in batches by :func:`pipeline.forecast.predict`.
Each test here runs on every variant below; what only one model does is tested in test_model.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.forecast import predict
from pipeline.model import Forecaster, build_forecaster, load_checkpoint, save_checkpoint
from pipeline.recipe import ForecasterConfig

# A horizon that is no multiple of the segment (the last output segment is cut) and longer than
# a season (the seasonal naive repeats it).
BASE = ForecasterConfig(
    channels=("a", "b", "c"), lookback=48, horizon=20, segment_len=8, hidden_size=16, season=12
)
VARIANTS: dict[str, dict[str, Any]] = {
    "lstm": {},
    "lstm-gru": {"cell": "gru"},
    "lstm-peephole": {"cell": "peephole"},
    "lstm-peephole-bidirectional-2-layers": {
        "cell": "peephole",
        "bidirectional": True,
        "num_layers": 2,
    },
    "lstm-bidirectional-2-layers": {"bidirectional": True, "num_layers": 2},
    "lstm-linear-decoder": {"decoder": "linear"},
    "lstm-mixed-channels-linear-decoder": {"channel_independent": False, "decoder": "linear"},
    "lstm-mixed-channels-linear-gru": {
        "channel_independent": False,
        "decoder": "linear",
        "cell": "gru",
    },
    "lstm-step-by-step": {"segment_len": 1},
    "lstm-norm-mean": {"norm": "mean"},
    "lstm-norm-mean-bidirectional-gru": {"norm": "mean", "bidirectional": True, "cell": "gru"},
    "lstm-norm-none": {"norm": "none"},
    "lstm-norm-season": {"norm": "season"},
    "dlinear": {"architecture": "dlinear"},
    "repeat_last": {"architecture": "repeat_last"},
    "seasonal_naive": {"architecture": "seasonal_naive"},
}
CONFIGS = {name: dataclasses.replace(BASE, **options) for name, options in VARIANTS.items()}
NAIVE = ("repeat_last", "seasonal_naive")


def variants(keep: Callable[[ForecasterConfig], bool] = lambda config: True) -> list[Any]:
    """The configs ``keep`` accepts, as test parameters named after their variant."""
    return [pytest.param(config, id=name) for name, config in CONFIGS.items() if keep(config)]


def is_naive(config: ForecasterConfig) -> bool:
    return config.architecture in NAIVE


def removes_the_level(config: ForecasterConfig) -> bool:
    """Whether the forecast moves with the input's level (window's last value or mean)."""
    return is_naive(config) or (config.architecture == "lstm" and config.norm != "none")


def build(config: ForecasterConfig, seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    return build_forecaster(config)


def recent_values(config: ForecasterConfig, size: int = 5, seed: int = 1) -> torch.Tensor:
    """Float32 inputs ``(size, L, C)`` around 20, like a real channel, from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    shape = (size, config.lookback, config.n_channels)
    return 20 + 5 * torch.randn(*shape, generator=generator)


def forecast(model: Forecaster, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("channels", [("a",), ("a", "b", "c")], ids=["1-channel", "3-channels"])
@pytest.mark.parametrize("config", variants())
def test_forecasts_horizon_steps_of_every_channel(
    config: ForecasterConfig, channels: tuple[str, ...]
) -> None:
    config = dataclasses.replace(config, channels=channels)

    out = forecast(build(config), recent_values(config))

    assert out.shape == (5, config.horizon, len(channels))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("config", variants())
def test_checkpoint_round_trip_rebuilds_the_same_forecaster(
    config: ForecasterConfig, tmp_path: Path
) -> None:
    model = build(config)  # in training mode, as fit leaves a model it is still training
    model.fit_scale(recent_values(config, size=32, seed=4))

    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt"))

    assert type(loaded) is type(model)
    assert loaded.config == config
    assert not loaded.training  # ready to serve: dropout off
    assert torch.equal(loaded.scale, model.scale)
    x = recent_values(config, size=7, seed=9)
    assert torch.equal(forecast(loaded, x), forecast(model, x))


@pytest.mark.parametrize("config", variants())
def test_the_same_seed_builds_the_same_forecaster(config: ForecasterConfig) -> None:
    x = recent_values(config)
    first = forecast(build(config, seed=0), x)
    torch.rand(1000)  # whatever ran in between must not matter

    again = forecast(build(config, seed=0), x)

    assert torch.equal(first, again)


@pytest.mark.parametrize("config", variants(lambda config: not is_naive(config)))
def test_another_seed_builds_another_forecaster(config: ForecasterConfig) -> None:
    x = recent_values(config)
    first, second = build(config, seed=0), build(config, seed=1)

    if config.norm == "season":  # untrained, both forecast seasonal-naive (a zero residual)
        weights = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
        assert any(not torch.equal(a, b) for a, b in weights)
    else:
        assert not torch.equal(forecast(first, x), forecast(second, x))


@pytest.mark.parametrize("config", variants(is_naive))
def test_a_naive_forecast_does_not_depend_on_the_seed(config: ForecasterConfig) -> None:
    x = recent_values(config)

    assert torch.equal(forecast(build(config, seed=0), x), forecast(build(config, seed=1), x))


@pytest.mark.parametrize("fit_scale", [False, True], ids=["unit-scale", "scale-of-a-flat-channel"])
@pytest.mark.parametrize("level", [0.0, 5.0])
@pytest.mark.parametrize("config", variants())
def test_a_constant_input_gives_a_finite_forecast(
    config: ForecasterConfig, level: float, fit_scale: bool
) -> None:
    model = build(config)
    flat = torch.full((2, config.lookback, config.n_channels), level)
    if fit_scale:  # a channel that never moved in training: the scale is at its floor
        model.fit_scale(flat)

    out = forecast(model, flat)

    assert torch.isfinite(out).all()


@pytest.mark.parametrize("level", [0.0, 5.0])
@pytest.mark.parametrize("config", variants(is_naive))
def test_a_naive_forecast_of_a_constant_is_that_constant(
    config: ForecasterConfig, level: float
) -> None:
    flat = torch.full((2, config.lookback, config.n_channels), level)

    out = forecast(build(config), flat)

    assert torch.equal(out, torch.full_like(out, level))


@pytest.mark.parametrize("config", variants(removes_the_level))
def test_a_constant_input_shifts_the_forecast_by_that_constant(config: ForecasterConfig) -> None:
    # An LSTM without training does not forecast a constant as itself (its biases add an
    # offset), but with the level removed the offset does not depend on the constant.
    model, shape = build(config), (2, config.lookback, config.n_channels)

    zero, five = forecast(model, torch.zeros(shape)), forecast(model, torch.full(shape, 5.0))

    torch.testing.assert_close(five, zero + 5.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", variants())
def test_predict_gives_one_forecast_per_window(config: ForecasterConfig) -> None:
    model = build(config)
    inputs = recent_values(config).numpy()  # (N, L, C)

    pred = predict(model, inputs, batch_size=2)  # batches of 2, 2 and 1

    assert pred.shape == (len(inputs), config.horizon, config.n_channels)
    assert pred.dtype == np.float32
    expected = forecast(model, torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", variants())
def test_predict_of_no_windows_gives_no_forecasts(config: ForecasterConfig) -> None:
    no_windows = np.empty((0, config.lookback, config.n_channels), np.float32)

    pred = predict(build(config), no_windows)

    assert pred.shape == (0, config.horizon, config.n_channels)
    assert pred.dtype == np.float32
