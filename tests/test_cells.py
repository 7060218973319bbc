"""The peephole LSTM: the cell math, peepholes that matter, and a forecaster built on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.cells import PeepholeLSTM
from pipeline.model import StackedLSTMForecaster, build_forecaster, load_checkpoint, save_checkpoint
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import fit
from pipeline.windows import WindowSet, window_starts

INPUT, HIDDEN, BATCH, STEPS = 3, 6, 4, 5


def peephole_weights(rnn: PeepholeLSTM) -> list[nn.Parameter]:
    return [weight for name, weight in rnn.named_parameters() if name.startswith("weight_ch")]


def inputs(seed: int = 0, layers: int = 1, directions: int = 1) -> tuple[torch.Tensor, ...]:
    """A batch ``(N, T, in)`` and a random initial ``(h, c)``, from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, STEPS, INPUT, generator=generator)
    shape = (layers * directions, BATCH, HIDDEN)
    return x, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@pytest.mark.parametrize(
    ("layers", "bidirectional"), [(1, False), (2, False), (1, True), (2, True)]
)
def test_with_zero_peepholes_it_is_torchs_lstm(layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(INPUT, HIDDEN, layers, batch_first=True, bidirectional=bidirectional)
    rnn = PeepholeLSTM(INPUT, HIDDEN, layers, bidirectional=bidirectional)
    loaded = rnn.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():
        for weight in peephole_weights(rnn):
            weight.zero_()
    x, h_0, c_0 = inputs(layers=layers, directions=2 if bidirectional else 1)

    expected, (h_n, c_n) = reference(x, (h_0, c_0))
    got, (h, c) = rnn(x, (h_0, c_0))

    assert not loaded.unexpected_keys  # every nn.LSTM weight has its namesake
    assert all(name.startswith("weight_ch") for name in loaded.missing_keys)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h, h_n)
    torch.testing.assert_close(c, c_n)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_peepholes_change_the_output_and_learn(bidirectional: bool) -> None:
    torch.manual_seed(0)
    rnn = PeepholeLSTM(INPUT, HIDDEN, bidirectional=bidirectional)
    x, _, _ = inputs()

    before, (_, c_n) = rnn(x)
    (before.square().sum() + c_n.sum()).backward()
    with torch.no_grad():
        for weight in peephole_weights(rnn):
            weight.add_(0.5)
    after, _ = rnn(x)

    assert len(peephole_weights(rnn)) == (2 if bidirectional else 1)
    for weight in peephole_weights(rnn):
        assert weight.grad is not None
        assert (weight.grad.abs() > 0).all(), "every gate's peephole weight gets a gradient"
    assert (after - before).abs().max() > 1e-3


def test_options_torch_takes_and_it_cannot_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_first"):
        PeepholeLSTM(INPUT, HIDDEN, batch_first=False)
    with pytest.raises(ValueError, match="dropout"):
        PeepholeLSTM(INPUT, HIDDEN, dropout=1.0)
    x, h_0, c_0 = inputs(layers=2)
    with pytest.raises(ValueError, match="initial"):
        PeepholeLSTM(INPUT, HIDDEN)(x, (h_0, c_0))  # a two-layer state for one layer


def tiny_series(config: ForecasterConfig, n_steps: int = 400) -> WindowSet:
    """Every window of a noisy daily sine ``(T, 1)`` of hourly steps."""
    rng = np.random.default_rng(0)
    t = np.arange(n_steps)
    values = 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(n_steps)
    values = values.astype(np.float32)[:, None]  # (T, 1)
    span = config.lookback + config.horizon
    starts = window_starts(values, 0, n_steps, span)
    return WindowSet(values, starts, config.lookback, config.horizon, np.zeros(len(starts)))


def test_a_peephole_forecaster_trains_and_its_checkpoint_round_trips(tmp_path: Path) -> None:
    config = ForecasterConfig(
        channels=("load",), lookback=48, horizon=12, hidden_size=16, segment_len=12
    )
    config = dataclasses.replace(config, cell="peephole", num_layers=2, bidirectional=True)
    model = build_forecaster(config, seed=0)
    assert isinstance(model, StackedLSTMForecaster)
    initial = model.encoder.weight_ch_l0.detach().clone()
    windows = tiny_series(config)
    train = TrainConfig(max_steps=6, eval_every=3, batch_size=32, device="cpu", patience=10)

    result = fit(model, windows, windows, train)
    path = save_checkpoint(model, tmp_path / "peephole.pt")
    loaded = load_checkpoint(path)

    assert isinstance(model.encoder, PeepholeLSTM) and isinstance(model.decoder, PeepholeLSTM)
    assert result.steps == 6 and np.isfinite(result.best_val_loss)
    assert not torch.equal(model.encoder.weight_ch_l0, initial)  # trained, peepholes too
    x = torch.as_tensor(windows.inputs[:3])  # (3, L, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
