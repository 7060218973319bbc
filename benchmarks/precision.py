"""Serve's model arithmetic: float32 against bfloat16, speed and accuracy (issue 22); about 2
minutes on one core.

    python benchmarks/precision.py --results benchmarks/results/precision.jsonl

Trains the LSTM at issue 4's shape (lookback 96, hidden 128, 2 layers, 300 steps) and at the
default shape (lookback 720, 150 steps) on ETTh1's OT (the S setting, horizon 24, seed 0), then
forecasts the test split with both: the test MSE of each, how far apart their forecasts are, and
microseconds per window (one thread, batches of 1,024, the second of two passes).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from results import add_results_option, append_if_asked

from pipeline.backtest import BacktestSpec, forecasting, ltsf_splits, prepare_data, trained_config
from pipeline.forecast import predict_outputs
from pipeline.model import build_forecaster
from pipeline.recipe import TrainConfig
from pipeline.train import fit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ETTh1.csv"
SHAPES = {
    "issue4": ({"hidden_size": 128, "num_layers": 2, "segment_len": 24, "norm": "last"}, 96, 300),
    "default": ({"norm": "last"}, 720, 150),
}


def timed(model: torch.nn.Module, inputs: np.ndarray, precision: torch.dtype) -> tuple:
    predict_outputs(model, inputs, precision=precision)
    started = time.perf_counter()
    outputs = predict_outputs(model, inputs, precision=precision)
    return outputs, (time.perf_counter() - started) / len(inputs) * 1e6


def measure(name: str, frame: pd.DataFrame) -> dict[str, float]:
    shape, lookback, steps = SHAPES[name]
    spec = BacktestSpec(features="S", lookback=lookback, horizon=24, model_overrides=shape)
    data = prepare_data(frame, "ETTh1", spec)
    splits = forecasting(
        ltsf_splits(data.values, data.borders, lookback, 24, data.times, 1), data.config
    )
    config, _ = trained_config(spec, data)
    torch.manual_seed(0)
    model = fit(
        build_forecaster(config), splits.train, splits.val, TrainConfig(max_steps=steps)
    ).model
    test = splits.test
    exact, exact_us = timed(model, test.inputs, torch.float32)
    lower, lower_us = timed(model, test.inputs, torch.bfloat16)
    return {
        "shape": name,
        "mse_float32": float(np.mean((exact - test.targets) ** 2)),
        "mse_bfloat16": float(np.mean((lower - test.targets) ** 2)),
        "rms_difference": float(np.sqrt(np.mean((lower - exact) ** 2))),
        "max_difference": float(np.abs(lower - exact).max()),
        "us_per_window_float32": round(exact_us, 1),
        "us_per_window_bfloat16": round(lower_us, 1),
        "speedup": round(exact_us / lower_us, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--core", type=int, default=0)
    add_results_option(parser)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    frame = pd.read_csv(args.data)
    rows = [measure(name, frame) for name in SHAPES]
    for row in rows:
        print(row)
    append_if_asked(args, "precision", {"shapes": rows})


if __name__ == "__main__":
    main()
