"""The quantile head against the point head's intervals, on noise whose size the cycle's phase
tells (issue 22); about 1 minute.

    python benchmarks/quantile_head.py --results benchmarks/results/quantile-head.jsonl

A sine of period 24 with Gaussian noise ten times louder in the first half of each cycle than in
the second. A window's spread is the same whatever its phase, so intervals around a point
(``loss="mse"``) are as wide in the quiet half as in the loud one; a quantile head
(``loss="pinball"``) can learn the phase's noise. Both are the LSTM of ``rollcast backtest``
(lookback 48, horizon 12, hidden 32, 300 steps), calibrated on validation and adapted online on
test; per seed, the 80% interval's coverage, mean width and Winkler score for each.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
from results import add_results_option, append_if_asked

from pipeline.backtest import BacktestSpec, run_backtest

LEVEL = "0.8"


def noisy_cycle(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng, t = np.random.default_rng(seed), np.arange(rows)
    noise = np.where(t % 24 < 12, 0.5, 0.05) * rng.normal(size=rows)
    return pd.DataFrame({"x": np.sin(2 * np.pi * t / 24) + noise})


def figures_of(loss: str, seed: int, frame: pd.DataFrame) -> dict[str, float]:
    shape = {"hidden_size": 32, "segment_len": 12, "dropout": 0.0, "norm": "last", "loss": loss}
    spec = BacktestSpec(
        lookback=48,
        horizon=12,
        levels=(0.8,),
        seed=seed,
        model_overrides=shape,
        train_overrides={"max_steps": 300, "batch_size": 64, "learning_rate": 3e-3},
    )
    metrics = run_backtest(frame, "noisy_cycle", spec).metrics
    names = (f"coverage.{LEVEL}", f"width.{LEVEL}", f"winkler.{LEVEL}", f"coverage.{LEVEL}.offline")
    return {name: round(metrics[name], 4) for name in names} | {"mse": round(metrics["mse"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    add_results_option(parser)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    frame = noisy_cycle()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        row = {"seed": seed, "mse": figures_of("mse", seed, frame)}
        row["pinball"] = figures_of("pinball", seed, frame)
        ratio = row["pinball"][f"winkler.{LEVEL}"] / row["mse"][f"winkler.{LEVEL}"]
        row["winkler_ratio"] = round(ratio, 3)
        print(row)
        rows.append(row)
    append_if_asked(args, "quantile_head", {"seeds": rows})


if __name__ == "__main__":
    main()
