"""Progress lines as an operator reads them: the rate, the time left, dead letters by reason."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.model import StackedLSTMForecaster
from pipeline.progress import Progress, by_reason, pace
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import fit
from pipeline.windows import build_window_sets

LOOKBACK, HORIZON = 24, 6


def test_training_logs_steps_per_second_and_the_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    t = np.arange(200)
    series = {"s0": pd.DataFrame({"x": np.sin(2 * np.pi * t / 24)})}
    train, val = build_window_sets(series, ["x"], LOOKBACK, HORIZON, val_fraction=0.25)
    shape = ForecasterConfig(
        channels=("x",), lookback=LOOKBACK, horizon=HORIZON, hidden_size=4, segment_len=1
    )
    config = TrainConfig(max_steps=6, eval_every=3, batch_size=16, patience=10, device="cpu")

    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        fit(StackedLSTMForecaster(shape), train, val, config)

    steps = [m for m in caplog.messages if m.startswith("step ")]
    assert len(steps) == 2
    assert re.search(r"step 3/6 .* [\d.]+ steps/s, ETA \d+s$", steps[0]), steps[0]
    assert steps[1].endswith("ETA 0s")  # the budget is spent


def test_the_time_limit_bounds_the_eta_when_it_comes_first() -> None:
    assert pace(10, 10.0, total=1000, time_left_s=30.0, unit="steps") == "1.0 steps/s, ETA 30s"
    assert pace(10, 10.0, total=20, time_left_s=600.0) == "1.0/s, ETA 10s"


def test_a_progress_line_shows_the_rate_and_eta_until_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = Progress("ingest", total=100, logger=logging.getLogger("test.progress"), every_s=0)

    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress.advance(50, "50 rows stored")
        progress.finish("100 rows stored")

    first, last = caplog.messages
    assert first.startswith("ingest: 50/100 (") and ", ETA " in first
    assert "ETA" not in last  # finished: nothing is left


@pytest.mark.parametrize(
    ("counts", "shown"),
    [
        ({}, "0"),
        ({"missing_value": 22}, "22 (missing_value 22)"),
        ({"late": 1, "not_json": 3, "missing_value": 0}, "4 (not_json 3, late 1)"),
    ],
)
def test_dead_letters_are_shown_by_reason(counts: dict[str, int], shown: str) -> None:
    assert by_reason(counts) == shown
