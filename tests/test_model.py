"""The forecaster network, its config and its checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.evaluate import repeat_last, seasonal_naive
from pipeline.model import (
    MIN_SCALE,
    CheckpointError,
    RepeatLast,
    SeasonalNaive,
    SeedEnsemble,
    StackedLSTMForecaster,
    build_forecaster,
    load_checkpoint,
    moving_average,
    save_checkpoint,
    warm_started,
)
from pipeline.recipe import ForecasterConfig

CHANNELS = ("load", "temp")


def small_config(**changes: Any) -> ForecasterConfig:
    base = ForecasterConfig(
        channels=CHANNELS, lookback=12, horizon=4, hidden_size=8, num_layers=1, segment_len=1
    )
    return dataclasses.replace(base, **changes)


def build(config: ForecasterConfig, seed: int = 0) -> StackedLSTMForecaster:
    torch.manual_seed(seed)
    return StackedLSTMForecaster(config).eval()


def batch(config: ForecasterConfig, size: int = 5, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 20 + 5 * torch.randn(size, config.lookback, config.n_channels, generator=generator)


@pytest.mark.parametrize(("channels", "lookback", "horizon"), [(("OT",), 1, 1), (CHANNELS, 48, 24)])
def test_forecast_shape_follows_config(
    channels: tuple[str, ...], lookback: int, horizon: int
) -> None:
    config = small_config(channels=channels, lookback=lookback, horizon=horizon)

    out = build(config)(batch(config, size=2))

    assert out.shape == (2, horizon, len(channels))


def test_invalid_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="norm"):
        StackedLSTMForecaster(small_config(norm="zscore"))


@pytest.mark.parametrize("norm", ["last", "mean", "season"])
def test_forecasts_follow_the_level_of_the_input(norm: str) -> None:
    config = small_config(norm=norm, season=6)
    model = build(config)
    x = batch(config)
    shift = 50.0

    with torch.no_grad():
        base, shifted = model(x), model(x + shift)

    torch.testing.assert_close(shifted, base + shift, atol=1e-4, rtol=0)


def test_fit_scale_is_the_per_channel_spread() -> None:
    config = small_config()
    model = build(config)
    x = batch(config, size=64)
    x[..., 1] = 7.0  # a channel that never moves

    model.fit_scale(x)

    expected_load = x[..., 0].reshape(-1).std()
    torch.testing.assert_close(model.scale[0], expected_load)
    assert model.scale[1].item() == pytest.approx(MIN_SCALE)


def test_config_round_trips_through_a_dict() -> None:
    config = small_config(norm="mean", dropout=0.3, freq="15min")

    assert ForecasterConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"hidden_size": 128}, id="hidden_size"),
        pytest.param({"num_layers": 3}, id="num_layers"),
        pytest.param({"dropout": 0.5}, id="dropout"),
        pytest.param({"norm": "mean"}, id="norm"),
        pytest.param({"architecture": "seasonal_naive", "season": 6}, id="season"),
        pytest.param({}, id="identical"),
    ],
)
def test_serves_like_ignores_the_network_shape(change: dict[str, Any]) -> None:
    assert small_config().serves_like(small_config(**change))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"channels": ("temp", "load")}, id="channel-order"),
        pytest.param({"channels": ("load",)}, id="channel-set"),
        pytest.param({"lookback": 24}, id="lookback"),
        pytest.param({"horizon": 8}, id="horizon"),
        pytest.param({"freq": "15min"}, id="freq"),
    ],
)
def test_serves_like_requires_same_inputs_outputs_and_step(change: dict[str, Any]) -> None:
    assert not small_config().serves_like(small_config(**change))


# --- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture
def trained_like(tmp_path: Path) -> tuple[StackedLSTMForecaster, Path]:
    """A two-layer model with a fitted scale (a buffer, not a parameter), saved to disk."""
    config = small_config(num_layers=2, dropout=0.2, norm="mean")
    model = build(config, seed=3)
    model.fit_scale(batch(config, size=32, seed=4))
    return model, save_checkpoint(model, tmp_path / "model.pt")


def test_checkpoint_loads_with_weights_only(
    trained_like: tuple[StackedLSTMForecaster, Path],
) -> None:
    _, path = trained_like

    blob = torch.load(path, weights_only=True)

    assert set(blob) == {"config", "state_dict"}
    assert all(is_safe(v) for v in blob.values())
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())


def is_safe(value: object) -> bool:
    """Only tensors, primitives and containers of them: nothing that needs code to unpickle."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_safe(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_safe(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | torch.Tensor)


def test_checkpoint_saved_before_seasons_existed_still_loads(
    trained_like: tuple[StackedLSTMForecaster, Path], tmp_path: Path
) -> None:
    model, _ = trained_like
    config = model.config.to_dict()
    del config["season"]
    path = tmp_path / "old.pt"
    torch.save({"config": config, "state_dict": model.state_dict()}, path)

    loaded = load_checkpoint(path)

    assert loaded.config == model.config  # the default season
    x = batch(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_of_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"absent\.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_without_config_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_truncated_checkpoint_raises_checkpoint_error(
    trained_like: tuple[StackedLSTMForecaster, Path],
) -> None:
    _, path = trained_like
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a checkpoint at all", id="unpickling-error"),
        pytest.param(b"this is not a checkpoint", id="index-error"),
        pytest.param(b"", id="empty"),
    ],
)
def test_garbage_checkpoint_raises_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "change",
    [{"hidden_size": 16}, {"norm": "zscore"}, {"norm": "season", "season": 13}],
    ids=["weights-of-another-shape", "unknown-norm", "season-longer-than-the-lookback"],
)
def test_checkpoint_whose_config_does_not_fit_raises_checkpoint_error(
    trained_like: tuple[StackedLSTMForecaster, Path], tmp_path: Path, change: dict[str, Any]
) -> None:
    model, _ = trained_like
    config = {**model.config.to_dict(), **change}
    path = tmp_path / "bad-config.pt"
    torch.save({"config": config, "state_dict": model.state_dict()}, path)

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_segments_must_tile_the_lookback() -> None:
    config = ForecasterConfig(channels=("a",), lookback=50, horizon=8, segment_len=24)
    with pytest.raises(ValueError, match="multiple of segment_len"):
        build_forecaster(config)


def test_segment_wise_input_shortens_the_recurrence() -> None:
    config = ForecasterConfig(channels=("a",), lookback=720, horizon=96, segment_len=48)
    model = build_forecaster(config)
    assert isinstance(model, StackedLSTMForecaster)
    assert (model.n_in, model.n_out) == (15, 2)


def test_moving_average_keeps_a_constant_and_smooths_a_spike() -> None:
    constant = torch.full((1, 30, 1), 3.0)
    spike = torch.zeros(1, 30, 1)
    spike[0, 15, 0] = 25.0

    assert torch.allclose(moving_average(constant, 25), constant)
    assert moving_average(spike, 25)[0, 15, 0].item() == pytest.approx(1.0)


# --- naive baselines ------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [5, 6, 16], ids=["part-season", "one-season", "seasons"])
def test_naive_forecasters_match_the_numpy_baselines(horizon: int) -> None:
    config = small_config(horizon=horizon, season=6)
    x = batch(config)  # (B, L, C), float32 like every window

    last = build_forecaster(dataclasses.replace(config, architecture="repeat_last"))(x)
    seasonal = build_forecaster(dataclasses.replace(config, architecture="seasonal_naive"))(x)

    np.testing.assert_array_equal(last.numpy(), repeat_last(x.numpy(), horizon))
    np.testing.assert_array_equal(seasonal.numpy(), seasonal_naive(x.numpy(), horizon, 6))


def test_naive_forecasters_have_no_parameters() -> None:
    config = small_config(season=6)

    assert not list(RepeatLast(config).parameters())
    assert not list(SeasonalNaive(config).parameters())


def test_seasonal_naive_refuses_a_lookback_shorter_than_a_season() -> None:
    config = small_config(lookback=12, season=24, architecture="seasonal_naive")

    with pytest.raises(ValueError, match=r"lookback >= season.*lookback 12 and season 24"):
        build_forecaster(config)


# --- norm "season": a residual over seasonal-naive -----------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"horizon": 16}, id="seasons"),
        pytest.param({"horizon": 5, "channel_independent": False}, id="mixed-channels"),
        pytest.param({"horizon": 6, "targets": ("temp",)}, id="one-target"),
        pytest.param({"horizon": 9, "decoder": "linear", "segment_len": 3}, id="linear-decoder"),
    ],
)
def test_an_untrained_norm_season_lstm_forecasts_exactly_the_seasonal_naive(
    change: dict[str, Any],
) -> None:
    # Its head starts at zero, so training starts from seasonal-naive and keeps it (the start
    # is validated) unless it finds better.
    config = small_config(norm="season", season=6, **change)
    model = build(config)
    model.fit_scale(batch(config, size=32, seed=2))  # a scale that is not 1
    x = batch(config)

    with torch.no_grad():
        forecast = model(x)

    seasonal = SeasonalNaive(dataclasses.replace(config, architecture="seasonal_naive"))(x)
    assert torch.equal(forecast, seasonal)
    assert not torch.equal(forecast, model.forecast_channels(x[:, -1:]).expand_as(forecast))


def test_norm_season_refuses_a_season_longer_than_the_lookback() -> None:
    config = small_config(lookback=12, season=13, norm="season")

    with pytest.raises(ValueError, match=r'norm "season" needs lookback >= season.*season 13'):
        build_forecaster(config)


def test_unknown_architecture_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'transformer'.*seasonal_naive"):
        build_forecaster(small_config(architecture="transformer"))


def test_one_seed_builds_one_model_whatever_ran_before() -> None:
    config = ForecasterConfig(channels=("a", "b"), lookback=48, horizon=24)

    first = build_forecaster(config, seed=7)
    torch.rand(1000)  # other work between the two builds moves the global RNG
    second = build_forecaster(config, seed=7)
    other = build_forecaster(config, seed=8)

    for name, weights in first.state_dict().items():
        assert torch.equal(weights, second.state_dict()[name]), name
    assert any(not torch.equal(w, other.state_dict()[n]) for n, w in first.state_dict().items())


def test_a_warm_start_copies_the_champion_only_when_the_config_is_the_same() -> None:
    config = ForecasterConfig(("load",), lookback=48, horizon=12, hidden_size=16, segment_len=24)
    champion = build_forecaster(config, seed=1)

    warm = warm_started(champion, config)

    assert warm is not None and warm is not champion
    for name, value in champion.state_dict().items():
        assert torch.equal(warm.state_dict()[name], value), name
    assert warm_started(champion, dataclasses.replace(config, hidden_size=32)) is None
    assert warm_started(champion, dataclasses.replace(config, freq="30min")) is None


def test_a_warm_start_under_norm_auto_keeps_the_norm_the_champion_chose() -> None:
    auto = ForecasterConfig(
        ("load",), lookback=48, horizon=12, hidden_size=16, segment_len=24, norm="auto"
    ).with_season(24)
    champion = build_forecaster(dataclasses.replace(auto, norm="season"), seed=1)

    warm = warm_started(champion, auto)

    assert warm is not None and warm.config.norm == "season"
    history = torch.randn(3, 48, 1)
    with torch.no_grad():
        assert torch.equal(warm.eval()(history), champion.eval()(history))
    mean_champion = build_forecaster(dataclasses.replace(auto, norm="mean"), seed=1)
    assert warm_started(mean_champion, auto) is None


# --- seed ensembles ------------------------------------------------------------------------------


def test_a_seed_ensemble_forecasts_the_mean_of_its_seeds_networks() -> None:
    config = small_config(members=3)

    ensemble = build_forecaster(config, seed=7).eval()
    alone = [build_forecaster(small_config(), seed=s).eval() for s in (7, 8, 9)]

    x = batch(config)
    mean = torch.stack([model(x) for model in alone]).mean(dim=0)
    torch.testing.assert_close(ensemble(x), mean)
    assert isinstance(ensemble, SeedEnsemble) and len(ensemble.networks) == 3


def test_a_seed_ensemble_checkpoint_round_trips_and_refuses_a_missing_member(
    tmp_path: Path,
) -> None:
    ensemble = build_forecaster(small_config(members=2), seed=0).eval()
    path = save_checkpoint(ensemble, tmp_path / "ensemble.pt")

    loaded = load_checkpoint(path)

    x = batch(ensemble.config)
    torch.testing.assert_close(loaded(x), ensemble(x))
    assert loaded.config.members == 2
    state = {k: v for k, v in ensemble.state_dict().items() if not k.startswith("members.1.")}
    torch.save({"config": ensemble.config.to_dict(), "state_dict": state}, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("members", [0, 17])
def test_a_seed_ensemble_out_of_range_is_refused(members: int) -> None:
    with pytest.raises(ValueError, match="members must be from 1 to 16"):
        build_forecaster(small_config(members=members))
