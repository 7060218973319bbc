"""The training engine on a small learnable signal: learning, early stopping, errors, seeding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.evaluate import score_forecaster
from pipeline.forecast import predict
from pipeline.model import Forecaster, StackedLSTMForecaster, build_forecaster
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import (
    EvalStats,
    OnDevice,
    TrainingError,
    TrainResult,
    evaluate_loss,
    fit,
    fit_ensemble,
)
from pipeline.windows import WindowSet, build_window_sets

LOOKBACK, HORIZON, SEASON = 48, 12, 24
N_SERIES, N_STEPS = 4, 400
# One intra-op thread: the model is tiny, and more threads only contend with other processes.
TORCH_THREADS = 1


@pytest.fixture(scope="module", autouse=True)
def few_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(previous)


def two_sines(n_steps: int, phase: float, level: float) -> np.ndarray:
    """A daily and a weekly-ish cycle around ``level``: easy to learn, hard to repeat-last."""
    t = np.arange(n_steps)
    return (
        level
        + 3.0 * np.sin(2 * np.pi * (t / SEASON + phase))
        + 1.5 * np.sin(2 * np.pi * (t / 7 + 2 * phase))
    )


@pytest.fixture(scope="module")
def windows() -> tuple[WindowSet, WindowSet]:
    series = {
        f"s{i}": pd.DataFrame({"x": two_sines(N_STEPS, phase=i / 5, level=10.0 * i)})
        for i in range(N_SERIES)
    }
    return build_window_sets(series, ["x"], LOOKBACK, HORIZON, val_fraction=0.25)


def tiny_model(seed: int = 0, loss: str = "mse") -> StackedLSTMForecaster:
    torch.manual_seed(seed)
    config = ForecasterConfig(
        channels=("x",),
        lookback=LOOKBACK,
        horizon=HORIZON,
        hidden_size=16,
        num_layers=1,
        segment_len=1,
        dropout=0.1,
        loss=loss,
    )
    return StackedLSTMForecaster(config)


# One validation per pass over the windows (16 steps of 64), six passes.
STEPS_PER_PASS = 16
BASE_TRAIN = TrainConfig(
    max_steps=6 * STEPS_PER_PASS,
    eval_every=None,
    batch_size=64,
    learning_rate=1e-2,
    patience=10,
    device="cpu",
)


def train_config(**changes: Any) -> TrainConfig:
    return dataclasses.replace(BASE_TRAIN, **changes)


@pytest.fixture(scope="module")
def trained(windows: tuple[WindowSet, WindowSet]) -> TrainResult:
    train, val = windows
    return fit(tiny_model(), train, val, train_config())


def test_training_loss_falls(trained: TrainResult) -> None:
    start, *later = trained.history
    losses = [stats.train_loss for stats in later]

    assert (start.step, math.isnan(start.train_loss)) == (0, True)  # validated before any step
    assert len(losses) == 6
    # At this rate the loss wanders once it is low (the last pass can be worse than the best,
    # by CPU kernels), so the test is that training reached well below where it began.
    assert min(losses[1:]) < 0.75 * losses[0]


def test_trained_model_beats_repeat_last(
    trained: TrainResult, windows: tuple[WindowSet, WindowSet]
) -> None:
    _, val = windows

    card = score_forecaster(trained.model, val, SEASON)

    assert card.mse < card.repeat_last_mse


def windows_of(inputs: np.ndarray, targets: np.ndarray) -> WindowSet:
    """A window set holding exactly these windows, laid end to end."""
    lookback, horizon = inputs.shape[1], targets.shape[1]
    values = np.concatenate([inputs, targets], axis=1)  # (N, L+H, C)
    starts = np.arange(len(values), dtype=np.int64) * (lookback + horizon)
    series = np.full(len(values), "mirrored", dtype=object)
    return WindowSet(values.reshape(-1, values.shape[-1]), starts, lookback, horizon, series)


def mirrored(windows: WindowSet) -> WindowSet:
    """The same inputs, targets mirrored around the last input: learning them makes it worse."""
    last = windows.inputs[:, -1:, :]  # (N, 1, C)
    return windows_of(windows.inputs, 2 * last - windows.targets)


def test_fit_returns_the_best_validation_weights(windows: tuple[WindowSet, WindowSet]) -> None:
    train, _ = windows
    val = mirrored(train)  # the better the model learns, the worse validation gets
    config = train_config()

    result = fit(tiny_model(), train, val, config)

    last = result.history[-1]
    assert result.best_step < last.step  # else the last weights are the best ones
    best = min(result.history, key=lambda stats: stats.val_loss)
    assert (result.best_step, result.best_val_loss) == (best.step, best.val_loss)
    loss, _ = evaluate_loss(result.model, OnDevice(val, torch.device("cpu")), config.batch_size)
    assert loss == pytest.approx(result.best_val_loss, rel=1e-6)
    assert loss != pytest.approx(last.val_loss, rel=1e-3)
    # The validation loss is the MSE in units of the training scale, the scorecard's unit too.
    card = score_forecaster(result.model, val, SEASON)
    assert card.mse == pytest.approx(result.best_val_loss, rel=1e-4)


def test_fit_reports_each_validation(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows
    reported: list[EvalStats] = []
    config = train_config(max_steps=25, eval_every=10)
    assert -(-len(train) // config.batch_size) == STEPS_PER_PASS

    result = fit(tiny_model(), train, val, config, on_eval=reported.append)

    assert reported == result.history
    assert [stats.step for stats in reported] == [0, 10, 20, 25]  # the start, the budget's end
    assert reported[-1].epoch == pytest.approx(25 / STEPS_PER_PASS)
    assert result.steps == 25
    assert result.device == "cpu"
    assert result.samples_per_s > 0


def test_the_budget_is_steps_so_a_short_series_passes_over_its_windows_many_times(
    windows: tuple[WindowSet, WindowSet],
) -> None:
    train, val = windows
    short = dataclasses.replace(train, starts=train.starts[:100])  # 2 steps per pass

    result = fit(tiny_model(), short, val, train_config(max_steps=60, eval_every=20))

    assert result.steps == 60
    assert result.history[-1].epoch == pytest.approx(30)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_validation_reports_the_rate_its_schedule_gave(
    windows: tuple[WindowSet, WindowSet], schedule: str
) -> None:
    train, val = windows
    config = train_config(max_steps=40, eval_every=10, schedule=schedule)

    result = fit(tiny_model(), train, val, config)

    rates = [stats.learning_rate for stats in result.history]
    if schedule == "constant":
        assert rates == [config.learning_rate] * 5
    else:  # annealed over the budget: from the start, a quarter of the way, ..., zero
        expected = [config.learning_rate * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(5)]
        np.testing.assert_allclose(rates, expected, atol=1e-12)


def test_max_epochs_caps_the_budget(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows

    result = fit(tiny_model(), train, val, train_config(max_steps=1000, max_epochs=2))

    assert result.steps == 2 * STEPS_PER_PASS
    assert [stats.step for stats in result.history] == [0, STEPS_PER_PASS, 2 * STEPS_PER_PASS]


def test_each_validation_reports_mse_whatever_the_training_loss(
    windows: tuple[WindowSet, WindowSet],
) -> None:
    train, val = windows

    result = fit(tiny_model(loss="l1"), train, val, train_config(max_steps=15))

    stats = result.history[-1]
    _, val_mse = evaluate_loss(result.model, OnDevice(val, torch.device("cpu")), 64)
    assert stats.val_mse == pytest.approx(val_mse)
    assert stats.val_mse != pytest.approx(stats.val_loss)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_when_validation_cannot_improve(
    windows: tuple[WindowSet, WindowSet], patience: int
) -> None:
    # With a zero learning rate the weights never move, so the start's validation stays the best.
    train, val = windows
    model = tiny_model()
    # The scale buffer is set from the data at the start of fit; the weights are what must not move.
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("scale")}

    config = train_config(max_steps=10 * STEPS_PER_PASS, learning_rate=0.0, patience=patience)
    result = fit(model, train, val, config)

    assert len(result.history) == 1 + patience
    assert result.best_step == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_time_limit_ends_training_with_a_validation_between_the_scheduled_ones(
    windows: tuple[WindowSet, WindowSet],
) -> None:
    train, val = windows
    config = train_config(max_steps=10 * STEPS_PER_PASS, time_limit_s=1e-9)

    result = fit(tiny_model(), train, val, config)

    assert result.steps == 1  # not the first scheduled validation at STEPS_PER_PASS
    assert [stats.step for stats in result.history] == [0, 1]
    best = min(result.history, key=lambda stats: stats.val_loss)
    assert result.best_step == best.step


def test_seeded_runs_are_reproducible(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows
    config = train_config(max_steps=2 * STEPS_PER_PASS)

    first = fit(tiny_model(seed=5), train, val, config)
    model = tiny_model(seed=5)
    torch.rand(1000)  # whatever ran since the model was built must not change the run
    second = fit(model, train, val, config)

    losses = [(s.train_loss, s.val_loss) for s in first.history]
    assert losses == [(s.train_loss, s.val_loss) for s in second.history]
    np.testing.assert_array_equal(
        predict(first.model, val.inputs), predict(second.model, val.inputs)
    )


def test_another_training_seed_gives_another_run(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows

    first = fit(tiny_model(seed=5), train, val, train_config(max_steps=STEPS_PER_PASS, seed=0))
    second = fit(tiny_model(seed=5), train, val, train_config(max_steps=STEPS_PER_PASS, seed=1))

    assert first.history[0].train_loss != second.history[0].train_loss


def test_other_initial_weights_give_another_run(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows
    config = train_config(max_steps=STEPS_PER_PASS)

    first = fit(tiny_model(seed=5), train, val, config)
    second = fit(tiny_model(seed=6), train, val, config)

    assert first.history[0].train_loss != second.history[0].train_loss


def empty_windows() -> WindowSet:
    return WindowSet(
        np.empty((0, 1), np.float32),
        np.empty(0, np.int64),
        LOOKBACK,
        HORIZON,
        np.empty(0, dtype=object),
    )


@pytest.mark.parametrize("empty", ["train", "val"])
def test_fit_refuses_empty_windows(windows: tuple[WindowSet, WindowSet], empty: str) -> None:
    train, val = windows
    if empty == "train":
        train = empty_windows()
    else:
        val = empty_windows()

    with pytest.raises(TrainingError, match="lookback/horizon"):
        fit(tiny_model(), train, val, train_config())


def test_fit_stops_on_a_non_finite_loss(windows: tuple[WindowSet, WindowSet]) -> None:
    train, val = windows
    values = train.values.copy()
    values[train.starts[0] + LOOKBACK, 0] = np.inf  # the first target step of the first window
    poisoned = dataclasses.replace(train, values=values)

    with pytest.raises(TrainingError, match="learning rate"):
        fit(tiny_model(), poisoned, val, train_config(batch_size=len(train)))


def test_a_seed_ensemble_trains_each_seed_as_one_run_would_and_averages_them(
    windows: tuple[WindowSet, WindowSet],
) -> None:
    train, val = windows
    config = dataclasses.replace(BASE_TRAIN, max_steps=2 * STEPS_PER_PASS, seed=3)
    alone = [
        fit(tiny_seeded(seed), train, val, dataclasses.replace(config, seed=seed))
        for seed in (3, 4)
    ]

    result = fit_ensemble(tiny_seeded(3), train, val, config, ensemble=2)

    mean = np.mean([predict(r.model, val.inputs) for r in alone], axis=0)
    np.testing.assert_allclose(predict(result.model, val.inputs), mean, rtol=1e-4, atol=1e-5)
    assert result.ensemble is not None and result.ensemble.members == 2
    assert result.ensemble.seeds == (3, 4)
    losses = [(stats.step, stats.val_loss) for stats in result.history]
    assert losses == [(stats.step, stats.val_loss) for stats in alone[0].history]  # seed 3's


def tiny_seeded(seed: int) -> Forecaster:
    """:func:`tiny_model`'s shape, initialized the way :func:`build_forecaster` seeds it."""
    return build_forecaster(tiny_model().config, seed=seed)
