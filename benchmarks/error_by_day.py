"""Where a model's error comes from: the mean window MSE per day of the window's first target.

    python benchmarks/error_by_day.py taylor --horizon 96 --models dlinear,lstm

Trains each model once (seed 0, the generalization benchmark's defaults and protocol) for the
validation split and once for the test split, and prints one line per day and split, the models
side by side. Made to look at why validation and test disagree on short splits (BENCHMARKS.md).
``--results FILE`` also appends the per-day means as a row (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import DATASETS
from results import add_results_option, append_if_asked

from pipeline.backtest import BacktestSpec, run_backtest


def window_errors(frame: pd.DataFrame, dataset: str, spec: BacktestSpec) -> pd.Series:
    """Mean MSE of the split's windows, per calendar day of each window's first target."""
    result = run_backtest(frame, dataset, spec)
    errors = ((result.predictions - result.targets) ** 2).mean(axis=(1, 2))
    days = pd.to_datetime(frame["date"].iloc[result.first_targets]).dt.strftime("%a %Y-%m-%d")
    return pd.Series(errors, index=days.to_numpy()).groupby(level=0, sort=False).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--models", default="dlinear,lstm")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frame = DATASETS[args.dataset].load()
    figures = {"dataset": args.dataset, "horizon": args.horizon, "seed": 0}
    for split in ("val", "test"):
        table = pd.DataFrame(
            {
                model: window_errors(
                    frame,
                    args.dataset,
                    BacktestSpec(features="M", horizon=args.horizon, model=model, split=split),
                )
                for model in args.models.split(",")
            }
        )
        print(f"{split}: mean window MSE by the day of the first target")
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        print(f"mean over days: {table.mean().round(4).to_dict()}\n")
        figures[split] = table.to_dict()  # {model: {day: mean window MSE}}
    append_if_asked(args, "error_by_day", figures)


if __name__ == "__main__":
    main()
