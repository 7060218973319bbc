"""Seed ensembles (issue 21): the mean of three seeds against the first seed alone, on
validation (what ``--ensemble auto`` decides on) and on the test split.

    python benchmarks/ensemble.py --datasets taylor,sunspots,co2 --horizons 96

Each cell trains the LSTM at seeds 0, 1 and 2 once (``ensemble=3``) and records both
forecasts' validation and test MSE. Rows go to results/ensemble.jsonl; the report says where
``auto`` would keep the mean and whether the test agrees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import DATASETS
from results import append_row, read_figures

from pipeline.backtest import BacktestSpec, run_backtest

RESULTS = Path(__file__).parent / "results" / "ensemble.jsonl"
MEMBERS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="taylor")
    parser.add_argument("--horizons", default="96")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--max-steps", type=int, help="a training budget for a quick look")
    parser.add_argument("--report", action="store_true", help="only print the stored rows")
    args = parser.parse_args()
    if not args.report:
        torch.set_num_threads(1)
        for dataset in args.datasets.split(","):
            for horizon in map(int, args.horizons.split(",")):
                measure(dataset, horizon, args.model, args.max_steps)
    print(report(read_figures(RESULTS)))


def measure(dataset: str, horizon: int, model: str, max_steps: int | None) -> None:
    spec = BacktestSpec(
        horizon=horizon,
        model=model,
        ensemble=MEMBERS,
        train_overrides={} if max_steps is None else {"max_steps": max_steps},
    )
    metrics = run_backtest(DATASETS[dataset].load(), dataset, spec).metrics
    keep = ("dataset", "model", "horizon", "lookback", "val_folds", "val_blocks", "wall_s")
    figures = {k: metrics[k] for k in keep} | {
        "val_single": metrics["val_mse_single"],
        "val_mean": metrics["val_mse_ensemble"],
        "test_single": metrics["mse_first_seed"],
        "test_mean": metrics["mse"],
    }
    print(figures, flush=True)
    append_row(RESULTS, "ensemble", figures)


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | val: seed 0 / mean of 3 | test: seed 0 / mean of 3 | auto keeps | test agrees |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        keeps = row["val_mean"] < row["val_single"]
        agrees = keeps == (row["test_mean"] < row["test_single"])
        lines.append(
            f"| {row['dataset']} {row['model']} H={row['horizon']} "
            f"| {row['val_single']:.4f} / {row['val_mean']:.4f} "
            f"| {row['test_single']:.4f} / {row['test_mean']:.4f} "
            f"| {'mean' if keeps else 'seed 0'} | {'yes' if agrees else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
