"""The output heads: point forecasts, and quantiles trained with the pinball loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.model import (
    MIN_UNIT,
    PointHead,
    QuantileHead,
    SeedEnsemble,
    StackedLSTMForecaster,
    build_forecaster,
    load_checkpoint,
    output_head,
    save_checkpoint,
    seasonal_repeat,
)
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import TrainResult, fit
from pipeline.windows import build_window_sets

LEVELS = (0.8, 0.95)
LOOKBACK, HORIZON, SEGMENT, SEASON = 24, 8, 8, 12
NOISE = 0.5  # the sine's Gaussian noise: what the quantiles learn to bound


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def quantile_config(**changes: Any) -> ForecasterConfig:
    base = ForecasterConfig(
        channels=("x",),
        lookback=LOOKBACK,
        horizon=HORIZON,
        hidden_size=16,
        segment_len=SEGMENT,
        dropout=0.0,
        season=SEASON,
        loss="pinball",
        interval_levels=LEVELS,
    )
    return dataclasses.replace(base, **changes)


def noisy_windows(seed: int, size: int = 64, channels: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 10 + 3 * torch.randn(size, LOOKBACK, channels, generator=generator)


def ascending(quantiles: torch.Tensor) -> bool:
    return bool((quantiles.diff(dim=-1) >= 0).all())


def test_the_quantiles_bound_each_level_around_the_median() -> None:
    head = output_head("pinball", LEVELS)

    assert isinstance(head, QuantileHead)
    assert head.taus == (0.025, 0.1, 0.5, 0.9, 0.975)
    assert (head.n_outputs, head.median) == (5, 2)
    assert output_head("mse", LEVELS).n_outputs == 1


def test_an_unknown_loss_is_refused_naming_every_head() -> None:
    with pytest.raises(ValueError, match="mse, l1, pinball, not 'huber'"):
        output_head("huber", LEVELS)


def test_order_builds_ascending_quantiles_around_the_raw_median() -> None:
    head = QuantileHead("pinball", LEVELS)
    raw = torch.tensor([0.0, 1.0, 5.0, -1.0, 2.0])
    gap = torch.nn.functional.softplus

    quantiles = head.order(raw)

    below = [5 - gap(torch.tensor(1.0)) - gap(torch.tensor(0.0)), 5 - gap(torch.tensor(1.0))]
    above = [5 + gap(torch.tensor(-1.0)), 5 + gap(torch.tensor(-1.0)) + gap(torch.tensor(2.0))]
    torch.testing.assert_close(quantiles, torch.tensor([*below, 5.0, *above]))
    assert PointHead("mse").order(raw) is raw


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"decoder": "linear"},
        {"channels": ("a", "b", "c"), "channel_independent": False, "targets": ("c", "a")},
        {"norm": "season"},
    ],
)
def test_quantiles_never_cross_even_with_large_random_weights(changes: dict[str, Any]) -> None:
    config = quantile_config(**changes)
    model = build_forecaster(config, seed=0).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 5.0)

    with torch.no_grad():
        out = model(noisy_windows(1, channels=config.n_channels))

    assert out.shape == (64, HORIZON, len(config.target_names), 5)
    assert ascending(out)


def test_an_untrained_season_model_has_the_seasonal_naive_median() -> None:
    model = build_forecaster(quantile_config(norm="season"), seed=0).eval()
    x = noisy_windows(2)

    with torch.no_grad():
        out = model(x)

    torch.testing.assert_close(model.point(out), seasonal_repeat(x, HORIZON, SEASON))
    assert (out[..., 3] > out[..., 2]).all()  # the spreads start positive, not collapsed


def test_the_pinball_loss_is_the_mean_over_quantiles_of_scaled_errors() -> None:
    head = QuantileHead("pinball", (0.5,))  # taus 0.25, 0.5, 0.75
    output = torch.tensor([[[[0.0, 1.0, 2.0], [-2.0, 0.0, 4.0]]]])  # (1, 1, 2, 3)
    target = torch.tensor([[[1.5, 0.0]]])  # (1, 1, 2)
    scale = torch.tensor([0.5, 2.0])

    loss = head.loss(output, target, scale)

    # Scaled errors (y - q) / s: [3, 1, -1] and [1, 0, -2]; tau * e above, (tau - 1) * e below.
    by_hand = (0.25 * 3 + 0.5 * 1 + 0.25 * 1) + (0.25 * 1 + 0 + 0.25 * 2)
    assert loss.item() == pytest.approx(by_hand / 6)
    torch.testing.assert_close(head.point(output), torch.tensor([[[1.0, 0.0]]]))


def noisy_sine(n_steps: int, seed: int) -> pd.DataFrame:
    t = np.arange(n_steps)
    noise = np.random.default_rng(seed).normal(0.0, NOISE, n_steps)
    return pd.DataFrame({"x": 5 + 2 * np.sin(2 * np.pi * t / SEASON) + noise})


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    series = {f"s{i}": noisy_sine(600, seed=i) for i in range(2)}
    train, val = build_window_sets(series, ["x"], LOOKBACK, HORIZON, val_fraction=0.2)
    budget = TrainConfig(
        max_steps=300, eval_every=100, patience=10, batch_size=64, learning_rate=1e-2, device="cpu"
    )
    return fit(build_forecaster(quantile_config(), seed=0), train, val, budget)


def test_trained_quantile_bands_cover_new_windows_at_about_their_levels(
    trained: TrainResult,
) -> None:
    held_out, _ = build_window_sets({"new": noisy_sine(800, seed=7)}, ["x"], LOOKBACK, HORIZON, 0.1)
    model = trained.model.eval()

    with torch.no_grad():
        q = model(torch.from_numpy(held_out.inputs)).numpy()  # (N, H, 1, 5)
    y = held_out.targets  # (N, H, 1)

    inner = np.mean((q[..., 1] <= y) & (y <= q[..., 3]))
    outer = np.mean((q[..., 0] <= y) & (y <= q[..., 4]))
    assert 0.65 <= inner <= 0.92
    assert outer >= 0.88 and outer > inner
    assert np.mean(q[..., 4] - q[..., 0]) > np.mean(q[..., 3] - q[..., 1])
    # The median forecasts the sine: its error is about the noise, not the sine's swing.
    assert np.sqrt(np.mean((q[..., 2] - y) ** 2)) < 2 * NOISE


def test_a_quantile_checkpoint_round_trips(tmp_path: Path) -> None:
    model = build_forecaster(quantile_config(decoder="linear"), seed=3).eval()
    x = noisy_windows(4)

    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "quantiles.pt"))

    assert loaded.config.loss == "pinball"
    assert isinstance(loaded.output_head, QuantileHead)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_point_units_are_the_window_spreads() -> None:
    spreads = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # (N=2, 1, C=2)
    output = np.zeros((2, 3, 2))  # (N, H, C)

    below, above = PointHead("mse").units(output, spreads)

    assert below.shape == above.shape == (1, 2, 1, 2)
    np.testing.assert_array_equal(below[0], spreads)
    np.testing.assert_array_equal(above[0], spreads)


def test_quantile_units_are_each_levels_distances_from_the_median() -> None:
    head = QuantileHead("pinball", LEVELS)
    output = np.array(
        [[[[-9.0, -1.0, 0.0, 2.0, 5.0]], [[1.0, 1.0, 1.0, 1.0, 3.0]]]]
    )  # (1, 2, 1, 5)
    spreads = np.array([[[10.0]]])  # (N=1, 1, C=1)

    below, above = head.units(output, spreads)

    assert below.shape == above.shape == (2, 1, 2, 1)  # (L, N, H, C)
    floor = 10.0 * MIN_UNIT  # the second step's collapsed quantiles
    np.testing.assert_allclose(below[:, 0, :, 0], [[1.0, floor], [9.0, floor]])
    np.testing.assert_allclose(above[:, 0, :, 0], [[2.0, floor], [5.0, 2.0]])


@pytest.mark.parametrize("architecture", ["dlinear", "repeat_last", "seasonal_naive"])
def test_a_quantile_head_needs_the_lstm(architecture: str) -> None:
    config = quantile_config(architecture=architecture)

    with pytest.raises(ValueError, match=r"pinball loss .* needs the lstm architecture"):
        build_forecaster(config)


def test_a_seed_ensemble_averages_its_members_quantiles() -> None:
    ensemble = build_forecaster(quantile_config(members=2), seed=0).eval()
    assert isinstance(ensemble, SeedEnsemble)
    x = noisy_windows(5)

    with torch.no_grad():
        out = ensemble(x)
        members = [member(x) for member in ensemble.networks]

    assert out.shape == (64, HORIZON, 1, 5)
    torch.testing.assert_close(out, (members[0] + members[1]) / 2)
    assert not torch.equal(members[0], members[1])  # two seeds, two networks
    assert ascending(out)
    medians = [member.point(m) for member, m in zip(ensemble.networks, members, strict=True)]
    torch.testing.assert_close(ensemble.point(out), (medians[0] + medians[1]) / 2)


def test_a_point_head_model_still_forecasts_points() -> None:
    config = quantile_config(loss="mse")

    model = StackedLSTMForecaster(config).eval()
    with torch.no_grad():
        out = model(noisy_windows(6))

    assert model.output_head.n_outputs == 1
    assert out.shape == (64, HORIZON, 1)
    assert torch.equal(model.point(out), out)
