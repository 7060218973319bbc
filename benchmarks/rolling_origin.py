"""Rolling-origin validation against one validation block (issue 21): does validation rank the
models as the test split does, and what does each cost on the test?

    python benchmarks/rolling_origin.py --datasets taylor --horizons 96,192 --seeds 0,1

Every (dataset, horizon, seed) trains the LSTM and DLinear with one validation block (the
validation split, as before) and with ``--folds`` blocks spread over the latest training rows,
interleaved, and records each run's validation MSE (of its kept weights) and test MSE. The
report says, per cell and fold count, which model validation prefers and which the test does.
Rows go to results/rolling-origin.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import DATASETS
from results import append_row, read_figures

from pipeline.backtest import BacktestSpec, run_backtest

RESULTS = Path(__file__).parent / "results" / "rolling-origin.jsonl"
MODELS = ("lstm", "dlinear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="taylor")
    parser.add_argument("--horizons", default="96")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--folds", default="1,4", help="fold counts compared")
    parser.add_argument("--max-steps", type=int, help="a training budget for a quick look")
    parser.add_argument("--report", action="store_true", help="only print the stored rows")
    args = parser.parse_args()
    if not args.report:
        torch.set_num_threads(1)
        for dataset in args.datasets.split(","):
            for horizon in map(int, args.horizons.split(",")):
                for seed in map(int, args.seeds.split(",")):
                    for folds in map(int, args.folds.split(",")):
                        for model in MODELS:
                            measure(dataset, horizon, seed, folds, model, args.max_steps)
    print(report(read_figures(RESULTS)))


def measure(
    dataset: str, horizon: int, seed: int, folds: int, model: str, max_steps: int | None
) -> None:
    spec = BacktestSpec(
        horizon=horizon,
        model=model,
        seed=seed,
        val_folds=folds,
        train_overrides={} if max_steps is None else {"max_steps": max_steps},
    )
    metrics = run_backtest(DATASETS[dataset].load(), dataset, spec).metrics
    keep = ("dataset", "model", "horizon", "lookback", "seed", "val_folds", "val_mse", "mse")
    figures = {k: metrics[k] for k in keep} | {
        "steps": metrics["steps"],
        "wall_s": metrics["wall_s"],
    }
    print(figures, flush=True)
    append_row(RESULTS, "rolling_origin", figures)


def report(rows: list[dict[str, Any]]) -> str:
    """A table: per cell and fold count, each model's mean validation and test MSE, and
    whether validation picks the model the test prefers."""
    cells: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        key = (row["dataset"], row["horizon"], row["val_folds"])
        cells.setdefault(key, {}).setdefault(row["model"], []).append((row["val_mse"], row["mse"]))
    lines = [
        "| cell | folds | LSTM val / test | DLinear val / test | validation picks | test picks |",
        "|---|---|---|---|---|---|",
    ]
    for (dataset, horizon, folds), models in sorted(cells.items()):
        if set(models) != set(MODELS):
            continue
        means = {m: [statistics.mean(x) for x in zip(*models[m], strict=True)] for m in MODELS}
        picks = [min(MODELS, key=lambda m, i=i: means[m][i]) for i in (0, 1)]
        shown = [f"{means[m][0]:.4f} / {means[m][1]:.4f} (n={len(models[m])})" for m in MODELS]
        lines.append(
            f"| {dataset} H={horizon} | {folds} | {' | '.join(shown)} | {picks[0]} | {picks[1]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
